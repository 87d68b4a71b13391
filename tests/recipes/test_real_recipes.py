"""Every recipe in recipes/ stays loadable: typed, validated, and buildable on tiny stand-ins of its architecture.

The stand-ins are written in the real on-disk formats (FunASR directory, HF Qwen2/Qwen3, HF Whisper with 128
mel bins), so the same loaders that read Paraformer-large or Qwen2.5-7B run here; only the sizes differ.
"""

import re
from pathlib import Path

import pytest
import torch

import llmasr
from llmasr.config_io import load_yaml
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_funasr import tiny_sanm_conf, tiny_sensevoice_conf, tiny_streaming_conf, write_funasr_dir
from llmasr.testing.tiny_llm import write_tiny_llm_dir
from llmasr.testing.tiny_recipe import random_batch
from llmasr.testing.tiny_whisper import tiny_conformer_conf, write_tiny_whisper_dir

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
REAL = sorted(p.name for p in RECIPES.glob("*.yaml") if p.name != "demo.yaml")
HOTWORDS = [n for n in REAL if ((load_yaml(RECIPES / n).get("data") or {}).get("hotwords") or {}).get("enable")]


@pytest.mark.parametrize("name", [n for n in REAL if "qwen3" in n])
def test_qwen3_recipes_render_its_non_thinking_turn(name):
    """A Qwen3 chat LLM answers without reasoning after an empty <think></think> block, which its template writes
    only with enable_thinking false (README, the prompt): without it the empty block was part of every target."""
    prompt = load_yaml(RECIPES / name)["model"]["prompt"]
    assert prompt.get("template_kwargs") == {"enable_thinking": False}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    from llmasr.testing.tiny_corpus import write_tiny_corpus

    root = tmp_path_factory.mktemp("stand_ins")
    conf = tiny_sanm_conf()
    conf["input_size"] = 560
    fe = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 1, "lfr_n": 1}
    conformer = write_funasr_dir(
        root / "conformer", encoder_type="ConformerEncoder", encoder_conf=tiny_conformer_conf(80), frontend_conf=fe
    )
    state = torch.load(conformer / "model.pt", weights_only=True)
    state["ctc.ctc_lo.weight"] = torch.randn(16, 32)  # tokens.json of the stand-in has 16 entries
    state["ctc.ctc_lo.bias"] = torch.zeros(16)
    torch.save(state, conformer / "model.pt")
    streaming, sensevoice = tiny_streaming_conf(), tiny_sensevoice_conf()
    return {
        "paraformer": write_funasr_dir(root / "paraformer", encoder_conf=conf),
        "seaco": write_funasr_dir(root / "seaco", model="SeacoParaformer", encoder_conf=conf),
        "streaming": write_funasr_dir(root / "streaming", model="ParaformerStreaming", encoder_conf=streaming),
        "sensevoice": write_funasr_dir(root / "sensevoice", model="SenseVoiceSmall", encoder_conf=sensevoice),
        "conformer": conformer,
        "whisper": write_tiny_whisper_dir(root / "whisper", n_mels=128),
        "qwen2": write_tiny_llm_dir(root / "qwen2"),
        "qwen3": write_tiny_llm_dir(root / "qwen3", arch="qwen3"),
        "nano": _converted_nano(root),
        "train": write_tiny_corpus(root / "train", n=24),
        "dev": write_tiny_corpus(root / "dev", n=4, seed=1),
        "root": root,
    }


def _converted_nano(root: Path) -> Path:
    """A tiny Fun-ASR-Nano directory (FunASR layout) converted by `llmasr convert funasr`, as the recipe expects."""
    from llmasr.convert.funasr_nano import convert_funasr
    from llmasr.testing.tiny_nano import write_nano_dir

    return convert_funasr(write_nano_dir(root / "nano_src"), root / "nano")


