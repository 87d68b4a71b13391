"""How sure an error rate is: bootstrap over utterances (Bisani and Ney, "Bootstrap estimates for confidence
intervals in ASR performance evaluation", ICASSP 2004).

Utterances are drawn with replacement, as many as there are, and the corpus rate (errors summed over units summed)
is computed on each draw. The interval is the middle `level` of those rates; the probability of improvement of
system A over system B is the share of draws, the same utterances for both, on which A makes fewer errors (ties
count half). Draws come from a fixed seed, so a report does not change between runs on the same hypotheses.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


DRAWN_AT_ONCE = 1 << 22  # utterance indices held at a time: a million utterances drew 8 GB of them in one array


def _resampled_sums(*values: np.ndarray, resamples: int, seed: int) -> list[np.ndarray]:
    """Each of `values` (one number an utterance, the same utterances) summed over every resample of the utterances
    drawn with replacement: [resamples] each. The draws are made a block of resamples at a time, the same stream as
    one [resamples, n] draw, so memory does not grow with resamples x utterances."""
    n = len(values[0])
    rng = np.random.default_rng(seed)
    sums = [np.empty(resamples, dtype=np.float64) for _ in values]
    block = max(1, DRAWN_AT_ONCE // max(n, 1))
    for lo in range(0, resamples, block):
        idx = rng.integers(0, n, size=(min(block, resamples - lo), n))
        for out, v in zip(sums, values):
            out[lo : lo + len(idx)] = v[idx].sum(axis=1)
    return sums


def rate_interval(
    errors: list[int], units: list[int], *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """(low, high) of the corpus error rate over utterance resamples (those holding reference units); None with
    fewer than two utterances holding reference units (nothing to resample: one spoken utterance beside silent
    clips gave a zero-width interval)."""
    err, ref = np.asarray(errors, dtype=np.float64), np.asarray(units, dtype=np.float64)
    if len(err) != len(ref):
        raise ValueError(f"rate_interval: {len(err)} error counts against {len(ref)} unit counts")
    if (ref > 0).sum() < 2:
        return None
    errs, totals = _resampled_sums(err, ref, resamples=resamples, seed=seed)
    # a draw of empty references only (silent clips) has no rate: counted as 0 it dragged the low end to 0
    rates = errs[totals > 0] / totals[totals > 0]
    if not rates.size:
        return None
    tail = (1.0 - level) / 2
    low, high = np.quantile(rates, [tail, 1.0 - tail])
    return float(low), float(high)


def improvement_probability(
    errors_a: list[int], errors_b: list[int], *, resamples: int = RESAMPLES, seed: int = 0
) -> float:
    """P(A makes fewer errors than B) over paired utterance resamples (ties count half): the two systems'
    per-utterance error counts on the same utterances, in the same order."""
    a, b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    if len(a) != len(b) or not len(a):
        raise ValueError(f"improvement_probability: need the same utterances, got {len(a)} and {len(b)} counts")
    (diff,) = _resampled_sums(a - b, resamples=resamples, seed=seed)
    return float(((diff < 0).sum() + 0.5 * (diff == 0).sum()) / resamples)


def paired_change(
    errors_a: list[int],
    errors_b: list[int],
    units: list[int],
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """How system B's corpus rate differs from system A's on the same utterances (their per-utterance error counts
    and reference units, in one order): {"low", "high"}: the middle `level` of (rate B - rate A) over paired
    utterance resamples (None each where no draw holds a reference unit), and "p_better": the share of draws on which
    B makes fewer errors (improvement_probability's)."""
    a, b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    ref = np.asarray(units, dtype=np.float64)
    if not (len(a) == len(b) == len(ref)) or not len(a):
        raise ValueError(f"paired_change: need the same utterances, got {len(a)}, {len(b)} and {len(ref)} counts")
    diff, totals = _resampled_sums(b - a, ref, resamples=resamples, seed=seed)
    changes = diff[totals > 0] / totals[totals > 0]
    tail = (1.0 - level) / 2
    low, high = (float(q) for q in np.quantile(changes, [tail, 1.0 - tail])) if changes.size else (None, None)
    p_better = improvement_probability(errors_b, errors_a, resamples=resamples, seed=seed)  # the same draws
    return {"low": low, "high": high, "p_better": p_better}
