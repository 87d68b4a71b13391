"""Visit keys: what tells apart the visits a training epoch pays to one manifest line.

A mix weight of 2 or more (llmasr.data.mixed_manifest) visits a line several times in an epoch. Every random
draw of an item (speed factor and pauses, noise, gain, dither, SpecAugment, its hotword list) is keyed by
(seed, epoch, key), so each visit needs a key of its own, or the copies are one example trained twice: the same
augmentation, the same length, and so, sorted by length, mostly in the same batch. A visit's key is

    dataset index + copy * number of dataset items

where `copy` counts the visits to that line that come before it in the epoch's list. A line visited once keeps its
index as its key, so runs without repeated visits draw what they always drew. The sampler yields keys; the dataset
reads the line `dataset_index(key)` and makes the draws of `key`.
"""

from __future__ import annotations

import numpy as np


def visit_keys(items: np.ndarray, n: int) -> np.ndarray:
    """The key of each visit in `items` (an epoch's dataset indices in [0, n), repeats allowed), in its order."""
    items = np.asarray(items, dtype=np.int64)
    if items.size == 0:
        return items.copy()
    order = np.argsort(items, kind="stable")
    ordered = items[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, items.size]))
    copy = np.empty_like(items)
    copy[order] = np.arange(items.size) - run_start
    return items + copy * int(n)


def dataset_index(key: int, n: int) -> int:
    """The dataset index a visit key reads (see `visit_keys`)."""
    return int(key) % int(n) if n else int(key)
