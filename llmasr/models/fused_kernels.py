"""Optional fused GPU kernels for the LLM (`model.llm.fused_kernels: liger`), from the liger-kernel package.

liger-kernel's Triton kernels replace the LLM's RMSNorm, SwiGLU MLP and rotary embedding (its
`apply_liger_kernel_to_<model_type>(model=...)`), and its fused linear cross-entropy computes the output head and the
loss chunk by chunk without materialising the logits. llmasr keeps its own rule for the loss: only the labelled
positions reach the head (llmasr.models.losses), so the fused loss runs over exactly those hidden states.

Checked at start-up (`llmasr check` and `llmasr train`): the package must import and know the LLM's model type, and
the output head must be a plain Linear whose weight the fused loss can read, i.e. not partitioned by ZeRO-3. Training
also refuses a device other than CUDA (the kernels are Triton). Decoding and export ignore the key: they run the
model's own modules, whose weights are the same.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from llmasr.config_io import ConfigError
from llmasr.models.llm import LLMLoadError, base_lm, logit_transform, read_config_json

log = logging.getLogger(__name__)

FUSED_KERNELS = ("none", "liger")
INSTALL_HINT = (
    "install it where training runs: pip install liger-kernel (it needs triton, which CUDA builds of torch "
    "bring), or set model.llm.fused_kernels=none"
)
# The Liger patch leaves the loss to llmasr: its own fused CE replaces the HF forward, which llmasr does not call.
PATCH_FLAGS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}
PATCH_PREFIX = "apply_liger_kernel_to_"
HEAD_NAME = "lm_head"  # the output head of Hugging Face causal LMs


class FusedKernelError(ConfigError):
    """model.llm.fused_kernels cannot be honoured here."""


def liger_transformers():
    """liger_kernel.transformers, or FusedKernelError saying how to install it."""
    try:
        return importlib.import_module("liger_kernel.transformers")
    except ImportError as err:
        why = f"model.llm.fused_kernels: liger: liger_kernel is not importable ({err}); {INSTALL_HINT}"
        raise FusedKernelError(why) from err


def _llm_config(llm_path: str | Path) -> dict:
    """The LLM's config.json, read as the LLM loader reads it (a byte-order mark allowed), with its model_type."""
    config = Path(llm_path) / "config.json"
    try:
        data = read_config_json(config)
    except (OSError, LLMLoadError) as err:
        raise FusedKernelError(f"model.llm.fused_kernels: cannot read model_type from {config}: {err}") from err
    if "model_type" not in data:
        raise FusedKernelError(f"model.llm.fused_kernels: {config} has no model_type, which picks liger's kernels")
    return data


def patch_flags(patch) -> dict:
    """PATCH_FLAGS as `patch` (an apply_liger_kernel_to_<type>) takes them: Gemma's take `geglu` for `swiglu`, and a
    flag it lacks is left out (a patch without the loss flags leaves the loss alone)."""
    params = inspect.signature(patch).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(PATCH_FLAGS)
    flags = {k: v for k, v in PATCH_FLAGS.items() if k in params}
    if "swiglu" not in params and "geglu" in params:
        flags["geglu"] = PATCH_FLAGS["swiglu"]
    return flags


def check_fused_kernels(llm_cfg, *, zero_stage: int, device: torch.device | None = None) -> None:
    """Refuse `llm_cfg.fused_kernels` where it cannot run: `device` not CUDA (None: not known yet, as in `llmasr
    check` on a login node), ZeRO-3, liger-kernel missing, too old, or without kernels for the LLM's model type."""
    if llm_cfg.fused_kernels == "none":
        return
    key = f"model.llm.fused_kernels: {llm_cfg.fused_kernels}"  # the key first: errors name where it was set
    if device is not None and device.type != "cuda":
        raise FusedKernelError(
            f"{key}: liger-kernel's fused kernels are Triton kernels that run on CUDA only; this run is on "
            f"{device.type}. Set model.llm.fused_kernels=none for CPU runs"
        )
    if zero_stage >= 3:
        raise FusedKernelError(
            f"{key}: the fused linear cross-entropy reads the output head's weight directly, which ZeRO stage 3 "
            "partitions across ranks; use ZeRO stage 0-2, or model.llm.fused_kernels=none under ZeRO-3"
        )
    wrapped = _head_wrapped_by(llm_cfg)
    if wrapped:
        raise FusedKernelError(
            f"{key}: {wrapped} wraps the output head ({HEAD_NAME}), but the fused loss reads a plain Linear head's "
            f"weight directly; leave {HEAD_NAME} out of it, or set model.llm.fused_kernels=none"
        )
    config = _llm_config(llm_cfg.path)
    if logit_transform(config) is not None:
        raise FusedKernelError(
            f"{key}: the LLM ({llm_cfg.path}) transforms its output head's logits (a soft cap or a scale), which the "
            "fused loss does not; set model.llm.fused_kernels=none"
        )
    api = liger_transformers()
    model_type = str(config.get("model_type"))
    patch = getattr(api, f"{PATCH_PREFIX}{model_type}", None)
    if patch is None:
        known = sorted(n.removeprefix(PATCH_PREFIX) for n in dir(api) if n.startswith(PATCH_PREFIX))
        raise FusedKernelError(
            f"{key}: liger-kernel has no kernels for the LLM's model type {model_type!r} ({llm_cfg.path}); "
            f"it has: {', '.join(known)}"
        )
    patch_flags(patch)  # a signature it cannot read fails here, not at training start
    loss_cls = getattr(api, "LigerFusedLinearCrossEntropyLoss", None)
    if loss_cls is None or "return_token_accuracy" not in inspect.signature(loss_cls).parameters:
        raise FusedKernelError(
            f"{key}: this liger-kernel has no LigerFusedLinearCrossEntropyLoss(return_token_accuracy=...), which "
            "the labels-only fused loss needs; upgrade it (pip install -U liger-kernel)"
        )


