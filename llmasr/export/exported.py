"""Loading an exported model directory (written by `llmasr export`) back into a SpeechLLM, from DIR alone.

    model = load_exported("exp/model")            # eval mode, no gradients
    texts = model.generate(batch, num_beams=2)

DIR/llmasr_model.yaml says how to rebuild each part:

    encoder:  {type, class, conf, file}   SANMEncoder / ConformerEncoder from their constructor conf, or a
                                          WhisperAudioEncoder from the saved WhisperConfig; weights encoder.safetensors
    adaptor:  {conf, input_dim, llm_dim, file}
    ctc:      {file, vocab ("llm" or a file in DIR), vocab_size, encoder_dim, ...} or null
    frontend: FrontendConfig fields; cmvn_file relative to DIR
    prompt:   {task, system, chat_template}
    llm:      {kind: merged, dir: llm}            plain transformers AutoModelForCausalLM (no peft)
              {kind: adapter, dir: adapter, base} peft adapter applied to the base directory `base`
              {kind: base, dir: tokenizer, base}  the unchanged base LLM (only the speech side was trained)

Weights are read with safetensors only. An export whose description says `llm.trust_remote_code: true` (its
recipe needed a model's own Python files) loads only when the caller passes trust_remote_code=True (`llmasr decode
--trust-remote-code`): the description is part of a directory that may come from anywhere, so it cannot switch
code execution on by itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llmasr.config_io import from_dict

MODEL_FILE = "llmasr_model.yaml"


class ExportedModelError(RuntimeError):
    """An exported directory that is incomplete or inconsistent."""


def read_description(model_dir: str | Path) -> dict:
    import yaml

    model_dir = Path(model_dir)
    path = model_dir / MODEL_FILE
    if not path.is_file():
        raise ExportedModelError(f"{path}: missing; {model_dir} is not a directory written by `llmasr export`")
    desc = yaml.safe_load(path.read_text())
    if not isinstance(desc, dict) or not str(desc.get("format", "")).startswith("llmasr-exported"):
        raise ExportedModelError(f"{path}: not an llmasr export description")
    return desc


def _load_weights(module: nn.Module, path: Path, what: str) -> None:
    from safetensors.torch import load_file

    from llmasr.models.state_dict import load_into

    if not path.is_file():
        raise ExportedModelError(f"{path}: missing ({what} weights)")
    load_into(module, load_file(str(path)), source=str(path))


def build_exported_encoder(spec: dict) -> nn.Module:
    if spec["type"] == "whisper" or spec.get("class") == "WhisperAudioEncoder":
        from transformers import WhisperConfig

        from llmasr.models.whisper import WhisperAudioEncoder

        return WhisperAudioEncoder(WhisperConfig.from_dict(dict(spec["conf"])))
    from llmasr.models.funasr_dir import build_funasr_encoder

    return build_funasr_encoder(spec["class"], dict(spec["conf"]))


def _dtype(name: str | torch.dtype | None, default: str) -> torch.dtype:
    from llmasr.export.export import DTYPE_NAMES
    from llmasr.models.llm import DTYPES

    if isinstance(name, torch.dtype):
        return name
    name = name or default
    if name not in DTYPE_NAMES:
        raise ExportedModelError(f"dtype must be one of bf16, fp16, fp32; got {name!r}")
    return DTYPES[DTYPE_NAMES[name]]


def remote_code_allowed(model_dir: Path, entry: dict, trust_remote_code: bool) -> bool:
    """True when the export needs the LLM's own Python files and the caller allowed them; refused otherwise."""
    from llmasr.models.llm import warn_remote_code

    if not entry.get("trust_remote_code", False):
        return False
    code_dirs = [str(model_dir / entry.get("dir", "llm"))] + ([str(entry["base"])] if entry.get("base") else [])
    if not trust_remote_code:
        raise ExportedModelError(
            f"{model_dir / MODEL_FILE}: llm.trust_remote_code is true: loading this model imports and runs the "
            f"Python files in {' and '.join(code_dirs)}. Pass --trust-remote-code (trust_remote_code=True) only if "
            "you trust them"
        )
    warn_remote_code(" and ".join(code_dirs), "--trust-remote-code")
    return True


