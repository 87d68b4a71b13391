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
    positions: Sequence[int],
    world_size: int,
    rng: np.random.Generator,
    *,
    drop_last: bool,
    shuffle: bool,
    random_drop: bool = True,
) -> tuple[list[list[int]], int]:
    """Groups of `world_size` consecutive positions (batches of similar cost run at the same step), and the number
    of padding duplicates. The last group is padded with its own batches; with drop_last the batches left over are
    dropped instead, drawn at random when shuffling (the last in cost order are the longest utterances: the same
    ones would never be trained; `random_drop` False: those last ones, as a plan saved before did)."""
    positions = list(positions)
    left_over = len(positions) % world_size
    if drop_last and left_over and shuffle and random_drop:
        out = set(rng.choice(len(positions), size=left_over, replace=False).tolist())
        positions = [p for i, p in enumerate(positions) if i not in out]
    groups = [positions[i : i + world_size] for i in range(0, len(positions), world_size)]
    padding = 0
    if groups and len(groups[-1]) < world_size:
        if drop_last:
            groups.pop()
        else:
            last = groups[-1]
            padding = world_size - len(last)
            last.extend(last[j % len(last)] for j in range(padding))
    if shuffle and groups:
        perm = rng.permutation(len(groups))
        groups = [groups[i] for i in perm]
    return groups, padding


def repeated_steps(groups: list[list], rank: int) -> frozenset[int]:
    """The steps at which `rank` yields a padding duplicate: a batch (the same object) that an earlier step or a
    lower rank of the same step also yields. Counting every step except these counts each batch once."""
    seen: set[int] = set()
    steps = set()
    for step, group in enumerate(groups):
        for g_rank, batch in enumerate(group):
            if id(batch) in seen:
                if g_rank == rank:
                    steps.add(step)
            else:
                seen.add(id(batch))
    return frozenset(steps)


def remaining_positions(groups: list[list[int]], done: int) -> list[int]:
    """Positions in groups[done:] that no group before `done` holds (padding duplicates count as trained), in
    cost order."""
    trained = {p for g in groups[:done] for p in g}
    return sorted({p for g in groups[done:] for p in g} - trained)


def split_groups(groups: list[list[int]], world_size: int) -> list[list[int]]:
    """Each group cut into consecutive groups of `world_size` (which divides their size), order kept."""
    return [g[i : i + world_size] for g in groups for i in range(0, len(g), world_size)]


def keeps_order(old_world_size: int, world_size: int) -> bool:
    """Whether an epoch moved from `old_world_size` ranks to `world_size` keeps its planned order (see continue_at)."""
    return old_world_size % world_size == 0


def continue_at(
    groups: list[list[int]], done: int, world_size: int, rng: np.random.Generator, grouping: dict
) -> tuple[list[list[int]], int]:
    """The groups (and padding count) that finish an epoch at `world_size` after `done` steps of `groups`.

    When the new world size divides the old, the remaining groups are split in order: a step of the old plan becomes
    several steps of the new one, so with the accumulation scaled by the same factor every update trains exactly
    the batches it would have trained at the old world size. Otherwise the untrained batches are dealt afresh."""
    if keeps_order(len(groups[0]), world_size):
        rest = split_groups(groups[done:], world_size)
        trained = {p for g in groups[:done] for p in g}
        padding = sum(len(g) for g in rest) - len({p for g in rest for p in g} - trained)
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
) -> tuple[list[list[int]], int, int]:
    """The epoch's groups (of positions) at `world_size` after the segments in `history`, their padding count, and
    how many batches drop_last left out over all the segments. `rng` is the epoch's generator (it deals the epoch's
    first segment); each later segment gets its own."""
    sizes = [ws for ws, _ in history] + [world_size]
    groups, padding = group_positions(range(n_batches), sizes[0], rng, **grouping)
    dropped = n_batches - len({p for g in groups for p in g})
    for i, (_, done) in enumerate(history, start=1):
        if not 0 <= done <= len(groups):
            raise ValueError(f"resume history {list(history)}: step {done} is outside a plan of {len(groups)} steps")
        if groups:
            left = remaining_positions(groups, done)
            groups, padding = continue_at(groups, done, sizes[i], np.random.default_rng([seed, epoch, i]), grouping)
            dropped += len(set(left) - {p for g in groups for p in g})
    return groups, padding, dropped
