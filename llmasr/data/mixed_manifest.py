"""Several manifests behind one index space, visited with weights (llmasr.data.manifest reads each)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from llmasr.data.item_filters import FILTER_REASONS
from llmasr.data.manifest import BadRecord, Manifest, Utterance


class MixedManifest:
    """Several manifests behind one index space, sampled with weights.

    Index space: manifest k's record j is index offsets[k] + j (len() = total records). `epoch_indices(epoch,
    seed)` gives the indices to visit in an epoch (grouped by manifest, not shuffled: the sampler shuffles).
    Weight w means w passes over that manifest per epoch in expectation: floor(w) full passes, plus a random
    subset of round(frac(w) * len) distinct records drawn afresh each epoch. So [1.0, 3.0] visits the second
    manifest three times per epoch, [1.0, 0.5] half of the second. Deterministic for (seed, epoch).
    """

    def __init__(self, manifests: Sequence[Manifest], weights: Sequence[float] | None = None):
        if not manifests:
            raise ValueError("MixedManifest needs at least one manifest")
        weights = [1.0] * len(manifests) if weights is None else [float(w) for w in weights]
        if len(weights) != len(manifests):
            raise ValueError(f"{len(manifests)} manifests but {len(weights)} weights")
        for w in weights:
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"manifest weights must be finite and >= 0, got {weights}")
        if sum(weights) <= 0:
            raise ValueError("at least one manifest weight must be > 0")
        self.manifests = list(manifests)
        self.weights = weights
        self.offsets = np.cumsum([0] + [len(m) for m in self.manifests]).astype(np.int64)
        self.path = ",".join(m.path for m in self.manifests)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Virtual index -> (manifest number, index in it)."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, i - int(self.offsets[k])

    def __getitem__(self, i: int) -> Utterance:
        k, j = self.locate(i)
        return self.manifests[k][j]

    def parsed(self, i: int) -> tuple[dict, Utterance]:
        k, j = self.locate(i)
        return self.manifests[k].parsed(j)

    def durations(self) -> np.ndarray:
        return np.concatenate([m.durations() for m in self.manifests]).astype(np.float32, copy=False)

    def line_bytes(self) -> np.ndarray:
        return np.concatenate([m.line_bytes() for m in self.manifests])

    def set_durations(self, indices: np.ndarray, seconds: np.ndarray) -> None:
        indices, seconds = np.asarray(indices, dtype=np.int64), np.asarray(seconds)
        owner = np.searchsorted(self.offsets, indices, side="right") - 1
        for k in np.unique(owner):
            at = owner == k
            self.manifests[int(k)].set_durations(indices[at] - self.offsets[k], seconds[at])

    def fill_durations(self) -> list[BadRecord]:
        bad: list[BadRecord] = []
        for m in self.manifests:
            bad.extend(m.fill_durations())
        return bad

    def epoch_indices(self, epoch: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, 0x6D6978])
        parts = []
        for k, (m, w) in enumerate(zip(self.manifests, self.weights)):
            n = len(m)
            if n == 0 or w == 0:
                continue
            base = np.arange(n, dtype=np.int64) + self.offsets[k]
            full = int(math.floor(w))
            parts.extend([base] * full)
            share = (w - full) * n  # w passes in expectation: the fraction of a line is a coin (round() lost 0.5)
            extra = int(math.floor(share))
            if share > extra and rng.random() < share - extra:
                extra += 1
            if extra:
                parts.append(np.sort(rng.choice(base, size=extra, replace=False)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def visits_text(self) -> tuple[str | None, list[str]]:
        """What an epoch visits of each manifest (lines x weight, in expectation; None when every weight is 1), and a
        warning for each manifest an epoch visits less than once in expectation: most epochs then train on none of
        its lines, and nothing else says so (its fraction of a line is a coin each epoch)."""
        parts, sparse = [], []
        for m, w in zip(self.manifests, self.weights):
            visits = w * len(m)
            parts.append(f"{m.path}: {len(m)} lines x weight {w:g} = {visits:g} visits")
            if 0 < visits < 1:
                sparse.append(
                    f"{m.path}: weight {w:g} x {len(m)} lines is {visits:g} visits an epoch in expectation: an epoch "
                    f"trains on one of its lines with chance {visits:.2g}, else on none (raise its weight to at least "
                    f"{1 / len(m):.3g} for a line every epoch)"
                )
        if all(w == 1 for w in self.weights):  # each line once an epoch: "N items" says it all
            return None, sparse
        return "mixed manifests, an epoch's visits in expectation: " + "; ".join(parts), sparse

    def epoch_lines(
        self, visited: np.ndarray, seconds: np.ndarray, codes: np.ndarray, epoch: int
    ) -> tuple[list[str], list[str]]:
        """What an epoch trains of each manifest, counted from its batches: `visited`, the dataset index of each
        visit the ranks train (a padding duplicate's once); `seconds`, each line's duration as batching holds it;
        `codes`, each line's filter (llmasr.data.item_filters). Lines: each manifest's weight, lines, visits, passes
        and hours, then the total; warnings: each manifest of weight > 0 that the epoch trains none of although it
        expects a visit or more (its lines all skipped: the weight alone would hide that it is gone)."""
        owner = np.searchsorted(self.offsets, np.asarray(visited, dtype=np.int64), side="right") - 1
        counts = np.bincount(owner, minlength=len(self.manifests))
        secs = np.bincount(owner, weights=np.asarray(seconds, dtype=np.float64)[visited], minlength=len(counts))
        lines, warnings = [], []
        for k, (m, w) in enumerate(zip(self.manifests, self.weights)):
            n, got = len(m), int(counts[k])
            passes = "no lines" if not n else "1 pass" if got == n else f"{got / n:.3g} passes"
            lines.append(f"{m.path}: weight {w:g}, {n} lines: {got} visits ({passes}), {_hours(secs[k])}")
            if got or w * n < 1:  # under one visit expected: visits_text warns of that
                continue
            own = codes[self.offsets[k] : self.offsets[k + 1]]
            if (own >= 0).all():
                why = ", ".join(f"{int((own == c).sum())} {FILTER_REASONS[c]}" for c in np.unique(own).tolist())
                warnings.append(f"{m.path}: every epoch skips all {n} of its lines ({why}): whatever its weight "
                                f"({w:g}), the mix trains on the other manifests alone")  # fmt: skip
            else:
                warnings.append(
                    f"{m.path}: epoch {epoch} trains none of its lines, though weight {w:g} x {n} lines expects "
                    f"{w * n:g} visits (skipped or left out: see the skipped counts)"
                )
        lines.append(f"total: {int(counts.sum())} visits, {_hours(secs.sum())}")
        return lines, warnings

    def __repr__(self) -> str:
        return f"MixedManifest({len(self.manifests)} manifests, {len(self)} records, weights={self.weights})"


def epoch_items(visits: int, lines: int, epoch: int, name: str = "train") -> str:
    """What an epoch of data.NAME batches, as train.log's data line and `llmasr check` both say it: its items, or under
    a weighted mix (some lines visited more than once, some not at all) its visits and lines."""
    if visits == lines:
        return f"{lines} items"
    return f"{visits} visits of {lines} lines in epoch {epoch} (data.{name}'s weights)"


def epoch_mix(manifest, sampler, epoch: int) -> tuple[list[str], list[str]]:
    """MixedManifest.epoch_lines over the batches `sampler` deals in `epoch` (`llmasr check` and train.log say it
    alike); nothing where `manifest` is one manifest read once."""
    if not isinstance(manifest, MixedManifest):
        return [], []
    visited = sampler.epoch_plan(epoch).trained_keys() % sampler.durations.size  # a visit key reads its line mod n
    return manifest.epoch_lines(visited, sampler.durations, sampler.filter_codes, epoch)


def _hours(seconds: float) -> str:
    """Hours, or seconds where that would read 0.00 h (a tiny or a mostly skipped manifest)."""
    return f"{seconds / 3600:.2f} h" if seconds >= 36 else f"{seconds:.1f} s"
