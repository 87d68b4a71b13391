"""Running a command as a process: `@command("llmasr train")` on a command's main(argv), or `run(prog, main, argv)`,
turns every exception into one message and an exit status (llmasr.errors says how each is worded and which rank
speaks), names a stop signal on every rank it stops (llmasr.stop_watch ends a rank stuck in C++ after one), and ends
quietly, as SIGPIPE would, once the reader of stdout has left (`llmasr transcribe ... | head`).
"""

from __future__ import annotations

import functools
import os
import select
import signal
import sys
from collections.abc import Callable

from llmasr.errors import Interrupted, exit_status, report, signal_status, stop_signals_raise, traceback_to
from llmasr.stop_watch import stopped_line, stuck_main_ends


def run(prog: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None) -> int:
    """Run `main(argv)`, turning every exception into one message and an exit status (see llmasr.errors). SIGTERM
    and SIGUSR1 raise Interrupted from the start (stop_signals_raise), where a command's own handler (a `when` of
    its own, training's Preemption) does not stand in front."""
    try:
        with stop_signals_raise(""), stuck_main_ends(prog):
            return int(main(argv) or 0)
    except KeyboardInterrupt as err:  # Interrupted (SIGTERM, SIGUSR1) or a plain Ctrl-C (SIGINT)
        signum = err.signum if isinstance(err, Interrupted) else 2
        print(stopped_line(prog, signum, getattr(err, "when", "")), file=sys.stderr, flush=True)
        return signal_status(signum)
    except BrokenPipeError as err:
        if not stdout_reader_left():  # a socket's or a child's pipe: an error like any other
            report(prog, err)
            return exit_status(err)
        # `llmasr transcribe ... | head`: the reader has what it wanted; no error, and no second one from Python's
        # flush of stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return signal_status(signal.SIGPIPE)
    except Exception as err:
        report(prog, err)
        return exit_status(err)
    finally:
        traceback_to(None)


def stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reader has closed it (the pipe's writing end then polls as an error)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no file behind stdout (captured), or no poll on this system
        return False


def command(prog: str) -> Callable:
    """Decorator for a command's `main(argv) -> int` (see the module doc)."""

    def wrap(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapped(argv: list[str] | None = None) -> int:
            return run(prog, main, argv)

        return wrapped

    return wrap
