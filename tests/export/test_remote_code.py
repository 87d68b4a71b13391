"""trust_remote_code is on only when the user says so: a recipe key they wrote, or --trust-remote-code. A run
directory's recipe.yaml or an export's llmasr_model.yaml cannot switch code execution on by themselves."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import transformers.dynamic_module_utils
import yaml

from llmasr.commands import decode, export
from llmasr.models.exported import ExportedModelError, load_exported
from llmasr.testing.run_dirs import model_section, train_run, write_corpus

CUSTOM_CODE = """
import pathlib

pathlib.Path({marker!r}).write_text("ran")

from transformers import Qwen2Config, Qwen2ForCausalLM


class CustomConfig(Qwen2Config):
    pass


class CustomLM(Qwen2ForCausalLM):
    config_class = CustomConfig
"""


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """transformers copies remote code into its modules cache before importing it: keep that under tmp_path."""
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))


def set_model_file(out, **llm):
    desc = yaml.safe_load((out / "llmasr_model.yaml").read_text())
    desc["llm"].update(llm)
    (out / "llmasr_model.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))


def test_a_run_recipe_with_remote_code_exports_only_with_the_flag(base_dirs, train_corpus, tmp_path, capsys, caplog):
    llm, enc = base_dirs
    section = model_section(llm, enc, encoder_lora=False, ctc=False)
    section["llm"]["trust_remote_code"] = True
    run = train_run(tmp_path / "run", section, train_corpus).run_dir
    out = tmp_path / "out"
    assert export.main(["--checkpoint", str(run), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'recipe.yaml'}: model.llm.trust_remote_code is true" in err and "--trust-remote-code" in err
    assert not out.exists()
    with caplog.at_level(logging.WARNING):
        assert export.main(["--checkpoint", str(run), "--output", str(out), "--trust-remote-code"]) == 0
    assert f"trust_remote_code is on (model.llm.trust_remote_code): transformers may import and " \
        f"run the Python files in {llm}" in caplog.text  # fmt: skip
    assert yaml.safe_load((out / "llmasr_model.yaml").read_text())["llm"]["trust_remote_code"] is True
    with pytest.raises(ExportedModelError, match=r"llmasr_model.yaml: llm.trust_remote_code is true"):
        load_exported(out)
    load_exported(out, trust_remote_code=True)


def test_an_export_cannot_switch_remote_code_on_by_itself(runs, tmp_path, capsys, modules_cache):
    out = export.export_model(runs[0], tmp_path / "model")
    marker = tmp_path / "code_ran"
    (out / "llm" / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((out / "llm" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomLM"}
    (out / "llm" / "config.json").write_text(json.dumps(config))

    load_exported(out)  # auto_map alone: transformers keeps to its own Qwen2 code
    assert not marker.exists()

    set_model_file(out, trust_remote_code=True)
    corpus = write_corpus(tmp_path / "data", ["one two"])
    argv = ["--model", str(out), "--data", str(corpus), "--output", str(tmp_path / "hyp"), "--num-workers", "0"]
    assert decode.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out / 'llmasr_model.yaml'}: llm.trust_remote_code is true" in err and str(out / "llm") in err
    assert not marker.exists() and not (tmp_path / "hyp").exists()

    assert decode.main([*argv, "--trust-remote-code"]) == 0  # the user's own decision
    assert marker.read_text() == "ran"
    assert type(load_exported(out, trust_remote_code=True).llm).__name__ == "CustomLM"
