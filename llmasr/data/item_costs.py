"""What each item costs a batch, in the budget's units: seconds of padded audio (data.batching.max_seconds) or
feature frames (max_frames); a batch of B items whose costliest costs c holds B * c of the budget.

An item costs its duration (cut to max_duration when training truncates; at least `min_item_seconds`, a Whisper
window), stretched by what waveform augmentation adds to it. Three costs are kept: the worst case (`sizes`: the
slowest speed factor and the longest pauses, AugmentConfig.cost); when an `epoch_costs` draws each clip's own speed
factor and pauses (llmasr.data.clip_lengths.EpochCosts), the cost of each visit in an epoch (`drawn`), which the sampler
cuts that epoch's batches by; and the least an item can cost (`least`: its shortest draw, epoch_costs.least, else the
worst case), which decides once which items can never fit a batch. An item between the two fits in the epochs whose
draws let it. Under a fixed window every clip costs the window whatever its draw: there the draws give only the audio
it holds of the window (`heard_in`), as the augmenter slows and pads a clip no further than the window.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EpochCostFn = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


def as_held(seconds: float) -> float:
    """A duration limit as the manifests hold durations, in float32 (20.1 s as 20.1000004): a line of exactly the
    limit then compares equal to it, not past it."""
    return float(np.float32(seconds))


def at_limit(sampler, items: np.ndarray) -> str:
    """The lines among `items` (a DynamicBucketSampler's) that it batches at a duration limit as the manifests hold
    it (as_held) but past the limit as written, as "N line(s) of exactly data.batching.KEY (S s)", or "": an llmasr
    before as_held skipped them, so a sampler position it saved counts batches without them."""
    d, kept = sampler.durations[items], sampler.filter_codes[items] < 0
    limits = [("min_duration", sampler.min_duration, np.less)]
    if not sampler.truncate_to_max:  # (with it, longer lines are cut, not skipped)
        limits.append(("max_duration", sampler.max_duration, np.greater))
    said = []
    for key, limit, past in limits:
        with np.errstate(invalid="ignore"):
            n = int((kept & past(d, limit) & ~past(d, as_held(limit))).sum())
        if n:
            said.append(f"{n} line(s) of exactly data.batching.{key} ({limit:g} s)")
    return " and ".join(said)


class ItemCosts:
    """Per-item costs of `durations` (NaN: unknown, costed 0; the sampler skips those items) and the budget."""

    def __init__(
        self,
        durations: np.ndarray,
        *,
        max_seconds: float | None,
        max_frames: int | None,
        frames_per_second: float | None,
        max_duration: float,
        truncate_to_max: bool,
        min_item_seconds: float | None = None,
        cost_scale: float = 1.0,
        cost_pad: float = 0.0,
        epoch_costs: EpochCostFn | None = None,
    ):
        eff = np.where(np.isnan(durations), 0.0, durations)
        if truncate_to_max:
            eff = np.minimum(eff, max_duration)
        heard = eff
        if min_item_seconds is not None:
            heard = np.minimum(eff, float(min_item_seconds))
            eff = np.maximum(eff, float(min_item_seconds))
        self.unscaled = eff
        self.frames_per_second = frames_per_second if max_frames is not None else None
        # the audio each item holds of what it costs, where a fixed window pads it (None: all of it): the window's
        # rest is padding the encoder runs over, which the padding efficiency counts (every clip costing the window
        # had read as no padding at all)
        self.heard_s = None if min_item_seconds is None else heard  # seconds: heard_in gives them in budget units
        self.window = min_item_seconds
        # a window's clips cost it at any draw: their draws give only what each holds of it (heard_in)
        self.heard_costs = epoch_costs if min_item_seconds is not None else None
        epoch_costs = None if min_item_seconds is not None else epoch_costs
        self.budget = float(max_frames if max_frames is not None else max_seconds)
        self.cost = (float(cost_scale), float(cost_pad))  # the worst augmentation adds: duration x scale + seconds
        self.sizes = self._units(eff * self.cost[0] + self.cost[1])
        self.epoch_costs = epoch_costs
        least = getattr(epoch_costs, "least", None)
        self.least = self.sizes if least is None else np.minimum(self._units(eff * least[0] + least[1]), self.sizes)

    def _units(self, seconds: np.ndarray) -> np.ndarray:
        if self.frames_per_second is None:
            return seconds
        return np.ceil(seconds * float(self.frames_per_second) - 1e-9)

    def drawn(self, epoch: int, items: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """The cost of each of `items` in `epoch`, its lengths drawn by its visit key in `keys` (default: the items
        themselves; llmasr.data.visit_keys): the worst case unless epoch_costs draws them, and never above it."""
        worst = self.sizes[items]
        if self.epoch_costs is None or not items.size:
            return worst
        scale, pad = self.epoch_costs(epoch, items if keys is None else keys)
        return np.minimum(self._units(self.unscaled[items] * scale + pad), worst)

    def heard_in(self, epoch: int, items: np.ndarray, keys: np.ndarray) -> np.ndarray | None:
        """The audio each of `items` holds of what it costs in `epoch` (its visit key in `keys`), where a fixed window
        pads it: its length at this epoch's speed factor and pauses, at most the window; None: all it costs."""
        if self.heard_s is None:
            return None
        if self.heard_costs is None or not items.size:
            return self._units(self.heard_s[items])
        scale, pad = self.heard_costs(epoch, keys)
        return self._units(np.minimum(self.heard_s[items] * scale + pad, float(self.window)))

    def fitting(self, epoch: int, items: np.ndarray, keys: np.ndarray, keep: np.ndarray, num_buckets: int, buckets):
        """Per visit of an epoch (`items`: its dataset indices, `keys`: its visit keys): (its cost in `epoch`, its
        bucket, the positions of `keep` that fit the budget then, how many of them did not): the costs computed once
        (`buckets`: every item's), or, when augmentation's lengths are drawn per epoch, `keep`'s at this epoch's
        lengths, bucketed by this epoch's quantiles, less the ones these lengths put over the budget."""
        sizes = self.sizes[items]
        if self.epoch_costs is None:
            return sizes, buckets[items], keep, 0
        sizes[keep] = self.drawn(epoch, items[keep], keys[keep])
        fit = sizes[keep] <= self.budget
        return sizes, quantile_buckets(sizes, keep[fit], num_buckets), keep[fit], int(fit.size - fit.sum())


def quantile_buckets(sizes: np.ndarray, kept: np.ndarray, num_buckets: int) -> np.ndarray:
    """Every item's bucket: `num_buckets` cost quantiles of the `kept` items split them (0 = cheapest)."""
    qs = np.linspace(0.0, 1.0, num_buckets + 1)[1:-1]
    boundaries = np.unique(np.quantile(sizes[kept], qs)) if kept.size and qs.size else np.zeros(0)
    return np.searchsorted(boundaries, sizes, side="right").astype(np.int64)


def per_batch(flat: np.ndarray, lens: np.ndarray, values: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """`ufunc` reduced over each batch's items' `values`, one number a batch: the batches' items (positions into
    `values`) are `flat`, batch after batch, `lens` long each (never 0)."""
    starts = np.cumsum(lens) - lens
    return ufunc.reduceat(values[flat], starts) if lens.size else np.zeros(0, dtype=values.dtype)
