"""Loading an exported model directory (written by `llmasr export`) back into a SpeechLLM, from DIR alone.

    model = load_exported("exp/model")            # eval mode, no gradients
    texts = model.generate(batch, num_beams=2)

DIR/llmasr_model.yaml says how to rebuild each part:

    encoder:  {type, class, conf, file}   SANMEncoder / ConformerEncoder from their constructor conf, or a
                                          WhisperAudioEncoder from the saved WhisperConfig; weights encoder.safetensors
    adaptor:  {conf, input_dim, llm_dim, file}
    ctc:      {file, vocab ("llm" or a file in DIR), vocab_size, encoder_dim, ...} or null
    frontend: FrontendConfig fields; cmvn_file relative to DIR
    prompt:   {task, system, chat_template, audio_separator, hotwords_template, hotwords_separator,
               hotwords_max_tokens, template_kwargs}
    llm:      {kind: merged, dir: llm}            plain transformers AutoModelForCausalLM (no peft)
              {kind: adapter, dir: adapter, base} peft adapter applied to the base directory `base`
              {kind: base, dir: tokenizer, base}  the unchanged base LLM (only the speech side was trained)
              rotary_dtype (optional)             the rotary frequencies rounded to it (llmasr.models.rotary)

The description becomes a recipe model section (`exported_model_config`: encoder `conf` + `init_from`, adaptor
`init_from`, llm `path` / `adapter` / `tokenizer`, ...) that llmasr.models.builder builds like any other, so an
exported directory can also be a recipe's starting point. Weights are read with safetensors only. An export whose
description says `llm.trust_remote_code: true` (its recipe needed a model's own Python files) loads only when the
caller passes trust_remote_code=True (`llmasr decode --trust-remote-code`): the description is part of a directory
that may come from anywhere, so it cannot switch code execution on by itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.frontend import FrontendConfig
from llmasr.models.builder import build_model
from llmasr.models.config import AdaptorConfig, ModelConfig
from llmasr.models.ctc_config import CTCDecoderConfig
from llmasr.models.devices import usable_device
from llmasr.models.encoders import entry_for_class
from llmasr.models.llm import dtype_name
from llmasr.models.model_file import MODEL_FILE
from llmasr.models.rotary import ROTARY_DTYPES
from llmasr.models.whisper import encoder_conf as whisper_encoder_conf
from llmasr.run_dir.layout import CHECKPOINTS, META
from llmasr.unread_fields import drop_unread
from llmasr.written_by import writer

READABLE_FORMATS = ("llmasr-exported-1",)  # what llmasr.export.export.FORMAT has been


class ExportedModelError(RuntimeError):
    """An exported directory that is incomplete or inconsistent."""


def read_description(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    path = model_dir / MODEL_FILE
    if not path.is_file():
        if (model_dir / CHECKPOINTS).is_dir() or (model_dir / META).is_file():  # the run itself, or one checkpoint
            raise ExportedModelError(
                f"{path}: missing; {model_dir} is a training run or checkpoint, not an export: decode it with "
                f"--checkpoint {model_dir} (Transcriber.load(checkpoint=...)), or export it first (llmasr export "
                f"--checkpoint {model_dir} --output DIR)"
            )
        if (model_dir.parent / MODEL_FILE).is_file():  # its llm/, adapter/ or vad/
            raise ExportedModelError(
                f"{path}: missing; {model_dir} is a folder inside the export {model_dir.parent}: give --model "
                f"{model_dir.parent} (Transcriber.load({str(model_dir.parent)!r}))"
            )
        raise ExportedModelError(f"{path}: missing; {model_dir} is not a directory written by `llmasr export`")
    try:
        desc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ExportedModelError(f"{path}: not readable YAML ({err})") from None
    if not isinstance(desc, dict) or not str(desc.get("format", "")).startswith("llmasr-exported"):
        raise ExportedModelError(f"{path}: not an llmasr export description")
    if desc["format"] not in READABLE_FORMATS:
        raise ExportedModelError(
            f"{path}: format {desc['format']!r}, but this llmasr reads {', '.join(READABLE_FORMATS)} (written by "
            f"{writer(desc.get('written_by'))}, newer than this llmasr? upgrade this one)"
        )
    missing = [key for key in ("encoder", "adaptor", "frontend", "llm") if not isinstance(desc.get(key), dict)]
    if missing:
        raise ExportedModelError(f"{path}: no {', '.join(missing)} section (a damaged or hand-edited file?)")
    # optional sections (CTC head, prompt, decode settings, training facts): absent or null, else a mapping
    for key in ("ctc", "prompt", "decode", "training"):
        if desc.get(key) is not None and not isinstance(desc[key], dict):
            raise ExportedModelError(
                f"{path}: the {key} section is a {type(desc[key]).__name__}, not a mapping (a damaged or hand-edited "
                "file?)"
            )
    needed = {"encoder": ("type", "conf"), "adaptor": ("conf",), "ctc": ("weight", "vocab")}
    if desc["llm"].get("kind", "merged") in ("adapter", "base"):
        needed["llm"] = ("base",)
    gone = [f"{part}.{key}" for part, keys in needed.items() if desc.get(part) for key in keys if key not in desc[part]]
    gone += [f"{part}.conf" for part in ("encoder", "adaptor") if not isinstance(desc[part].get("conf", {}), dict)]
    if gone:
        raise ExportedModelError(f"{path}: {', '.join(gone)} missing or not a mapping (a damaged or hand-edited file?)")
    dtype_name(desc["llm"].get("dtype", "float32"), what=f"{path}: llm.dtype", error=ExportedModelError)
    if desc["llm"].get("rotary_dtype") not in (None, *ROTARY_DTYPES):
        raise ExportedModelError(
            f"{path}: llm.rotary_dtype must be one of {', '.join(ROTARY_DTYPES)} or null; got "
            f"{desc['llm']['rotary_dtype']!r}"
        )
    return desc


def _file(model_dir: Path, name: str, what: str) -> str:
    path = model_dir / name
    if not path.is_file():
        raise ExportedModelError(f"{path}: missing ({what} weights)")
    return str(path)


def remote_code_allowed(model_dir: Path, entry: dict, trust_remote_code: bool) -> bool:
    """True when the export needs the LLM's own Python files and the caller allowed them; refused otherwise."""
    if not entry.get("trust_remote_code", False):
        return False
    code_dirs = [str(model_dir / entry.get("dir", "llm"))] + ([str(entry["base"])] if entry.get("base") else [])
    if not trust_remote_code:
        raise ExportedModelError(
            f"{model_dir / MODEL_FILE}: llm.trust_remote_code is true: loading this model imports and runs the "
            f"Python files in {' and '.join(code_dirs)}. Pass --trust-remote-code (trust_remote_code=True) only if "
            "you trust them"
        )
    return True


