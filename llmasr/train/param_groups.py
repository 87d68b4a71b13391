"""Optimizer param groups: one per (branch, decay / no-decay), trainable parameters only.

The model's top-level attributes are its branches: `encoder`, `adaptor`, `ctc_head` (branch "ctc") and `llm`.
Groups are named "<branch>" (decayed tensors) and "<branch>_no_decay" (biases, norm weights, 1-d tensors,
relative-position biases), and carry their branch's lr, weight_decay, betas and eps, so torch.optim.AdamW takes the
list as is. Frozen branches get no group, and no group is ever empty: DeepSpeed drops empty groups in place, which
would leave a scheduler built beforehand pointing at groups that no longer exist.
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import nn

from llmasr.config_io import ConfigError
from llmasr.train.config import BRANCHES, OptimConfig
from llmasr.train.schedulers import NO_DECAY_SUFFIX, warmup_warnings

# Model attribute holding each branch.
BRANCH_ATTRS: dict[str, str] = {"encoder": "encoder", "adaptor": "adaptor", "ctc": "ctc_head", "llm": "llm"}

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = (*_NORM_TYPES, nn.RMSNorm)
# What makes a branch train, for the warning about settings given to one that does not.
_TRAIN_IT = {"encoder": "model.encoder.freeze: false, or model.encoder.lora", "adaptor": "model.adaptor.freeze: false",
             "ctc": "model.ctc.weight > 0", "llm": "model.llm.freeze: false, or model.llm.lora"}  # fmt: skip
# Parameter names (last component) that never decay whatever their shape: Transformer-XL style relative-position
# biases of conformer attention.
_NO_DECAY_NAMES = ("pos_bias_u", "pos_bias_v")


def _is_norm(module: nn.Module) -> bool:
    # HF models define their own norms (Qwen2RMSNorm, LlamaRMSNorm...) that subclass nn.Module directly.
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d", "Norm1d"))


def _no_decay_by_name(p_name: str, ndim: int) -> bool:
    """What a parameter's own name and rank say (a norm module's weights are 1-D as well)."""
    return ndim < 2 or p_name in _NO_DECAY_NAMES or p_name.endswith("bias")


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for p_name, p in module.named_parameters(recurse=False):
            ndim = len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 leaves a partitioned weight 1-D and empty
            if _no_decay_by_name(p_name, ndim) or _is_norm(module):
                names.add(prefix + p_name)
    return names


def group_name(name: str, ndim: int) -> str | None:
    """The param group a trainable parameter `name` of rank `ndim` lands in, read from the name alone (for files
    without the model: a ZeRO-0 checkpoint's optimizer lists its fp32 masters per group, unnamed)."""
    branch = _branch_of_param(name)
    if branch is None:
        return None
    return branch + (NO_DECAY_SUFFIX if _no_decay_by_name(name.rsplit(".", 1)[-1], ndim) else "")


def _branch_of_param(name: str) -> str | None:
    top = name.split(".", 1)[0]
    for branch, attr in BRANCH_ATTRS.items():
        if top == attr:
            return branch
    return None


def numel(p: nn.Parameter) -> int:
    """A parameter's whole size: ZeRO-3 partitions it as it is made (numel() is then this rank's 0; ds_numel the
    whole)."""
    return int(getattr(p, "ds_numel", p.numel()))


def _branch_state(model: nn.Module, branch: str) -> str:
    """The branch absent from the model, or frozen / trainable with its counts."""
    module = getattr(model, BRANCH_ATTRS[branch], None)
    if module is None:
        return "absent"
    params = list(module.parameters())
    trainable = sum(numel(p) for p in params if p.requires_grad)
    total = sum(numel(p) for p in params)
    state = "frozen" if trainable == 0 else "trainable"
    return f"{state} ({trainable:,} of {total:,} parameters trainable)"


def _freeze_report(model: nn.Module) -> str:
    return "; ".join(f"{branch}: {_branch_state(model, branch)}" for branch in BRANCH_ATTRS)


def idle_branch_settings(model: nn.Module, optim_cfg: OptimConfig) -> list[str]:
    """One warning per optim.branches section that sets something for a branch that trains nothing (frozen, or a
    CTC head the model lacks): the settings change nothing, and a user who raised the encoder's lr believing it
    trains learns so here. A warning, not a refusal: freezing a branch with one override (model.encoder.freeze=true)
    leaves the recipe's settings for it in place, as an experiment wants."""
    out = []
    for branch, own in sorted(optim_cfg.branches.items()):
        keys = [f.name for f in fields(own) if getattr(own, f.name) is not None] if own is not None else []
        module = getattr(model, BRANCH_ATTRS[branch], None)
        if keys and not (module is not None and any(p.requires_grad for p in module.parameters())):
            out.append(
                f"optim.branches.{branch}: sets {', '.join(keys)}, but the {branch} branch trains nothing "
                f"({_branch_state(model, branch)}): the settings change nothing (to train it: {_TRAIN_IT[branch]})"
            )
    return out


def optim_warnings(model: nn.Module, optim_cfg: OptimConfig, groups: list[dict], total: int) -> list[str]:
    """What the recipe's optimizer settings will not do, as `llmasr check` reports it and train.log warns it: a
    warmup longer than the run's `total` updates (schedulers.warmup_warnings), settings for a branch that trains
    nothing (idle_branch_settings)."""
    return warmup_warnings(optim_cfg, (g["branch"] for g in groups), total) + idle_branch_settings(model, optim_cfg)


def build_param_groups(model: nn.Module, optim_cfg: OptimConfig) -> list[dict]:
    """Param groups of `model`'s trainable parameters, in branch order (encoder, adaptor, ctc, llm), decayed group
    before no-decay group. Raises ConfigError when nothing is trainable or a trainable parameter belongs to no
    branch."""
    no_decay = _no_decay_names(model)
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    stray = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        branch = _branch_of_param(name)
        if branch is None:
            stray.append(name)
            continue
        buckets.setdefault((branch, name in no_decay), []).append(p)
    if stray:
        raise ConfigError(
            f"trainable parameter(s) outside every branch: {stray[:10]}{' ...' if len(stray) > 10 else ''}; "
            f"parameters must live under {sorted(BRANCH_ATTRS.values())} (or be frozen)"
        )
    if not buckets:
        raise ConfigError(f"no trainable parameters: {_freeze_report(model)}")
    groups = []
    for branch in BRANCHES:
        settings = optim_cfg.branch(branch)
        for is_no_decay in (False, True):
            params = buckets.get((branch, is_no_decay))
            if not params:
                continue
            groups.append(
                {
                    "params": params,
                    "name": branch + (NO_DECAY_SUFFIX if is_no_decay else ""),
                    "branch": branch,
                    "lr": settings.lr,
                    "weight_decay": 0.0 if is_no_decay else settings.weight_decay,
                    "betas": settings.betas,
                    "eps": settings.eps,
                }
            )
    return groups


def describe_param_groups(groups: list[dict]) -> str:
    """A table of the groups: name, tensors, parameters, peak lr, weight decay."""
    rows = [("group", "tensors", "params", "lr", "weight_decay")]
    for g in groups:
        n = sum(numel(p) for p in g["params"])
        rows.append((g["name"], str(len(g["params"])), f"{n:,}", f"{g['lr']:.3g}", f"{g['weight_decay']:g}"))
    total = sum(numel(p) for g in groups for p in g["params"])
    rows.append(("total", str(sum(len(g["params"]) for g in groups)), f"{total:,}", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
