"""`model.ctc.from_encoder`: the CTC head of a FunASR directory (llmasr.models.funasr_ctc), on directories in the
real layouts (llmasr.testing.tiny_funasr), built through the real model builder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from llmasr.config_io import ConfigError, from_dict, to_dict
from llmasr.models.builder import build_model
from llmasr.models.config import ModelConfig
from llmasr.models.funasr_ctc import funasr_ctc_settings
from llmasr.testing.tiny_funasr import (
    SENSEVOICE_BPE,
    as_deepspeed_checkpoint,
    copy_model_dir,
    finetuned_output_dir,
    rewrite_model_pt,
    tiny_sanm_conf,
    tiny_sensevoice_conf,
    write_funasr_dir,
)
from llmasr.testing.tiny_llm import write_tiny_llm_dir
from llmasr.testing.tiny_whisper import tiny_conformer_conf


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("funasr_ctc")
    fe = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 1, "lfr_n": 1}
    conformer = write_funasr_dir(
        root / "conformer", encoder_type="ConformerEncoder", encoder_conf=tiny_conformer_conf(80), frontend_conf=fe
    )
    state = torch.load(conformer / "model.pt", weights_only=True)
    state["ctc.ctc_lo.weight"] = torch.randn(16, 32)  # the stand-in's tokens.json has 16 entries
    state["ctc.ctc_lo.bias"] = torch.randn(16)
    torch.save(state, conformer / "model.pt")
    return {
        "sensevoice": write_funasr_dir(root / "sv", model="SenseVoiceSmall", encoder_conf=tiny_sensevoice_conf()),
        "paraformer": write_funasr_dir(root / "pa", encoder_conf=tiny_sanm_conf()),
        "conformer": conformer,
        "llm": write_tiny_llm_dir(root / "llm"),
    }


def model_section(encoder_type: str, path, llm, **ctc) -> dict:
    return {
        "encoder": {"type": encoder_type, "path": str(path)},
        "llm": {"path": str(llm)},
        "ctc": {"weight": 0.3, "from_encoder": True, **ctc},
    }


def test_sensevoice_head_comes_with_its_sentencepiece_model_and_unk_blank(dirs):
    d = dirs["sensevoice"]
    # as in iic/SenseVoiceSmall: config.yaml's bpemodel is null, configuration.json names the file
    assert yaml.safe_load((d / "config.yaml").read_text())["tokenizer_conf"]["bpemodel"] is None
    got = funasr_ctc_settings(d)
    assert got == {"vocab": str(d.resolve() / SENSEVOICE_BPE), "blank": "<unk>", "seg_dict": None,
                   "init_from": str(d.resolve() / "model.pt"), "init_prefix": "ctc."}  # fmt: skip

    cfg = from_dict(ModelConfig, model_section("sensevoice", d, dirs["llm"]), "model")
    assert {k: getattr(cfg.ctc, k) for k in got} == got
    model = build_model(cfg)
    state = torch.load(d / "model.pt", weights_only=True)
    assert torch.equal(model.ctc_head.proj.weight, state["ctc.ctc_lo.weight"])
    assert model.ctc_tokenizer.blank_id == 0 and model.ctc_tokenizer.vocab_size == state["ctc.ctc_lo.bias"].numel()


def test_a_head_saved_from_a_ddp_wrapped_model_loads_as_its_encoder_does(dirs, tmp_path):
    """model.pt with every key under "module." (torch DDP): the encoder loader took it, the CTC head was refused as
    "trained without a CTC loss"."""
    d = shutil.copytree(dirs["sensevoice"], tmp_path / "ddp")
    state = torch.load(d / "model.pt", weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, d / "model.pt")
    model = build_model(from_dict(ModelConfig, model_section("sensevoice", d, dirs["llm"]), "model"))
    assert torch.equal(model.ctc_head.proj.weight, state["ctc.ctc_lo.weight"])


def test_conformer_head_comes_with_its_tokens_json_and_blank(dirs):
    d = dirs["conformer"]
    cfg = from_dict(ModelConfig, model_section("conformer", d, dirs["llm"]), "model")
    assert cfg.ctc.vocab == str(d.resolve() / "tokens.json") and cfg.ctc.blank == "<blank>"
    assert cfg.ctc.seg_dict is None  # a Conformer's character list: configuration.json names no seg_dict
    model = build_model(cfg)
    state = torch.load(d / "model.pt", weights_only=True)
    assert torch.equal(model.ctc_head.proj.bias, state["ctc.ctc_lo.bias"])
    assert model.ctc_tokenizer.blank_id == 0 and model.ctc_tokenizer.vocab_size == 16
    assert type(model.ctc_tokenizer).__name__ == "TokenListCTCTokenizer"
    assert model.ctc_tokenizer.encode("Bad fez") == [15, 3, 6, 8, 7, 15]  # "B" is no entry of the list: <unk>


def test_a_paraformer_head_reads_its_token_list_through_the_seg_dict(tmp_path, dirs):
    """Paraformer-large's layout (configuration.json's tokenizer_conf.seg_dict_file) with a CTC head (ctc_weight >
    0): the head's text is cut as FunASR's CharTokenizer cuts it, through the seg_dict."""
    d = copy_model_dir(dirs["paraformer"], tmp_path / "pa")
    rewrite_model_pt(
        d, lambda s: s.update({"ctc.ctc_lo.weight": torch.randn(16, 32), "ctc.ctc_lo.bias": torch.randn(16)})
    )
    cfg = from_dict(ModelConfig, model_section("paraformer", d, dirs["llm"]), "model")
    assert (cfg.ctc.vocab, cfg.ctc.seg_dict) == (str(d.resolve() / "tokens.json"), str(d.resolve() / "seg_dict"))
    tokenizer = build_model(cfg).ctc_tokenizer
    assert type(tokenizer).__name__ == "SegDictCTCTokenizer"
    assert tokenizer.encode("Bad fez") == [4, 3, 6, 8, 7, 15]  # lower-cased, by character; "z" it lacks: <unk>


def test_the_derived_section_loads_again_as_a_saved_recipe_does(dirs):
    """A run directory's recipe holds the derived values beside from_encoder: loading it derives the same."""
    cfg = from_dict(ModelConfig, model_section("sensevoice", dirs["sensevoice"], dirs["llm"]), "model")
    again = from_dict(ModelConfig, to_dict(cfg), "model")
    assert again.ctc == cfg.ctc


