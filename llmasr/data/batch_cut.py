"""The sampler's cut of one bucket into batches, and what an epoch's cut hands on to the ranks' grouping.

A bucket's items (positions in the epoch's visits, in random order) are taken in windows of `shuffle_buffer`;
each window is sorted by cost and cut greedily: an item joins the current batch while B * the costliest item stays
within the budget (and B * the longest target within max_target_tokens). What is left at a window's end joins the
next window, what is left at a bucket's end the next (longer) bucket. `check_settings` refuses settings no cut can
work with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import chain

import numpy as np


def cut_batches(
    items: np.ndarray,
    carry: list[int],
    out: list[list[int]],
    sizes: np.ndarray,
    target_lens: np.ndarray | None,
    budget: float,
    max_target_tokens: int | None,
    shuffle_buffer: int,
) -> list[int]:
    """Append to `out` the batches of one bucket's `items` (already in the order to use), `carry` in front; `sizes`
    and `target_lens` are per position. Returns the bucket's leftover, the last batch, not yet full."""
    cap_t = max_target_tokens if target_lens is not None else None
    window = shuffle_buffer if shuffle_buffer > 0 else max(items.size, 1)
    for start in range(0, max(items.size, 1), window):
        pool = np.concatenate([np.asarray(carry, dtype=np.int64), items[start : start + window]])
        if shuffle_buffer > 0:
            pool = pool[np.argsort(sizes[pool], kind="stable")]
        cur: list[int] = []
        cur_max, cur_tmax = 0.0, 0
        for i in pool.tolist():
            s = sizes[i]
            new_max = s if s > cur_max else cur_max
            t = int(target_lens[i]) if cap_t is not None else 0
            new_tmax = t if t > cur_tmax else cur_tmax
            over = (len(cur) + 1) * new_max > budget or (cap_t is not None and (len(cur) + 1) * new_tmax > cap_t)
            if cur and over:
                out.append(cur)
                cur, new_max, new_tmax = [], s, t
            cur.append(i)
            cur_max, cur_tmax = new_max, new_tmax
        carry = cur
    return carry


def as_keys(batches: list[list[int]], keys: np.ndarray) -> list[list[int]]:
    """`batches` of positions in an epoch's visits as the visits' `keys`."""
    if np.array_equal(keys, np.arange(keys.size)):  # every item visited once, in order: positions are the keys
        return batches
    lens = np.fromiter(map(len, batches), dtype=np.int64, count=len(batches))
    flat = keys[np.fromiter(chain.from_iterable(batches), dtype=np.int64, count=int(lens.sum()))].tolist()
    ends = np.cumsum(lens).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]


@dataclass
class OrderedBatches:
    """An epoch's batches in cost order (as visit keys, llmasr.data.visit_keys), per batch its summed and its
    largest cost, the epoch's filter counts, its items (dataset indices) and those batched, and its generator,
    positioned where the ranks' grouping goes on drawing from it."""

    batches: list[list[int]]
    cost: np.ndarray
    longest: np.ndarray
    filtered: dict[str, int]
    items: np.ndarray
    kept: np.ndarray
    rng: np.random.Generator

    def sha1(self) -> str:
        """The batches and their order, hashed: what a saved sampler position counts into (the same at any world
        size)."""
        sizes = np.fromiter(map(len, self.batches), dtype=np.int64, count=len(self.batches))
        keys = np.fromiter(chain.from_iterable(self.batches), dtype=np.int64, count=int(sizes.sum()))
        return hashlib.sha1(sizes.tobytes() + keys.tobytes()).hexdigest()


def check_position(state: dict, planned: int, sha1: str) -> None:
    """A saved sampler `state` must count into this epoch's plan: `planned` batches per rank (at the saved world
    size) made of the batches `sha1` hashes. Other batches of the same count come from manifests whose lines were
    reordered or with other durations: a resume would skip some utterances of the epoch and train others twice."""
    if "num_batches" in state and int(state["num_batches"]) != planned:
        raise ValueError(
            f"cannot resume: the saved epoch had {state['num_batches']} batches per rank, this plan has "
            f"{planned} (batching settings changed?)"
        )
    if state.get("batches_sha1", sha1) != sha1:
        raise ValueError(
            f"cannot resume epoch {state['epoch']} at batch {state['batches_yielded']}: the training data "
            "(data.train) now makes other batches of that epoch than the run had (a manifest's lines were reordered "
            "or their durations changed since the checkpoint); resuming would skip some utterances and train others "
            "twice. Restore the manifests, or start a new run"
        )


def check_settings(rank, world_size, max_seconds, max_frames, frames_per_second, num_buckets, seed) -> None:
    """The sampler's settings, refused with what is wrong: ranks, a budget in seconds or frames, buckets, seed."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size} is not a valid pair")
    if max_seconds is not None and max_frames is not None:
        raise ValueError("set max_seconds or max_frames, not both")
    if max_seconds is None and max_frames is None:
        raise ValueError("a batch budget is needed: max_seconds or max_frames")
    if max_frames is not None and not (frames_per_second and frames_per_second > 0):
        raise ValueError("max_frames needs frames_per_second to convert durations to frames")
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
