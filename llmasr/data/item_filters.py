"""Which items the sampler never batches, and why: decided once, from each item's duration, lengths and least cost.

Items the caller already knows are bad (`skip`, reason bad_line), items with an unknown (NaN) duration, shorter than
min_duration, longer than max_duration (unless truncate_to_max, which then counts them as `truncated` and costs them
at max_duration), with target_len above max_target_len, or too big to fit a batch on their own are skipped, each for
the first of these that holds. When augmentation draws each clip's length per epoch (epoch_costs), a clip too big at
its shortest draw is skipped every epoch, and one that fits only at some draws (`fits_sometimes`) is skipped in the
epochs whose draws put it over the budget (llmasr.data.item_costs). llmasr.data.sampler counts them per epoch
(`.filtered`); a checkpoint's plan record names a line whose filter changed (llmasr.data.plan_record).
"""

from __future__ import annotations

import hashlib

import numpy as np

FILTER_REASONS = ("unknown_duration", "too_short", "too_long", "target_too_long", "over_batch_budget", "bad_line")
BATCHED = -1  # the code of an item no filter skips


def filter_items(
    durations: np.ndarray, least: np.ndarray, budget: float, *, skip: np.ndarray | None, min_duration: float,
    max_duration: float, truncate_to_max: bool, target_lens: np.ndarray | None, max_target_len: int | None,
    max_target_tokens: int | None, llm_lens: np.ndarray | None, llm_new: np.ndarray | None,
    max_llm_tokens: int | None,
) -> np.ndarray:  # fmt: skip
    """Each item's first filter, as its index in FILTER_REASONS, else BATCHED. `least`: each item's least cost in
    budget units (llmasr.data.item_costs.ItemCosts.least); min/max_duration as the manifests hold durations
    (item_costs.as_held); `llm_new`: LLM positions generation adds after the padded batch; `max_llm_tokens` None
    when no cap applies, or an item past it is batched alone (decoding)."""
    n = durations.size
    codes = np.full(n, BATCHED, dtype=np.int8)

    def mark(mask: np.ndarray, reason: str) -> None:
        codes[(codes == BATCHED) & mask] = FILTER_REASONS.index(reason)

    with np.errstate(invalid="ignore"):
        if skip is not None and len(skip):
            bad = np.zeros(n, dtype=bool)
            bad[np.asarray(skip, dtype=np.int64)] = True
            mark(bad, "bad_line")
        mark(np.isnan(durations), "unknown_duration")
        mark(durations < min_duration, "too_short")
        if not truncate_to_max:
            mark(durations > max_duration, "too_long")
        if target_lens is not None and max_target_len is not None:
            mark(target_lens > max_target_len, "target_too_long")
        over = least > budget  # at no draw of augmentation's lengths
        if target_lens is not None and max_target_tokens is not None:
            over |= target_lens > max_target_tokens
        if max_llm_tokens is not None:
            over |= llm_lens + (0 if llm_new is None else llm_new) > max_llm_tokens
        mark(over, "over_batch_budget")
    return codes


def filter_counts(codes: np.ndarray) -> dict[str, int]:
    """reason -> how many of `codes` it skips (the reasons that skip none left out)."""
    counts = np.bincount(codes[codes >= 0], minlength=len(FILTER_REASONS))
    return {name: int(c) for name, c in zip(FILTER_REASONS, counts) if c}


def counts_text(counts: dict[str, int]) -> str:
    """filter_counts in words ("too_long 3, over_batch_budget 1", "none"): one wording for train.log, `llmasr check`
    and `llmasr data check`."""
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "none"


def unusable_signature(codes: np.ndarray) -> list:
    """[count, sha1 of the indices] of the lines screened unusable before loading: what a saved position names, so a
    resume whose data now plans other batches (a line's audio gone since, or back) says so."""
    unusable = np.flatnonzero(codes == FILTER_REASONS.index("bad_line")).astype(np.int64)
    return [int(unusable.size), hashlib.sha1(unusable.tobytes()).hexdigest()]


def reason_text(code: int) -> str:
    """An item's filter code in words: "batched", or "skipped as REASON"."""
    return "batched" if code < 0 else f"skipped as {FILTER_REASONS[code]}"
