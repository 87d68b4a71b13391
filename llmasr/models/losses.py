"""Cross-entropy computed only where there are labels.

A speech-LLM batch is mostly audio and prompt positions whose labels are -100. The usual path (full logits, then
CrossEntropyLoss) materialises a [batch, sequence, vocab] tensor: 8 x 340 x 151,936 floats is 1.6 GB before its
gradient. Selecting the labelled hidden states first and running the output head on those alone gives the same
loss with a [labelled tokens, vocab] tensor, typically 10x smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


@dataclass
class TokenLoss:
    loss_sum: torch.Tensor  # summed cross-entropy over labelled tokens (float32)
    n_tokens: torch.Tensor  # number of labelled tokens (int64)
    n_correct: torch.Tensor  # argmax hits among them (int64)
    # with `groups`: [G, 3] float32, each group's rows' (loss_sum, n_tokens, n_correct); else None
    by_group: torch.Tensor | None = None


def labels_only_cross_entropy(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module, fused: nn.Module | None = None, transform=None,
    groups: torch.Tensor | None = None, n_groups: int = 0,
) -> TokenLoss:  # fmt: skip
    """Next-token CE of `lm_head(hidden)` against `labels`, evaluating the head only at labelled positions.

    hidden: [B, N, H] final hidden states; labels: [B, N] with IGNORE_INDEX where no loss applies. Position t
    predicts labels[t + 1], as in Hugging Face causal LMs. `fused` (llmasr.models.fused_kernels.LigerLabelsHead)
    computes head and loss of the selected positions in one kernel, without their logits. `transform`: what the
    LM's own forward does to the head's logits (llmasr.models.llm.logit_transform), or None. `groups` ([B] int64,
    each row's group in 0..n_groups-1; validation's manifest of each row): the sums of each group's rows too, beside
    the whole batch's (computed as without them), with no gradient.
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden {list(hidden.shape)} and labels {list(labels.shape)} disagree on [batch, sequence]")
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    at = mask.nonzero(as_tuple=True)  # once: each bool-mask index would search again (a device sync on a GPU)
    selected = hidden[:, :-1][at]  # [M, H]
    target_ids = targets[at]
    token_group = None if groups is None else groups.to(hidden.device)[at[0]]  # the group of each labelled token
    if fused is not None:
        loss_sum, n_correct = fused(selected, target_ids)
        by_group = None if groups is None else _fused_by_group(fused, selected, target_ids, token_group, n_groups)
        return TokenLoss(loss_sum=loss_sum, n_tokens=mask.sum(), n_correct=n_correct, by_group=by_group)
    # The head is called as a module (not F.linear on its weight) so ZeRO-3 gathers its partitioned weight.
    logits = lm_head(selected).float()
    if transform is not None:
        logits = transform(logits)
    loss_sum = F.cross_entropy(logits, target_ids, reduction="sum")
    by_group = None
    with torch.no_grad():
        hits = logits.argmax(-1) == target_ids
        n_correct = hits.sum()
        if groups is not None:  # from the same logits: the head runs once (under ZeRO-3, one gather on every rank)
            each = F.cross_entropy(logits, target_ids, reduction="none")
            per_token = torch.stack([each, torch.ones_like(each), hits.float()], dim=1)
            by_group = per_token.new_zeros(n_groups, 3).index_add_(0, token_group, per_token)
    return TokenLoss(loss_sum=loss_sum, n_tokens=mask.sum(), n_correct=n_correct, by_group=by_group)


@torch.no_grad()
def _fused_by_group(fused, selected, target_ids, token_group, n_groups: int) -> torch.Tensor:
    """[n_groups, 3] sums of the fused head and loss, run once over each group's tokens (it returns sums only)."""
    out = torch.zeros(n_groups, 3, dtype=torch.float32, device=selected.device)
    for g in token_group.unique().tolist():
        at = token_group == g
        loss_sum, n_correct = fused(selected[at], target_ids[at])
        out[g] = torch.stack([loss_sum.float(), at.sum().float(), n_correct.float()])
    return out


def group_rows(token_sums, ctc_rows, groups, n_groups: int) -> torch.Tensor:
    """SpeechLLMOutput.by_group: `token_sums` (TokenLoss.by_group) beside each group's CTC loss (`ctc_rows`, each
    row's; None without a head: 0) and rows."""
    groups = groups.to(token_sums.device)
    rows = torch.zeros(groups.shape[0], 2, dtype=torch.float32, device=token_sums.device)
    rows[:, 1] = 1.0
    if ctc_rows is not None:
        rows[:, 0] = ctc_rows.float().to(rows.device)
    return torch.cat([token_sums, rows.new_zeros(n_groups, 2).index_add_(0, groups, rows)], dim=1)


def full_logits_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference: summed next-token CE from full logits (what HF's model(labels=...) computes, unreduced)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
