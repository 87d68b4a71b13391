"""`llmasr convert funasr` on Fun-ASR-Nano directories that are incomplete or say more than the plain release: each
is converted as FunASR runs it, or refused naming the file, the key and both sides."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llmasr.cli import main as cli_main
from llmasr.config_io import ConfigError
from llmasr.convert.funasr_nano import convert_funasr
from llmasr.data.frontend import write_kaldi_cmvn
from llmasr.models.exported import load_exported
from llmasr.testing.tiny_nano import LLM_DIR, write_nano_dir


def refused_before_writing(src: Path, tmp_path: Path, message: str) -> None:
    """Converting `src` into tmp_path/out is refused with `message` (a regex), and nothing is written."""
    with pytest.raises(ConfigError, match=message):
        convert_funasr(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def edit_config(src: Path, edit) -> None:
    config = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
    edit(config)
    (src / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def test_corrupt_llm_config_json_is_named(tmp_path, capsys):
    src = write_nano_dir(tmp_path / "src")
    (src / LLM_DIR / "config.json").write_text("{not json")
    assert cli_main(["convert", "funasr", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        f"{src / LLM_DIR / 'config.json'}: not a readable JSON LLM configuration" in err
        and "JSONDecodeError" not in err
    )
    assert not (tmp_path / "out").exists()


def test_llm_directory_without_tokenizer_files_is_refused_before_writing(tmp_path):
    """transformers builds a 1-token tokenizer from config.json alone: OUT converted "OK" with an empty prompt."""
    src = write_nano_dir(tmp_path / "src")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / LLM_DIR / name).unlink()
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(src / LLM_DIR))}: no tokenizer vocabulary \(tokenizer\.json"
    ):
        convert_funasr(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing staged


def test_llm_tokenizer_without_chat_markers_is_refused(tmp_path):
    """A tokenizer that spells <|im_start|> in pieces cannot write Nano's ChatML prompt."""
    src = write_nano_dir(tmp_path / "src")
    tok_file, cfg_file = src / LLM_DIR / "tokenizer.json", src / LLM_DIR / "tokenizer_config.json"
    tok, cfg = json.loads(tok_file.read_text()), json.loads(cfg_file.read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|im_start|>"]
    for key in ("extra_special_tokens", "additional_special_tokens"):  # transformers 5 / 4 spelling
        cfg.pop(key, None)
    tok_file.write_text(json.dumps(tok))
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"reads <\|im_start\|> as \[.*\], not as one known token"):
        convert_funasr(src, tmp_path / "out")


def test_llm_tokenizer_far_smaller_than_the_llms_vocabulary_is_refused(tmp_path):
    src = write_nano_dir(tmp_path / "src")
    config = json.loads((src / LLM_DIR / "config.json").read_text())
    (src / LLM_DIR / "config.json").write_text(json.dumps({**config, "vocab_size": 151936}))
    with pytest.raises(ConfigError, match=r"tokenizer has 300 tokens but config.json has vocab_size 151936"):
        convert_funasr(src, tmp_path / "out")


