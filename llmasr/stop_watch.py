"""How a stop signal is said (`stopped_line`), and that it ends the process even where the main thread cannot take it.

command_run.run has SIGTERM and SIGUSR1 raise Interrupted (errors.stop_signals_raise), but Python runs a signal's
handler only when the main thread returns to Python code: a rank blocked in a C++ call (a rendezvous that waits for a
rank 0 that never comes, a collective whose peer hangs) took no notice of SIGTERM at all, where the signal's default
action had ended it. A watcher thread reads the signals off the wakeup fd (as training's Preemption does, whose own
watcher stands in for this one while it is installed): when the main thread has not raised Interrupted within
STUCK_GRACE_S, the watcher says the stop line itself (stopped_line, saying where it was stuck) and ends the process with
128 + N.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from llmasr import errors
from llmasr.slurm_env import launcher_ranks

STUCK_GRACE_S = 10.0  # a long C++ call that does return (a large tensor read) comes back well within it


def stopped_line(prog: str, signum: int, when: str = "") -> str:
    """The one line a process stopped by `signum` leaves, `when` saying what it was doing; every rank of a launch says
    it, with its rank: one without the --output lock, or before a command installed its own handler, had ended
    without a word (rank 0 alone spoke, and only where it held one)."""
    rank = f"rank {errors.process_rank()} " if launcher_ranks() is not None else ""
    return f"{prog}: {rank}stopped by {errors.signal_name(signum)}" + (f" {when} (nothing to save)" if when else "")


@contextmanager
def stuck_main_ends(prog: str) -> Iterator[None]:
    """The watcher installed for the block (main thread only; elsewhere nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    ended = threading.Event()
    watcher = threading.Thread(target=_watch, args=(prog, reader, ended), name="llmasr-stop-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        ended.set()
        signal.set_wakeup_fd(previous)
        writer.close()  # the watcher reads EOF and ends
        watcher.join(timeout=5)
        reader.close()


def _watch(prog: str, reader: socket.socket, ended: threading.Event) -> None:
    handled = len(errors.stops_handled)
    while True:
        try:
            data = reader.recv(64)
        except OSError:
            return
        if not data:
            return
        signum = next((n for n in data if n in errors.STOP_SIGNALS), None)
        if signum is None:
            continue
        # the main thread took it (now or earlier: the handler may run before this thread reads the byte)
        if ended.wait(STUCK_GRACE_S) or len(errors.stops_handled) > handled:
            return
        where = errors.doing[-1] if errors.doing else ""
        when = (f"{where}, " if where else "while ") + f"stuck in a call that did not return within {STUCK_GRACE_S:g} s"
        sys.stderr.write(stopped_line(prog, signum, when) + "\n")
        sys.stderr.flush()
        os._exit(errors.signal_status(signum))
