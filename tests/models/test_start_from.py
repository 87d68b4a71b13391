"""A recipe that starts from a converted or exported folder is refused when what it shows the model (features, CMVN,
prompt, adaptor frame cap) differs from the folder's llmasr_model.yaml, unless model.differs_from_start allows it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmasr.config_io import ConfigError
from llmasr.data.frontend import write_kaldi_cmvn
from llmasr.models.start_from import check_start_folder
from llmasr.recipe import load_recipe
from tests.recipes.test_real_recipes import nano_overrides

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "fun-asr-nano_lora_zero2.yaml"
SHIFT, SCALE = np.full(56, -3.0, np.float32), np.full(56, 0.5, np.float32)  # 8 mels x lfr_m 7 (tiny Nano)


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """A tiny Fun-ASR-Nano whose configuration.json names an am.mvn, converted (its CMVN in llmasr_model.yaml)."""
    from llmasr.convert.funasr_nano import convert_funasr
    from llmasr.testing.tiny_corpus import write_tiny_corpus
    from llmasr.testing.tiny_nano import write_nano_dir

    root = tmp_path_factory.mktemp("start_from")
    src = write_nano_dir(
        root / "src",
        frontend_conf={
            "fs": 16000,
            "window": "hamming",
            "n_mels": 8,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
        },
    )
    write_kaldi_cmvn(src / "am.mvn", SHIFT, SCALE)
    conf = json.loads((src / "configuration.json").read_text(encoding="utf-8"))
    conf["file_path_metas"]["frontend_conf"] = {"cmvn_file": "am.mvn"}
    (src / "configuration.json").write_text(json.dumps(conf), encoding="utf-8")
    out = convert_funasr(src, root / "nano")
    corpus = write_tiny_corpus(root / "corpus", n=2)
    return out, [*nano_overrides(out), "model.encoder.frontend.n_mels=8", f"data.train=[{corpus}]",
                 f"data.valid=[{corpus}]"]  # fmt: skip


def test_recipe_without_the_converted_cmvn_is_refused(nano):
    out, overrides = nano
    with pytest.raises(ConfigError) as err:
        check_start_folder(load_recipe(RECIPE, overrides).model)  # the recipe as shipped: cmvn_file null
    msg = str(err.value)
    assert msg.startswith("model.encoder.frontend.cmvn_file: ")
    assert f"model.encoder.frontend.cmvn_file: the recipe has None, {out / 'llmasr_model.yaml'} has " in msg
    assert repr(str(out / "am.mvn")) in msg and "model.differs_from_start" in msg


def test_same_cmvn_numbers_elsewhere_and_the_folder_prompt_agree(nano, tmp_path):
    out, overrides = nano
    write_kaldi_cmvn(tmp_path / "copy.mvn", SHIFT, SCALE)
    for cmvn in (out / "am.mvn", tmp_path / "copy.mvn"):
        assert (
            check_start_folder(load_recipe(RECIPE, [*overrides, f"model.encoder.frontend.cmvn_file={cmvn}"]).model)
            == []
        )


def test_other_cmvn_numbers_are_refused(nano, tmp_path):
    out, overrides = nano
    write_kaldi_cmvn(tmp_path / "other.mvn", SHIFT, SCALE * 2)
    with pytest.raises(ConfigError, match=r"model.encoder.frontend.cmvn_file: the recipe has '.*other.mvn'"):
        check_start_folder(
            load_recipe(RECIPE, [*overrides, f"model.encoder.frontend.cmvn_file={tmp_path / 'other.mvn'}"]).model
        )


@pytest.mark.parametrize(
    ("key", "value", "theirs"),
    [
        ("model.prompt.system", "You are a pirate.", "'You are a helpful assistant.'"),
        ("model.prompt.audio_separator", "'\\n'", "''"),
        ("model.adaptor.audio_token_cap", "none", "'funasr_nano'"),
        ("model.encoder.frontend.lfr_n", "7", "6"),
    ],
)
def test_a_change_of_what_the_model_sees_is_refused_unless_allowed(nano, key, value, theirs):
    out, overrides = nano
    overrides = [*overrides, f"model.encoder.frontend.cmvn_file={out / 'am.mvn'}", f"{key}={value}"]
    with pytest.raises(ConfigError) as err:
        check_start_folder(load_recipe(RECIPE, overrides).model)
    assert f"\n  {key}: the recipe has " in str(err.value) and f"{out / 'llmasr_model.yaml'} has {theirs}" in str(
        err.value
    )
    notes = check_start_folder(load_recipe(RECIPE, [*overrides, f"model.differs_from_start=[{key}]"]).model)
    assert len(notes) == 1 and notes[0].startswith(f"{key}: ") and theirs in notes[0]
    assert "allowed by model.differs_from_start" in notes[0]


def test_a_chat_template_file_not_in_utf8_is_named(nano, tmp_path):
    """The recipe's template file is read to compare it with the folder's: one saved in a local code page reached
    the user as a raw UnicodeDecodeError naming no file."""
    from llmasr.models.chat_template import PromptError

    out, overrides = nano
    path = tmp_path / "chat.jinja"
    path.write_bytes("{#- 聊天模板 -#}{% for m in messages %}{{ m.content }}{% endfor %}".encode("gbk"))
    recipe = load_recipe(RECIPE, [*overrides, f"model.encoder.frontend.cmvn_file={out / 'am.mvn'}",
                                  f"model.prompt.chat_template={path}"])  # fmt: skip
    with pytest.raises(PromptError, match=re.escape(f"model.prompt.chat_template: {path}: not UTF-8 text")):
        check_start_folder(recipe.model)


def test_dither_is_the_recipe_choice(nano):
    out, overrides = nano
    recipe = load_recipe(RECIPE, [*overrides, f"model.encoder.frontend.cmvn_file={out / 'am.mvn'}",
                                  "model.encoder.frontend.dither=0.0"])  # fmt: skip
    assert check_start_folder(recipe.model) == []


def test_unknown_allowed_key_is_refused(nano):
    out, overrides = nano
    with pytest.raises(ConfigError, match=r"model.differs_from_start: \['model.prompt.tsak'\]"):
        check_start_folder(load_recipe(RECIPE, [*overrides, "model.differs_from_start=[model.prompt.tsak]"]).model)


@pytest.mark.parametrize("base_now", ["moved", "another LLM"])
def test_a_recipe_taking_only_the_encoder_of_an_adapter_export_does_not_need_its_base_llm(
    tiny_run, tiny_llm_dir, tmp_path, base_now
):
    """The base LLM an adapter export applies to is looked for (and fingerprinted) when the recipe reads the LLM
    from that folder, as decoding does (the recipe's model.llm.path is the base it reads); a recipe that takes only
    its encoder never reads it."""
    from llmasr.config_io import to_dict
    from llmasr.export.export import export_model
    from llmasr.models.exported import exported_model_config
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    out = export_model(tiny_run.run_dir, tmp_path / "adapter_export", adapter_only=True)
    corpus = write_tiny_corpus(tmp_path / "corpus", n=2)
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")
    data["model"]["encoder"] = to_dict(exported_model_config(out).encoder)  # weights from OUT/encoder.safetensors
    base = Path(tiny_run.recipe.model.llm.path)
    shutil.move(base, tmp_path / "moved_llm")
    try:
        if base_now == "another LLM":
            write_tiny_llm_dir(base, seed=7)
        assert check_start_folder(load_recipe(data=data).model) == []
        # the folder's adapter now, over the base it was trained on, moved away or rewritten
        data["model"]["llm"].update(path=str(base), adapter=str(out / "adapter"), lora=None, freeze=True)
        with pytest.raises(ConfigError, match=r"model.encoder.init_from: reads .*adapter_export, whose description"):
            check_start_folder(load_recipe(data=data).model)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.move(tmp_path / "moved_llm", base)


def test_a_recipe_taking_an_adapter_export_s_adapter_over_its_own_base_copy_is_checked_against_that_copy(
    tiny_run, tmp_path
):
    """`model.llm.adapter: EXPORT/adapter` over `model.llm.path: COPY` (the export moved to another machine, its
    base copied beside it): the copy is the base the run reads, so it is what the adapter's base fingerprint is
    checked against. The check had looked for the description's base path instead: refused when that path did not
    exist on this machine, and passed when it did, whatever LLM the recipe's own llm.path held."""
    import yaml

    from llmasr.config_io import to_dict
    from llmasr.export.export import export_model
    from llmasr.models.exported import MODEL_FILE
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    out = export_model(tiny_run.run_dir, tmp_path / "adapter_export", adapter_only=True)
    data = to_dict(load_recipe(tiny_run.run_dir / "recipe.yaml"))
    data["train"]["output_dir"] = str(tmp_path / "run")
    copy = shutil.copytree(tiny_run.recipe.model.llm.path, tmp_path / "elsewhere" / "llm")
    data["model"]["llm"].update(path=str(copy), adapter=str(out / "adapter"), lora=None, freeze=True)
    assert check_start_folder(load_recipe(data=data).model) == []  # the description's base is there too

    other = write_tiny_llm_dir(tmp_path / "other_llm", seed=7)
    data["model"]["llm"]["path"] = str(other)
    with pytest.raises(ConfigError, match=f"whose description cannot be read: {other}: not the base LLM the adapter"):
        check_start_folder(load_recipe(data=data).model)

    desc = yaml.safe_load((out / MODEL_FILE).read_text())
    desc["llm"]["base"] = str(tmp_path / "gone")  # as on a machine without the base's first path
    (out / MODEL_FILE).write_text(yaml.safe_dump(desc))
    data["model"]["llm"]["path"] = str(copy)
    assert check_start_folder(load_recipe(data=data).model) == []


def test_the_llm_s_own_template_is_compared_by_its_text_when_the_recipe_names_none(tiny_run, exported_dir, tmp_path):
    """A second fine-tune from an export's adaptor over the same base LLM (`model.adaptor.init_from=EXPORT/
    adaptor.safetensors`, the recipe's chat_template unset as the first run's was) was refused: "the recipe has None,
    llmasr_model.yaml has '{%- for message ...'", the very template the base LLM's tokenizer renders with."""
    from llmasr.testing.tiny_llm import CHATML_TEMPLATE, write_tiny_llm_dir

    recipe = tiny_run.run_dir / "recipe.yaml"
    start = f"model.adaptor.init_from={exported_dir / 'adaptor.safetensors'}"
    assert load_recipe(recipe, [start]).model.prompt.chat_template is None
    assert check_start_folder(load_recipe(recipe, [start]).model) == []
    other = write_tiny_llm_dir(tmp_path / "other_llm", chat_template=CHATML_TEMPLATE.replace("'\\n'", "'\\n\\n'"))
    with pytest.raises(
        ConfigError, match=r"model.prompt.chat_template: the recipe has None, so .*other_llm's own template "
    ):
        check_start_folder(load_recipe(recipe, [start, f"model.llm.path={other}"]).model)


def test_a_misspelt_file_in_the_start_folder_is_named_before_settings_are_compared(tiny_run, exported_dir, tmp_path):
    """`model.adaptor.init_from` naming a file the export does not hold (adaptr.safetensors), with a recipe whose
    prompt differs from the export's: the missing file is what is wrong, and is named; the settings' difference had
    been reported instead, hiding it."""
    from llmasr.testing.tiny_llm import CHATML_TEMPLATE, write_tiny_llm_dir

    recipe = tiny_run.run_dir / "recipe.yaml"
    other = write_tiny_llm_dir(tmp_path / "other_llm", chat_template=CHATML_TEMPLATE.replace("'\\n'", "'\\n\\n'"))
    typo = f"model.adaptor.init_from={exported_dir / 'adaptr.safetensors'}"
    with pytest.raises(ConfigError, match=r"model.adaptor.init_from: file not found: .*adaptr.safetensors"):
        check_start_folder(load_recipe(recipe, [typo, f"model.llm.path={other}"]).model)


def test_an_export_s_encoder_under_another_conf_names_the_sizes_and_the_description(tiny_run, exported_dir):
    """A second round from an export (`model.encoder.init_from: EXPORT/encoder.safetensors`) whose recipe leaves
    the encoder's conf at the class defaults had been refused with a wall of tensor shapes alone: the sizes to set
    and the llmasr_model.yaml that holds them are named."""
    from llmasr.models.builder import build_model
    from llmasr.models.state_dict import CheckpointMismatchError

    start = ["model.encoder.path=null", f"model.encoder.init_from={exported_dir / 'encoder.safetensors'}",
             "model.encoder.frontend.lfr_m=7", "model.encoder.frontend.lfr_n=6"]  # fmt: skip
    recipe = tiny_run.run_dir / "recipe.yaml"
    with pytest.raises(CheckpointMismatchError) as e:
        build_model(load_recipe(recipe, start).model)
    said = str(e.value)
    assert "model.encoder.conf.output_size is 256, the checkpoint's tensors 32: set it to 32" in said
    assert "model.encoder.conf.linear_units is 2048, the checkpoint's tensors 64: set it to 64" in said
    assert f"{exported_dir / 'llmasr_model.yaml'} gives the encoder these weights were trained as" in said
    sizes = [f"model.encoder.conf.{k}={v}" for k, v in (("output_size", 32), ("linear_units", 64), ("num_blocks", 2))]
    build_model(load_recipe(recipe, [*start, *sizes]).model)  # as said: it builds
