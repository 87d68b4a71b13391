"""model.llm.rotary_dtype end to end: the trainer's model computes with the rounded rotary frequencies after
DeepSpeed's engine init and its updates (ZeRO 2 and 3, bf16), a resume rebuilds them (and refuses dropping the key),
an export records them in llmasr_model.yaml and logs the line a plain transformers user runs, and `llmasr decode`
(load_exported) applies them."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import yaml

from llmasr.config_io import ConfigError, to_dict
from llmasr.export.export import export_model
from llmasr.models.exported import MODEL_FILE, ExportedModelError, load_exported
from llmasr.models.llm import base_lm
from llmasr.models.rotary import rotary_buffers
from llmasr.recipe import load_recipe
from llmasr.testing.run_dirs import model_section, train_run
from llmasr.train.trainer import Run, train


def rounded_frequencies(llm) -> torch.Tensor:
    rotary = base_lm(llm).model.rotary_emb
    return rotary.compute_default_rope_parameters(rotary.config)[0].bfloat16().float()


def assert_rounded(llm, named: dict | None = None) -> None:
    want = rounded_frequencies(llm)
    found = {f"{p}.{n}": getattr(m, n) for p, m, n in rotary_buffers(llm)}
    assert found
    for name, buf in found.items():
        got = buf if named is None else named[name]
        assert got.dtype == torch.float32 and torch.equal(got.cpu(), want), name


@pytest.fixture(scope="module")
def rotary_section(base_dirs):
    section = model_section(*base_dirs)
    section["llm"]["rotary_dtype"] = "bfloat16"
    return section


@pytest.mark.parametrize("preset,precision", [("zero2", "bf16"), ("zero3", "bf16")])
def test_the_trainers_model_keeps_them_through_the_engine_and_its_updates(
    rotary_section, train_corpus, tmp_path, preset, precision
):
    run = train_run(tmp_path / "run", rotary_section, train_corpus, preset=preset, updates=2, precision=precision)
    llm_names = {k.removeprefix("llm."): v for k, v in run.trained.items() if k.startswith("llm.")}
    assert_rounded(run.reference_model().llm, llm_names)  # the engine's own buffers, as they were after training


def test_a_resume_rebuilds_them_and_refuses_dropping_the_key(rotary_section, train_corpus, tmp_path):
    first = train_run(tmp_path / "run", rotary_section, train_corpus, preset="zero2", updates=1)
    again = to_dict(first.recipe)
    again["train"]["max_updates"] = 2
    run = Run(load_recipe(data=again), "zero2", resume="latest")
    try:
        assert [h["update"] for h in run.fit()["history"]] == [2]
        assert_rounded(run.engine.module.llm)
    finally:
        run.close()
    del again["model"]["llm"]["rotary_dtype"]
    with pytest.raises(ConfigError, match=r"model\.llm\.rotary_dtype"):
        train(load_recipe(data=again), "zero2", resume="latest")


def test_export_records_them_logs_the_plain_transformers_line_and_decode_applies_them(
    rotary_section, train_corpus, tmp_path, caplog
):
    from transformers import AutoModelForCausalLM

    run = train_run(tmp_path / "run", rotary_section, train_corpus, preset="zero2", updates=1)
    with caplog.at_level(logging.INFO, logger="llmasr.export.export"):
        out = export_model(run.run_dir, tmp_path / "model", dtype="fp32")
    desc = yaml.safe_load((out / MODEL_FILE).read_text(encoding="utf-8"))
    assert desc["llm"]["rotary_dtype"] == "bfloat16"
    model = load_exported(out)  # what `llmasr decode --model` builds
    assert_rounded(model.llm)
    said = [r.getMessage() for r in caplog.records if "rotary" in r.getMessage()]
    assert len(said) == 1 and "llmasr decode" in said[0]
    line = re.search(r"AutoModelForCausalLM\): (.*)$", said[0]).group(1)
    plain = AutoModelForCausalLM.from_pretrained(str(out / "llm")).eval()
    embeds = torch.randn(1, 200, plain.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = plain(inputs_embeds=embeds).logits
        exec(line, {"torch": torch, "model": plain})
        after, ours = plain(inputs_embeds=embeds).logits, model.llm(inputs_embeds=embeds).logits
    assert not torch.equal(before, ours) and torch.equal(after, ours)
    desc["llm"]["rotary_dtype"] = "bf16"
    (out / MODEL_FILE).write_text(yaml.safe_dump(desc), encoding="utf-8")
    with pytest.raises(ExportedModelError, match=r"llmasr_model\.yaml: llm\.rotary_dtype must be one of float32, "
                       r"bfloat16, float16 or null; got 'bf16'"):  # fmt: skip
        load_exported(out)