def nano_overrides(out: Path) -> list[str]:
    """The converted stand-in's files, and its tiny sizes (its llmasr_model.yaml) in place of Nano's."""
    desc = load_yaml(out / "llmasr_model.yaml")
    conf = desc["encoder"]["conf"]
    sizes = [f"model.encoder.conf.{k}={conf[k]}" for k in ("output_size", "attention_heads", "linear_units",
                                                            "num_blocks", "tp_blocks", "kernel_size")]  # fmt: skip
    files = [
        f"model.encoder.init_from={out / 'encoder.safetensors'}",
        f"model.adaptor.init_from={out / 'adaptor.safetensors'}",
        f"model.llm.path={out / 'llm'}",
        f"model.adaptor.ffn_dim={desc['adaptor']['conf']['ffn_dim']}",
        f"model.ctc.vocab={out / desc['ctc']['vocab']}",
        f"model.ctc.vocab_size={desc['ctc']['vocab_size']}",
        f"model.ctc.init_from={out / desc['ctc']['file']}",
        *(f"model.ctc.decoder.{k}={v}" for k, v in desc["ctc"]["decoder"].items()),
    ]
    return files + sizes


def stand_in_overrides(name: str, s: dict) -> list[str]:
    if "fun-asr-nano" in name:
        return nano_overrides(s["nano"])
    families = ("streaming", "sensevoice", "seaco", "paraformer", "whisper", "conformer")  # the first the name holds
    enc = next(f for f in families if f in name)
    llm = "qwen3" if "qwen3" in name else "qwen2"
    # a CTC head from the encoder's directory (model.ctc.from_encoder) follows model.encoder.path
    return [f"model.encoder.path={s[enc]}", f"model.llm.path={s[llm]}"]


def test_there_are_recipes_for_each_encoder_family():
    joined = " ".join(REAL)
    assert "paraformer" in joined and "conformer" in joined and "whisper" in joined
    assert "paraformer-streaming" in joined and "sensevoice" in joined and "seaco-paraformer" in joined
    assert HOTWORDS, "a recipe trains hotwords (data.hotwords.enable)"
    assert any("offload" in n for n in REAL)


@pytest.mark.parametrize("name", REAL)
def test_recipe_header_names_its_launch_command_and_hardware(name):
    head = (RECIPES / name).read_text().split("\nmodel:")[0]
    assert "deepspeed --num_gpus" in head and f"--config recipes/{name}" in head
    assert "Hardware:" in head and "--deepspeed ds_configs/" in head


