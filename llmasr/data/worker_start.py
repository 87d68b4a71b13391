"""How an epoch's DataLoader workers start: their init function (`worker_init`), and their start on a Python that
can deadlock a forked child (CPython gh-112275, FORK_DEADLOCK_FIXED).

Such a child blocks for good inside the fork, before it runs a line of Python, and the rank that forked it then
waits for its batches forever. Here every worker marks a shared flag first thing in its init function; a worker
that has not marked it within WORKER_START_LIMIT_S never will. The epoch's workers are then stopped (the stuck
ones killed: they take no other signal) and started again from the same batch, so the run goes on with the batches
it would have had; after WORKER_START_TRIES such starts the rank stops with an error that says why. Elsewhere
(a fixed Python, one rank, no workers) workers start as torch starts them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data._utils import signal_handling

from llmasr.data.worker_signals import leave_signals_to_main

log = logging.getLogger("llmasr.data")

# Before forking, the rank lets go of the GIL this long: a collective's thread waiting for it to free tensors then
# finishes, thread state and all, instead of being caught halfway by the fork. It narrows the window ...
FORK_QUIET_S = 0.05
# ... and a worker that has not reached its init function this long after its fork is taken for caught in it (a
# forked worker runs from memory its parent already holds: it starts within a second even on a busy machine).
WORKER_START_LIMIT_S = 60.0
WORKER_START_TRIES = 3
_POLL_S = 0.01


# CPython gh-112275: a fork while another thread creates or deletes a thread state leaves the child blocked for good
# on the interpreter's HEAD_LOCK. gloo's worker threads do that whenever they free a finished collective's tensors,
# so a DataLoader worker forked by a rank of a multi-rank run can hang it (seen here: a rank stuck at an epoch's
# start, its worker in PyOS_AfterFork_Child; `start_workers` restarts such a worker). The fix reached
# 3.10 and 3.11 in the releases of September 2024 (3.12 reinitialises the lock first); the first release with it,
# per minor version:
FORK_DEADLOCK_FIXED = {(3, 10): (3, 10, 15), (3, 11): (3, 11, 10)}


def fork_deadlock_warning(world_size: int, num_workers: int, version=None) -> str | None:
    """What to tell a user whose run can hang that way (None when it cannot); `version`: this Python's by default."""
    version = sys.version_info if version is None else version
    fixed = FORK_DEADLOCK_FIXED.get(tuple(version[:2]))
    if world_size < 2 or num_workers < 1 or fixed is None or tuple(version[:3]) >= fixed:
        return None
    have, need = ".".join(map(str, version[:3])), ".".join(map(str, fixed))
    return (
        f"Python {have} can leave a DataLoader worker stuck in its fork (CPython gh-112275, fixed in {need}): with "
        f"{world_size} ranks and data.num_workers {num_workers}, a worker forked while a collective's thread holds "
        f"the interpreter's thread-state lock waits for it forever. Such workers are restarted after "
        f"{WORKER_START_LIMIT_S:.0f} s; use Python >= {need}, or data.num_workers 0, "
        "not to lose that time"
    )


class WorkersNeverStarted(RuntimeError):
    """A rank's DataLoader workers stayed stuck in their fork on every try."""


class WorkerStarts:
    """One flag per worker in memory the forked workers share with the rank; each worker sets its own."""

    def __init__(self, num_workers: int):
        self._flags = multiprocessing.RawArray("b", num_workers)

    def mark(self, worker_id: int) -> None:
        self._flags[worker_id] = 1

    def missing(self, limit_s: float) -> list[int]:
        """The workers that have not marked their flag by `limit_s` from now (GIL released while waiting)."""
        deadline = time.monotonic() + limit_s
        while True:
            late = [i for i, flag in enumerate(self._flags) if not flag]
            if not late or time.monotonic() >= deadline:
                return late
            time.sleep(_POLL_S)


def start_workers(start: Callable[[WorkerStarts | None], Iterator], num_workers: int, hazard: bool,
                  restore: Callable[[], None]) -> Iterator:  # fmt: skip
    """`start(watch)`: torch's batch iterator with its workers forked, each marking `watch` first in its init
    function. `restore()`: puts the sampler back where the epoch starts, before another try."""
    if num_workers < 1 or not hazard:
        return start(None)
    for attempt in range(1, WORKER_START_TRIES + 1):
        time.sleep(FORK_QUIET_S)
        watch = WorkerStarts(num_workers)
        batches = start(watch)
        stuck = watch.missing(WORKER_START_LIMIT_S)
        if not stuck:
            return batches
        pids = [batches._workers[i].pid for i in stuck]
        log.warning(
            "DataLoader worker(s) %s (pid %s) did not start within %.0f s of their fork: taken for stuck in it "
            "(CPython gh-112275); the epoch's workers start again (try %d of %d)",
            stuck, pids, WORKER_START_LIMIT_S, attempt, WORKER_START_TRIES,
        )  # fmt: skip
        _stop(batches, pids)
        restore()
    raise WorkersNeverStarted(
        f"DataLoader workers stayed stuck in their fork {WORKER_START_TRIES} times (CPython gh-112275, see "
        "llmasr.data.worker_start): use Python >= 3.11.10, >= 3.10.15 or 3.12+, or data.num_workers 0"
    )


def worker_init(worker_id: int, watch: WorkerStarts | None = None) -> None:
    """Per-worker seeding of the global RNGs (item randomness is per index and does not use them) and 1 thread;
    stop signals are left to the main process (llmasr.data.worker_signals); `watch` learns the worker started."""
    if watch is not None:
        watch.mark(worker_id)
    leave_signals_to_main()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


def _stop(batches, stuck_pids: list[int]) -> None:
    """End a torch iterator's workers, the stuck ones by SIGKILL (they run no handler and block the stop signals).
    torch watches its workers' pids and raises in the rank when one dies by a signal: they are unregistered first."""
    if batches._worker_pids_set:
        signal_handling._remove_worker_pids(id(batches))
        batches._worker_pids_set = False
    for pid in stuck_pids:
        os.kill(pid, signal.SIGKILL)
    batches._shutdown_workers()  # the others leave on its done event; every worker is joined