def _llm_section(
    model_dir: Path, entry: dict, dtype: str, *, trust_remote_code: bool, read_llm: bool, base_llm: str | Path | None
) -> dict:
    """The model.llm section of an exported LLM: merged weights in DIR, or the base plus DIR's adapter/tokenizer.
    The base an adapter export names is looked for and fingerprinted only when the caller reads the LLM (`read_llm`);
    `base_llm` stands for the base the description names (a copy of it elsewhere), fingerprinted the same way."""
    kind = entry.get("kind", "merged")
    if base_llm is not None:
        if kind == "merged":
            raise ExportedModelError(
                f"{model_dir}: a base LLM was given ({base_llm}), but this export holds its whole LLM (llm.kind "
                f"{kind!r}); a base LLM is given only for an adapter export (llmasr export --adapter-only)"
            )
        entry = {**entry, "base": str(Path(base_llm).resolve())}
    sub = model_dir / entry.get("dir", "llm")
    if not sub.is_dir():
        raise ExportedModelError(f"{sub}: missing (the exported {kind} LLM files)")
    trust = remote_code_allowed(model_dir, entry, trust_remote_code)
    section = {"dtype": dtype, "trust_remote_code": trust, "freeze": True}
    if entry.get("rotary_dtype"):  # the frequencies the weights were trained with (llmasr.models.rotary)
        section["rotary_dtype"] = entry["rotary_dtype"]
    if kind == "merged":
        return {**section, "path": str(sub)}
    if kind not in ("adapter", "base"):
        raise ExportedModelError(f"{model_dir / MODEL_FILE}: unknown llm.kind {kind!r}")
    base_path = Path(entry["base"])
    if read_llm:
        _check_base(model_dir, entry, base_path, given=base_llm is not None)
    section.update(path=str(base_path), tokenizer=str(sub))
    if kind == "adapter":
        section["adapter"] = str(sub)
    return section


