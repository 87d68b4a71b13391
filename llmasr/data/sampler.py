"""Duration-bucketed dynamic batching that keeps every rank in step.

How an epoch's batches are made (identically on every rank, from (seed, epoch) only):

1. Filters (llmasr.data.item_filters): items known bad, of unknown duration, too short or long, or too big to fit
   a batch on their own are skipped; `.filtered` holds reason -> count for the current epoch, and rank 0 logs the
   counts where they change (llmasr.data.epoch_notes). A clip that fits only at some of augmentation's draws
   (`fits_sometimes`) is skipped in the epochs whose draws put it over the budget.
2. Buckets: duration quantiles of the kept items (computed once) split them into `num_buckets` buckets.
3. In each bucket the items are shuffled, then taken in windows of `shuffle_buffer` items; each window is sorted
   by duration and cut greedily into batches that respect the budget (llmasr.data.batch_cut). The budget is in
   padded units: B * longest <= max_seconds (or max_frames), B * longest target <= max_target_tokens, and B *
   longest LLM row <= max_llm_tokens (`llm_lens`: the most LLM positions each item can take). Items
   left over at the end of a window join the next window, and those left at the end of a bucket join the next
   (longer) bucket, so only the epoch's very last batch can be short. A line a weighted mix visits more than once
   an epoch is an item per visit, each with its own key and draws (llmasr.data.visit_keys).
4. Ranks (llmasr.data.regroup): all batches are ordered by (bucket, longest item) and cut into groups of
   `world_size` consecutive batches, so the batches that run at the same step on different ranks cost about the
   same. The last group is padded with duplicates of its own batches (drop_last=False) or dropped
   (drop_last=True). Then the groups are shuffled, and rank r takes batch r of every group. Every rank therefore
   yields exactly the same number of batches, and the data of different ranks is disjoint within an epoch except
   for the padding duplicates (at most world_size - 1 batches per epoch; their count is `.num_padding_batches`).

`len(sampler)` is the exact number of batches this rank yields in a full epoch (the plan is computed once per
epoch and cached). Resume: `state_dict()` / `load_state_dict()` restore (epoch, batches already yielded); the
next iteration over that epoch yields exactly the remaining batches. A state saved at another world size continues
the epoch with the batches no rank had trained (llmasr.data.regroup); `len()` is then that remainder's length, for
that pass over the epoch. Under a DataLoader the sampler runs ahead of the training loop (prefetching), so take
the state from `SpeechDataLoader.state_dict()`, which counts the batches the loop actually received, or pass that
count to `state_dict(consumed=...)`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler

from llmasr.data import batch_cut
from llmasr.data.batch_cut import EpochPlan, OrderedBatches, check_position, check_settings, cut_epoch, reorder
from llmasr.data.epoch_notes import EpochNotes
from llmasr.data.item_costs import EpochCostFn, ItemCosts, as_held, at_limit, per_batch, quantile_buckets
from llmasr.data.item_filters import FILTER_REASONS, filter_counts, filter_items, unusable_signature
from llmasr.data.regroup import padding_warning, repeated_steps, replay_history
from llmasr.data.visit_keys import visit_keys


class DynamicBucketSampler(Sampler):
    """Yields lists of visit keys (a dataset index, or past len(durations) a repeated visit of one in the epoch:
    llmasr.data.visit_keys); see the module docstring for the algorithm and the rank contract.

    durations: seconds per dataset item (NaN = unknown; such items are skipped as unknown_duration).
    target_lens: per-item target length (any unit consistent with max_target_len/max_target_tokens).
    llm_lens: per-item LLM positions (audio tokens, prompt and transcript: llmasr.train.line_positions), which
        max_llm_tokens bounds per batch (B * the longest); an item past it alone is skipped as over_batch_budget.
    llm_new, llm_alone (decoding, llmasr.train.decode_rows): per-item positions the LLM adds after the padded batch
        (B * (the longest llm_lens + the largest llm_new) <= max_llm_tokens); an item past it alone batched alone.
    min_item_seconds: cost every item at least this long (fixed-length frontends such as Whisper's 30 s).
    cost_scale: multiply every item's cost (e.g. 1/0.9 when speed perturbation may stretch audio by 1/0.9);
        filters still use the durations as given.
    cost_pad: seconds added to every item's cost after the scale (pauses augmentation may put around a clip).
    epoch_costs: (epoch, visit keys) -> (scale, seconds) per item: the length augmentation gives each clip in that epoch
        (llmasr.data.clip_lengths.EpochCosts); batches are then cut, bucketed and sorted on those costs, and an
        item is skipped in an epoch whose cost puts it over the budget. cost_scale and cost_pad stay the worst case;
        `epoch_costs.least` (scale, seconds), when it has one, is the shortest draw, which decides which items can
        never fit a batch (else the worst case does).
    indices: restrict to these dataset indices (e.g. a validation subset).
    epoch_indices: epoch -> dataset indices for that epoch (weighted mixing; repeats are visits with keys of their
        own); overrides `indices`.
    skip: dataset indices known to be unusable (lines found bad before loading); never batched.
    padding_warns: training's sampler: an epoch whose padding duplicates are a large share of its rank-batches is
        warned of (regroup.padding_warning; logged by rank 0, and in stats()["padding_warning"]).
    """

    def __init__(
        self,
        durations: np.ndarray,
        target_lens: np.ndarray | None = None,
        *,
        max_seconds: float | None = None,
        max_frames: int | None = None,
        frames_per_second: float | None = None,
        max_target_tokens: int | None = None,
        llm_lens: np.ndarray | None = None,
        max_llm_tokens: int | None = None,
        llm_new: np.ndarray | None = None,
        llm_alone: bool = False,
        num_buckets: int = 30,
        shuffle: bool = True,
        shuffle_buffer: int = 2000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        min_duration: float = 0.0,
        max_duration: float = math.inf,
        max_target_len: int | None = None,
        truncate_to_max: bool = False,
        min_item_seconds: float | None = None,
        cost_scale: float = 1.0,
        cost_pad: float = 0.0,
        indices: np.ndarray | None = None,
        epoch_indices: Callable[[int], np.ndarray] | None = None,
        skip: np.ndarray | None = None,
        epoch_costs: EpochCostFn | None = None,
        padding_warns: bool = False,
    ):
        check_settings(rank, world_size, max_seconds, max_frames, frames_per_second, num_buckets, seed)
        self.durations = np.asarray(durations, dtype=np.float64)
        n = self.durations.size
        if target_lens is not None and np.shape(target_lens) != (n,):
            raise ValueError(f"target_lens has shape {np.shape(target_lens)}, durations ({n},)")
        self.target_lens = None if target_lens is None else np.asarray(target_lens, dtype=np.int64)
        if max_llm_tokens is not None and np.shape(llm_lens) != (n,):
            raise ValueError(f"max_llm_tokens needs llm_lens, one per item: got shape {np.shape(llm_lens)}, ({n},)")
        self.llm_lens = None if llm_lens is None else np.asarray(llm_lens, dtype=np.int64)
        self.llm_new, self.llm_alone = None if llm_new is None else np.asarray(llm_new, np.int64).reshape(n), llm_alone
        self.max_seconds, self.max_frames, self.frames_per_second = max_seconds, max_frames, frames_per_second
        self.max_target_tokens, self.max_llm_tokens = max_target_tokens, max_llm_tokens
        self.num_buckets, self.shuffle, self.shuffle_buffer = int(num_buckets), bool(shuffle), int(shuffle_buffer)
        self.seed, self.rank, self.world_size, self.drop_last = int(seed), int(rank), int(world_size), bool(drop_last)
        self.min_duration, self.max_duration = float(min_duration), float(max_duration)
        self.max_target_len, self.truncate_to_max = max_target_len, bool(truncate_to_max)
        self.epoch_indices = epoch_indices
        self.padding_warns, self.notes = bool(padding_warns), EpochNotes(self.rank)
        self.base_indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        self._sort_items(min_item_seconds, cost_scale, cost_pad, epoch_costs, skip)

        self.epoch = 0
        self._plan_cache: tuple[tuple, EpochPlan, dict, str] | None = None
        self._yielded = 0
        self._resume: tuple[int, int] | None = None
        # (epoch, ((world_size, batches done), ...)): the epoch ran partly at other world sizes before a resume
        self._segment: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self.resharded = False  # the last load_state_dict came from another world size
        self._legacy_drop: int | None = None  # an epoch resumed from a plan that dropped the last batches
        self._epoch_listeners: list[Callable[[int], None]] = []

    def _sort_items(self, min_item_seconds, cost_scale, cost_pad, epoch_costs, skip: np.ndarray | None) -> None:
        """Per-item cost in budget units (`sizes`, `budget`), first filter reason (-1 = kept), truncation, and the
        cost buckets, all computed once."""
        d, n = self.durations, self.durations.size
        lo, hi = as_held(self.min_duration), as_held(self.max_duration)  # the manifests' float32 durations
        costs = ItemCosts(
            d, max_seconds=self.max_seconds, max_frames=self.max_frames, frames_per_second=self.frames_per_second,
            max_duration=self.max_duration, truncate_to_max=self.truncate_to_max, min_item_seconds=min_item_seconds,
            cost_scale=cost_scale, cost_pad=cost_pad, epoch_costs=epoch_costs,
        )  # fmt: skip
        self.costs, self.sizes, self.budget, self.cost = costs, costs.sizes, costs.budget, costs.cost
        self._reason = reason = filter_items(
            d, costs.least, self.budget, skip=skip, min_duration=lo, max_duration=hi,
            truncate_to_max=self.truncate_to_max, target_lens=self.target_lens, max_target_len=self.max_target_len,
            max_target_tokens=self.max_target_tokens, llm_lens=self.llm_lens, llm_new=self.llm_new,
            max_llm_tokens=None if self.llm_alone else self.max_llm_tokens,
        )  # fmt: skip
        self._unusable = unusable_signature(reason)  # what a saved position names
        # the items that fit the budget only at some draws: each epoch batches those its draws let fit
        pool = self.base_indices
        self.fits_sometimes = pool[(reason[pool] < 0) & (self.sizes[pool] > self.budget)] if n else pool
        self.truncated_mask = (~np.isnan(d)) & (d > hi) & (reason < 0)
        kept = self.base_indices[reason[self.base_indices] < 0] if n else self.base_indices
        self.bucket_of = quantile_buckets(self.sizes, kept, self.num_buckets)

    # ----------------------------------------------------------------------------------------------- epoch plan
    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:  # another epoch's position: none yet, or the one a resume loaded for it
            self._yielded = self._resume[1] if self._resume is not None and self._resume[0] == int(epoch) else 0
        self.epoch = int(epoch)
        for fn in self._epoch_listeners:
            fn(self.epoch)

    def add_epoch_listener(self, fn: Callable[[int], None]) -> None:
        """Called with the epoch on every set_epoch (the loader keeps the dataset's augmentation epoch in step)."""
        self._epoch_listeners.append(fn)

    def _epoch_items(self, epoch: int) -> np.ndarray:
        return self.base_indices if self.epoch_indices is None else np.asarray(self.epoch_indices(epoch), np.int64)

    def _ordered_batches(self, epoch: int) -> OrderedBatches:
        """The epoch's batches in cost order (independent of the world size), as visit keys."""
        items = self._epoch_items(epoch)
        keys = visit_keys(items, self.durations.size)
        reasons = self._reason[items]
        filtered = filter_counts(reasons)
        # Planned by position in the epoch's visits: two visits of one line may cost differently (their own draws)
        keep = np.flatnonzero(reasons < 0)
        sizes, bucket_of, keep, late = self.costs.fitting(epoch, items, keys, keep, self.num_buckets, self.bucket_of)
        if late:
            filtered["over_batch_budget"] = filtered.get("over_batch_budget", 0) + late
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            keep = keep[rng.permutation(keep.size)]
        buckets = bucket_of[keep]
        order = np.argsort(buckets, kind="stable")
        keep, buckets = keep[order], buckets[order]
        flat, lens = cut_epoch(keep, buckets, sizes, self._limits(items), self.budget, self.shuffle_buffer)
        # Order by (bucket, longest item): consecutive batches, run at one step on different ranks, cost about alike
        longest = per_batch(flat, lens, sizes, np.maximum)
        order = np.lexsort((longest, per_batch(flat, lens, bucket_of, np.maximum)))
        cost = per_batch(flat, lens, sizes, np.add)
        heard = self.costs.heard_in(epoch, items, keys)  # the audio of each, where a window pads it (else None)
        heard = None if heard is None else per_batch(flat, lens, heard, np.add)[order]
        llm = None if self.llm_lens is None else per_batch(flat, lens, self.llm_lens[items], np.maximum)[order]
        if llm is not None and self.llm_new is not None:  # the longest input padded, then the most written after it
            llm = llm + per_batch(flat, lens, self.llm_new[items], np.maximum)[order]
        flat, offsets = reorder(flat, lens, order)
        return OrderedBatches(keys=keys[flat], offsets=offsets, cost=cost[order], longest=longest[order],
                              filtered=filtered, items=items, kept=items[keep], rng=rng, llm_longest=llm,
                              heard=heard)  # fmt: skip

    def _limits(self, items: np.ndarray) -> tuple[tuple[np.ndarray, int], ...]:
        """(each visit's length, its cap) for the caps besides the budget: max_target_tokens, max_llm_tokens."""
        limits = []
        if self.target_lens is not None and self.max_target_tokens is not None:
            limits.append((self.target_lens[items], int(self.max_target_tokens)))
        if self.max_llm_tokens is not None:
            grow = () if self.llm_new is None else (self.llm_new[items],)
            limits.append((self.llm_lens[items], int(self.max_llm_tokens), *grow))
        return tuple(limits)

    def _plan(self, epoch: int) -> tuple[EpochPlan, dict]:
        """The ranks' batches for `epoch` (same on every rank), and the epoch's stats. After a resume at another
        world size the epoch's plan is its untrained remainder (see llmasr.data.regroup)."""
        history = self._history(epoch)
        grouping = self._grouping(epoch)
        key = (epoch, history, grouping["random_drop"])
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1], self._plan_cache[2]
        o = self._ordered_batches(epoch)
        positions, padding, dropped = replay_history(
            len(o), history, self.world_size, o.rng, self.seed, epoch, grouping
        )
        plan = EpochPlan(o.keys, o.offsets, positions)
        stats = {
            "epoch": epoch,
            "num_items": int(o.items.size),
            "kept_items": int(o.kept.size),
            "dropped_batches": dropped,  # drop_last's left-over batches (their items are not trained this epoch)
            "filtered": o.filtered,
            "truncated": int(self.truncated_mask[o.kept].sum()),  # of the clips batched: one this epoch skips is not
            "num_batches_global": len(o),
            "num_batches_per_rank": len(plan),
            "num_padding_batches": padding,
            **o.dealt_stats(positions),
        }
        real = stats["num_real_batches"]
        stats["padding_warning"] = padding_warning(real, self.world_size, padding) if self.padding_warns else None
        if self._plan_cache is None or self._plan_cache[0][0] != epoch:
            self.notes.planned(epoch, int(o.items.size), o.filtered, dropped, self.world_size)
        self.notes.padding_warning(epoch, stats["padding_warning"])
        self._plan_cache = (key, plan, stats, o.sha1())
        return plan, stats

    def _sha1(self, epoch: int) -> str:
        """OrderedBatches.sha1 of `epoch` (kept with its plan)."""
        self._plan(epoch)
        return self._plan_cache[3]

    # ------------------------------------------------------------------------------------------------ interface
    @property
    def filtered(self) -> dict[str, int]:
        """reason -> number of this epoch's items skipped for it."""
        return dict(self._plan(self.epoch)[1]["filtered"])

    @property
    def filter_codes(self) -> np.ndarray:
        """Each dataset item's filter (read-only): its index in FILTER_REASONS, or -1 for an item batched (in the
        epochs whose draws let it fit: fits_sometimes); llmasr.data.item_filters."""
        codes = self._reason.view()
        codes.flags.writeable = False  # the filters are decided once: a caller's edit would go unseen by the plan
        return codes

    def epoch_plan(self, epoch: int | None = None) -> EpochPlan:
        """The ranks' batches of `epoch` (default: the current one), as every rank holds them: what a checkpoint's
        plan record keeps (llmasr.data.plan_record)."""
        return self._plan(self.epoch if epoch is None else epoch)[0]

    def skipped_indices(self, reason: str) -> np.ndarray:
        """Dataset indices (among those the sampler draws from) that the filter `reason` skips in every epoch."""
        code = FILTER_REASONS.index(reason)
        pool = self.base_indices if self.epoch_indices is None else np.arange(self.durations.size, dtype=np.int64)
        return pool[self._reason[pool] == code]

    @property
    def num_padding_batches(self) -> int:
        return self._plan(self.epoch)[1]["num_padding_batches"]

    def duplicate_steps(self, epoch: int | None = None, rank: int | None = None) -> frozenset[int]:
        """Steps of a full epoch at which `rank` only repeats a batch to keep the ranks in step (see regroup)."""
        plan, _ = self._plan(self.epoch if epoch is None else epoch)
        return repeated_steps(plan.groups, self.rank if rank is None else rank)

    def stats(self, epoch: int | None = None) -> dict:
        """Counts for an epoch (all ranks together): batches, mean batch size, padding efficiency, filters."""
        return dict(self._plan(self.epoch if epoch is None else epoch)[1])

    def batches(self, epoch: int | None = None, rank: int | None = None) -> list[list[int]]:
        """All batches `rank` yields in `epoch` (a full epoch, ignoring any resume position)."""
        return list(self.iter_batches(epoch, rank))

    def iter_batches(self, epoch: int | None = None, rank: int | None = None) -> Iterator[list[int]]:
        """batches(), made one batch at a time."""
        plan, _ = self._plan(self.epoch if epoch is None else epoch)
        return plan.rank_batches(self.rank if rank is None else rank)

    def __len__(self) -> int:
        return len(self._plan(self.epoch)[0])

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        else:
            self._segment = None  # a fresh pass deals the whole epoch at this world size
        plan, _ = self._plan(epoch)
        self._resume = None
        self._yielded = skip
        for batch in plan.rank_batches(self.rank, skip):
            self._yielded += 1
            yield batch

    @property
    def remainder_pass(self) -> bool:
        """Whether this epoch's pass is the remainder of a pass a resize cut short (its batches are those no rank had
        trained, dealt afresh)."""
        return bool(self._history(self.epoch))

    def _history(self, epoch: int) -> tuple[tuple[int, int], ...]:
        return self._segment[1] if self._segment is not None and self._segment[0] == epoch else ()

    def state_dict(self, consumed: int | None = None) -> dict:
        """Resume point. `consumed`: batches of this epoch the training loop actually received (default: yielded)."""
        return {
            "epoch": self.epoch,
            "batches_yielded": int(self._yielded if consumed is None else consumed),
            "seed": self.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "num_items": int(self.durations.size),
            "num_batches": len(self),
            "history": [list(h) for h in self._history(self.epoch)],
            "plan": 2 if self._legacy_drop != self.epoch else 1,  # 2: drop_last draws its left-over batches
            "batches_sha1": self._sha1(self.epoch),
            "unusable": list(self._unusable),  # the lines screened unusable before loading: count, sha1 of indices
        }

    def load_state_dict(self, state: dict, explain=None) -> None:
        """Resume at the saved position. Saved at another world size, the epoch continues with the batches no rank
        had trained yet, dealt to this world size (llmasr.data.regroup); `.resharded` then says so. `explain`: what
        a refusal says differs (llmasr.data.plan_record.explainer)."""
        batch_cut.check_origin(state, self.seed, self.durations.size)
        epoch, done = int(state["epoch"]), int(state["batches_yielded"])
        history = tuple((int(w), int(d)) for w, d in state.get("history") or ())
        saved_ws = int(state.get("world_size", self.world_size))
        self._legacy_drop = epoch if int(state.get("plan", 1)) < 2 else None
        self.set_epoch(epoch)
        self._segment = (epoch, history)
        planned = len(self._plan_at(epoch, history, saved_ws)[0])
        items = self._epoch_items(epoch)  # those at a duration limit: an older llmasr's position counts without them
        check_position(state, planned, self._sha1(epoch), self._unusable, explain, at_limit(self, items))
        if not 0 <= done <= planned:
            raise ValueError(f"cannot resume at batch {done} of an epoch of {planned} batches")
        self.resharded = saved_ws != self.world_size
        if self.resharded:
            self._segment = (epoch, (*history, (saved_ws, done)))
            done = 0
        self._resume, self._yielded = (epoch, done), done

    def length_after(self, state: dict, explain=None) -> int:
        """len() of the pass a `state_dict` (maybe of another world size) continues, this sampler left as it is
        (`llmasr check` counts a resume's updates); `explain` as load_state_dict's."""
        other = copy.copy(self)
        other._epoch_listeners = []  # nor does its dataset's epoch move
        other.load_state_dict(state, explain)
        return len(other)

    def _plan_at(self, epoch: int, history: tuple, world_size: int):
        """The plan a sampler of `world_size` ranks had for `epoch` after `history`."""
        if world_size == self.world_size:
            return self._plan(epoch)
        o = self._ordered_batches(epoch)
        return replay_history(len(o), history, world_size, o.rng, self.seed, epoch, self._grouping(epoch))

    def _grouping(self, epoch: int) -> dict:
        """How `epoch`'s batches are grouped (regroup.group_positions): drop_last's left-over batches drawn at
        random, except in an epoch resumed from a state saved before that (it keeps the plan it was trained on)."""
        return dict(drop_last=self.drop_last, shuffle=self.shuffle, random_drop=self._legacy_drop != epoch)
