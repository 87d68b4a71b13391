"""FunASR's own LoRA layers in a Fun-ASR-Nano model.pt, folded into the LLM's plain weights.

FunASRNano with `llm_conf.use_lora` swaps the LLM's target linear layers for funasr.models.lora.layers.Linear: the
base `weight` (and `bias`) keep their names, `lora_A` [r, in] and `lora_B` [out, r] sit beside them, and the layer
computes x W^T + scaling * x A^T B^T with scaling = lora_alpha / r (`llm_conf.lora_conf`; FunASR's defaults 32 and
16). Its targets are the layers a name of `lora_conf.target_modules` (default q_proj, v_proj) is a dotted part of;
FunASR's loader drops LoRA tensors of any other layer, so they are refused here. Its state dict holds the unmerged
weight (a model's eval() reaches the layer through train(False), which unmerges), so W + scaling * B @ A is the
layer FunASR runs. Without use_lora FunASR builds plain linear layers and never reads the LoRA tensors: such a
model.pt is refused rather than guessed at, and so are peft's LoRA names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmasr.convert.nano_config import number, section_of

log = logging.getLogger(__name__)

LORA = (".lora_A", ".lora_B")
DEFAULT_TARGETS = ["q_proj", "v_proj"]  # FunASRNano._apply_lora_to_llm's, when lora_conf names none


class LoraError(RuntimeError):
    """model.pt's LoRA tensors cannot be folded as FunASR would run them."""


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def _check_targeted(layers: list[str], lora_conf: dict, ckpt: Path, cfg_path: Path) -> None:
    """Refuse LoRA tensors on layers FunASR gives no LoRA layer: it swaps in one where a name of
    lora_conf.target_modules (default q_proj, v_proj) is a dotted part of the layer's name, and its loader drops
    model.pt's tensors that the model has no place for, so it runs such a layer without them."""
    targets = lora_conf.get("target_modules", DEFAULT_TARGETS)
    stated = "target_modules" in lora_conf
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise LoraError(f"{cfg_path}: llm_conf.lora_conf.target_modules is {targets!r}; it must be a list of names")
    untargeted = [layer for layer in layers if not any(t in layer[len("llm.") :].split(".") for t in targets)]
    if untargeted:
        said = f"is {targets}" if stated else f"is not set (FunASR's default {DEFAULT_TARGETS})"
        raise LoraError(
            f"{ckpt}: {len(untargeted)} layer(s) carry LoRA tensors ({_shown(untargeted)}) that FunASR never loads: "
            f"{cfg_path} llm_conf.lora_conf.target_modules {said}, so FunASR builds those layers without LoRA. "
            "Add their names to target_modules if the model was trained with them, or remove the tensors"
        )


def fold_funasr_lora(
    state: dict[str, torch.Tensor], config: dict, ckpt: Path, cfg_path: Path, *, tied_head: bool = False
) -> dict:
    """`state` with each FunASR LoRA layer of the LLM folded into its `weight` (lora_A / lora_B removed); `state`
    itself when it holds none. `tied_head`: the LLM ties lm_head to its input embeddings, so a LoRA on lm_head (which
    FunASR applies to the output alone) has no folded form and is refused."""
    lora = sorted(k for k in state if k.startswith("llm.") and k.endswith(LORA))
    foreign = sorted(k for k in state if k.startswith("llm.") and "lora_" in k and not k.endswith(LORA))
    if foreign:
        raise LoraError(
            f"{ckpt}: the LLM carries {len(foreign)} LoRA tensor(s) not named as FunASR's LoRA layers name them "
            f"({_shown(foreign)}); fold them into the base weights (W + alpha/r * B @ A) first"
        )
    if not lora:
        return state
    llm_conf = section_of(config, "llm_conf", cfg_path)
    if not llm_conf.get("use_lora"):
        raise LoraError(
            f"{ckpt}: holds {len(lora)} LoRA tensor(s) of FunASR's LoRA layers ({_shown(lora)}), but {cfg_path} "
            f"llm_conf.use_lora is {llm_conf.get('use_lora')!r}: FunASR builds the LLM without them and never reads "
            "them. Set llm_conf.use_lora: true (and lora_conf as trained) to fold them in, or remove them"
        )
    lora_conf = llm_conf.get("lora_conf") or {}
    r = number(lora_conf.get("r", 16), f"{cfg_path}: llm_conf.lora_conf.r")
    alpha = number(lora_conf.get("lora_alpha", 32), f"{cfg_path}: llm_conf.lora_conf.lora_alpha", float)
    out = dict(state)
    layers = sorted({k[: -len(LORA[0])] for k in lora})
    _check_targeted(layers, lora_conf, ckpt, cfg_path)
    if tied_head and "llm.lm_head" in layers:
        raise LoraError(
            f"{ckpt}: llm.lm_head carries LoRA tensors, but the LLM ties lm_head to its input embeddings "
            "(tie_word_embeddings): folded into the shared weight they would change the embeddings too, which "
            "FunASR's LoRA layer leaves as they are"
        )
    for layer in layers:
        a, b, w = (state.get(f"{layer}{part}") for part in (*LORA, ".weight"))
        if a is None or b is None or w is None:
            absent = [f"{layer}{p}" for p, t in zip((*LORA, ".weight"), (a, b, w), strict=True) if t is None]
            raise LoraError(f"{ckpt}: {layer} is a LoRA layer without {', '.join(absent)}")
        if a.dim() != 2 or b.dim() != 2 or (a.shape[0], b.shape[1]) != (r, r):
            raise LoraError(
                f"{ckpt}: {layer}.lora_A is {list(a.shape)} and .lora_B {list(b.shape)}, but {cfg_path} "
                f"llm_conf.lora_conf.r is {r} (lora_A [r, in], lora_B [out, r])"
            )
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise LoraError(
                f"{ckpt}: {layer}.lora_B @ .lora_A is {[b.shape[0], a.shape[1]]} but {layer}.weight is {list(w.shape)}"
            )
        # float32: rounded back to a bf16 model.pt's dtype the sum had lost what --dtype fp32 keeps
        out[f"{layer}.weight"] = w.float() + (alpha / r) * (b.float() @ a.float())
        del out[f"{layer}.lora_A"], out[f"{layer}.lora_B"]
    log.info("%s: folded FunASR's LoRA into %d LLM linear layers (lora_alpha %g / r %d)", ckpt, len(layers), alpha, r)
    return out
