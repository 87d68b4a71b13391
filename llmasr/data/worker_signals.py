"""DataLoader workers leave stopping to their main process.

A Ctrl-C reaches every process of the terminal's process group, and launchers and cluster schedulers send SIGTERM
to every process of a job, DataLoader workers included. A worker killed by it makes torch raise "DataLoader worker
... is killed by signal" in the main process, in the middle of the update the trainer finishes before it saves
(llmasr.train.preemption), and the batches of that update may still be on their way from the workers.

So a worker ignores SIGINT and every SIGTERM that its main process did not send. Its main process still ends it as
torch does (the end-of-epoch shutdown, or a SIGTERM from the parent, which torch's own worker handler also takes as
a clean exit), and torch's watchdog ends it once the main process is gone. Workers are forked with both signals
blocked (`workers_born_blocked`), so one that arrives before the worker's init function has run (a new epoch's
workers start right after an update) waits for it instead of killing the worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# CPython gh-112275: a fork while another thread creates or deletes a thread state leaves the child blocked for good
# on the interpreter's HEAD_LOCK. gloo's worker threads do that whenever they free a finished collective's tensors,
# so a DataLoader worker forked by a rank of a multi-rank run can hang it (seen here: a rank stuck at an epoch's
# start, its worker in PyOS_AfterFork_Child; llmasr.data.worker_start now restarts such a worker). The fix reached
# 3.10 and 3.11 in the releases of September 2024 (3.12 reinitialises the lock first); the first release with it,
# per minor version:
FORK_DEADLOCK_FIXED = {(3, 10): (3, 10, 15), (3, 11): (3, 11, 10)}


def fork_deadlock_warning(world_size: int, num_workers: int, version=None) -> str | None:
    """What to tell a user whose run can hang that way (None when it cannot); `version`: this Python's by default."""
    version = sys.version_info if version is None else version
    fixed = FORK_DEADLOCK_FIXED.get(tuple(version[:2]))
    if world_size < 2 or num_workers < 1 or fixed is None or tuple(version[:3]) >= fixed:
        return None
    from llmasr.data.worker_start import WORKER_START_LIMIT_S  # it imports this module

    have, need = ".".join(map(str, version[:3])), ".".join(map(str, fixed))
    return (
        f"Python {have} can leave a DataLoader worker stuck in its fork (CPython gh-112275, fixed in {need}): with "
        f"{world_size} ranks and data.num_workers {num_workers}, a worker forked while a collective's thread holds "
        f"the interpreter's thread-state lock waits for it forever. Such workers are restarted after "
        f"{WORKER_START_LIMIT_S:.0f} s (llmasr.data.worker_start); use Python >= {need}, or data.num_workers 0, "
        "not to lose that time"
    )


@contextlib.contextmanager
def workers_born_blocked() -> Iterator[None]:
    """Block the stop signals in this thread while DataLoader workers are forked (a child inherits the mask). This
    process's other threads still take them, so its own stop request is not delayed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def leave_signals_to_main() -> None:
    """Call first thing in a DataLoader worker (its worker_init_fn), in the worker's main thread."""
    signal.set_wakeup_fd(-1)  # the main process's fd, inherited through fork: its signals are not ours
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    # Blocked in this thread and in every thread started from now on; one thread takes each SIGTERM with its
    # sender's pid, which no Python-level handler is told.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_parent_sigterm, args=(parent,), name="llmasr-worker-sigterm", daemon=True).start()


def _exit_on_parent_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)