def test_the_llm_tokenizer_is_read_and_written_as_its_tokenizer_json_writes(tmp_path):
    """A Qwen release's tokenizer.json may add a token its tokenizer_config.json does not list (its embedding row is
    in the weights). The converter had loaded the folder with transformers' AutoTokenizer, whose Qwen2Tokenizer drops
    it: OUT/llm's tokenizer spelled the word in pieces. It reads it with llmasr's loader, as training and decode do."""
    from tokenizers import Tokenizer

    from llmasr.testing.tiny_llm import write_qwen_layout_llm_dir

    release = write_qwen_layout_llm_dir(tmp_path / "qwen3", arch="qwen3", added=("zanzibar",))
    src = write_nano_dir(tmp_path / "src", tokenizer_from=release)
    convert_funasr(src, tmp_path / "out")
    text = "to zanzibar and back"
    written = Tokenizer.from_file(str(src / LLM_DIR / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert 305 in written  # the added token, one id
    out_file = Tokenizer.from_file(str(tmp_path / "out" / "llm" / "tokenizer.json"))
    assert out_file.encode(text, add_special_tokens=False).ids == written
    tok = load_exported(tmp_path / "out").prompt.tokenizer
    assert tok.encode(text, add_special_tokens=False) == written


@pytest.mark.parametrize("how", ["configuration.json maps it", "no configuration.json"])
def test_cmvn_is_the_file_funasr_applies(tmp_path, how):
    """config.yaml says cmvn_file: null, but FunASR's AutoModel applies am.mvn when configuration.json maps
    file_path_metas.frontend_conf.cmvn_file to it, or, without configuration.json, when it lies beside config.yaml:
    the converter picks it as llmasr's own FunASR-directory loader does (funasr_files.resolve_cmvn)."""
    src = write_nano_dir(tmp_path / "src")
    dim = 80 * 7  # the fixture frontend's n_mels * lfr_m
    write_kaldi_cmvn(src / "am.mvn", np.full(dim, -1.0), np.full(dim, 0.5))
    if how == "no configuration.json":
        (src / "configuration.json").unlink()
    else:
        metas = json.loads((src / "configuration.json").read_text())
        metas["file_path_metas"]["frontend_conf"] = {"cmvn_file": "am.mvn"}
        (src / "configuration.json").write_text(json.dumps(metas))
    assert yaml.safe_load((src / "config.yaml").read_text())["frontend_conf"]["cmvn_file"] is None
    convert_funasr(src, tmp_path / "out")
    desc = yaml.safe_load((tmp_path / "out" / "llmasr_model.yaml").read_text())
    assert desc["frontend"]["cmvn_file"] == "am.mvn"
    assert (tmp_path / "out" / "am.mvn").read_bytes() == (src / "am.mvn").read_bytes()


def funasr_nano_prompt(system: str, task: str, sys_prompt=True, do_think=True) -> tuple[str, str]:
    """The text before and after the audio of FunASRNano.data_load_speech's first turn (not
    infer_with_assistant_input), as FunASR writes it:

        source_input = f"<|im_start|>system\\n{system_prompt}<|im_end|>\\n<|im_start|>user\\n{user_prompt}<|im_end|>\\n
                         <|im_start|>assistant\\n"
        if not sys_prompt: source_input = f"<|im_start|>user\\n{user_prompt}<|im_end|>\\n<|im_start|>assistant\\n"
        if not do_think: source_input += "<think>\\n\\n</think>\\n\\n"

    with user_prompt = f"{task}<|startofspeech|>!...<|endofspeech|>" (generate_chatml), split at the speech."""
    user = f"{task}<|startofspeech|>!!<|endofspeech|>"
    source = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    if not sys_prompt:
        source = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    if not do_think:
        source += "<think>\n\n</think>\n\n"
    before, after = source.split("<|startofspeech|>!!<|endofspeech|>")
    return before, after


@pytest.mark.parametrize("sys_prompt, do_think", [(False, True), (True, False), (False, False), (True, True)])
def test_dataset_conf_prompt_switches_give_funasrs_prompt(tmp_path, sys_prompt, do_think):
    """dataset_conf.sys_prompt / do_think change the prompt FunASRNano writes: the converted prompt's ids are the ids
    of FunASR's text, piece by piece as FunASR tokenizes it (with and without a hotword list)."""
    from llmasr.convert.nano_config import NANO_HOTWORDS_TEMPLATE, NANO_SYSTEM, NANO_TASK

    src = write_nano_dir(tmp_path / "src")
    edit_config(src, lambda c: c["dataset_conf"].update(sys_prompt=sys_prompt, do_think=do_think))
    convert_funasr(src, tmp_path / "out")
    prompt = load_exported(tmp_path / "out").prompt
    for hotwords in ([], ["你好", "world"]):
        task = (NANO_HOTWORDS_TEMPLATE.format(hotwords=", ".join(hotwords)) if hotwords else "") + NANO_TASK
        before, after = funasr_nano_prompt(NANO_SYSTEM, task, sys_prompt, do_think)
        enc = prompt.encode(None, hotwords=hotwords)
        assert enc.ids[: enc.audio_pos] == prompt.tokenizer.encode(before), (hotwords, before)
        assert enc.ids[enc.audio_pos :] == prompt.tokenizer.encode(after), (hotwords, after)
    target = prompt.encode("你好")  # training appends the transcript and <|im_end|> after the same prompt
    assert target.ids[: target.target_start] == prompt.encode(None).ids


@pytest.mark.parametrize("key", ["infer_with_assistant_input", "prev_text"])
def test_prompt_keys_llmasr_cannot_write_are_refused(tmp_path, key):
    src = write_nano_dir(tmp_path / "src")
    edit_config(src, lambda c: c.update({key: True if key == "infer_with_assistant_input" else "前文"}))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(src / 'config.yaml'))}: {key} is .*; with it FunASR"):
        convert_funasr(src, tmp_path / "out")


