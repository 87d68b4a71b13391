"""What waveform augmentation does to a training clip's length: its speed factor and the pauses put around it.

These draws are counter-based, a hash of (data.seed, epoch, dataset index, which draw), not taken from the item's
numpy Generator: the sampler draws a whole epoch's at once (vectorized) and cuts batches on the lengths the clips
will have, and the dataset draws the same item's when it reads the clip. Reserving the slowest speed factor and the
longest pauses for every clip instead makes batches smaller than the budget allows, and sorting clips by their
length before augmentation pads every batch by the spread of the factors. Everything else the augmentation draws
(the pauses' level, noise, gain, dither, SpecAugment) still comes from the item's Generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmasr.data.augment import AugmentConfig

_FACTOR, _PAUSED, _LEAD, _TRAIL = 1, 2, 3, 4  # one stream a draw
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, epoch: int, indices: np.ndarray, stream: int) -> np.ndarray:
    """One float64 in [0, 1) per index, a function of (seed, epoch, index, stream) alone."""
    key = np.zeros(1, dtype=np.uint64)
    for part in (seed, epoch, stream):
        key = _mix(key + np.uint64(int(part) % 2**64) + _GOLDEN)
    z = _mix(np.asarray(indices, dtype=np.int64).astype(np.uint64) * _GOLDEN + key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


@dataclass(frozen=True)
class ClipLengths:
    """Per item: its speed factor (the clip plays `factor` times faster, so it lasts duration / factor) and the
    seconds of pause before (`lead`) and after (`trail`) it; 1 and 0 where the augmentation is off."""

    factor: np.ndarray
    lead: np.ndarray
    trail: np.ndarray

    def item(self, i: int = 0) -> tuple[float, float, float]:
        return float(self.factor[i]), float(self.lead[i]), float(self.trail[i])


def draw_clip_lengths(cfg: AugmentConfig, seed: int, epoch: int, indices) -> ClipLengths:
    """The speed factors and pauses of dataset items `indices` in `epoch` (see the module docstring)."""
    idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
    factor, lead, trail = np.ones(idx.size), np.zeros(idx.size), np.zeros(idx.size)
    sp, si = cfg.speed_perturb, cfg.silence
    if sp.enable and sp.factors:
        choice = (uniforms(seed, epoch, idx, _FACTOR) * len(sp.factors)).astype(np.int64)  # uniforms are < 1
        factor = np.asarray(sp.factors, dtype=np.float64)[choice]
    if si.enable:
        paused = uniforms(seed, epoch, idx, _PAUSED) < si.prob
        lead = np.where(paused, si.lead[0] + uniforms(seed, epoch, idx, _LEAD) * (si.lead[1] - si.lead[0]), 0.0)
        trail = np.where(paused, si.trail[0] + uniforms(seed, epoch, idx, _TRAIL) * (si.trail[1] - si.trail[0]), 0.0)
    return ClipLengths(factor, lead, trail)


class EpochCosts:
    """For the sampler: (scale, seconds) per item of an epoch, so that a clip of d seconds is costed at
    d * scale + seconds, the length augmentation gives it (AugmentConfig.cost's worst case, drawn per item)."""

    def __init__(self, cfg: AugmentConfig, seed: int):
        self.cfg, self.seed = cfg, int(seed)

    @classmethod
    def of(cls, cfg: AugmentConfig, seed: int, frontend) -> EpochCosts | None:
        """None when no augmentation changes a clip's length. (A Whisper window holds every clip at one cost: there
        the draws change only what a clip holds of its window, the padding efficiency's audio, ItemCosts.heard_in.)"""
        if not (cfg.speed_perturb.enable or cfg.silence.enable):
            return None
        return cls(cfg, seed)

    def __call__(self, epoch: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        drawn = draw_clip_lengths(self.cfg, self.seed, epoch, indices)
        return 1.0 / drawn.factor, drawn.lead + drawn.trail

    @property
    def least(self) -> tuple[float, float]:
        """(scale, seconds) of the shortest draw: the fastest speed factor, and the shortest pauses when every clip
        gets them (prob 1), else none. A clip that passes the batch budget even so never fits a batch."""
        sp, si = self.cfg.speed_perturb, self.cfg.silence
        scale = 1.0 / max(sp.factors) if sp.enable and sp.factors else 1.0
        pad = float(si.lead[0] + si.trail[0]) if si.enable and si.prob >= 1.0 else 0.0
        return scale, pad


def augmented_costs(cfg: AugmentConfig, seed: int, frontend) -> dict:
    """The sampler's keywords for training batches (DynamicBucketSampler's cost_scale, cost_pad, epoch_costs)."""
    scale, pad = cfg.cost(frontend)
    return {"cost_scale": scale, "cost_pad": pad, "epoch_costs": EpochCosts.of(cfg, seed, frontend)}
