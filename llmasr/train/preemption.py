"""SIGTERM, SIGINT and SIGUSR1 stop training after the current update, with a checkpoint; a later signal exits at
once.

Clusters send SIGTERM some seconds before they kill a job, or SIGUSR1 where asked to (SLURM's
`--signal=USR1@SECONDS`, `scancel --signal=USR1`; its default action kills a process on the spot), and the launchers
(deepspeed, torchrun) pass a signal they receive on to every rank as SIGTERM, so one Ctrl-C or one preemption often
reaches a rank twice within milliseconds (from the terminal or the scheduler, and from the launcher). Signals that
arrive within FORWARDED_WITHIN_S of the first are that same request; a signal after it exits at once, without
saving.
The launchers neither catch nor pass on SIGUSR1 (the deepspeed launcher dies of it): it is for ranks the scheduler
starts itself (`srun` one task per rank), or for a batch script that traps it and sends the launcher SIGTERM.

Arrival times are taken by a thread reading the signal wakeup fd, not where Python runs the handlers: the main
thread may be inside a long C call (a collective, a large matmul) and would run both handlers together much later.
The thread also lets the second signal end a rank whose main thread waits in a collective that never returns.

A signal may reach one rank only, or ranks at different updates: `agreed_stop` all-reduces the request at every
update boundary, so every rank stops after the same update. Before training starts (`arm`) there is nothing to
save, and the first signal raises `Interrupted` in the main thread at once; so does one after training, unless it
is the forwarded copy of a stop the loop has just saved for.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time

import torch

from llmasr.errors import Interrupted, signal_name  # noqa: F401  (re-exported: the stop signal's names)
from llmasr.errors import signal_status as exit_status  # noqa: F401

log = logging.getLogger("llmasr.train")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
FORWARDED_WITHIN_S = 5.0  # a launcher busy on loaded cores has taken over 2 s to forward its copy


class Preemption:
    """Installed for the duration of one run (a context manager). Main-thread only: Python allows signal handlers
    nowhere else; elsewhere (a training run inside a thread) it leaves signals alone."""

    def __init__(self, rank: int = 0):
        self.rank = rank
        self.signum: int | None = None  # the first stop signal this process received
        self._first_at: float | None = None
        self._armed = False
        self._trained = False  # armed at some point: a later signal comes after training
        self._raised = False
        self._honoured = False  # a signal came while armed: the loop stops with a checkpoint
        self._installed = False
        self._pid = os.getpid()

    # -- installation -------------------------------------------------------------------------------------------
    def __enter__(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="llmasr-preemption", daemon=True)
        self._watcher.start()
        self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if not self._installed:
            return
        self._installed = False
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._writer.close()  # the watcher reads EOF and ends
        self._watcher.join(timeout=5)
        self._reader.close()

    def arm(self, armed: bool = True) -> None:
        """While armed (the training loop), a first signal only requests a stop at the next update boundary. A
        start-up signal whose Interrupted never reached the start-up code (raised inside a finalizer or a callback,
        where Python prints "Exception ignored" and goes on) is raised again here, before training starts."""
        if armed and self._raised and not self._trained and self.signum is not None:
            raise Interrupted(self.signum, "before training started")
        self._armed = armed
        self._trained = self._trained or armed

    # -- signals ------------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame) -> None:
        # Main thread, when Python gets to it. The watcher has the timing; this only interrupts start-up.
        if os.getpid() != self._pid:  # a forked DataLoader worker inherits the handler: the main process decides
            return
        if self.signum is None:
            self.signum = signum  # the watcher may not have read the fd yet; the next boundary must see it
        if self._armed:
            self._honoured = True  # the loop stops at its next boundary, with a checkpoint
            return
        first = self._first_at
        if self._honoured and first is not None and time.monotonic() - first <= FORWARDED_WITHIN_S:
            return  # the launcher's copy of the stop the loop has already saved for
        if not self._raised:
            self._raised = True
            raise Interrupted(signum, "after training ended" if self._trained else "before training started")

    def _watch(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS:
                    self._arrived(signum, time.monotonic())

    def _arrived(self, signum: int, now: float) -> None:
        if self._first_at is None:
            self.signum, self._first_at = signum, now
            if self._armed and self.rank == 0:
                log.warning(
                    "%s received: finishing the current update, then saving a checkpoint and exiting "
                    "(send it again to exit at once, without saving)",
                    signal_name(signum),
                )
            return
        if now - self._first_at <= FORWARDED_WITHIN_S:
            return  # the launcher's copy of the first signal
        if self.rank == 0:
            sys.stderr.write(f"llmasr: second {signal_name(signum)}: exiting now, without saving\n")
            sys.stderr.flush()
        os._exit(exit_status(signum))

    # -- the training loop's side -------------------------------------------------------------------------------
    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed_stop(self, device: torch.device) -> int | None:
        """At an update boundary, on every rank: the signal number if any rank has received a stop signal (the
        largest such number), else None. Every rank must call it at the same points."""
        flag = torch.tensor([float(self.signum or 0)], dtype=torch.float64, device=device)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        value = int(flag.item())
        return value or None
