"""How an epoch's batches are dealt to ranks, and how an epoch interrupted at one world size continues at another.

An epoch's batches (DynamicBucketSampler._ordered_batches) do not depend on the world size: only their grouping
does. `group_positions` cuts the batches (by position in cost order) into groups of `world_size`, one batch per
rank per step, pads or drops the last group and shuffles the groups.

Resume at another world size: the checkpoint says how many groups (steps) of the epoch every rank had trained at the
old world size. The batches of those groups are done; the others, the epoch's remainder, finish the epoch at the new
world size (`continue_at`), so no batch of the epoch is trained twice or left out, except the padding duplicates
every plan has. A world size that divides the old one takes the remaining groups in order, split (2 -> 1 ranks:
each old step becomes two), which with the accumulation scaled by the same factor reproduces the old run's updates
exactly; any other is dealt the remainder afresh, in cost order, with a generator of its own. The epoch's
`history` ((world_size, steps done), ...) records each such change, oldest first, so a later resume (at the same
or yet another world size) rebuilds the same plan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def group_positions(
    positions: Sequence[int] | np.ndarray,
    world_size: int,
    rng: np.random.Generator,
    *,
    drop_last: bool,
    shuffle: bool,
    random_drop: bool = True,
) -> tuple[np.ndarray, int]:
    """Groups of `world_size` consecutive positions (batches of similar cost run at the same step), as the rows of
    an int64 array, and the number of padding duplicates. The last group is padded with its own batches; with
    drop_last the batches left over are dropped instead, drawn at random when shuffling (the last in cost order are
    the longest utterances: the same ones would never be trained; `random_drop` False: those last ones, as a plan
    saved before did)."""
    positions = np.asarray(positions, dtype=np.int64)
    left_over = positions.size % world_size
    if drop_last and left_over and shuffle and random_drop:
        out = rng.choice(positions.size, size=left_over, replace=False)
        positions = np.delete(positions, out)
    full = positions.size // world_size * world_size
    groups, last = positions[:full].reshape(-1, world_size), positions[full:]
    padding = 0
    if last.size and not drop_last:
        padding = world_size - last.size
        groups = np.concatenate([groups, np.resize(last, world_size)[None]])  # cycles through its own batches
    if shuffle and len(groups):
        groups = groups[rng.permutation(len(groups))]
    return groups, padding


PADDING_WARN_SHARE = 0.1  # of an epoch's rank-batches: past it, padding duplicates are warned of


def padding_warning(real: int, world_size: int, padding: int) -> str | None:
    """What `padding` duplicates among `real` batches dealt to `world_size` ranks cost, when they are more than
    PADDING_WARN_SHARE of the rank-batches (every rank must take as many batches: the last group is padded with
    repeats of its own); None otherwise."""
    slots = real + padding
    if not slots or padding / slots <= PADDING_WARN_SHARE:
        return None
    if world_size == 1:  # one rank pads nothing of its own: an epoch cut for more ranks, which a resume continues
        return (
            f"{real} batches on 1 rank: {padding} of the {slots} batches ({padding / slots:.0%}) are padding "
            "duplicates of the epoch as the run cut it for its earlier ranks, trained again as they were there (the "
            "next epoch is cut for 1 rank)"
        )
    return (
        f"{real} batches over {world_size} ranks: {padding} of the {slots} rank-batches ({padding / slots:.0%}) are "
        "padding duplicates, batches trained again so that every rank takes as many (a world size that divides the "
        "batches, or data.batching.drop_last, which leaves the left-over batches out instead, avoids them)"
    )


def repeated_steps(groups: np.ndarray, rank: int) -> frozenset[int]:
    """The steps at which `rank` yields a padding duplicate: a batch (position) that an earlier step or a lower
    rank of the same step also yields. Counting every step except these counts each batch once."""
    first = np.zeros(groups.size, dtype=bool)
    first[np.unique(groups, return_index=True)[1]] = True  # row-major: by step, then rank
    return frozenset(np.flatnonzero(~first.reshape(groups.shape)[:, rank]).tolist())


def remaining_positions(groups: np.ndarray, done: int) -> np.ndarray:
    """Positions in groups[done:] that no group before `done` holds (padding duplicates count as trained), in
    cost order."""
    return np.setdiff1d(groups[done:], groups[:done])


def keeps_order(old_world_size: int, world_size: int) -> bool:
    """Whether an epoch moved from `old_world_size` ranks to `world_size` keeps its planned order (see continue_at)."""
    return old_world_size % world_size == 0


def continue_at(
    groups: np.ndarray, done: int, world_size: int, rng: np.random.Generator, grouping: dict
) -> tuple[np.ndarray, int]:
    """The groups (and padding count) that finish an epoch at `world_size` after `done` steps of `groups`.

    When the new world size divides the old, the remaining groups are split in order: a step of the old plan becomes
    several steps of the new one, so with the accumulation scaled by the same factor every update trains exactly
    the batches it would have trained at the old world size. Otherwise the untrained batches are dealt afresh."""
    if keeps_order(groups.shape[1], world_size):
        rest = groups[done:].reshape(-1, world_size)  # each old group cut into consecutive new ones
        padding = rest.size - np.setdiff1d(rest, groups[:done]).size
        return rest, padding
    return group_positions(remaining_positions(groups, done), world_size, rng, **grouping)


def replay_history(
    n_batches: int,
    history: Sequence[tuple[int, int]],
    world_size: int,
    rng: np.random.Generator,
    seed: int,
    epoch: int,
    grouping: dict,
) -> tuple[np.ndarray, int, int]:
    """The epoch's groups (of positions; steps x ranks) at `world_size` after the segments in `history`, their
    padding count, and how many batches drop_last left out over all the segments. `rng` is the epoch's generator (it
    deals the epoch's first segment); each later segment gets its own."""
    sizes = [ws for ws, _ in history] + [world_size]
    groups, padding = group_positions(np.arange(n_batches, dtype=np.int64), sizes[0], rng, **grouping)
    dropped = n_batches - np.unique(groups).size
    for i, (_, done) in enumerate(history, start=1):
        if not 0 <= done <= len(groups):
            raise ValueError(f"resume history {list(history)}: step {done} is outside a plan of {len(groups)} steps")
        if len(groups):
            left = remaining_positions(groups, done)
            groups, padding = continue_at(groups, done, sizes[i], np.random.default_rng([seed, epoch, i]), grouping)
            dropped += np.setdiff1d(left, groups).size
    return groups.reshape(-1, world_size), padding, int(dropped)  # no groups left: none of any world size
