"""`llmasr export` writes OUT/finetune.yaml: the next round of training from the exported model, with the run's own
choices. Its model is the export's (the encoder built from the description, every branch's weights the folder's,
the merged LLM), so a model built from it computes what the export computes; `llmasr check` passes it, from a moved
folder too; the run's choices (what trains, LoRA, precision, optimiser, decoding) are kept; manifests are given."""

from __future__ import annotations

import shutil

import torch
import yaml

from llmasr.config_io import to_dict
from llmasr.export.finetune_recipe import FINETUNE_NAME
from llmasr.export.trained_model import run_recipe
from llmasr.models.builder import build_model
from llmasr.models.exported import load_exported
from llmasr.recipe import load_recipe
from llmasr.testing.run_dirs import TARGETS
from llmasr.testing.tiny_recipe import random_batch, speech_logits


def test_the_next_round_starts_from_the_exported_model_with_the_run_s_choices(
    exported_dir, runs, train_corpus, tmp_path, capsys
):
    from llmasr.commands.check import main as check

    moved = shutil.copytree(exported_dir, tmp_path / "moved")  # paths inside the folder are relative to it
    path = moved / FINETUNE_NAME
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert (
        written["model"]["encoder"]["init_from"] == "encoder.safetensors" and "path" not in written["model"]["encoder"]
    )
    assert written["model"]["llm"]["path"] == "llm" and written["model"]["ctc"]["init_from"] == "ctc_head.safetensors"
    assert "train" not in written["data"] and "valid" not in written["data"]
    recipe = load_recipe(path, [f"data.train=[{train_corpus}]"])
    run = run_recipe(runs[2])
    assert recipe.train.output_dir == f"{run.train.output_dir}_next"
    for part in ("encoder", "adaptor", "llm"):  # what trains, and how: the run's
        mine, theirs = getattr(recipe.model, part), getattr(run.model, part)
        assert mine.freeze == theirs.freeze, part
        assert to_dict(getattr(mine, "lora", None)) == to_dict(getattr(theirs, "lora", None)), part
    assert to_dict(recipe.optim) == to_dict(run.optim) and to_dict(recipe.decode) == to_dict(run.decode)
    assert recipe.model.llm.dtype == run.model.llm.dtype and recipe.model.ctc.weight == run.model.ctc.weight

    # what the export computes: fresh LoRA adds nothing before the first update
    model, exported = build_model(recipe.model).eval(), load_exported(moved).eval()
    batch = random_batch(exported, TARGETS, seed=3)
    torch.testing.assert_close(speech_logits(model, batch), speech_logits(exported, batch), rtol=0, atol=1e-5)

    out = tmp_path / "check"
    code = check(["--config", str(path), "--deepspeed", "zero2", f"data.train=[{train_corpus}]",
                  f"train.output_dir={tmp_path / 'next'}", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err


def test_an_adapter_only_export_carries_no_recipe_and_says_why(runs, tmp_path, caplog):
    """A saved adapter loads frozen (model.llm.adapter cannot take `lora`): the next round needs a merged export."""
    from llmasr.export.export import export_model

    caplog.set_level("INFO")
    out = export_model(runs[2], tmp_path / "adapter", adapter_only=True)
    assert not (out / FINETUNE_NAME).exists()
    assert "export without --adapter-only for a folder to train on from" in caplog.text


def test_the_command_offers_the_next_round_s_recipe_only_where_it_wrote_one(runs, tmp_path, capsys):
    """The closing line's `llmasr train --config OUT/finetune.yaml` names a file the export wrote, never one an
    --adapter-only export has not."""
    from llmasr.commands.export import main as export

    for flags, name in (([], "merged"), (["--adapter-only"], "adapter")):
        out = tmp_path / name
        assert export(["--checkpoint", str(runs[2]), "--output", str(out), *flags]) == 0
        said = capsys.readouterr().out
        assert f"llmasr decode --model {out}" in said
        assert (f"--config {out / FINETUNE_NAME}" in said) == (out / FINETUNE_NAME).is_file() == (not flags), said


def test_the_next_round_of_a_head_taken_from_the_encoder_reads_the_folder_s_head(base_dirs, train_corpus, tmp_path,
                                                                                  capsys):  # fmt: skip
    """A run whose CTC head came from its FunASR encoder (model.ctc.from_encoder, init_prefix "ctc.") exports that head
    as ctc_head.safetensors; finetune.yaml had kept the run's from_encoder and init_prefix, so `llmasr check` refused
    it (from_encoder with no encoder directory) and a prefix the folder's file does not have would read nothing."""
    from llmasr.commands.check import main as check
    from llmasr.export.export import export_model
    from llmasr.testing.run_dirs import model_section, train_run
    from llmasr.testing.tiny_funasr import copy_model_dir, rewrite_model_pt

    encoder = copy_model_dir(base_dirs[1], tmp_path / "encoder")
    g = torch.Generator().manual_seed(0)
    head = {"ctc.ctc_lo.weight": torch.randn(16, 32, generator=g), "ctc.ctc_lo.bias": torch.randn(16, generator=g)}
    rewrite_model_pt(encoder, lambda state: state.update(head))
    section = model_section(base_dirs[0], encoder)
    section["ctc"] = {"weight": 0.3, "from_encoder": True}
    run = train_run(tmp_path / "run", section, train_corpus).run_dir
    out = export_model(run, tmp_path / "model")
    written = yaml.safe_load((out / FINETUNE_NAME).read_text(encoding="utf-8"))["model"]["ctc"]
    assert written["init_from"] == "ctc_head.safetensors" and written.get("init_prefix", "") == ""
    assert not written.get("from_encoder")
    recipe = load_recipe(out / FINETUNE_NAME, [f"data.train=[{train_corpus}]"])
    model, exported = build_model(recipe.model).eval(), load_exported(out).eval()
    torch.testing.assert_close(model.ctc_head.state_dict(), exported.ctc_head.state_dict(), rtol=0, atol=0)
    code = check(["--config", str(out / FINETUNE_NAME), "--deepspeed", "zero0", f"data.train=[{train_corpus}]",
                  f"train.output_dir={tmp_path / 'next'}", "--out", str(tmp_path / "check")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
