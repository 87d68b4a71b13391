"""`model.llm.rotary_dtype`: the LLM's rotary frequencies rounded to the precision its weights were trained with.

A framework that casts the whole LLM to bf16 or fp16 (FunASR's FunASRNano with `llm_conf.llm_dtype: bf16` does so
when it builds the model, for inference and training alike) also casts the rotary embedding's `inv_freq` buffer,
and a later cast back to float32 does not restore it: such a model was trained with rounded frequencies, which
transformers recomputes exactly. The positions' angles then drift apart in proportion to the position, enough at
a few hundred tokens to change transcripts.

The buffers are found by module: every floating buffer whose name ends in `inv_freq` (transformers' `inv_freq`,
`original_inv_freq`, and the per-layer-type `<type>_inv_freq` of models with several rotary kinds). Each is
replaced by its value rounded to the dtype and held again in float32, as the rounded model computes it (its rotary
forward works in float32), so DeepSpeed, which casts parameters and leaves buffers as they are, and a later
`.to(device)` keep it. Non-persistent: no checkpoint holds or restores it, so every build applies it
(llmasr.models.builder). A dynamic rope type's recomputation for a longer context makes new frequencies exactly,
as it does in the cast model; its return to the original length restores the rounded `original_inv_freq`.
"""

from __future__ import annotations

import torch
from torch import nn

from llmasr.config_io import ConfigError

ROTARY_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KEY = "model.llm.rotary_dtype"


def rotary_buffers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module path, module, buffer name) of every rotary frequency buffer of `model`."""
    found = []
    for path, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name.endswith("inv_freq") and buf.is_floating_point():
                found.append((path, module, name))
    return found


def round_rotary(model: nn.Module, dtype: str, *, llm: str = "the LLM") -> int:
    """Round every rotary frequency buffer of `model` to `dtype` (a ROTARY_DTYPES name), held in float32; returns
    how many. An LLM with none is refused, naming the key (`llm`: where it comes from, for the message)."""
    if dtype not in ROTARY_DTYPES:
        raise ConfigError(f"{KEY}: {dtype!r} is not one of {', '.join(ROTARY_DTYPES)}")
    found = rotary_buffers(model)
    if not found:
        raise ConfigError(
            f"{KEY}: {dtype}, but {llm} ({type(model).__name__}) has no rotary embedding buffer (inv_freq) to round; "
            "remove the key (it is for LLMs with rotary position embeddings, such as Qwen3)"
        )
    for _, module, name in found:
        buf = getattr(module, name)
        buf.data = buf.data.to(ROTARY_DTYPES[dtype]).to(torch.float32)
    return len(found)


def plain_transformers_line(model: nn.Module, dtype: str, where: str = "model") -> str:
    """The Python a plain transformers user runs after `AutoModelForCausalLM.from_pretrained` to compute with the
    same rounded frequencies (from_pretrained recomputes them exactly): one assignment per buffer, on one line."""
    torch_dtype = f"torch.{dtype}"
    lines = []
    for path, _, name in rotary_buffers(model):
        attr = f"{where}.{path}.{name}" if path else f"{where}.{name}"
        lines.append(f"{attr} = {attr}.to({torch_dtype}).float()")
    return "; ".join(lines)
