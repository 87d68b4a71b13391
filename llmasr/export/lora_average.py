"""Averaging the LoRA of several checkpoints as the mean of the models, not of the factors.

An adapted weight is W + s * B_i @ A_i in checkpoint i, so the averaged model holds W + s * mean_i(B_i @ A_i) (W
itself averaged element-wise when the base was trained too). Averaging A and B apart gives s * mean(B_i) @ mean(A_i),
another weight. The mean delta has rank up to N*r: its best rank-r approximation (truncated SVD, computed from the
thin factors without forming N products) becomes the adapter's factors, and what rank r cannot hold is added to the
base weight. The model then computes exactly the averaged model (a merged export writes it), and its adapter is the
closest rank-r adapter to the average (what an adapter-only export writes, leaving that remainder out).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from llmasr.export.merge import untie_adapted_embeddings
from llmasr.run_dir import CheckpointError

log = logging.getLogger(__name__)


def rank_r_mean(bs: list[torch.Tensor], as_: list[torch.Tensor], r: int):
    """(B', A', remainder, relative residual) for mean_i(bs[i] @ as_[i]) (bs: [out, r], as_: [r, in]).

    B' [out, r] @ A' [r, in] is its best rank-r approximation in Frobenius norm; remainder [out, in] is the mean less
    B' @ A'; the relative residual is |remainder| / |mean| (0 when the mean is 0). All in float64. The mean is
    (1/N) [B_1 .. B_N] @ [A_1; ..; A_N]: QR of both thin stacks leaves an SVD of an (N*r)-sized core.
    """
    n = len(bs)
    qb, rb = torch.linalg.qr(torch.cat(bs, dim=1))  # [out, k1], [k1, N*r]
    qa, ra = torch.linalg.qr(torch.cat(as_, dim=0).T)  # [in, k2], [k2, N*r]
    u, s, vh = torch.linalg.svd(rb @ ra.T / n, full_matrices=False)
    k = min(r, s.numel())
    root = s[:k].sqrt()
    b_new = torch.zeros(qb.shape[0], r, dtype=torch.float64)
    a_new = torch.zeros(r, qa.shape[0], dtype=torch.float64)
    b_new[:, :k] = qb @ (u[:, :k] * root)
    a_new[:k] = (root[:, None] * vh[:k]) @ qa.T
    remainder = (qb @ (u[:, k:] * s[k:])) @ (vh[k:] @ qa.T)
    total = s.square().sum().sqrt()
    rel = (s[k:].square().sum().sqrt() / total).item() if total > 0 else 0.0
    return b_new, a_new, remainder, rel


def _trained_lora_layers(model: nn.Module, trainable: set[str]) -> list[tuple[str, nn.Module, str]]:
    """(module path, peft LoRA layer, adapter name) of every adapter whose factors were trained."""
    from peft.tuners.lora import LoraLayer

    found = []
    for path, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for adapter in layer.lora_A:
            if f"{path}.lora_A.{adapter}.weight" in trainable:
                found.append((path, layer, adapter))
    return found


def _refuse_inexact(layers, trainable: set[str]) -> None:
    """Refuse a trained LoRA whose averaged model is not base + scale * mean(B_i @ A_i): a variant (DoRA's
    magnitude normalises the adapted weight), a LoRA layer of another kind, or LoRA tensors of no such layer."""
    from peft.tuners.lora import Linear

    covered = set()
    for path, layer, adapter in layers:
        variant = getattr(layer, "lora_variant", {}).get(adapter)
        if variant is not None or getattr(layer, "use_dora", {}).get(adapter):
            kind = type(variant).__name__ if variant is not None else "DoRA"
            raise CheckpointError(
                f"--average: {path} trains a LoRA variant ({kind}) whose weight is not base + scale * B @ A, so the "
                "mean of the checkpoints' models cannot be computed from its factors; export one checkpoint"
            )
        if not isinstance(layer, Linear):
            raise CheckpointError(
                f"--average: {path} is a {type(layer).__name__} LoRA layer; only LoRA on linear layers is averaged "
                "as the mean of the checkpoints' models; export one checkpoint"
            )
        covered |= {
            f"{path}.lora_A.{adapter}.weight",
            f"{path}.lora_B.{adapter}.weight",
            f"{path}.lora_B.{adapter}.bias",
        }
    left = sorted(n for n in trainable if "lora_" in n and n not in covered)
    if left:
        raise CheckpointError(
            f"--average: {len(left)} trained LoRA tensor(s) outside a LoRA linear layer, which cannot be averaged as "
            f"the mean of the checkpoints' models: {', '.join(left[:3])}; export one checkpoint"
        )


def average_lora(model: nn.Module, states: list[dict[str, torch.Tensor]], trainable: list[str]) -> dict[str, float]:
    """Make every trained LoRA adapter of `model` (its other trained tensors already averaged and loaded) hold the
    mean of the checkpoints' deltas `states` give: the best rank-r factors in lora_A/lora_B, the remainder added to
    the base weight. Returns {module path: relative residual of its rank-r adapter}. One state: nothing changes."""
    wanted = set(trainable)
    layers = _trained_lora_layers(model, wanted)
    if len(states) < 2 or not layers:
        return {}
    _refuse_inexact(layers, wanted)
    llm = getattr(model, "llm", None)
    if llm is not None and hasattr(llm, "get_base_model"):
        # the remainder goes into the base weight: LoRA on one side of tied embeddings must not change the other
        untie_adapted_embeddings(llm)
    residuals = {}
    with torch.no_grad():
        for path, layer, adapter in layers:
            a_key, b_key = f"{path}.lora_A.{adapter}.weight", f"{path}.lora_B.{adapter}.weight"
            if all(
                torch.equal(st[a_key], states[0][a_key]) and torch.equal(st[b_key], states[0][b_key]) for st in states
            ):
                residuals[path] = 0.0  # one delta N times: its factors as trained (refactored, they round otherwise)
                continue
            lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            b_new, a_new, remainder, residuals[path] = rank_r_mean(
                [st[b_key].double() for st in states], [st[a_key].double() for st in states], lora_a.shape[0]
            )
            lora_a.copy_(a_new.to(lora_a.dtype))
            lora_b.copy_(b_new.to(lora_b.dtype))
            base = layer.get_base_layer().weight
            delta = remainder * layer.scaling[adapter]
            base.add_((delta.T if layer.fan_in_fan_out else delta).to(base.dtype))
    worst = max(residuals, key=residuals.get)
    log.info(
        "averaged the LoRA of %d checkpoints as the mean of their deltas (%d adapted layers); the best rank-r "
        "adapters leave out at most %.3g of it (relative Frobenius norm, %s), held in the base weights",
        len(states), len(layers), residuals[worst], worst,
    )  # fmt: skip
    return residuals
