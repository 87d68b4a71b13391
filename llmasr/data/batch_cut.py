"""The sampler's cut of one bucket into batches, and what an epoch's cut hands on to the ranks' grouping.

A bucket's items (positions in the epoch's visits, in random order) are taken in windows of `shuffle_buffer`;
each window is sorted by cost and cut greedily: an item joins the current batch while B * the costliest item stays
within the budget (and B * the longest target within max_target_tokens, B * the longest LLM row within
max_llm_tokens; a cap may also carry what each item grows by after the batch is padded, decoding's new tokens:
B * (the longest length + the largest growth) stays within it). What is left at a window's end joins the next
window, what is left at a bucket's end the next (longer) bucket. The batches are kept as int64 arrays (all the keys,
batch after batch, and where each batch starts), also in the plan every rank holds (`EpochPlan`): Python lists are
made only of the batches asked for.
`check_settings` refuses settings no cut can work with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


def cut_epoch(
    keep: np.ndarray,
    buckets: np.ndarray,
    sizes: np.ndarray,
    limits: tuple[tuple, ...],
    budget: float,
    shuffle_buffer: int,
) -> tuple[np.ndarray, np.ndarray]:
    """An epoch's batches: `keep` (positions in the epoch's visits, in the order to use) sorted by their `buckets`,
    cut bucket after bucket (ascending cost), each bucket's leftover joining the next. `limits`: (a length per
    position, its cap[, a growth per position]) besides the budget (max_target_tokens, max_llm_tokens): B * the
    longest (plus the largest growth) stays within each cap. Returns (every batch's positions, batch after batch;
    each batch's length), int64 arrays."""
    cuts = BatchCuts()
    carry = np.zeros(0, dtype=np.int64)
    for part in np.split(keep, np.flatnonzero(np.diff(buckets)) + 1) if keep.size else []:
        carry = cut_batches(part, carry, cuts, sizes, limits, budget, shuffle_buffer)
    if carry.size:
        cuts.flat.append(carry)
        cuts.lens.append(carry.size)
    return cuts.arrays()


def cut_batches(
    items: np.ndarray,
    carry: np.ndarray,
    out: BatchCuts,
    sizes: np.ndarray,
    limits: tuple[tuple, ...],
    budget: float,
    shuffle_buffer: int,
) -> np.ndarray:
    """Add to `out` the batches of one bucket's `items` (already in the order to use), `carry` in front; `sizes`
    and each of `limits`' lengths are per position. Returns the bucket's leftover, the last batch, not yet full."""
    if len(limits) > 2:
        raise ValueError(f"cut_batches: at most two caps besides the budget, got {len(limits)}")
    # each cap plain names, not a list per item: the loop runs once per item of the epoch
    unset = (None, 0, None)
    (lens_a, cap_a, grow_a), (lens_b, cap_b, grow_b) = (*(_limit(x) for x in limits), unset, unset)[:2]
    window = shuffle_buffer if shuffle_buffer > 0 else max(items.size, 1)
    for start in range(0, max(items.size, 1), window):
        pool = np.concatenate([carry, items[start : start + window]])
        if shuffle_buffer > 0:
            pool = pool[np.argsort(sizes[pool], kind="stable")]
        # a window's batches are consecutive runs of its pool: only their lengths are found item by item
        a = lens_a[pool].tolist() if lens_a is not None else None
        b = lens_b[pool].tolist() if lens_b is not None else None
        ga = grow_a[pool].tolist() if grow_a is not None else None
        gb = grow_b[pool].tolist() if grow_b is not None else None
        n, cur_max, cur_a, cur_b, cur_ga, cur_gb = 0, 0.0, 0, 0, 0, 0
        for j, s in enumerate(sizes[pool].tolist()):
            new_max = s if s > cur_max else cur_max
            over = (n + 1) * new_max > budget
            if a is not None:  # B * the longest within each cap too
                cur_a = a[j] if a[j] > cur_a else cur_a
                if ga is not None:
                    cur_ga = ga[j] if ga[j] > cur_ga else cur_ga
                over = over or (n + 1) * (cur_a + cur_ga) > cap_a
            if b is not None:
                cur_b = b[j] if b[j] > cur_b else cur_b
                if gb is not None:
                    cur_gb = gb[j] if gb[j] > cur_gb else cur_gb
                over = over or (n + 1) * (cur_b + cur_gb) > cap_b
            if n and over:
                out.lens.append(n)
                n, new_max = 0, s
                cur_a = a[j] if a is not None else 0
                cur_b = b[j] if b is not None else 0
                cur_ga = ga[j] if ga is not None else 0
                cur_gb = gb[j] if gb is not None else 0
            n += 1
            cur_max = new_max
        out.flat.append(pool[: pool.size - n])
        carry = pool[pool.size - n :]
    return carry


def _limit(limit: tuple) -> tuple:
    """(lengths, cap, growth or None) of a cap given as (lengths, cap) or (lengths, cap, growth)."""
    return (*limit, None) if len(limit) == 2 else tuple(limit)


@dataclass
class BatchCuts:
    """Batches as they are cut: their items (positions in the epoch's visits) batch after batch, in pieces, and
    their lengths."""

    flat: list[np.ndarray] = field(default_factory=list)
    lens: list[int] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(every batch's items, batch after batch; each batch's length), int64."""
        flat = np.concatenate(self.flat) if self.flat else np.zeros(0, dtype=np.int64)
        return flat.astype(np.int64, copy=False), np.asarray(self.lens, dtype=np.int64)


def reorder(flat: np.ndarray, lens: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The batches of (`flat`, `lens`) in `order`, as (flat, offsets): batch i is flat[offsets[i]:offsets[i + 1]]."""
    new_lens = lens[order]
    offsets = np.concatenate([[0], np.cumsum(new_lens)]).astype(np.int64)
    starts = np.cumsum(lens) - lens
    gather = np.repeat(starts[order] - offsets[:-1], new_lens) + np.arange(offsets[-1], dtype=np.int64)
    return flat[gather], offsets


@dataclass
class OrderedBatches:
    """An epoch's batches in cost order: batch i is keys[offsets[i]:offsets[i + 1]] (visit keys,
    llmasr.data.visit_keys; both int64 arrays, not lists of Python ints: every rank holds every rank's batches); per
    batch its summed and its largest cost (and its longest LLM row), the epoch's filter counts, its items (dataset
    indices) and those batched, and its generator, positioned where the ranks' grouping goes on drawing from it."""

    keys: np.ndarray
    offsets: np.ndarray
    cost: np.ndarray
    longest: np.ndarray
    filtered: dict[str, int]
    items: np.ndarray
    kept: np.ndarray
    rng: np.random.Generator
    llm_longest: np.ndarray | None = None  # per batch its longest LLM row, where the sampler has llm_lens
    heard: np.ndarray | None = None  # per batch the audio its items hold, where a fixed window costs more (Whisper's)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def dealt_stats(self, positions: np.ndarray) -> dict:
        """Of the batches `positions` deals: how many are real, the utterances they hold and their mean batch size (a
        padding duplicate repeats a batch: it adds no utterance), and the share of the padded budget that is real audio
        over all of them; with LLM rows, the padded LLM positions (B x the longest row) of those batches and the
        longest row batched."""
        dealt = positions.ravel()
        sizes = np.diff(self.offsets)
        lens, real_batches = sizes[dealt], np.unique(dealt)
        real = float((self.cost if self.heard is None else self.heard)[dealt].sum())
        padded = float((lens * self.longest[dealt]).sum())
        items = int(sizes[real_batches].sum())
        out = {
            "num_real_batches": int(real_batches.size),
            "num_real_items": items,  # the utterances the batches train (drop_last's left-over batches are not dealt)
            "mean_batch_size": items / max(1, real_batches.size),
            "padding_efficiency": real / padded if padded else 1.0,
        }
        if self.llm_longest is not None:
            llm = lens * self.llm_longest[dealt]
            out["llm_positions"] = {"max": int(llm.max(initial=0)), "mean": float(llm.mean()) if llm.size else 0.0,
                                    "longest_row": int(self.llm_longest.max(initial=0))}  # fmt: skip
        return out

    def lists(self) -> list[list[int]]:
        return [self.keys[a:b].tolist() for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())]

    def sha1(self) -> str:
        """The batches and their order, hashed: what a saved sampler position counts into (the same at any world
        size)."""
        return hashlib.sha1(np.diff(self.offsets).tobytes() + self.keys.tobytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """An epoch's batches as the ranks take them: at step s rank r trains batch groups[s, r] (a position in cost
    order; a padding duplicate repeats one), and batch p is keys[offsets[p]:offsets[p + 1]]. Int64 arrays: every
    rank holds the plan of every rank, and lists are made only of the batches asked for."""

    keys: np.ndarray
    offsets: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.groups)

    def rank_batches(self, rank: int, start: int = 0) -> Iterator[list[int]]:
        """The batches `rank` trains from step `start` on, each a list of visit keys."""
        for p in self.groups[start:, rank].tolist():
            yield self.keys[self.offsets[p] : self.offsets[p + 1]].tolist()

    def trained_keys(self) -> np.ndarray:
        """The visit keys of the batches the ranks train, a padding duplicate's once (drop_last's left-over batches
        are in no group): what the epoch trains on, at any world size."""
        dealt = np.zeros(self.offsets.size - 1, dtype=bool)
        dealt[self.groups.ravel()] = True
        return self.keys[np.repeat(dealt, np.diff(self.offsets))]


