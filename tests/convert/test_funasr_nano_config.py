"""`llmasr convert funasr`: what the source's config.yaml, configuration.json and model.pt say is converted or refused
with what and why, and OUT is checked against the source and written in place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from llmasr.config_io import ConfigError
from llmasr.convert.funasr_nano import ConvertError, convert_funasr
from llmasr.models.exported import load_exported
from llmasr.testing.tiny_nano import write_nano_dir


def _edit_config(src: Path, **changes) -> None:
    config = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    (src / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "SenseVoiceSmall"}, "converts FunASR's LLM-ASR model FunASRNano"),
        ({"audio_adaptor": "QFormer"}, "audio_adaptor is 'QFormer'"),
        ({"audio_adaptor_conf__llm_dim": 99}, "audio_adaptor_conf.llm_dim is 99 but the LLM's config.json"),
        ({"audio_encoder_conf__output_size": 48}, "takes 32-dim encoder frames (downsample_rate 1) but"),
        ({"tokenizer_conf__init_param_path": "${llm_conf.nowhere}"}, "names no key of the config"),
        ({"ctc_decoder": "Linear"}, "ctc_decoder is 'Linear'; the converter maps `Transformer` only"),
        ({"ctc_decoder_conf__downsample_rate": 2}, "ctc_decoder_conf.downsample_rate is 2"),
        ({"ctc_decoder_conf__llm_dim": 24}, "ctc_decoder_conf.llm_dim is 24 but the CTC layer (ctc.ctc_lo) takes"),
        ({"ctc_conf__blank_id": 0}, "ctc_conf.blank_id is 0; llmasr's tiktoken CTC vocabulary has the blank last"),
        ({"ctc_vocab_size": 60515}, "gives ctc_vocab_size 60515 over the encoder's 32-dim frames"),
    ],
)
def test_what_cannot_be_converted_is_refused_with_what_and_why(tmp_path, change, message):
    src = write_nano_dir(tmp_path / "src")
    if "tokenizer_conf__init_param_path" in change:  # a reference inside a section the converter reads
        change = {"llm_conf__init_param_path": change["tokenizer_conf__init_param_path"]}
        (src / "configuration.json").unlink()
    _edit_config(src, **change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        convert_funasr(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_llm_hidden_size_that_disagrees_with_the_adaptor_is_named(tmp_path):
    src = write_nano_dir(tmp_path / "src")
    cfg = json.loads((src / "Qwen3-0.6B" / "config.json").read_text())
    (src / "Qwen3-0.6B" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 96}))
    with pytest.raises(ConfigError, match=r"outputs 64-dim embeddings but the LLM's config.json has hidden_size 96"):
        convert_funasr(src, tmp_path / "out")


@pytest.mark.parametrize(
    "key, message",
    [  # FunASR's names where llm_conf.use_lora is off (FunASR never reads them then); peft's names, never FunASR's
        (
            "llm.model.layers.0.self_attn.q_proj.lora_A",
            "llm_conf.use_lora is False: FunASR builds the LLM without them",
        ),
        ("llm.model.layers.0.self_attn.q_proj.lora_A.default.weight", "not named as FunASR's LoRA layers name them"),
    ],
)
def test_lora_tensors_funasr_would_not_read_are_refused(tmp_path, key, message):
    src = write_nano_dir(tmp_path / "src")
    state = torch.load(src / "model.pt", weights_only=True)
    state["state_dict"][key] = torch.zeros(4, 64)
    torch.save(state, src / "model.pt")
    with pytest.raises(ConvertError, match=message):
        convert_funasr(src, tmp_path / "out")


def test_out_over_the_model_being_converted_is_refused(tmp_path):
    """--overwrite replaces OUT whole: OUT as the source directory (or a folder holding it) would delete it."""
    src = write_nano_dir(tmp_path / "src")
    before = sorted(p.name for p in src.iterdir())
    for out, why in ((src, "is"), (tmp_path, "holds")):
        with pytest.raises(ConvertError, match=f"OUT {out}: {why} {src.resolve()}, which the conversion reads"):
            convert_funasr(src, out, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_as_the_current_folder_is_written_in_place(tmp_path, monkeypatch, overwrite):
    """`llmasr convert funasr SRC .`: "." has no name, so the staging folder was made inside OUT, and replacing OUT
    at the end deleted the converted model (and with --overwrite, what the folder held). The folder stays, the
    model is in it, nothing is left beside it."""
    src = write_nano_dir(tmp_path / "src")
    here = tmp_path / "here"
    here.mkdir()
    if overwrite:
        (here / "old.txt").write_text("replaced")
    monkeypatch.chdir(here)
    assert convert_funasr(src, ".", overwrite=overwrite) == Path(".")
    assert (here / "llmasr_model.yaml").is_file() and (here / "llm" / "config.json").is_file()
    assert not (here / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "src"]  # no staging folder left
    load_exported(here)


def test_references_resolve_and_configuration_json_maps_the_llm(tmp_path):
    """The released config writes `${...}` references; configuration.json names the LLM directory."""
    src = write_nano_dir(tmp_path / "src")
    (src / "Qwen3-0.6B").rename(src / "qwen")
    metas = json.loads((src / "configuration.json").read_text())
    metas["file_path_metas"]["llm_conf"]["init_param_path"] = "qwen"
    (src / "configuration.json").write_text(json.dumps(metas))
    convert_funasr(src, tmp_path / "out")
    assert (tmp_path / "out" / "llm" / "model.safetensors").is_file()


def test_audio_token_cap_refuses_ctc_compress():
    from llmasr.config_io import from_dict
    from llmasr.models.config import AdaptorConfig

    with pytest.raises(ConfigError, match="audio_token_cap: 'funasr_nano' counts the encoder's frames"):
        from_dict(AdaptorConfig, {"audio_token_cap": "funasr_nano", "ctc_compress": "avg"}, "model.adaptor")


def test_top_level_references_resolve_as_funasr_resolves_them(tmp_path):
    """`${...}` in config.yaml's top-level keys (OmegaConf resolves them for FunASR) are read as the values they
    name: they had crashed with an internal ValueError, and `detach_ctc_decoder: ${...}` had read as true."""
    src = write_nano_dir(tmp_path / "src")
    refs = {"input_size": "feats", "ctc_vocab_size": "ctc", "detach_ctc_decoder": "detach", "ctc_weight": "weight"}
    _edit_config(src, sizes={"feats": 560, "ctc": 300, "detach": False, "weight": 0.5},
                 **{key: "${sizes." + name + "}" for key, name in refs.items()})  # fmt: skip
    convert_funasr(src, tmp_path / "out")
    desc = yaml.safe_load((tmp_path / "out" / "llmasr_model.yaml").read_text(encoding="utf-8"))
    assert (desc["ctc"]["vocab_size"], desc["ctc"]["detach_encoder"], desc["ctc"]["weight"]) == (300, False, 0.5)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"ctc_vocab_size": "abc"}, "ctc_vocab_size is 'abc'"),
        ({"input_size": "${ctc_conf}"}, "input_size is {"),
        ({"audio_encoder_conf__output_size": "wide"}, "audio_encoder_conf.output_size is 'wide'"),
        ({"audio_adaptor_conf__ffn_dim": 2.5}, "audio_adaptor_conf.ffn_dim is 2.5"),
        ({"ctc_decoder_conf__n_layer": None}, "ctc_decoder_conf.n_layer is None"),
        ({"ctc_conf__blank_id": "last"}, "ctc_conf.blank_id is 'last'"),
        (
            {"audio_adaptor_conf__dropout_rate": "high"},
            "audio_adaptor_conf.dropout_rate is 'high'; it must be a number",
        ),
    ],
)
def test_a_size_that_is_not_a_number_is_named_by_file_and_key(tmp_path, change, key):
    src = write_nano_dir(tmp_path / "src")
    _edit_config(src, **change)
    with pytest.raises(ConfigError, match=re.escape(f"{src / 'config.yaml'}: {key}")):
        convert_funasr(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_yaml_that_is_not_utf8_or_a_frontend_number_that_is_none_is_named(tmp_path):
    """A config.yaml in a local code page, and a frontend_conf value int() cannot read, had reached the user as a
    raw UnicodeDecodeError or ValueError naming neither the file nor the key."""
    src = write_nano_dir(tmp_path / "src")
    _edit_config(src, frontend_conf__lfr_m="seven")
    with pytest.raises(ConfigError, match=re.escape(f"{src / 'config.yaml'} frontend_conf.lfr_m: expected an integ")):
        convert_funasr(src, tmp_path / "out")
    text = (src / "config.yaml").read_text(encoding="utf-8")
    (src / "config.yaml").write_bytes(("# 模型\n" + text).encode("gbk"))
    with pytest.raises(ConfigError, match=re.escape(f"{src / 'config.yaml'}: not UTF-8 text")):
        convert_funasr(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_configuration_json_naming_an_llm_directory_the_copy_lacks_falls_back_to_config_yaml(tmp_path):
    """A fine-tuned copy (config.yaml, configuration.json, model.pt) whose config.yaml names the release's Qwen3
    directory: FunASR's AutoModel skips configuration.json's mapping to a directory that is not there, and so does
    the converter (it had refused the copy)."""
    import shutil

    from llmasr.testing.tiny_nano import LLM_DIR

    src = write_nano_dir(tmp_path / "src")
    copy = tmp_path / "finetuned"
    copy.mkdir()
    for name in ("config.yaml", "configuration.json", "model.pt"):
        shutil.copy(src / name, copy / name)
    _edit_config(copy, llm_conf__init_param_path=str(src / LLM_DIR))
    convert_funasr(copy, tmp_path / "out")
    assert load_exported(tmp_path / "out").prompt.tokenizer is not None
    _edit_config(copy, llm_conf__init_param_path=str(tmp_path / "nowhere"))
    both = f"file_path_metas.llm_conf.init_param_path names {LLM_DIR}; config.yaml llm_conf.init_param_path names"
    with pytest.raises(ConfigError, match=f"{both} {tmp_path / 'nowhere'}, but"):
        convert_funasr(copy, tmp_path / "out2")