@pytest.mark.parametrize("name", REAL)
def test_recipe_builds_on_tiny_stand_ins(name, stand_ins):
    recipe = load_recipe(RECIPES / name, stand_in_overrides(name, stand_ins))
    # The model section is what real weights would fill; the sizes come from the stand-ins' own files.
    model = llmasr.build_model(recipe.model)
    model.train()
    out = model(random_batch(model, ["one two", "three"], frames=[64, 80]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert "adaptor" in trainable and "llm" in trainable


@pytest.mark.parametrize("name", REAL)
def test_llmasr_check_resolves_recipe_with_its_preset(name, stand_ins, capsys):
    """The recipe's own launch line (preset, world size) resolves end to end with `llmasr check`."""
    from llmasr.commands.check import main

    header = (RECIPES / name).read_text().split("\nmodel:")[0]
    preset = re.search(r"--deepspeed (ds_configs/\S+\.json)", header).group(1)
    world = re.search(r"--world-size (\d+)", header).group(1)
    out_dir = stand_ins["root"] / f"check_{name}"
    argv = ["--config", str(RECIPES / name), "--deepspeed", str(RECIPES.parent / preset), "--world-size", world,
            "--out", str(out_dir), *stand_in_overrides(name, stand_ins),
            f"data.train=[{stand_ins['train']}]", f"data.valid=[{stand_ins['dev']}]", "data.num_workers=0",
            f"train.output_dir={out_dir}"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = capsys.readouterr().out
    assert "train_batch_size" in report and "updates" in report
    assert (out_dir / "lr_schedule.csv").is_file() and (out_dir / "lr_schedule.png").is_file()
    if (load_yaml(RECIPES / name)["model"].get("ctc") or {}).get("from_encoder"):  # the encoder directory's own head
        enc = stand_ins["sensevoice" if "sensevoice" in name else "conformer"].resolve()
        vocab = enc / ("chn_jpn_yue_eng_ko_spectok.bpe.model" if "sensevoice" in name else "tokens.json")
        blank = "<unk>" if "sensevoice" in name else "<blank>"
        assert f"  ctc_head: {enc / 'model.pt'} (ctc.*) over {vocab}, blank '{blank}'\n" in report, report


def test_fun_asr_nano_recipe_starts_from_the_converted_model(stand_ins):
    """The recipe's model keys rebuild what `llmasr convert funasr` wrote: same frontend, prompt and greedy ids
    (fresh LoRA changes nothing yet)."""
    from llmasr.models.exported import load_exported

    out = stand_ins["nano"]
    overrides = [*nano_overrides(out), "model.llm.dtype=float32"]
    model = llmasr.build_model(load_recipe(RECIPES / "fun-asr-nano_lora_zero2.yaml", overrides).model).eval()
    ref = load_exported(out)
    assert model.frontend == ref.frontend
    assert model.prompt.encode(None) == ref.prompt.encode(None)
    assert model.prompt.encode(None, hotwords=["你好", "world"]) == ref.prompt.encode(None, hotwords=["你好", "world"])
    batch = random_batch(ref, ["a", "b"], frames=[30, 17])
    assert model.generate_ids(batch, max_new_tokens=6) == ref.generate_ids(batch, max_new_tokens=6)
    enc, enc_lens, _, _ = ref.encode_audio(batch.feats, batch.feat_lens)  # and Nano's CTC branch, as converted
    assert torch.equal(model.ctc_head(enc, enc_lens), ref.ctc_head(enc, enc_lens))


@pytest.mark.parametrize("name", HOTWORDS)
def test_hotword_recipe_trains_through_its_data_path(name, stand_ins, tmp_path):
    """A real training update on the stand-ins through the recipe's own data path: its hotword section draws the
    lists, its prompt renders them (token cap included), and train.log counts them."""
    from llmasr.train.progress import parse_log_line
    from llmasr.train.trainer import train

    overrides = [*stand_in_overrides(name, stand_ins), f"data.train=[{stand_ins['train']}]",
                 f"data.valid=[{stand_ins['dev']}]", "data.num_workers=0", "data.pin_memory=false",
                 "data.batching.max_seconds=4", "data.valid_max_utts=2", "data.hotwords.empty_prob=0",
                 "train.precision=fp32", "train.max_updates=1", "train.grad_accum=1", "train.log_every=1",
                 "model.encoder.gradient_checkpointing=false", "model.llm.gradient_checkpointing=false",
                 f"train.output_dir={tmp_path / 'run'}"]  # fmt: skip
    recipe = load_recipe(RECIPES / name, overrides)
    result = train(recipe, "zero0")
    assert len(result["history"]) == 1 and torch.isfinite(torch.tensor(result["history"][0]["loss"]))
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"hotwords: lists drawn (source {recipe.data.hotwords.source}, unit {recipe.data.hotwords.unit}" in log
    row = next(parse_log_line(line) for line in log.splitlines() if " train update=" in line)
    assert row["hw_lists"] == result["history"][0]["n_utts"] > 0  # every utterance had a list (empty_prob 0)
    # its CTC head over the LLM's tokens trains, so decoding is CTC-guided and boosts the lists by default
    assert recipe.model.ctc.vocab == "llm" and row["ctc_loss"] > 0
    assert recipe.decode.boost(recipe.decode.guidance(True, True), True) > 0


@pytest.mark.parametrize("name", [n for n in REAL if "conformer" in n])
def test_conformer_recipe_trains_in_its_own_precision_under_its_own_preset(name, stand_ins, tmp_path):
    """A real update of each Conformer recipe as shipped: bf16 under its header's ZeRO-3 preset, the encoder trained
    (its CTC head too) or frozen. DeepSpeed casts the parameters to bf16 and keeps the buffers, and the convolution
    module's BatchNorm refused its bf16 weight beside float32 running statistics at the first batch of either."""
    from llmasr.train.trainer import train

    header = (RECIPES / name).read_text().split("\nmodel:")[0]
    preset = RECIPES.parent / re.search(r"--deepspeed (ds_configs/\S+\.json)", header).group(1)
    overrides = [*stand_in_overrides(name, stand_ins), f"data.train=[{stand_ins['train']}]",
                 f"data.valid=[{stand_ins['dev']}]", "data.num_workers=0", "data.pin_memory=false",
                 "data.batching.max_seconds=4", "data.valid_max_utts=2", "train.max_updates=1", "train.grad_accum=1",
                 f"train.output_dir={tmp_path / 'run'}"]  # fmt: skip
    recipe = load_recipe(RECIPES / name, overrides)
    assert recipe.train.precision == "bf16" and "zero3" in preset.name
    result = train(recipe, str(preset))
    row = result["history"][0]
    assert torch.isfinite(torch.tensor(row["loss"]))
    assert (row.get("ctc_loss", 0) > 0) == (recipe.model.ctc.weight > 0)


def as_nano_chatml(manifest: Path, dest: Path) -> Path:
    """The FunASR jsonl `manifest` written as Fun-ASR-Nano's ChatML lines (what its scp2jsonl writes)."""
    import json

    lines = []
    for rec in map(json.loads, manifest.read_text().splitlines()):
        user = f"语音转写：<|startofspeech|>!{manifest.parent / rec['source']}<|endofspeech|>"
        messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": user},
                    {"role": "assistant", "content": rec["target"]}]  # fmt: skip
        lines.append(json.dumps({"messages": messages, "speech_length": int((rec["duration"] * 1000 - 25) // 10 + 1)}))
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def test_fun_asr_nano_recipe_trains_the_converted_ctc_branch(stand_ins, tmp_path):
    """A real training update from the converted Nano on data in Nano's own ChatML jsonl: its CTC branch reads the
    targets through the tiktoken vocabulary and trains beside LoRA and the adaptor (the encoder stays frozen)."""
    from llmasr.models.exported import load_exported
    from llmasr.train.progress import parse_log_line
    from llmasr.train.trainer import train

    out = stand_ins["nano"]
    chatml = as_nano_chatml(Path(stand_ins["train"]), tmp_path / "train_nano.jsonl")
    overrides = [*nano_overrides(out), f"data.train=[{chatml}]", f"data.valid=[{stand_ins['dev']}]",
                 "data.num_workers=0", "data.pin_memory=false", "data.batching.max_seconds=4",
                 "data.valid_max_utts=2", "train.precision=fp32", "model.llm.dtype=float32", "train.max_updates=1",
                 "train.grad_accum=1", "train.log_every=1", "model.encoder.gradient_checkpointing=false",
                 "model.llm.gradient_checkpointing=false", f"train.output_dir={tmp_path / 'run'}"]  # fmt: skip
    recipe = load_recipe(RECIPES / "fun-asr-nano_lora_zero2.yaml", overrides)
    result = train(recipe, "zero0")
    log = (tmp_path / "run" / "train.log").read_text()
    row = next(parse_log_line(line) for line in log.splitlines() if " train update=" in line)
    assert row["ctc_loss"] > 0 and torch.isfinite(torch.tensor(result["history"][0]["loss"]))
    assert "train data: 24 items" in log and "skipped none" in log  # every ChatML line read, durations included
    groups = {m[0]: int(m[1].replace(",", "")) for m in re.findall(r"^(ctc|ctc_no_decay) +\d+ +([\d,]+) ", log, re.M)}
    head = sum(p.numel() for p in load_exported(out).ctc_head.parameters())  # decoder layers and projection
    assert sum(groups.values()) == head and len(groups) == 2