def load_exported_llm(model_dir: Path, entry: dict, dtype: torch.dtype, *, trust_remote_code: bool = False):
    """(causal LM, tokenizer) of an exported directory."""
    from transformers import AutoModelForCausalLM

    from llmasr.models.llm import load_tokenizer

    kind = entry.get("kind", "merged")
    sub = model_dir / entry.get("dir", "llm")
    if not sub.is_dir():
        raise ExportedModelError(f"{sub}: missing (the exported {kind} LLM files)")
    trust = remote_code_allowed(model_dir, entry, trust_remote_code)
    if kind == "merged":
        llm = AutoModelForCausalLM.from_pretrained(
            str(sub), dtype=dtype, local_files_only=True, trust_remote_code=trust
        )
        return llm, load_tokenizer(sub, trust_remote_code=trust)
    if kind in ("adapter", "base"):
        base_path = Path(entry["base"])
        if not base_path.is_dir():
            raise ExportedModelError(f"{model_dir}: the base LLM {base_path} this adapter export applies to is missing")
        if entry.get("base_fingerprint"):
            from llmasr.models.fingerprint import dir_fingerprint, fingerprint_differences

            diffs = fingerprint_differences({"llm": entry["base_fingerprint"]}, {"llm": dir_fingerprint(base_path)})
            if diffs:
                raise ExportedModelError(
                    f"{base_path}: not the base LLM the adapter was trained on:\n  " + "\n  ".join(diffs)
                )
        llm = AutoModelForCausalLM.from_pretrained(
            str(base_path), dtype=dtype, local_files_only=True, trust_remote_code=trust
        )
        if kind == "adapter":
            from peft import PeftModel

            llm = PeftModel.from_pretrained(llm, str(sub), is_trainable=False)
        return llm, load_tokenizer(sub, trust_remote_code=trust)
    raise ExportedModelError(f"{model_dir / MODEL_FILE}: unknown llm.kind {kind!r}")


def load_exported(
    model_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
):
    """SpeechLLM from an exported directory; `dtype` is the LLM's (default: the exported dtype).
    `trust_remote_code`: allow an export that needs its LLM's own Python files to run them."""
    from llmasr.data.frontend import FrontendConfig
    from llmasr.models.adaptors import build_adaptor
    from llmasr.models.config import AdaptorConfig
    from llmasr.models.prompt import PromptBuilder
    from llmasr.models.speech_llm import SpeechLLM

    model_dir = Path(model_dir).resolve()
    desc = read_description(model_dir)

    encoder = build_exported_encoder(desc["encoder"])
    _load_weights(encoder, model_dir / desc["encoder"].get("file", "encoder.safetensors"), "encoder")

    fe = dict(desc["frontend"])
    if fe.get("cmvn_file"):
        cmvn = Path(fe["cmvn_file"])
        fe["cmvn_file"] = str(cmvn if cmvn.is_absolute() else model_dir / cmvn)
    frontend = from_dict(FrontendConfig, fe, "frontend")

    entry = desc["llm"]
    llm_dtype = _dtype(dtype, entry.get("dtype", "float32"))
    llm, tokenizer = load_exported_llm(model_dir, entry, llm_dtype, trust_remote_code=trust_remote_code)
    p = desc.get("prompt") or {}
    prompt = PromptBuilder(
        tokenizer,
        task=p.get("task", "Transcribe the audio."),
        system=p.get("system"),
        chat_template=p.get("chat_template"),
        source=f"the tokenizer of {model_dir}",
    )

    a = desc["adaptor"]
    adaptor_cfg = from_dict(AdaptorConfig, dict(a["conf"]), "adaptor")
    adaptor = build_adaptor(adaptor_cfg, int(a["input_dim"]), int(a["llm_dim"]))
    _load_weights(adaptor, model_dir / a.get("file", "adaptor.safetensors"), "adaptor")

    ctc_head = ctc_tokenizer = None
    c = desc.get("ctc")
    if c:
        from llmasr.models.ctc import CTCHead, build_ctc_tokenizer

        vocab = c["vocab"] if c["vocab"] == "llm" else str(model_dir / c["vocab"])
        ctc_tokenizer = build_ctc_tokenizer(vocab, tokenizer)
        if int(ctc_tokenizer.vocab_size) != int(c["vocab_size"]):
            raise ExportedModelError(
                f"{model_dir}: the CTC vocabulary has {ctc_tokenizer.vocab_size} entries, the head was trained "
                f"with {c['vocab_size']}"
            )
        ctc_head = CTCHead(int(c["encoder_dim"]), int(c["vocab_size"]))
        _load_weights(ctc_head, model_dir / c.get("file", "ctc_head.safetensors"), "CTC head")

    model = SpeechLLM(
        encoder,
        adaptor,
        llm,
        prompt,
        frontend,
        ctc_head=ctc_head,
        ctc_tokenizer=ctc_tokenizer,
        ctc_weight=float(c["weight"]) if c else 0.0,
        ctc_compress=adaptor_cfg.ctc_compress,
    )
    model.requires_grad_(False)
    model.eval()
    return model.to(device)
