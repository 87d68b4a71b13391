"""The FunASR-zoo recipes (Paraformer-streaming + Qwen2.5, SenseVoiceSmall + Qwen3) on stand-ins of their
directories: FunASR-layout dirs written by llmasr.testing.tiny_funasr (the streaming one with SANMEncoderChunkOpt,
WavFrontendOnline and no ctc. tensors; the SenseVoice one with no tokens.json and its CMVN named by
configuration.json) and tiny HF Qwen2 / Qwen3 directories.

One real training step per recipe: wav files -> the recipe's frontend, dataset, augmentation and Collator
(training's own loader builder) -> forward, backward, and an AdamW update through the recipe's branch param groups
and schedules. `llmasr check` and the build on stand-ins run for these recipes in test_real_recipes.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import llmasr
from llmasr.recipe import load_recipe
from llmasr.testing.run_dirs import write_corpus
from llmasr.testing.tiny_funasr import SENSEVOICE_BPE, tiny_sensevoice_conf, tiny_streaming_conf, write_funasr_dir
from llmasr.testing.tiny_llm import write_tiny_llm_dir
from llmasr.train.param_groups import build_param_groups
from llmasr.train.resolve import build_loaders, check_model_frontend, text_side
from llmasr.train.schedulers import BranchLRScheduler, build_group_schedules

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ZOO = {  # recipe -> (encoder stand-in, LLM stand-in)
    "paraformer-streaming_qwen2.5-1.5b_lora_zero2.yaml": ("streaming", "qwen2"),
    "sensevoice-small_qwen3-1.7b_lora_zero2.yaml": ("sensevoice", "qwen3"),
}
TEXTS = ["one two", "three", "four five six"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_stand_ins")
    streaming, sensevoice = tiny_streaming_conf(), tiny_sensevoice_conf()
    return {
        "streaming": write_funasr_dir(root / "streaming", model="ParaformerStreaming", encoder_conf=streaming),
        "sensevoice": write_funasr_dir(root / "sensevoice", model="SenseVoiceSmall", encoder_conf=sensevoice),
        "qwen2": write_tiny_llm_dir(root / "qwen2"),
        "qwen3": write_tiny_llm_dir(root / "qwen3", arch="qwen3"),
        "wavs": write_corpus(root / "wavs", TEXTS),
    }


def zoo_recipe(name: str, zoo: dict):
    enc, llm = ZOO[name]
    overrides = [f"model.encoder.path={zoo[enc]}", f"model.llm.path={zoo[llm]}", f"data.train=[{zoo['wavs']}]",
                 f"data.valid=[{zoo['wavs']}]", "data.num_workers=0"]  # fmt: skip
    return load_recipe(RECIPES / name, overrides)  # SenseVoice: its CTC head comes from encoder.path (from_encoder)


def test_zoo_recipes_exist_and_are_checked_with_the_other_recipes():
    for name in ZOO:
        assert (RECIPES / name).is_file(), name
    # test_real_recipes builds and `llmasr check`s every recipe on the stand-in its name selects
    source = (Path(__file__).parent / "test_real_recipes.py").read_text()
    assert '"streaming"' in source and '"sensevoice"' in source


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_recipe_takes_a_training_step_through_its_data_path(name, zoo):
    recipe = zoo_recipe(name, zoo)
    torch.manual_seed(0)
    side = text_side(recipe.model)
    train_loader, _, valid_loader = build_loaders(recipe, side, rank=0, world_size=1)
    model = llmasr.build_model(recipe.model)
    check_model_frontend(model, side.frontend)  # the features the loader makes are the ones the encoder expects
    train_batch, valid_batch = next(iter(train_loader)), next(iter(valid_loader))
    for batch in (train_batch, valid_batch):
        assert batch.bad == [] and sorted(batch.targets) == sorted(TEXTS), (batch.bad, batch.targets)
        assert batch.feats.shape[-1] == model.frontend.feature_dim == 560
        assert bool(torch.isfinite(batch.feats).all())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(valid_batch).loss)

    groups = build_param_groups(model, recipe.optim)
    optimizer = torch.optim.AdamW(groups)
    scheduler = BranchLRScheduler(optimizer, build_group_schedules(groups, recipe.optim, total=100))
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    # every branch at its own lr and schedule: the encoder starts far below the adaptor (a late, low warmup)
    branches = {"encoder", "adaptor", "llm"} | ({"ctc"} if recipe.model.ctc.weight > 0 else set())
    assert {g["branch"] for g in groups} == branches
    assert lrs["encoder"] < lrs["adaptor"] / 10 and lrs["encoder"] < lrs["llm"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    out = model(train_batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    optimizer.step()
    scheduler.step()
    moved = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"encoder", "adaptor", "llm"} | ({"ctc_head"} if "ctc" in branches else set()), moved
    changed_llm = [n for n, p in model.llm.named_parameters(prefix="llm") if not torch.equal(p, before[n])]
    assert changed_llm and all("lora_" in n for n in changed_llm), changed_llm  # the base LLM stays frozen


def test_streaming_recipe_keeps_the_directory_chunk_settings_and_online_frontend(zoo):
    recipe = zoo_recipe("paraformer-streaming_qwen2.5-1.5b_lora_zero2.yaml", zoo)
    model = llmasr.build_model(recipe.model)
    conf = tiny_streaming_conf()
    assert model.encoder.chunk.chunk_size == tuple(conf["chunk_size"])
    assert model.encoder.context == "chunked"  # as FunASR runs SANMEncoderChunkOpt
    fe = model.frontend
    assert (fe.lfr_m, fe.lfr_n, fe.snip_edges, fe.waveform_scale) == (7, 6, True, 32768.0)
    assert Path(fe.cmvn_file) == (zoo["streaming"] / "am.mvn").resolve()


def test_sensevoice_recipe_reads_cmvn_from_configuration_json_without_tokens_json(zoo):
    assert not (zoo["sensevoice"] / "tokens.json").exists()
    recipe = zoo_recipe("sensevoice-small_qwen3-1.7b_lora_zero2.yaml", zoo)
    model = llmasr.build_model(recipe.model)
    assert type(model.encoder).__name__ == "SenseVoiceEncoderSmall"
    assert Path(model.frontend.cmvn_file) == (zoo["sensevoice"] / "am.mvn").resolve()
    # SenseVoiceSmall as it runs itself: its query frames before the speech, its CTC head over its own vocabulary
    state = torch.load(zoo["sensevoice"] / "model.pt", weights_only=True)
    assert torch.equal(model.encoder.query_embed.weight, state["embed.weight"])
    assert model.encoder.query_ids.tolist() == [0, 1, 2, 15]  # language auto, event, emotion, without ITN
    assert recipe.model.ctc.vocab == str(zoo["sensevoice"].resolve() / SENSEVOICE_BPE)
    assert torch.equal(model.ctc_head.proj.weight, state["ctc.ctc_lo.weight"])
    assert model.ctc_tokenizer.blank_id == 0 and model.ctc_tokenizer.vocab_size == state["ctc.ctc_lo.bias"].numel()


def test_sensevoices_ctc_head_read_without_its_query_frames_is_warned_of(zoo, tmp_path, capsys):
    """model.ctc.from_encoder takes SenseVoiceSmall's head, trained on the frames after its query frames; with
    model.encoder.conf.queries null it reads frames made without them, and nothing said so."""
    from llmasr.cli import main

    enc, llm = ZOO["sensevoice-small_qwen3-1.7b_lora_zero2.yaml"]
    args = ["check", "--config", str(RECIPES / "sensevoice-small_qwen3-1.7b_lora_zero2.yaml"), "--deepspeed", "zero0",
            "--out", str(tmp_path), f"model.encoder.path={zoo[enc]}", f"model.llm.path={zoo[llm]}",
            f"data.train=[{zoo['wavs']}]", f"data.valid=[{zoo['wavs']}]", "data.num_workers=0",
            f"train.output_dir={tmp_path / 'run'}", "train.precision=fp32"]  # fmt: skip
    assert main(args) == 0
    assert "query frames" not in capsys.readouterr().out  # the recipe prepends them
    assert main([*args, "model.encoder.conf.queries=null"]) == 0
    out = capsys.readouterr().out
    assert (
        "  warning: model.ctc.from_encoder takes SenseVoiceSmall's CTC head, trained on the frames its encoder " in out
    )
    assert "but model.encoder.conf.queries is null, so the head reads frames made without them" in out
    assert main([*args, "model.encoder.conf.queries=null", "model.ctc.weight=0", "model.ctc.from_encoder=false"]) == 0
    assert "query frames" not in capsys.readouterr().out  # no CTC head: nothing reads them
