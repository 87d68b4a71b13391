"""The demo's training launch and its stop signals: a Ctrl-C, SIGTERM or SIGUSR1 that reaches the demo reaches its
training too, and the demo ends only after the training has (the ranks save a checkpoint on the way out,
llmasr.train.preemption), so a rerun resumes from it and never finds ranks still writing WORKDIR/run.

DeepSpeed's local launcher (`deepspeed.launcher.runner`) neither catches nor passes on a signal; its child
(`deepspeed.launcher.launch`) passes one on to every rank as SIGTERM. So the demo sends the signal it got to that
child and waits for the launcher's whole tree; SIGUSR1 (SLURM's notice) as SIGTERM, since that child neither catches
nor passes it on and dies of it. A Ctrl-C reaches every process of the terminal's group anyway: the ranks take copies
of one signal within seconds of each other as one request.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable

from llmasr.errors import Interrupted

STOP_WAIT_S = 300.0  # a rank finishes its update, then saves; a second Ctrl-C ends the wait (and the ranks) at once


def run_launcher(cmd: list[str], env: dict, cwd: str, log: Callable[[str], None], wait_s: float = STOP_WAIT_S) -> int:
    """Run the training launcher to its end; its exit status. On a stop signal, the training is stopped (`stop`)
    before the KeyboardInterrupt goes on."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd)
    seen: dict = {}  # the launcher's tree, looked at every second: on Ctrl-C the runner dies at once, and its
    try:  # children, moved to init, are no longer found under it
        while True:
            _look(proc, seen)
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt as err:
        stop(proc, seen, err.signum if isinstance(err, Interrupted) else signal.SIGINT, log, wait_s)
        raise


def _look(proc: subprocess.Popen, seen: dict) -> None:
    """Add the launcher's children and their descendants to `seen` (pid -> (psutil.Process, is a child))."""
    import psutil  # a DeepSpeed dependency

    with contextlib.suppress(psutil.Error):
        top = psutil.Process(proc.pid)
        for p in top.children(recursive=True):
            seen.setdefault(p.pid, (p, p.ppid() == proc.pid))


def stop(proc: subprocess.Popen, seen: dict, signum: int, log: Callable[[str], None], wait_s: float) -> None:
    """Send `signum` to the launcher's children and wait up to `wait_s` for its whole tree to end."""
    import psutil

    _look(proc, seen)
    log(f"stopping the training: its ranks save a checkpoint first (another {signal.Signals(signum).name} stops "
        "them at once, without saving)")  # fmt: skip
    sent = signal.SIGTERM if signum == signal.SIGUSR1 else signum  # the launch child dies of SIGUSR1 (module doc)
    for p, child in seen.values():
        if child:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sent)
    _, alive = psutil.wait_procs([p for p, _ in seen.values()], timeout=wait_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)
    left = sorted(p.pid for p in alive) + ([proc.pid] if proc.returncode is None else [])
    if left:
        log(f"training processes {left} still run after {wait_s:.0f} s; end them before a rerun")
