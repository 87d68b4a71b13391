"""`llmasr convert funasr SRC OUT`: a FunASR Fun-ASR-Nano directory -> an llmasr model directory.

OUT has the layout `llmasr export` writes (llmasr.export.export), so OUT/llm/ loads with
transformers.AutoModelForCausalLM alone, `llmasr decode --model OUT` decodes it with Nano's own prompt, and a
recipe fine-tunes from OUT's files. The steps:

- config.yaml (llmasr.convert.nano_config) gives the encoder, adaptor, frontend and prompt; every size it states is
  checked against model.pt (llmasr.convert.nano_shapes) and the LLM's config.json, each mismatch an error naming
  both numbers and both files, before anything is written.
- model.pt ({"state_dict": ...}, bf16): `audio_encoder.*` -> the sensevoice encoder, `audio_adaptor.*` -> the
  transformer adaptor, `llm.*` -> the Qwen3 model built from the LLM directory's config.json (that directory holds
  config and tokenizer only; tied embeddings may store no lm_head). FunASR's own LoRA layers (llm_conf.use_lora)
  are folded into the weights they adapt (llmasr.convert.nano_lora).
- `ctc_decoder.*` + `ctc.ctc_lo.*`, Nano's CTC branch (a transformer stack at the encoder's width, then a linear
  layer over SenseVoice's tiktoken vocabulary) -> the CTC head (`model.ctc.decoder`, vocabulary
  `multilingual.tiktoken` found where FunASR finds it, copied into OUT), so `--timestamps` and the CTC output work
  on OUT. Without that vocabulary file the branch is left out and the log says where it looked; so it is when its
  tensors do not fill the head config.yaml describes (FunASR, too, runs without an incomplete branch), the log naming
  the keys. A decoder tensor model.pt lacks comes from `ctc_decoder_conf.init_param_path` when config.yaml names
  one, as FunASR loads that file into the decoder before model.pt.
- `llm_conf.llm_dtype` bf16 (fp16): FunASR casts the whole LLM to it as it builds the model, rounding the rotary
  frequencies it then trains and decodes with; OUT's description says so (llm.rotary_dtype, the recipe key
  model.llm.rotary_dtype; llmasr.models.rotary), so OUT decodes and fine-tunes with the same frequencies.
- Left out, in one log record: any other module of model.pt.
- OUT/finetune_lora_zero2.yaml (llmasr.convert.nano_recipe): a fine-tuning recipe whose model section is the model
  OUT describes, its files named relative to OUT; the manifests are the user's to give.

Everything is written under a hidden sibling of OUT and put in place at the end (llmasr.export.staged_dir).
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

import torch

from llmasr.config_io import ConfigError, from_dict
from llmasr.convert.nano_config import (
    llm_dir,
    nano_model_section,
    read_nano_config,
    stated_adaptor_dims,
)
from llmasr.convert.nano_ctc import ctc_decoder_file, ctc_section, ctc_vocab_file
from llmasr.convert.nano_lora import LoraError, fold_funasr_lora
from llmasr.convert.nano_recipe import write_finetune_recipe
from llmasr.convert.nano_shapes import check_speech_weights, ctc_decoder_shapes, ctc_head_gaps, describe
from llmasr.export.export import write_model_dir
from llmasr.export.staged_dir import discarded_on_error, output_dir, publish, staging_dir, writing
from llmasr.models.builder import build_model
from llmasr.models.config import ModelConfig
from llmasr.models.exported import MODEL_FILE
from llmasr.models.funasr_files import missing_weights, weights_file
from llmasr.models.llm import dtype_name
from llmasr.models.state_dict import select_prefix, torch_load, unwrap_state_dict
from llmasr.models.tokenizer import load_tokenizer
from llmasr.recipe import Recipe
from llmasr.text_files import read_json

log = logging.getLogger(__name__)

TAKEN = ("audio_encoder.", "audio_adaptor.", "llm.")
# Fun-ASR-Nano's own long-audio path decodes VAD segments of at most 30 s (max_single_segment_time 30000 throughout
# its examples): OUT records it as the longest audio trained on, so `llmasr decode` cuts longer audio into windows.
NANO_SEGMENT_SECONDS = 30.0
CTC_BRANCH = ("ctc_decoder.", "ctc.")
CTC_TAKEN = ("ctc_decoder.", "ctc.ctc_lo.")  # what the CTC head holds of the branch


class ConvertError(RuntimeError):
    """The source directory cannot be converted as asked."""


def read_nano_state(src: Path, config: dict, tied_head: bool = False) -> dict[str, torch.Tensor]:
    path = weights_file(src)
    if not path.is_file():
        raise missing_weights(path, "A Fun-ASR-Nano directory holds the whole model's weights there")
    state = unwrap_state_dict(torch_load(path), source=str(path))
    if not any(k.startswith(TAKEN) for k in state) and any(k.startswith("module.") for k in state):
        state = select_prefix(state, "module.")  # saved from a DDP-wrapped model
    for prefix in TAKEN:
        if not select_prefix(state, prefix):
            found = sorted({k.split(".", 1)[0] + "." for k in state})
            raise ConfigError(f"{path}: no tensors under {prefix!r}; top-level prefixes present: {found[:20]}")
    try:  # FunASR's own LoRA (llm_conf.use_lora): folded into the weights as FunASR's layers compute them
        return fold_funasr_lora(state, config, path, src / "config.yaml", tied_head=tied_head)
    except LoraError as err:
        raise ConvertError(str(err)) from None


def read_llm_config(llm_src: Path) -> dict:
    return read_json(llm_src / "config.json", dict, "LLM configuration")


def fill_ctc_decoder(src: Path, config: dict, state: dict, enc_dim: int) -> None:
    """Add to `state` the CTC decoder tensors model.pt lacks from ctc_decoder_conf.init_param_path, as FunASRNano
    loads that file into its ctc_decoder (the decoder's own keys, `module.` dropped) before model.pt, whose own
    ctc_decoder.* tensors then replace it. A tensor of another shape is refused (FunASR's load fails on it); keys
    that are not the decoder's are named and left out (FunASR's strict=False load skips them)."""
    file = ctc_decoder_file(src, config) if config.get("ctc_decoder") else None
    if file is None:
        return
    shapes = ctc_decoder_shapes(ctc_section(config, src / "config.yaml", enc_dim), enc_dim)
    own = unwrap_state_dict(torch_load(file), source=str(file))
    own = {k.removeprefix("module."): v for k, v in own.items()}
    wrong = [f"  {k}: {list(v.shape)} in {file}, {list(shapes[k])} as ctc_decoder_conf sizes it"
             for k, v in own.items() if k in shapes and tuple(v.shape) != shapes[k]]  # fmt: skip
    if wrong:
        raise ConfigError(
            f"{src / 'config.yaml'}: ctc_decoder_conf.init_param_path {file} does not fit the CTC decoder "
            "ctc_decoder_conf describes:\n" + "\n".join(wrong)
        )
    taken = {f"ctc_decoder.{k}": v for k, v in own.items() if k in shapes and f"ctc_decoder.{k}" not in state}
    state.update(taken)
    log.info("%s: ctc_decoder_conf.init_param_path: %d CTC decoder tensors taken, %d of the decoder's left to "
             "model.pt", file, len(taken), len(shapes) - len(taken))  # fmt: skip
    stray = sorted(k for k in own if k not in shapes)
    if stray:
        log.warning("%s: left out of the conversion: %d tensors that are not the CTC decoder's (%s%s)", file,
                    len(stray), ", ".join(stray[:3]), ", ..." if len(stray) > 3 else "")  # fmt: skip


def ctc_branch(src: Path, config: dict, state: dict, enc_dim: int) -> tuple[dict | None, str]:
    """(the model section's `ctc` entry without init_from, "") when model.pt's CTC branch converts, else (None, why
    it is left out: "" when there is none)."""
    if not any(k.startswith(CTC_BRANCH) for k in state):
        return None, ""
    path = src / "config.yaml"
    if not config.get("ctc_decoder"):
        return None, f"{path} names no ctc_decoder to build it from"
    vocab, places = ctc_vocab_file(src, config)
    if vocab is None:
        return None, f"its vocabulary is missing (looked for {', '.join(dict.fromkeys(str(p) for p in places))})"
    section = ctc_section(config, path, enc_dim)
    rows = state.get("ctc.ctc_lo.weight")
    if rows is not None and tuple(rows.shape) != (section["vocab_size"], enc_dim):
        raise ConfigError(
            f"{weights_file(src)}: ctc.ctc_lo.weight is {list(rows.shape)}, but {path} gives ctc_vocab_size "
            f"{section['vocab_size']} over the encoder's {enc_dim}-dim frames"
        )
    missing, unexpected, mismatched = found = ctc_head_gaps(state, section, enc_dim)
    if mismatched:
        sized_by = "ctc_decoder_conf / ctc_vocab_size"
        raise ConfigError(
            f"{weights_file(src)}: the CTC branch does not fit the head {path} {sized_by} describes:\n"
            f"{describe(found, sized_by)}"
        )
    if missing or unexpected:  # FunASR disables a branch its checkpoint leaves incomplete, and transcribes on
        named = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys]  # fmt: skip
        return None, f"its tensors do not fill the head {path} ctc_decoder_conf describes: {'; '.join(named)}"
    return {**section, "vocab": str(vocab)}, ""


def log_left_out(state: dict, path: Path, ctc_reason: str = "") -> list[str]:
    """Name every module of model.pt the converter does not take (one log record), and why; `ctc_reason`: why the
    CTC branch is not taken ("" when it is: then only its decoder and projection are, and anything else under
    `ctc.` is named as left out)."""
    taken = TAKEN + (CTC_TAKEN if not ctc_reason else ())
    groups: dict[str, int] = {}
    for key in state:
        if not key.startswith(taken):
            top = ".".join(key.split(".")[:2]) if key.startswith("ctc.") and not ctc_reason else key.split(".", 1)[0]
            groups[top] = groups.get(top, 0) + 1
    if not groups:
        return []
    named = {g: f"{g} ({n} tensors)" for g, n in sorted(groups.items())}
    branch = [named[g] for g in named if f"{g}." in CTC_BRANCH]
    stray = [named[g] for g in named if g.startswith("ctc.")]
    other = [named[g] for g in named if f"{g}." not in CTC_BRANCH and not g.startswith("ctc.")]
    parts = []
    if branch:
        parts.append(
            f"{', '.join(branch)}: Nano's CTC branch, because {ctc_reason}; the converted model has no CTC head"
        )
    if stray:
        parts.append(f"{', '.join(stray)}: not part of the CTC head (its decoder and ctc.ctc_lo)")
    if other:
        parts.append(f"{', '.join(other)}: not part of the speech encoder -> adaptor -> LLM path")
    log.warning("%s: left out of the conversion: %s", path, "; ".join(parts))
    return sorted(groups)


def encoder_dim(section: dict) -> int:
    return int(section["encoder"]["conf"].get("output_size", 256))  # SenseVoiceEncoderSmall's default


def _check_dims(state: dict, section: dict, llm_config: dict, src: Path) -> None:
    """Adaptor input vs encoder output and adaptor output vs LLM hidden size, named at conversion."""
    ckpt, cfg_path = weights_file(src), src / "config.yaml"
    enc_dim = encoder_dim(section)
    k = section["adaptor"]["downsample"]
    w1 = state.get("audio_adaptor.linear1.weight")
    if w1 is not None and int(w1.shape[1]) != enc_dim * k:
        raise ConfigError(
            f"{ckpt}: audio_adaptor.linear1.weight {list(w1.shape)} takes {int(w1.shape[1]) / k:g}-dim encoder "
            f"frames (downsample_rate {k}) but {cfg_path} audio_encoder_conf.output_size is {enc_dim}"
        )
    hidden = int(llm_config.get("hidden_size", -1))
    w2 = state.get("audio_adaptor.linear2.weight")
    if w2 is not None and int(w2.shape[0]) != hidden:
        raise ConfigError(
            f"{ckpt}: audio_adaptor.linear2.weight {list(w2.shape)} outputs {int(w2.shape[0])}-dim embeddings but "
            f"the LLM's config.json has hidden_size {hidden}"
        )
    for key, actual in stated_adaptor_dims(read_nano_config(src), cfg_path).items():
        expected = enc_dim if key == "encoder_dim" else hidden
        if actual != expected:
            what = "audio_encoder_conf.output_size" if key == "encoder_dim" else "the LLM's config.json hidden_size"
            raise ConfigError(f"{cfg_path}: audio_adaptor_conf.{key} is {actual} but {what} is {expected}")


# Files that hold a tokenizer's vocabulary (any one set): without them transformers builds a 1-token tokenizer.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")  # Nano's prompt (FunASRNano.data_load_speech) is ChatML


def read_llm_tokenizer(llm_src: Path, llm_config: dict):
    """The LLM directory's tokenizer, checked to be the one Nano's prompt was written in."""
    if not any(all((llm_src / name).is_file() for name in names) for names in TOKENIZER_FILES):
        wanted = " or ".join(" + ".join(names) for names in TOKENIZER_FILES)
        raise ConfigError(
            f"{llm_src}: no tokenizer vocabulary ({wanted} missing); the LLM directory holds the tokenizer Nano's "
            "prompt and transcripts are written in"
        )
    try:  # llmasr's loader: the file as written where transformers' class rebuilds it, as training and decode read it
        tokenizer = load_tokenizer(llm_src)
    except ConfigError:  # named already
        raise
    except Exception as err:  # a tokenizer class this transformers lacks
        raise ConfigError(f"{llm_src}: the tokenizer does not load: {type(err).__name__}: {err}") from err
    for marker in CHAT_MARKERS:
        ids = tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ConfigError(
                f"{llm_src}: the tokenizer reads {marker} as {ids}, not as one known token; Nano's ChatML prompt "
                "needs it as one"
            )
    vocab = llm_config.get("vocab_size")
    if isinstance(vocab, int) and not vocab // 2 <= len(tokenizer) <= vocab:
        raise ConfigError(
            f"{llm_src}: the tokenizer has {len(tokenizer)} tokens but config.json has vocab_size {vocab}; the "
            "tokenizer files are not this LLM's"
        )
    return tokenizer


def write_llm(llm_state: dict, llm_src: Path, tokenizer, dest: Path) -> None:
    """The Qwen3 model of `llm_src`'s config.json with Nano's `llm.*` weights, and its tokenizer, as an HF directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(str(llm_src), local_files_only=True)
    model = AutoModelForCausalLM.from_config(config)
    if (llm_src / "generation_config.json").is_file():  # from_config makes a default one: keep the LLM's own
        model.generation_config = GenerationConfig.from_pretrained(str(llm_src), local_files_only=True)
    dtype = functools.reduce(torch.promote_types, {v.dtype for v in llm_state.values()})  # staged without loss
    try:
        missing, unexpected = model.load_state_dict(llm_state, strict=False)
    except RuntimeError as err:  # shape mismatches: the config.json is not the one the weights were trained with
        raise ConfigError(f"{llm_src / 'config.json'} does not fit the llm.* weights of model.pt: {err}") from err
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(
            f"{llm_src / 'config.json'} and model.pt's llm.* weights disagree: missing from model.pt "
            f"{['llm.' + k for k in missing][:5]}, not in the model {['llm.' + k for k in unexpected][:5]}"
        )
    model.tie_weights()
    model.to(dtype).save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))