def check_origin(state: dict, seed: int, num_items: int) -> None:
    """A saved sampler `state` must come from a sampler of this `seed` over `num_items` lines: another seed deals
    other batches, and lines added or removed move every position."""
    if "seed" in state and int(state["seed"]) != seed:
        raise ValueError(
            f"cannot resume the batch order exactly: the saved sampler had seed={state['seed']}, this one has {seed} "
            "(data.seed). Resume with the run's seed, or start a new run"
        )
    if "num_items" in state and int(state["num_items"]) != num_items:
        raise ValueError(
            f"cannot resume epoch {state['epoch']} at batch {state['batches_yielded']}: the training data "
            f"(data.train) now holds {num_items} lines, the run had num_items={state['num_items']} (a manifest's "
            "lines were added or removed since the checkpoint); resuming would skip some utterances and train "
            "others twice. Restore the manifests, or start a new run"
        )


def check_position(
    state: dict, planned: int, sha1: str, unusable: list | None = None, explain=None, at_limit: str = ""
) -> None:
    """A saved sampler `state` must count into this epoch's plan: `planned` batches per rank (at the saved world
    size) made of the batches `sha1` hashes. Other batches of the same count come from manifests whose lines were
    reordered or with other durations: a resume would skip some utterances of the epoch and train others twice.
    `unusable` ([count, sha1 of their indices]): the lines screened unusable before loading now; where the saved
    state's differ, that is what changed the batches (the manifests' text may be as it was). `explain`: called on a
    refusal, what differs batch by batch and line by line (llmasr.data.plan_record.explain), or None. `at_limit`:
    the epoch's lines batched at a duration limit, which an llmasr before item_costs.as_held skipped (its at_limit)."""
    where = f"cannot resume epoch {state['epoch']} at batch {state['batches_yielded']}: the training data (data.train)"
    if "batches_sha1" not in state and at_limit and 0 < int(state["batches_yielded"]) < planned:
        raise ValueError(
            f"cannot resume epoch {state['epoch']} at batch {state['batches_yielded']} of {planned}: the checkpoint "
            f"was saved by an older llmasr, which skipped the epoch's {at_limit}; this llmasr trains them, so the "
            "epoch's batches are not the ones the saved position counts into (that llmasr kept no hash of them to "
            "compare), and resuming would skip some utterances and train others twice. Resume from a checkpoint "
            "saved at an epoch's end, finish this epoch with the llmasr that saved it, or start a new run"
        )
    then = state.get("unusable")
    cause = None
    if then is not None and unusable is not None and list(then) != list(unusable):
        cause = (
            f"{unusable[0]} of its lines are screened unusable before loading now, "
            + ("other ones than the run's" if then[0] == unusable[0] else f"the run had {then[0]}")
            + " (the warning at this start names the ones now): an audio file was removed, became unreadable or was "
            "restored since the checkpoint, or such a line edited"
        )
    restore = "the audio files or manifest lines" if cause else "the manifests"
    count = "num_batches" in state and int(state["num_batches"]) != planned  # the recipe's batching cannot change
    if not count and state.get("batches_sha1", sha1) == sha1:
        return
    if explain is not None and (found := explain()):
        cause = f"{cause}; {found}" if cause else found
        restore = "what changed (the manifests, the audio, or the llmasr or tokenizer the run had)"
    if count:
        raise ValueError(
            f"{where} now makes {planned} batches per rank of that epoch at the saved world size "
            f"{state.get('world_size', '?')}, the run had {state['num_batches']}: "
            + (
                cause
                or "a manifest's lines were added, removed or their durations changed since the checkpoint (or the "
                "batching settings did)"
            )
            + f"; resuming would skip some utterances and train others twice. Restore {restore}, or start a new run"
        )
    raise ValueError(
        f"{where} now makes other batches of that epoch than the run had ("
        + (cause or "a manifest's lines were reordered or their durations changed since the checkpoint")
        + f"); resuming would skip some utterances and train others twice. Restore {restore}, or start a new run"
    )


def unverified(loader_state: dict | None) -> str | None:
    """What a resume says of a position saved mid-epoch by an llmasr that kept no hash of the epoch's batches (no
    `batches_sha1`): check_position can then compare their count only. None otherwise."""
    position = loader_state.get("sampler") if isinstance(loader_state, dict) else None
    if not isinstance(position, dict) or "batches_sha1" in position:
        return None
    done, planned = int(position.get("batches_yielded", 0)), int(position.get("num_batches", 0))
    if not 0 < done < planned:
        return None
    return (
        f"data.train: the checkpoint's position (epoch {position.get('epoch')}, batch {done} of {planned}) was saved "
        "by an older llmasr, which kept no hash of the epoch's batches: this llmasr checked their count only, not "
        "that they are the ones the position counts into. Where it keeps or skips other lines than that llmasr did "
        "(a line it screens as bad now, or no longer), the rest of this epoch skips some utterances and trains others "
        "twice; resume from a checkpoint saved at an epoch's end, or finish the epoch with that llmasr, to be sure"
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
