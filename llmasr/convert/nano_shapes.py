"""model.pt's speech tensors against the modules config.yaml describes, checked before anything is written.

The encoder, adaptor and CTC head are built on the meta device from the converter's model section; every tensor
model.pt lacks, holds beyond them or holds in another shape is named by its key in model.pt, with both shapes and
the config.yaml section that sized the module (a load of the staged files would name only a temporary file).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llmasr.config_io import ConfigError, from_dict
from llmasr.models.adaptors import build_adaptor
from llmasr.models.builder import output_dim
from llmasr.models.config import AdaptorConfig, EncoderConfig
from llmasr.models.ctc import CTCHead
from llmasr.models.ctc_config import CTCDecoderConfig
from llmasr.models.encoder_spec import encoder_spec

SHOWN = 8  # disagreements listed in one error


def gaps(module: nn.Module, state: dict, prefixes: dict[str, str]) -> tuple[list, list, list]:
    """(missing, unexpected, mismatched) of `state` against `module`, keyed as in model.pt: `prefixes` maps a module
    key prefix to model.pt's; mismatched holds (key, shape in model.pt, shape the module has)."""
    own = {}
    for key, tensor in module.state_dict().items():
        ours = next(p for p in sorted(prefixes, key=len, reverse=True) if key.startswith(p))
        own[prefixes[ours] + key[len(ours) :]] = tuple(tensor.shape)
    stored = {k: tuple(v.shape) for k, v in state.items() if k.startswith(tuple(prefixes.values()))}
    missing = sorted(set(own) - set(stored))
    unexpected = sorted(set(stored) - set(own))
    mismatched = [(k, list(stored[k]), list(own[k])) for k in sorted(set(own) & set(stored)) if stored[k] != own[k]]
    return missing, unexpected, mismatched


def describe(found: tuple[list, list, list], sized_by: str) -> str:
    missing, unexpected, mismatched = found
    lines = [f"  {k}: {a} in model.pt, {b} as {sized_by} sizes it" for k, a, b in mismatched]
    lines += [f"  {k}: missing from model.pt" for k in missing]
    lines += [f"  {k}: in model.pt, but not in the module {sized_by} describes" for k in unexpected]
    more = f"\n  ... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    return "\n".join(lines[:SHOWN]) + more


def check_speech_weights(state: dict, section: dict, ckpt: Path, cfg_path: Path, llm_hidden: int) -> None:
    """model.pt's audio_encoder.* and audio_adaptor.* tensors are the modules `section` builds, or a ConfigError
    names each disagreement."""
    spec = encoder_spec(from_dict(EncoderConfig, section["encoder"], "model.encoder"))
    with torch.device("meta"):
        try:
            encoder = spec.entry.construct(spec.conf)
        except ConfigError as err:
            raise ConfigError(f"{cfg_path}: audio_encoder_conf: {err}") from err
        adaptor = build_adaptor(from_dict(AdaptorConfig, section["adaptor"], "model.adaptor"), output_dim(encoder),
                                llm_hidden)  # fmt: skip
    for module, prefix, what in ((encoder, "audio_encoder.", "audio_encoder_conf"),
                                 (adaptor, "audio_adaptor.", "audio_adaptor_conf")):  # fmt: skip
        found = gaps(module, state, {"": prefix})
        if any(found):
            raise ConfigError(
                f"{ckpt}: the {prefix}* tensors do not fit the {type(module).__name__} that {cfg_path} {what} "
                f"describes:\n{describe(found, what)}"
            )


def _ctc_head(ctc: dict, enc_dim: int) -> CTCHead:
    """The head `ctc` (ctc_section) describes, on the meta device: its names and shapes."""
    with torch.device("meta"):
        return CTCHead(enc_dim, ctc["vocab_size"], decoder=CTCDecoderConfig(**ctc["decoder"]))


def ctc_head_gaps(state: dict, ctc: dict, enc_dim: int) -> tuple[list, list, list]:
    """gaps() of model.pt's CTC branch (ctc_decoder.*, ctc.ctc_lo.*) against the head `ctc` (ctc_section) builds."""
    return gaps(_ctc_head(ctc, enc_dim), state, {"decoder.": "ctc_decoder.", "proj.": "ctc.ctc_lo."})


def ctc_decoder_shapes(ctc: dict, enc_dim: int) -> dict[str, tuple]:
    """{key as the CTC decoder's own state dict names it (FunASR's ctc_decoder.*, without the prefix): shape}."""
    head = _ctc_head(ctc, enc_dim)
    return {k[len("decoder.") :]: tuple(v.shape) for k, v in head.state_dict().items() if k.startswith("decoder.")}