def test_configuration_json_names_the_vocabulary_over_config_yaml(dirs, tmp_path):
    """FunASR resolves file_path_metas against the directory; an absolute path left in config.yaml from the machine
    the model was trained on is found in the directory under its own name."""
    d = write_funasr_dir(tmp_path / "pa", encoder_conf=tiny_sanm_conf())
    (d / "tokens.json").rename(d / "units.json")
    config = yaml.safe_load((d / "config.yaml").read_text())
    config["tokenizer_conf"]["token_list"] = "/home/someone/exp/units.json"
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    assert funasr_ctc_settings(d)["vocab"] == str(d.resolve() / "units.json")
    (d / "other.json").write_text(json.dumps(["<blk>", "a", "b"]))
    metas = {"init_param": "model.pt", "tokenizer_conf": {"token_list": "other.json"}}
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": metas}))
    got = funasr_ctc_settings(d)
    assert got["vocab"] == str(d.resolve() / "other.json") and got["blank"] == "<blk>"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ctc": {"weight": 0.0, "from_encoder": True}}, r"model.ctc.from_encoder: .*model.ctc.weight is 0"),
        ({"encoder": {"type": "whisper", "conf": {"d_model": 8}}}, r"model.ctc.from_encoder: .*type 'whisper'"),
        ({"encoder": {"type": "paraformer"}}, r"model.ctc.from_encoder: .*with path None"),
        (
            {"encoder": {"type": "sensevoice", "path": "/no/such/dir"}},
            r"model.ctc.from_encoder \(reading model.encoder.path\): FunASR model directory not found: /no/such/dir",
        ),
        (
            {"ctc": {"weight": 0.3, "from_encoder": True, "blank": "<s>"}},
            r"model.ctc.blank: '<s>', but model.ctc.from_encoder takes '<unk>' from .*sv",
        ),
        (
            {"ctc": {"weight": 0.3, "from_encoder": True, "init_prefix": "head."}},
            r"model.ctc.init_prefix: 'head.', but .* takes 'ctc.'",
        ),
    ],
)
def test_from_encoder_refuses_what_it_cannot_take(dirs, change, message):
    section = model_section("sensevoice", dirs["sensevoice"], dirs["llm"])
    for key, value in change.items():
        section[key] = value
    with pytest.raises(ConfigError, match=message):
        from_dict(ModelConfig, section, "model")


def test_a_directory_without_a_head_is_named_when_the_weights_load(dirs):
    """Paraformer-large was trained with ctc_weight 0: its tokens.json is found, its model.pt has no ctc.* tensor."""
    cfg = from_dict(ModelConfig, model_section("paraformer", dirs["paraformer"], dirs["llm"]), "model")
    assert cfg.ctc.vocab.endswith("tokens.json") and cfg.ctc.blank == "<blank>"
    build_model(cfg, weights="meta")  # `llmasr check` builds without reading weights
    with pytest.raises(ConfigError, match=r"model.ctc.from_encoder: .*model.pt holds no CTC head .*model.ctc.vocab"):
        build_model(cfg)


