"""`llmasr convert funasr SRC OUT` writes OUT/finetune_lora_zero2.yaml: a recipe whose model section is the model
OUT describes (any Nano's sizes, not the release's), its files relative to OUT, with the fine-tuning choices of the
one template (llmasr/convert/nano_finetune.yaml) that recipes/fun-asr-nano_lora_zero2.yaml states too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmasr.cli import main as cli_main
from llmasr.config_io import ConfigError, to_dict
from llmasr.convert.nano_recipe import RECIPE_NAME, TEMPLATE
from llmasr.data.frontend import write_kaldi_cmvn
from llmasr.models.exported import exported_model_config
from llmasr.models.start_from import start_differences
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import write_tiny_corpus
from llmasr.testing.tiny_nano import CTC_VOCAB, write_nano_dir

SHIPPED = Path(__file__).resolve().parents[2] / "recipes" / "fun-asr-nano_lora_zero2.yaml"
# What the template sets over the folder's model section (the rest of each part is the folder's)
CHOICES = ("encoder.freeze", "adaptor.freeze", "llm.dtype", "llm.freeze", "llm.lora", "llm.gradient_checkpointing")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny Nano (sizes unlike the release's, an am.mvn beside config.yaml) converted by the command; a manifest;
    the command's output."""
    root = tmp_path_factory.mktemp("nano_recipe")
    src = write_nano_dir(root / "src")
    write_kaldi_cmvn(src / "am.mvn", np.full(560, -3.0, np.float32), np.full(560, 0.5, np.float32))  # 80 mels x 7
    conf = json.loads((src / "configuration.json").read_text(encoding="utf-8"))
    conf["file_path_metas"]["frontend_conf"] = {"cmvn_file": "am.mvn"}  # as the release names it
    (src / "configuration.json").write_text(json.dumps(conf), encoding="utf-8")
    out = root / "out"
    capture = pytest.MonkeyPatch()  # (capsys is function-scoped: the command's stdout read through a file)
    printed = root / "stdout.txt"
    with printed.open("w") as f, capture.context() as m:
        m.setattr("sys.stdout", f)
        assert cli_main(["convert", "funasr", str(src), str(out)]) == 0
    return out, write_tiny_corpus(root / "corpus", n=2), printed.read_text()


def check(capsys, recipe: Path, *overrides: str) -> tuple[int, str]:
    code = cli_main(["check", "--config", str(recipe), "--deepspeed", "zero2", *overrides])
    return code, capsys.readouterr().err


def test_the_recipe_is_written_and_named_by_the_command(converted):
    out, _, printed = converted
    assert (out / RECIPE_NAME).is_file()
    assert f"llmasr train --config {out / RECIPE_NAME}" in printed


def test_the_written_recipe_passes_check_wherever_the_folder_is_moved(converted, tmp_path, capsys, monkeypatch):
    """Its paths name OUT's files relative to OUT: a moved copy checked from another folder reads the copy's."""
    out, manifest, _ = converted
    moved = shutil.copytree(out, tmp_path / "elsewhere" / "nano")
    monkeypatch.chdir(tmp_path)
    data = [f"data.train=[{manifest}]", f"data.valid=[{manifest}]"]
    code, err = check(capsys, moved / RECIPE_NAME, *data, f"train.output_dir={tmp_path / 'run'}")
    assert code == 0, err
    model = load_recipe(moved / RECIPE_NAME, data).model
    assert Path(model.encoder.init_from) == moved / "encoder.safetensors" and Path(model.llm.path) == moved / "llm"
    assert Path(model.ctc.vocab) == moved / "ctc_vocab.tiktoken"
    assert Path(model.encoder.frontend["cmvn_file"]) == moved / "am.mvn"
    assert start_differences(model) == []  # the start-folder check: the folder's features and prompt