def _check_base(model_dir: Path, entry: dict, base_path: Path, *, given: bool) -> None:
    """The base LLM an adapter (or base) export applies to is there and holds the files it was trained on
    (`given`: the caller named a copy of it in place of the one the description names)."""
    if given and not base_path.is_dir():
        raise ExportedModelError(f"{base_path}: the base LLM given for the adapter export {model_dir} is not a folder")
    if not base_path.is_dir():
        raise ExportedModelError(
            f"{model_dir}: the base LLM {base_path} this adapter export applies to is missing; where a copy of it "
            f"lies elsewhere (the export moved to another machine), give that folder: --base-llm DIR (llmasr decode, "
            f"transcribe), base_llm=DIR (Transcriber.load), or model.llm.path (a recipe starting from the export)"
        )
    if entry.get("base_fingerprint"):
        from llmasr.models.fingerprint import dir_fingerprint, fingerprint_differences

        diffs = fingerprint_differences({"llm": entry["base_fingerprint"]}, {"llm": dir_fingerprint(base_path)})
        if diffs:
            raise ExportedModelError(
                f"{base_path}: not the base LLM the adapter export {model_dir} was trained on:\n  " + "\n  ".join(diffs)
            )


def exported_model_config(
    model_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    read_llm: bool = True,
    base_llm: str | Path | None = None,
) -> ModelConfig:
    """The model section that rebuilds an exported directory: every part built by llmasr.models.builder from the
    architecture recorded in llmasr_model.yaml, its weights read from the files beside it. `trust_remote_code`:
    allow an export that needs its LLM's own Python files to run them. `read_llm` False: the caller takes no LLM
    from this directory (a recipe starting from its encoder), so the base LLM an adapter export applies to is
    neither looked for nor fingerprinted."""
    model_dir = Path(model_dir).resolve()
    section = exported_model_section(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code, read_llm=read_llm, base_llm=base_llm
    )
    try:
        return from_dict(ModelConfig, section, "model")
    except ConfigError as err:
        raise ExportedModelError(f"{model_dir / MODEL_FILE}: {err}") from err


