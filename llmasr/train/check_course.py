"""The course of a run as `llmasr check` reports it (llmasr.train.check): the updates whose lr it prints, the
validations the run holds and what train.patience can do over them. A resumed run is counted from its checkpoint:
the updates done, the epochs' ends after them (at the grad_accum and world size it resumes with) and the
early-stopping count the checkpoint carries."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, NamedTuple

from llmasr.train.early_stop import EarlyStop
from llmasr.train.schedulers import branch_of_group, peak_update

if TYPE_CHECKING:
    from llmasr.train.run_dir import LrCourse


class Course(NamedTuple):
    done: int  # updates done before this run's first: 0 for a fresh run, the checkpoint's update for a resume
    ends: list[int]  # the updates after which its epochs end, in order
    early: EarlyStop  # the early-stopping count it starts with
    owed: bool = False  # a stop put off the validation due at `done`: the resume runs it first
    epoch: int = 0  # the epoch it starts in: a resume's, from its checkpoint
    # a resume's schedules: the update they stand at (`done` less the updates skipped, each of which held them), and
    # the lrs its checkpoint's updates used (llmasr.train.run_dir.LrCourse; None: lr_schedule.csv's rows say them)
    applied: int = 0
    lrs: LrCourse | None = None


def fresh_course(tc, updates_per_epoch: list[int]) -> Course:
    return Course(0, list(itertools.accumulate(updates_per_epoch)), EarlyStop.of(tc))


def epoch_ends(done: int, first_left: int, per_epoch: list[int], epoch: int, k: int) -> list[int]:
    """The updates after which a run resumed after `done` updates, with `first_left` batches per rank left in `epoch`,
    ends that epoch and each later one of `per_epoch` (batches per rank), at `k` micro batches an update."""
    updates = [math.ceil(first_left / k), *(math.ceil(n / k) for n in per_epoch[epoch + 1 :])]
    return list(itertools.accumulate(updates, initial=done))[1:] if epoch < len(per_epoch) else []


def key_updates(optim_cfg, group_names: list[str], total: int, stop: int | None = None, done: int = 0):
    """(label, update) pairs of a run whose schedules are sized by `total` updates, which stops after `stop` (default
    `total`) and resumes after `done`: its first update, each distinct warmup end still ahead (one behind a resume is
    said in the first update's label), the middle of what it trains, its last update. None where it trains none."""
    stop = total if stop is None else stop
    if done >= stop:
        return []
    points, behind = [], {}  # behind: warmup end -> the branches whose lr peaked before the resume (or at it)
    for name in group_names:
        branch = branch_of_group(name)
        end = peak_update(optim_cfg.branch(branch).scheduler, total)  # (a fresh run's first update at the peak: none)
        if end is not None and end <= done and done > 0:
            behind.setdefault(end, dict())[branch] = None
        elif end is not None and done < end < stop and all(u != end for _, u in points):
            points.append((f"warmup end ({branch})", end))
    first = "start" if done == 0 else "resumed"
    for end, branches in sorted(behind.items()):
        first += f"; warmup done ({', '.join(branches)}): the peak from update {end + 1}"
    points = [(first, done), *points, ("middle", done + (stop - done) // 2), ("last", stop - 1)]
    seen, out = set(), []
    for label, u in sorted(points, key=lambda p: p[1]):
        if u not in seen:
            seen.add(u)
            out.append((label, u))
    return out


def validation_updates(tc, course: Course, stop: int) -> list[int]:
    """The updates after which a run on `course` that stops after `stop` validates: the one a resume owes first,
    every train.valid_every_updates, and at each epoch's end (and where max_updates stops it)."""
    every, done = tc.valid_every_updates, course.done
    due = set(range(every * (done // every + 1), stop + 1, every)) if every else set()
    ahead = {u for u in due | set(course.ends) | {stop} if done < u <= stop}
    return sorted(ahead | ({done} if course.owed else set()))


def early_stop_lines(tc, course: Course, stop: int, validates: bool) -> list[str]:
    """What train.patience does over the validations the run holds (after the count a resume carries), and a
    warning where it never can. `validates`: the recipe has validation data."""
    if not tc.patience or not validates:
        return []
    ahead, early = validation_updates(tc, course, stop), course.early
    rule = (
        f"  early stopping: after {tc.patience} validation(s) in a row without a better valid {tc.best_metric} (by "
        f"more than {tc.min_delta:g}); "
    )
    if course.done == 0:
        lines = [rule + f"the run validates {len(ahead)} time(s)"]
    else:
        best = "no best yet" if early.best is None else f"best {early.best:.6g} at update {early.best_update}"
        lines = [
            rule + f"resumed after update {course.done} with {early.since} such validation(s) counted ({best}), the "
            f"run validates {len(ahead)} more time(s)"
        ]
    # a first finite value sets the best: patience more are needed after it
    needed = tc.patience + 1 if early.best is None else tc.patience - early.since
    if 0 < needed and len(ahead) < needed:
        more = " more" if course.done else ""
        lines.append(
            f"  warning: train.patience {tc.patience} needs {needed}{more} validations and the run holds "
            f"{len(ahead)}: it never stops early (lower train.patience, or validate more often with "
            "train.valid_every_updates)"
        )
    return lines


def best_k_lines(tc, course: Course, stop: int, validates: bool) -> list[str]:
    """What train.best_k ranks over the saves the run holds: the saves at validation updates alone (each validation
    saves, to be ranked), by valid best_metric; a save every save_every_updates between them has no metrics. A
    warning where no save can be ranked (no validation data: best.json stays empty)."""
    if not tc.best_k:
        return []
    if not validates:  # a warning where best_k was set: the default's is a note (a run without data.valid is fine)
        said = "warning: " if tc.best_k != type(tc).best_k else ""
        return [
            f"  {said}train.best_k {tc.best_k} ranks saves by their valid {tc.best_metric}, but data.valid names no "
            "manifest: no save is validated, none is ranked (best.json stays empty; --average-by best has nothing to "
            "average); give data.valid, or train.best_k=0"
        ]
    valid = validation_updates(tc, course, stop)
    every = tc.save_every_updates
    unranked = (
        [u for u in range(every * (course.done // every + 1), stop + 1, every) if u not in valid] if every else []
    )
    better = "higher" if tc.ranking_mode == "max" else "lower"
    when = f"every {tc.valid_every_updates} updates and at" if tc.valid_every_updates else "at"
    line = (
        f"  train.best_k {tc.best_k} keeps the best by valid {tc.best_metric} ({better} is better) of the saves at "
        f"validation updates only: the run's {len(valid)} validation(s), {when} each epoch's end"
    )
    if unranked:
        more = ", ..." if len(unranked) > 1 else ""
        line += (
            f"; its {len(unranked)} save(s) every {every} updates at no validation (update {unranked[0]}{more}) have "
            "no metrics and are never ranked (train.keep_last rotates them)"
        )
    return [line]