def test_released_encoder_keys_convert_and_unknown_ones_are_named(tmp_path):
    """The release's audio_encoder_conf lists feat_permute: true (the fixture's config.yaml has it): FunASR's
    encoder sees [B, T, D] features with it as without it, as llmasr's does. A key neither knows is refused naming
    config.yaml and audio_encoder_conf, before anything is written."""
    src = write_nano_dir(tmp_path / "src")
    assert yaml.safe_load((src / "config.yaml").read_text())["audio_encoder_conf"]["feat_permute"] is True
    edit_config(src, lambda c: c["audio_encoder_conf"].update(foo_bar=3))
    message = (
        rf"{re.escape(str(src / 'config.yaml'))}: audio_encoder_conf.foo_bar \(3\) is not a SenseVoiceEncoderSmall"
    )
    refused_before_writing(src, tmp_path, message)
    edit_config(src, lambda c: c["audio_encoder_conf"].pop("foo_bar"))
    convert_funasr(src, tmp_path / "out")


@pytest.mark.parametrize("section", ["audio_adaptor_conf", "ctc_decoder_conf"])
def test_an_attention_dropout_other_than_the_dropout_is_refused(tmp_path, section):
    """FunASR's Transformer blocks drop attention weights at attention_dropout_rate (0.0 unless stated) and the rest
    at dropout_rate; llmasr's use one rate, so a dropout_rate alone gave attention dropout FunASR never applied, and
    an attention_dropout_rate alone was dropped. Equal rates convert."""
    src = write_nano_dir(tmp_path / "src")
    edit_config(src, lambda c: c[section].update(dropout_rate=0.1))
    refused_before_writing(
        src, tmp_path, rf"config.yaml: {section}.attention_dropout_rate is 0 but {section}.dropout_rate is 0.1; "
    )
    edit_config(src, lambda c: c[section].update(attention_dropout_rate=0.1))
    convert_funasr(src, tmp_path / "out")
    desc = yaml.safe_load((tmp_path / "out" / "llmasr_model.yaml").read_text())
    part = desc["adaptor"]["conf"] if section == "audio_adaptor_conf" else desc["ctc"]["decoder"]
    assert part["dropout"] == 0.1


def edit_state(src: Path, edit) -> None:
    state = torch.load(src / "model.pt", weights_only=True)
    edit(state["state_dict"])
    torch.save(state, src / "model.pt")


@pytest.mark.parametrize(
    "section, change, line",
    [
        ("audio_encoder_conf", {"linear_units": 128},
         "audio_encoder.encoders.0.feed_forward.w_1.bias: [64] in model.pt, [128] as audio_encoder_conf sizes it"),
        ("audio_encoder_conf", {"num_blocks": 1},
         "audio_encoder.encoders.0.norm1.weight: in model.pt, but not in the module audio_encoder_conf describes"),
        ("audio_adaptor_conf", {"ffn_dim": 40},
         "audio_adaptor.linear1.weight: [48, 32] in model.pt, [40, 32] as audio_adaptor_conf sizes it"),
        ("ctc_decoder_conf", {"ffn_dim": 40},
         "ctc_decoder.linear1.weight: [48, 32] in model.pt, [40, 32] as ctc_decoder_conf / ctc_vocab_size sizes it"),
    ],
    ids=["encoder width", "encoder depth", "adaptor", "CTC decoder"],
)  # fmt: skip
def test_model_pt_that_config_yaml_does_not_describe_is_named_by_its_own_keys(tmp_path, section, change, line):
    """Named by model.pt, its key as stored there, both shapes and the config.yaml section; not by a staged file
    deleted before the error is read. Nothing is written."""
    src = write_nano_dir(tmp_path / "src")
    edit_config(src, lambda c: c[section].update(change))
    with pytest.raises(ConfigError) as err:
        convert_funasr(src, tmp_path / "out")
    text = str(err.value)
    assert text.startswith(f"{src / 'model.pt'}: ") and f"{src / 'config.yaml'} {section.split('_conf')[0]}" in text
    assert line in text and ".stage" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_encoder_conf_the_encoder_refuses_is_named_by_config_yaml(tmp_path):
    src = write_nano_dir(tmp_path / "src")
    edit_config(src, lambda c: c["audio_encoder_conf"].update(num_blocks=0))
    message = (
        rf"{re.escape(str(src / 'config.yaml'))}: audio_encoder_conf: SenseVoiceEncoderSmall: needs num_blocks >= 1"
    )
    refused_before_writing(src, tmp_path, message)