def exported_model_section(
    model_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    read_llm: bool = True,
    base_llm: str | Path | None = None,
) -> dict:
    """exported_model_config's section as the plain dict a recipe's `model` holds (files named absolutely), before
    typing: what `llmasr convert funasr` writes into the fine-tuning recipe it puts beside the description."""
    model_dir = Path(model_dir).resolve()
    desc = read_description(model_dir)
    enc = desc["encoder"]
    entry_for_class(enc.get("class", ""), f"{model_dir / MODEL_FILE}: encoder.class")
    fe = drop_unread(FrontendConfig, dict(desc["frontend"]), "frontend", model_dir / MODEL_FILE)
    if fe.get("cmvn_file"):
        cmvn = Path(fe["cmvn_file"])
        fe["cmvn_file"] = str(cmvn if cmvn.is_absolute() else model_dir / cmvn)
    a, c, p = desc["adaptor"], desc.get("ctc"), desc.get("prompt") or {}
    section = {
        "encoder": {
            "type": enc["type"],
            "conf": whisper_encoder_conf(enc["conf"]) if enc["type"] == "whisper" else dict(enc["conf"]),
            "frontend": fe,
            "init_from": _file(model_dir, enc.get("file", "encoder.safetensors"), "encoder"),
        },
        "adaptor": {
            **drop_unread(AdaptorConfig, dict(a["conf"]), "adaptor.conf", model_dir / MODEL_FILE),
            "init_from": _file(model_dir, a.get("file", "adaptor.safetensors"), "adaptor"),
            "init_prefix": "",
            "freeze": True,
        },
        "llm": _llm_section(
            model_dir,
            desc["llm"],
            dtype_name(desc["llm"].get("dtype", "float32") if dtype is None else dtype, error=ExportedModelError),
            trust_remote_code=trust_remote_code,
            read_llm=read_llm,
            base_llm=base_llm,
        ),
        "prompt": {
            "task": p.get("task", "Transcribe the audio."),
            "system": p.get("system"),
            "audio_separator": p.get("audio_separator", "\n"),  # exports written before the key existed: "\n"
        },
        "ctc": {"weight": 0.0},
    }
    if p.get("chat_template"):
        section["prompt"]["chat_template"] = _one_template(p["chat_template"], model_dir)
    for key in ("hotwords_template", "hotwords_separator", "hotwords_max_tokens", "template_kwargs"):  # older: defaults
        if key in p:
            section["prompt"][key] = p[key]
    if c:
        section["ctc"] = _ctc_section(model_dir, c)
    return section


def _ctc_section(model_dir: Path, c: dict) -> dict:
    """The recipe's `model.ctc` of the description's `ctc` entry (its files in `model_dir`)."""
    section = {
        "weight": float(c["weight"]),
        "vocab": c["vocab"] if c["vocab"] == "llm" else str(model_dir / c["vocab"]),
        "init_from": _file(model_dir, c.get("file", "ctc_head.safetensors"), "CTC head"),
        # exports written before the key existed: the projection alone
        "decoder": drop_unread(CTCDecoderConfig, c.get("decoder"), "ctc.decoder", model_dir / MODEL_FILE),
        "detach_encoder": bool(c.get("detach_encoder", False)),
        "blank": c.get("blank"),  # exports written before the key existed: the vocabulary's own rule
        "seg_dict": None,
    }
    if c.get("seg_dict"):
        section["seg_dict"] = str(model_dir / c["seg_dict"])
        if not Path(section["seg_dict"]).is_file():
            raise ExportedModelError(f"{section['seg_dict']}: missing (the seg_dict of the CTC head's token list)")
    if str(c["vocab"]).endswith(".tiktoken"):
        section["vocab_size"] = int(c["vocab_size"])
    return section


def _one_template(template, model_dir: Path):
    """The chat template the model was trained with. Exports written before the description kept one recorded a
    tokenizer's whole dict of named templates; its prompt had rendered with the "default" one (transformers' choice
    when none is named)."""
    if not isinstance(template, dict):
        return template
    if isinstance(template.get("default"), str):
        return template["default"]
    raise ExportedModelError(
        f"{model_dir / MODEL_FILE}: prompt.chat_template holds named templates ({', '.join(map(str, template))}) and "
        "no 'default', the one a prompt renders with: set prompt.chat_template to the template the model was "
        "trained with"
    )


def load_exported(
    model_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    base_llm: str | Path | None = None,
):
    """SpeechLLM from an exported directory; `dtype` is the LLM's (default: the exported dtype). Eval mode, frozen.
    `trust_remote_code`: allow an export that needs its LLM's own Python files to run them. `base_llm`: the folder
    of an adapter export's base LLM where it is not where the description says (checked against its fingerprint).
    A `device` this machine lacks is a ValueError saying what it has, before anything loads."""
    device = usable_device(device)
    cfg = exported_model_config(model_dir, dtype=dtype, trust_remote_code=trust_remote_code, base_llm=base_llm)
    model = build_model(cfg)
    model.requires_grad_(False)
    model.eval()
    return model.to(device)