def _targets_head(targets, *, suffix: bool = False) -> bool:
    """Whether peft's `target_modules` reaches the output head as peft matches them: a list by whole module name, a
    string as a regular expression over it; `suffix`: `modules_to_save`, which peft matches by any name ending."""
    if isinstance(targets, str):
        try:
            return re.fullmatch(targets, HEAD_NAME) is not None  # "all-linear" never matches: peft leaves the head out
        except re.error:
            return False  # peft itself names a pattern it cannot read
    return any(HEAD_NAME.endswith(str(t)) if suffix else HEAD_NAME == str(t) for t in targets or ())


def _head_wrapped_by(llm_cfg) -> str | None:
    """The recipe key or adapter file that would put peft layers on the output head, so that `llmasr check` refuses
    it before training loads the weights to find out."""
    if llm_cfg.lora is not None and _targets_head(llm_cfg.lora.target_modules):
        return "model.llm.lora.target_modules"
    if llm_cfg.adapter:
        config = Path(llm_cfg.adapter) / "adapter_config.json"
        try:
            saved = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # loading the adapter names what is wrong with it
        if not isinstance(saved, dict):
            return None
        if _targets_head(saved.get("target_modules")):
            return f"the adapter's target_modules ({config})"
        if _targets_head(saved.get("modules_to_save"), suffix=True):
            return f"the adapter's modules_to_save ({config})"
    return None


class LigerLabelsHead(nn.Module):
    """The output head and cross-entropy over the labelled positions, fused: (selected hidden [M, H], target ids
    [M]) -> (summed loss, argmax hits). Owns no parameters: the head stays the LLM's (one copy in the state dict)."""

    def __init__(self, head: nn.Linear, loss_cls):
        super().__init__()
        self._head = [head]  # a list: not registered as a submodule
        self.loss = loss_cls(reduction="sum", return_token_accuracy=True)

    @property
    def weight(self) -> torch.Tensor:
        return self._head[0].weight

    def forward(self, selected: torch.Tensor, target_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.loss(self.weight, selected, target_ids, self._head[0].bias)
        # token_accuracy is a mean over the (all labelled) rows: back to a count, as the unfused path reports.
        n_correct = (out.token_accuracy.detach().float() * target_ids.numel()).round().long()
        return out.loss.float(), n_correct


def apply_fused_kernels(model: nn.Module, llm_cfg) -> None:
    """Patch the SpeechLLM `model`'s LLM with liger's kernels and give it the fused labels-only loss (after
    `check_fused_kernels` passed)."""
    if llm_cfg.fused_kernels == "none":
        return
    api = liger_transformers()
    base = base_lm(model.llm)
    model_type = base.config.model_type
    patch = getattr(api, f"{PATCH_PREFIX}{model_type}")
    patch(model=base, **patch_flags(patch))
    head = base.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise FusedKernelError(
            f"model.llm.fused_kernels: liger: the output head is a {type(head).__name__}, not a plain Linear (LoRA on "
            "lm_head?); the fused loss reads its weight directly. Leave lm_head out of lora.target_modules"
        )
    model.fused_head = LigerLabelsHead(head, api.LigerFusedLinearCrossEntropyLoss)
    log.info("fused kernels: liger RMSNorm, SwiGLU, RoPE (%s); fused linear cross-entropy on the labels", model_type)