@pytest.mark.parametrize(
    "drop, named",
    [
        (("ctc.ctc_lo.weight", "ctc.ctc_lo.bias"), "2 missing (ctc.ctc_lo.bias, ctc.ctc_lo.weight)"),
        (("ctc_decoder.blocks.0.norm1.weight",), "1 missing (ctc_decoder.blocks.0.norm1.weight)"),
    ],
)
def test_incomplete_ctc_branch_converts_without_the_head(tmp_path, caplog, drop, named):
    """FunASR (checkpoint_utils.disable_incomplete_ctc) runs without a CTC branch its model.pt leaves incomplete and
    transcribes on: so does the converted model, and the log names what is missing."""
    src = write_nano_dir(tmp_path / "src")
    edit_state(src, lambda s: [s.pop(k) for k in drop])
    with caplog.at_level(logging.WARNING, logger="llmasr.convert.funasr_nano"):
        convert_funasr(src, tmp_path / "out")
    assert f"{src / 'config.yaml'} ctc_decoder_conf describes: {named}" in caplog.text
    assert "the converted model has no CTC head" in caplog.text
    assert yaml.safe_load((tmp_path / "out" / "llmasr_model.yaml").read_text())["ctc"] is None
    load_exported(tmp_path / "out")


def split_ctc_decoder(src: Path, keep: tuple = (), file: str = "ctc_decoder.pt") -> dict:
    """model.pt's ctc_decoder.* tensors (but `keep`) moved into SRC/`file` under the decoder's own keys, as FunASR's
    ctc_decoder_conf.init_param_path holds them (DDP-saved: `module.`, under state_dict), named by config.yaml."""
    moved = {}
    edit_state(
        src, lambda s: moved.update({k: s.pop(k) for k in list(s) if k.startswith("ctc_decoder.") and k not in keep})
    )
    own = {"module." + k[len("ctc_decoder.") :]: v for k, v in moved.items()}
    torch.save({"state_dict": {**own, "module.not_the_decoder.weight": torch.zeros(2)}}, src / file)
    edit_config(src, lambda c: c["ctc_decoder_conf"].update(init_param_path=file))
    return moved


def test_ctc_decoder_tensors_model_pt_lacks_come_from_its_init_param_path(tmp_path, caplog):
    """FunASRNano loads ctc_decoder_conf.init_param_path into its CTC decoder before model.pt, whose own tensors
    then replace it: the converted head holds the file's tensors where model.pt has none, model.pt's elsewhere, and
    a key of the file that is not the decoder's is named as left out."""
    from safetensors.torch import load_file

    src = write_nano_dir(tmp_path / "src")
    kept = "ctc_decoder.linear1.weight"
    mine = torch.load(src / "model.pt", weights_only=True)["state_dict"][kept]
    moved = split_ctc_decoder(src, keep=(kept,))
    edit_state(src, lambda s: s.update({kept: mine * 2}))  # the file holds the old value: model.pt's must win
    torch.save(
        {"state_dict": {**torch.load(src / "ctc_decoder.pt", weights_only=True)["state_dict"],
                        "module.linear1.weight": mine}}, src / "ctc_decoder.pt",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="llmasr.convert.funasr_nano"):
        out = convert_funasr(src, tmp_path / "out")
    desc = yaml.safe_load((out / "llmasr_model.yaml").read_text(encoding="utf-8"))
    head = load_file(str(out / desc["ctc"]["file"]))
    for key, value in moved.items():
        assert torch.equal(head["decoder." + key[len("ctc_decoder.") :]], value.float()), key
    assert torch.equal(head["decoder.linear1.weight"], (mine * 2).float())
    assert f"{src / 'ctc_decoder.pt'}: left out of the conversion: 1 tensors that are not the CTC decoder's" in (
        caplog.text
    )
    load_exported(out)


def test_a_ctc_decoder_init_param_path_that_is_missing_or_does_not_fit_is_refused(tmp_path):
    src = write_nano_dir(tmp_path / "src")
    split_ctc_decoder(src)
    (src / "ctc_decoder.pt").rename(src / "elsewhere.pt")
    refused_before_writing(
        src,
        tmp_path,
        re.escape(
            f"config.yaml ctc_decoder_conf.init_param_path names ctc_decoder.pt "
            f"({src / 'ctc_decoder.pt'}), which does not exist"
        ),  # fmt: skip
    )
    state = torch.load(src / "elsewhere.pt", weights_only=True)
    state["state_dict"]["module.linear1.weight"] = torch.zeros(40, 32)
    torch.save(state, src / "ctc_decoder.pt")
    (src / "elsewhere.pt").unlink()
    refused_before_writing(
        src, tmp_path, re.escape(f"linear1.weight: [40, 32] in {src / 'ctc_decoder.pt'}, [48, 32] as ctc_decoder_conf")
    )