def test_the_model_section_is_the_folders_with_the_templates_choices(converted):
    out, manifest, _ = converted
    mine = to_dict(load_recipe(out / RECIPE_NAME, [f"data.train=[{manifest}]"]).model)
    folder = to_dict(exported_model_config(out))  # what decode and the start-folder check read of OUT
    assert mine["encoder"]["conf"]["num_blocks"] == 2 and mine["ctc"]["vocab_size"] == CTC_VOCAB  # the tiny Nano's
    choices = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["model"]
    for dotted in CHOICES:
        part, key = dotted.split(".")
        got, wanted = mine[part].pop(key), choices[part][key]
        if isinstance(wanted, dict):  # (the typed section adds the keys the template leaves at their defaults)
            got = {k: got[k] for k in wanted}
        assert got == wanted, dotted
        folder[part].pop(key)
    assert mine == folder


def test_a_folder_without_the_ctc_branch_gets_a_recipe_without_a_ctc_head(tmp_path, capsys):
    src = write_nano_dir(tmp_path / "src")
    (src / "multilingual.tiktoken").unlink()  # the branch is left out without its vocabulary
    assert cli_main(["convert", "funasr", str(src), str(tmp_path / "out")]) == 0
    written = yaml.safe_load((tmp_path / "out" / RECIPE_NAME).read_text(encoding="utf-8"))
    assert "ctc" not in written["model"]
    manifest = write_tiny_corpus(tmp_path / "corpus", n=2)
    code, err = check(capsys, tmp_path / "out" / RECIPE_NAME, f"data.train=[{manifest}]", f"data.valid=[{manifest}]",
                      f"train.output_dir={tmp_path / 'run'}")  # fmt: skip
    assert code == 0, err


def test_without_manifests_check_says_how_to_give_them(converted, tmp_path, capsys):
    out, manifest, _ = converted
    code, err = check(capsys, out / RECIPE_NAME, f"train.output_dir={tmp_path / 'run'}")
    assert code == 2
    assert "data.train: no training manifest given" in err and "data.train=[data/train.jsonl]" in err
    assert f"({out / RECIPE_NAME} sets none)" in err
    code, err = check(capsys, out / RECIPE_NAME, f"data.train=[{manifest}]", f"train.output_dir={tmp_path / 'run'}")
    assert code == 2 and "data.valid=[data/dev.jsonl]" in err


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "lora":
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_shipped_nano_recipe_states_the_templates_choices():
    """recipes/fun-asr-nano_lora_zero2.yaml (the release's sizes written out) and the recipe convert writes fine-tune
    alike: every value the template sets is the shipped recipe's."""
    shipped = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    template = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    shipped["model"]["adaptor"].setdefault("freeze", False)  # (the default: the shipped recipe leaves it unset)
    for dotted, value in leaves(template):
        node = shipped
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


def test_the_folder_and_its_recipe_carry_the_rotary_frequencies_funasr_trained_with(converted):
    """The tiny Nano's llm_conf.llm_dtype is bf16, as the release's: FunASR rounded its rotary frequencies."""
    out, manifest, _ = converted
    desc = yaml.safe_load((out / "llmasr_model.yaml").read_text(encoding="utf-8"))
    assert desc["llm"]["rotary_dtype"] == "bfloat16"
    assert load_recipe(out / RECIPE_NAME, [f"data.train=[{manifest}]"]).model.llm.rotary_dtype == "bfloat16"
    shipped = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    assert shipped["model"]["llm"]["rotary_dtype"] == "bfloat16"  # the release's llm_dtype


def test_a_recipe_that_reads_the_folders_llm_without_its_rotary_dtype_is_refused(converted):
    from llmasr.models.start_from import check_start_folder

    out, manifest, _ = converted
    model = load_recipe(out / RECIPE_NAME, [f"data.train=[{manifest}]", "model.llm.rotary_dtype=null"]).model
    with pytest.raises(ConfigError, match=r"model\.llm\.rotary_dtype: the recipe has None, .* has 'bfloat16'"):
        check_start_folder(model)
    model.differs_from_start = ["model.llm.rotary_dtype"]
    assert [w for w in check_start_folder(model) if w.startswith("model.llm.rotary_dtype: None here")]
