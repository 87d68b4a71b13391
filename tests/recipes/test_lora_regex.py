"""A regex lora.target_modules through a run's whole life, on the tiny model and corpus: LoRA on the last LLM
layer's q_proj and v_proj alone (and on one SAN-M block's attention), trained, resumed, exported merged (plain
transformers loads it, its next-round recipe keeps the regex) and as a peft adapter that keeps it, and decoded."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from llmasr.export.decode import decode_manifest, load_decode_model
from llmasr.export.export import export_model, load_checkpoint_model
from llmasr.export.finetune_recipe import FINETUNE_NAME
from llmasr.models.builder import build_model
from llmasr.models.exported import load_exported
from llmasr.recipe import load_recipe
from llmasr.run_dir import checkpoints_dir, latest, read_meta
from llmasr.testing.run_dirs import TARGETS, TEXTS, model_section, train_run, write_corpus
from llmasr.testing.tiny_recipe import random_batch, speech_logits
from llmasr.train.trainer import train

LLM_REGEX = r".*layers\.1\.self_attn\.(q_proj|v_proj)"
ENCODER_REGEX = r"encoders\.0\.self_attn\.linear_q_k_v"
LLM_LORA = {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}


def lora_layers(module) -> set[str]:
    """The paths of the layers carrying LoRA in `module` (the base model's names under a peft model)."""
    from peft.tuners.lora import LoraLayer

    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return {n for n, m in base.named_modules() if isinstance(m, LoraLayer)}


@pytest.fixture(scope="module")
def regex_run(tiny_llm_dir, tiny_encoder_dir, tmp_path_factory):
    """(TrainedRun of 2 ZeRO-2 updates, the manifest it trained on)."""
    root = tmp_path_factory.mktemp("lora_regex")
    corpus = write_corpus(root / "train", TEXTS * 2, name="train")
    section = model_section(tiny_llm_dir, tiny_encoder_dir)
    section["llm"]["lora"]["target_modules"] = LLM_REGEX
    section["encoder"]["lora"]["target_modules"] = ENCODER_REGEX
    run = train_run(root / "run", section, corpus, preset="zero2", updates=2, save_every_updates=1, keep_last=0)
    return run, corpus


def test_a_regex_trains_lora_on_the_layers_it_matches_alone(regex_run):
    run, _ = regex_run
    model = run.reference_model()
    assert lora_layers(model.llm) == LLM_LORA
    assert lora_layers(model.encoder) == {"encoders.0.self_attn.linear_q_k_v"}
    trained = read_meta(checkpoints_dir(run.run_dir) / "update_00000002").trainable
    llm_trained = {n for n in trained if n.startswith("llm.")}
    assert llm_trained and all(".layers.1.self_attn." in n and "lora_" in n for n in llm_trained)
    assert {n.split(".lora_")[0].removeprefix("llm.base_model.model.") for n in llm_trained} == LLM_LORA


def test_a_regex_run_resumes(regex_run, tmp_path):
    import shutil

    run, _ = regex_run
    run_dir = shutil.copytree(run.run_dir, tmp_path / "run")
    recipe = load_recipe(run_dir / "recipe.yaml", [f"train.output_dir={run_dir}", "train.max_updates=3"])
    assert recipe.model.llm.lora.target_modules == LLM_REGEX  # the run folder's recipe keeps the regex
    result = train(recipe, "zero2", resume="latest")
    assert [row["update"] for row in result["history"]] == [3]
    assert latest(checkpoints_dir(run_dir)) == "update_00000003"
    model, _ = load_checkpoint_model(run_dir)
    assert lora_layers(model.llm) == LLM_LORA


def test_a_regex_run_exports_merged_for_plain_transformers_and_decodes(regex_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run, corpus = regex_run
    out = export_model(run.run_dir, tmp_path / "model", dtype="fp32")
    trained = run.reference_model()
    plain = AutoModelForCausalLM.from_pretrained(str(out / "llm")).eval()
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, trained.llm(input_ids=ids).logits, rtol=0, atol=1e-5)
    exported = load_exported(out)
    batch = random_batch(trained, TARGETS, seed=2)
    torch.testing.assert_close(speech_logits(exported, batch), speech_logits(trained, batch), rtol=0, atol=1e-5)

    # the next round (OUT/finetune.yaml) puts fresh LoRA on the same layers of the merged LLM
    again = load_recipe(out / FINETUNE_NAME, [f"data.train=[{corpus}]"])
    assert again.model.llm.lora.target_modules == LLM_REGEX
    assert lora_layers(build_model(again.model).llm) == LLM_LORA

    model, cfg, opts = load_decode_model(model_dir=out)
    cfg, opts = dataclasses.replace(cfg, max_new_tokens=3), dataclasses.replace(opts, num_workers=0)
    summary = decode_manifest(model, corpus, tmp_path / "decoded", cfg, opts)
    assert summary["utterances"] == len(TEXTS) * 2
    rows = (tmp_path / "decoded" / "results.jsonl").read_text().splitlines()
    assert len(rows) == len(TEXTS) * 2


def test_a_regex_run_exports_an_adapter_that_keeps_the_regex(regex_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _ = regex_run
    out = export_model(run.run_dir, tmp_path / "adapter", adapter_only=True)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == LLM_REGEX
    base = AutoModelForCausalLM.from_pretrained(run.recipe.model.llm.path)
    llm = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    assert lora_layers(llm) == LLM_LORA
    trained = run.reference_model()
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    with torch.no_grad():
        torch.testing.assert_close(llm(ids).logits, trained.llm(input_ids=ids).logits, rtol=0, atol=1e-5)