def test_ctc_decoder_with_layers_config_yaml_does_not_name_converts_without_the_head(tmp_path, caplog):
    src = write_nano_dir(tmp_path / "src")
    edit_config(src, lambda c: c["ctc_decoder_conf"].update(n_layer=2))  # model.pt holds 1
    with caplog.at_level(logging.WARNING, logger="llmasr.convert.funasr_nano"):
        convert_funasr(src, tmp_path / "out")
    assert "missing (ctc_decoder.blocks.1." in caplog.text
    assert yaml.safe_load((tmp_path / "out" / "llmasr_model.yaml").read_text())["ctc"] is None


def test_a_full_disk_during_conversion_names_the_folder_and_leaves_nothing(tmp_path, monkeypatch):
    """As an export does (llmasr.export.staged_dir.discarded_on_error): safetensors' "(os error 28)" becomes an
    OSError naming the staging folder and its free space, and no staged file is left."""
    from safetensors import SafetensorError

    src = write_nano_dir(tmp_path / "src")

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(OSError, match=r"No space left on device while writing it \(.* MiB free there\)") as err:
        convert_funasr(src, tmp_path / "out")
    assert err.value.filename == str(tmp_path / ".out.partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_files_that_reach_an_empty_out_during_the_conversion_are_kept(tmp_path, monkeypatch):
    """As an export: OUT is checked again before the model is put in place, so nothing that reached it meanwhile is
    deleted without --overwrite."""
    import llmasr.convert.funasr_nano as nano
    from llmasr.convert.funasr_nano import ConvertError
    from llmasr.testing.run_dirs import file_arrives_after

    src, out = write_nano_dir(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    file_arrives_after(monkeypatch, nano, "write_model_dir", out / "notes.txt")
    with pytest.raises(ConvertError, match="exists and is not empty"):
        convert_funasr(src, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging folder left


@pytest.mark.parametrize("given", ["cache", "llm"])
def test_a_folder_above_the_model_or_its_llm_folder_names_the_directory_to_give(tmp_path, capsys, given):
    """SRC set to a ModelScope cache folder above the model, or to the Qwen3 folder inside it: the error names the
    Fun-ASR-Nano directory to give instead."""
    src = write_nano_dir(tmp_path / "hub" / "models" / "FunAudioLLM" / "Fun-ASR-Nano-2512")
    given_path = tmp_path / "hub" if given == "cache" else src / LLM_DIR
    assert cli_main(["convert", "funasr", str(given_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{given_path / 'config.yaml'}: missing" in err
    if given == "cache":
        assert f"Folders under it hold one: {src}: set SRC to the model's own folder" in err
    else:
        assert (
            f"{given_path} is an LLM folder (config.json); give the Fun-ASR-Nano directory that holds it: {src}" in err
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("llm_dtype,rotary", [("fp32", None), ("fp16", "float16"), ("bf16", "bfloat16")])
def test_the_rotary_frequencies_are_those_funasr_rounds_to_llm_dtype(tmp_path, llm_dtype, rotary):
    src = write_nano_dir(tmp_path / "src")
    edit_config(src, lambda c: c["llm_conf"].update(llm_dtype=llm_dtype))
    convert_funasr(src, tmp_path / "out")
    desc = yaml.safe_load((tmp_path / "out" / "llmasr_model.yaml").read_text(encoding="utf-8"))
    assert desc["llm"].get("rotary_dtype") == rotary
    rotary_emb = load_exported(tmp_path / "out").llm.model.rotary_emb
    exact = rotary_emb.compute_default_rope_parameters(rotary_emb.config)[0]
    assert torch.equal(rotary_emb.inv_freq, exact.to(getattr(torch, rotary)).float() if rotary else exact)


def test_a_dtype_it_cannot_write_is_refused_naming_the_argument_a_python_caller_gave(tmp_path):
    """convert_funasr(..., dtype="half") had said "--dtype must be one of ...": a flag of `llmasr convert funasr`,
    whose choices never let a bad value through, so only a Python caller saw it, who gave `dtype`."""
    from llmasr.convert.funasr_nano import ConvertError

    with pytest.raises(ConvertError, match=r"^dtype must be one of bf16, fp16, fp32 .*; got 'half'$"):
        convert_funasr(tmp_path / "no_model", tmp_path / "out", dtype="half")


def test_an_llm_dtype_funasr_cannot_build_is_refused(tmp_path):
    src = write_nano_dir(tmp_path / "src")
    edit_config(src, lambda c: c["llm_conf"].update(llm_dtype="bfloat16"))
    said = r"config\.yaml: llm_conf\.llm_dtype is 'bfloat16'; FunASR builds Fun-ASR-Nano with one of bf16, fp16, fp32"
    refused_before_writing(src, tmp_path, said)