def _stage(state: dict, llm_src: Path, tokenizer, stage: Path, with_ctc: bool) -> dict[str, Path]:
    from safetensors.torch import save_file

    stage.mkdir(parents=True)
    files = {}
    for name, prefix in (("encoder", "audio_encoder."), ("adaptor", "audio_adaptor.")):
        files[name] = stage / f"{name}.safetensors"
        part = {k: v.float().contiguous() for k, v in select_prefix(state, prefix).items()}
        save_file(part, str(files[name]))
    files["llm"] = stage / "llm"
    write_llm(select_prefix(state, "llm."), llm_src, tokenizer, files["llm"])
    if with_ctc:  # the CTC head's parameter names: decoder.* (FunASR's ctc_decoder.*) and proj.* (ctc.ctc_lo.*)
        files["ctc"] = stage / "ctc_head.safetensors"
        part = {"decoder." + k: v for k, v in select_prefix(state, "ctc_decoder.").items()}
        part.update({"proj." + k: v for k, v in select_prefix(state, "ctc.ctc_lo.").items()})
        save_file({k: v.float().contiguous() for k, v in part.items()}, str(files["ctc"]))
    return files


def convert_funasr(
    src: str | Path, out: str | Path, *, dtype: str | torch.dtype = "fp32", overwrite: bool = False
) -> Path:
    """Convert the Fun-ASR-Nano directory `src` into `out` (see the module docstring); returns `out`.
    `dtype`: the LLM's weights in OUT (bf16, fp16, fp32, as llmasr.models.llm.dtype_name reads it); the speech
    branches stay float32."""
    src, named = Path(src).resolve(), out
    with writing(out, flag="OUT", error=ConvertError):  # held from the emptiness check to the last rename
        out = output_dir(out, overwrite=overwrite, flag="OUT", error=ConvertError)
        llm_dtype = dtype_name(dtype, error=ConvertError)
        if not src.is_dir():
            raise ConfigError(f"{src}: not a directory")
        config = read_nano_config(src)
        section = nano_model_section(src, config)
        llm_src = llm_dir(src, config)
        for kept in (src, llm_src.resolve()):  # --overwrite replaces OUT whole: never the model being converted
            if kept.is_relative_to(out):
                raise ConvertError(
                    f"OUT {named}: {'is' if kept == out else 'holds'} {kept}, which the conversion reads and writing "
                    "OUT would replace; choose another folder"
                )
        llm_config = read_llm_config(llm_src)
        tokenizer = read_llm_tokenizer(llm_src, llm_config)
        state = read_nano_state(src, config, tied_head=bool(llm_config.get("tie_word_embeddings", False)))
        _check_dims(state, section, llm_config, src)
        check_speech_weights(
            state, section, weights_file(src), src / "config.yaml", int(llm_config.get("hidden_size", -1))
        )
        fill_ctc_decoder(src, config, state, encoder_dim(section))
        ctc, ctc_reason = ctc_branch(src, config, state, encoder_dim(section))
        left_out = log_left_out(state, weights_file(src), ctc_reason)

        tmp, stage = staging_dir(out), staging_dir(out, "stage")
        with discarded_on_error(tmp, stage):
            files = _stage(state, llm_src, tokenizer, stage, with_ctc=ctc is not None)
            del state
            section["encoder"]["init_from"] = str(files["encoder"])
            section["adaptor"]["init_from"] = str(files["adaptor"])
            if ctc is not None:
                section["ctc"] = {**ctc, "init_from": str(files["ctc"])}
            section["llm"] = {**section["llm"], "path": str(files["llm"]), "dtype": llm_dtype, "freeze": True}
            cfg = from_dict(ModelConfig, section, "model")
            model = build_model(cfg)
            tmp.mkdir(parents=True)
            info = {"converted_from": str(src), "model": "FunASRNano", "llm_config": str(llm_src), "left_out": left_out}
            write_model_dir(model, info, Recipe(model=cfg), tmp, llm_dtype, training_max_duration=NANO_SEGMENT_SECONDS)
            recipe = write_finetune_recipe(tmp, out, named)  # from the description just written: the same model
            output_dir(out, overwrite=overwrite, flag="OUT", error=ConvertError)  # filled meanwhile: kept
            publish(tmp, out, MODEL_FILE)
        shutil.rmtree(stage, ignore_errors=True)
        log.info("converted %s to %s; its fine-tuning recipe: %s (give data.train=[...] data.valid=[...])", src, out,
                 recipe)  # fmt: skip
        return Path(named).expanduser()
