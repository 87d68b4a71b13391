"""A stop signal during the demo's training: the real `llmasr demo` command line, its corpus and LLM stages stood in
for, and a stand-in for DeepSpeed's launcher pair (a runner that neither catches nor passes on signals, and a
`launch` child that saves on a signal, as the ranks do, after a second)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RUNNER = """
import subprocess, sys
sys.exit(subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]]).wait())
"""
LAUNCH = """
import os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
got = []
def stop(signum, frame):
    got.append(signum)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, stop)
(out / "launch.pid").write_text(str(os.getpid()))
while not got:
    time.sleep(0.05)
time.sleep(1.0)  # the ranks finish their update and save
(out / "saved").write_text(signal.Signals(got[0]).name)
sys.exit(1)
"""
DEMO = """
import json, sys
from pathlib import Path
from llmasr.cli import main
from llmasr.commands import demo
from llmasr.demo import run
out = Path(sys.argv[1])
demo.stage_corpus = lambda args, workdir, state: {"manifests": {"train": "t.jsonl", "dev": "d.jsonl"}}
demo.stage_llm = lambda args, workdir, state, corpus: state.mark("llm", "x", 0.0) or workdir / "llm"
run.gpu_count = lambda: 0
run.launcher = lambda: [sys.executable, str(out / "runner.py"), str(out / "launch.py"), str(out)]
sys.exit(main(["demo", "--workdir", str(out / "w"), "--quick"]))
"""


def _start(tmp_path: Path) -> subprocess.Popen:
    for name, text in (("runner.py", RUNNER), ("launch.py", LAUNCH), ("demo.py", DEMO)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # started as from a terminal: Ctrl-C's default action, even where this suite runs with SIGINT ignored (a shell
    # starts a background job so, and the demo would inherit it)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "demo.py"), str(tmp_path)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "launch.pid").is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the stand-in launcher never started: {proc.communicate()}")
        time.sleep(0.05)
    time.sleep(0.3)  # its handlers are installed before it writes its pid
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize(
    ("signum", "whom"),
    [(signal.SIGTERM, "demo"), (signal.SIGINT, "group"), (signal.SIGINT, "demo"), (signal.SIGUSR1, "demo")],
)
def test_a_stop_signal_ends_the_training_before_the_demo_ends(tmp_path, signum, whom):
    """SIGTERM to the demo alone (`kill PID`) had ended it at once, silently, with the launcher and its ranks left
    training in WORKDIR/run; on Ctrl-C the demo killed the launcher and ended while the ranks were still saving, so
    a rerun at once could find them writing the same run. Now the signal reaches the training, the demo waits for it
    and says how to go on. SIGUSR1 (SLURM's notice) had ended the demo as SIGTERM had: it reaches the launch child
    as SIGTERM, which that child passes on (it dies of SIGUSR1, as the stand-in does)."""
    proc = _start(tmp_path)
    launch = int((tmp_path / "launch.pid").read_text())
    try:
        os.killpg(proc.pid, signum) if whom == "group" else os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signum, err
        assert (tmp_path / "saved").is_file() and not _alive(launch), "the demo ended before its training had"
        assert f"stopped by {signal.Signals(signum).name}" in err and "rerun the same command" in err, err
    finally:
        if _alive(launch):
            os.kill(launch, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
