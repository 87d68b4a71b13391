"""DataLoader workers leave stopping to their main process.

A Ctrl-C reaches every process of the terminal's process group, and launchers and cluster schedulers send SIGTERM
to every process of a job, DataLoader workers included. A worker killed by it makes torch raise "DataLoader worker
... is killed by signal" in the main process, in the middle of the update the trainer finishes before it saves
(llmasr.train.preemption), and the batches of that update may still be on their way from the workers.

So a worker ignores SIGINT, SIGUSR1 (a scheduler's early notice, sent to every process of the job like SIGTERM) and
every SIGTERM that its main process did not send. Its main process still ends it as torch does (the end-of-epoch
shutdown, or a SIGTERM from the parent, which torch's own worker handler also takes as a clean exit), and torch's
watchdog ends it once the main process is gone. Workers are forked with these signals blocked
(`workers_born_blocked`), so one that arrives before the worker's init function has run (a new epoch's workers start
right after an update) waits for it instead of killing the worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}


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
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
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