def test_a_directory_naming_no_vocabulary_is_refused(tmp_path):
    d = write_funasr_dir(tmp_path / "pa", encoder_conf=tiny_sanm_conf())
    (d / "tokens.json").unlink()
    with pytest.raises(ConfigError, match=r"names no vocabulary for its CTC head.*set model.ctc.vocab"):
        funasr_ctc_settings(d)
    metas = {"tokenizer_conf": {"bpemodel": "gone.model"}}
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": metas}))
    with pytest.raises(
        ConfigError,
        match=r"names no vocabulary.*\(configuration.json: bpemodel names gone.model, not in the directory\)",
    ):
        funasr_ctc_settings(d)


def test_a_missing_encoder_directory_is_named_as_the_recipe_wrote_it(dirs, tmp_path, monkeypatch):
    """A relative model.encoder.path that is nowhere is named as written, with where it was looked for, as without
    from_encoder (from_encoder had named it resolved against the working directory alone, a folder the recipe's
    path does not mean)."""
    from llmasr.recipe import load_recipe

    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    section = model_section("sensevoice", "../models/sv", dirs["llm"])
    recipe.write_text(yaml.safe_dump({"model": section}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    assert "FunASR model directory not found: ../models/sv (a relative path is looked for beside the recipe" in str(
        err.value
    )


def test_finetuned_output_directory_takes_config_yaml_token_list(tmp_path, dirs):
    """FunASR's fine-tuning output: configuration.json (copied from the pretrained model) names tokens.json, which is
    not there; FunASR's tokenizer then reads config.yaml's token_list (the pretrained one by full path), as here."""
    out = finetuned_output_dir(dirs["conformer"], tmp_path / "finetuned")
    got = funasr_ctc_settings(out)
    assert got["vocab"] == str(dirs["conformer"].resolve() / "tokens.json")
    assert (got["blank"], got["init_from"]) == ("<blank>", str(out.resolve() / "model.pt"))
    assert got["seg_dict"] is None
    out = finetuned_output_dir(dirs["paraformer"], tmp_path / "finetuned_pa")  # config.yaml's seg_dict_file
    assert funasr_ctc_settings(out)["seg_dict"] == str(dirs["paraformer"].resolve() / "seg_dict")


def test_a_head_saved_in_a_deepspeed_folder_loads(dirs, tmp_path):
    """FunASR's DeepSpeed trainer leaves model.pt as a folder (ZeRO-2 here): the head was refused as 'a directory,
    not a weights file' while its whole weights are in the folder's mp_rank_00_model_states.pt."""
    d = copy_model_dir(dirs["sensevoice"], tmp_path / "sv")
    state = torch.load(d / "model.pt", weights_only=True)
    as_deepspeed_checkpoint(d)
    assert funasr_ctc_settings(d)["init_from"] == str(d.resolve() / "model.pt" / "mp_rank_00_model_states.pt")
    model = build_model(from_dict(ModelConfig, model_section("sensevoice", d, dirs["llm"]), "model"))
    assert torch.equal(model.ctc_head.proj.weight, state["ctc.ctc_lo.weight"])
    assert torch.equal(model.ctc_head.proj.bias, state["ctc.ctc_lo.bias"])


def test_weights_saved_as_a_zero3_deepspeed_folder_are_named_as_such(dirs, tmp_path):
    d = copy_model_dir(dirs["sensevoice"], tmp_path / "sv")
    as_deepspeed_checkpoint(d, stage=3)
    with pytest.raises(
        ConfigError,
        match=r"model\.pt: a directory, not a weights file: FunASR's DeepSpeed trainer.*ZeRO-3 checkpoint.*"
        r"model\.ctc\.from_encoder reads the CTC head",
    ):
        funasr_ctc_settings(d)


def test_the_encoder_load_says_the_ctc_head_reads_what_it_leaves_out(dirs, caplog):
    """The encoder's load names `ctc` among the modules it leaves out, though model.ctc.from_encoder loads exactly
    those tensors as the CTC head: the log says the head reads them itself."""
    cfg = from_dict(ModelConfig, model_section("sensevoice", dirs["sensevoice"], dirs["llm"]), "model")
    with caplog.at_level("INFO", logger="llmasr"):
        build_model(cfg)
    said = next(r.getMessage() for r in caplog.records if "loaded the encoder" in r.getMessage())
    assert "ctc" in said and "the CTC head reads ctc.* itself" in said
