"""A stop signal (SIGTERM: a scheduler's time limit, `kill`; SIGUSR1: SLURM's notice) reaching the ranks of
`llmasr decode` under the deepspeed launcher: every rank it stops says so in one line with its rank and what it was
doing, and exits 128 + N, whether or not it holds the --output lock (rank 0 alone does, once the model loaded)."""

from __future__ import annotations

import signal
import subprocess

import pytest

from llmasr.testing.launcher import assert_no_shm_left, launcher_env
from llmasr.train.process_group import free_port

# each rank stops itself right where it is told to, as a job's `kill` reaches every rank there
STOPPED_AT = {
    "load": ("llmasr.commands.decode", "load_decode_model"),
    "decode": ("llmasr.commands.decode", "decode_manifest"),
}


def _stopping_entry(tmp_path, name: str, where: str):
    module, function = STOPPED_AT[where]
    script = tmp_path / "stopping_llmasr.py"
    script.write_text(
        "import importlib, os, signal, sys\n"
        f"m = importlib.import_module({module!r})\n"
        f"real = getattr(m, {function!r})\n"
        "def stopped(*args, **kwargs):\n"
        f"    os.kill(os.getpid(), signal.{name})\n"
        "    return real(*args, **kwargs)\n"
        f"setattr(m, {function!r}, stopped)\n"
        "from llmasr.cli import entry\n"
        "sys.exit(entry())\n"
    )
    return script


@pytest.mark.parametrize(("name", "where", "doing"), [
    ("SIGTERM", "load", ["while loading the model"] * 2),
    ("SIGUSR1", "decode", ["while writing {out}, decoding {data}", "while decoding {data}"]),  # rank 0's, rank 1's
])  # fmt: skip
def test_every_rank_a_signal_stops_says_so(exported_dir, corpus, tmp_path, name, where, doing):
    """Rank 1 (no lock) ended without a word, and before the lock (the model loading) rank 0 too: a job stopped by
    its scheduler left no line saying why its decode ended."""
    port = free_port()
    out = tmp_path / "out"
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), str(_stopping_entry(tmp_path, name, where)),
           "decode", "--model", str(exported_dir), "--data", str(corpus), "--output", str(out), "--num-workers", "0",
           "--max-new-tokens", "2", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=300)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 128 + getattr(signal, name), said[-4000:]
    for rank in (0, 1):
        line = (
            f"llmasr decode: rank {rank} stopped by {name} {doing[rank].format(out=out, data=corpus)} (nothing to save)"
        )
        assert sum(line in text for text in said.splitlines()) == 1, (line, said[-4000:])
    assert "Traceback" not in said, said[-4000:]
    assert_no_shm_left(port)
