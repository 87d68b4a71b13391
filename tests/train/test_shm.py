"""DeepSpeed's CPU shared-memory all-reduce buffers: what DeepSpeed leaves in /dev/shm, and that llmasr neither
creates them nor leaves them. One-rank groups in subprocesses with LOCAL_SIZE=1, where DeepSpeed makes its buffer
as it does for every rank of a one-node launch (the 2-rank launcher runs are checked in tests/recipes)."""

import os
import subprocess
import sys
import textwrap

import pytest

from llmasr.train import shm
from llmasr.train.process_group import free_port

pytestmark = pytest.mark.skipif(not shm.SHM_DIR.is_dir(), reason="no /dev/shm")

PLAIN_DEEPSPEED = textwrap.dedent(
    """
    import deepspeed
    from llmasr.train import shm

    if not deepspeed.ops.__compatible_ops__.get("deepspeed_shm_comm", False):
        print("no shm op")
        raise SystemExit(0)
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    path = shm.SHM_DIR / shm.buffer_name(0)
    print("made", path.exists())
    print("unlinked", shm.unlink_own_buffer(0, barrier=lambda: None), path.exists())
    """
)

LLMASR = textwrap.dedent(
    """
    from llmasr.train.process_group import init_distributed
    from llmasr.train import shm

    init_distributed()
    print("made", (shm.SHM_DIR / shm.buffer_name(0)).exists())
    """
)


def one_rank(script: str, port: int) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LOCAL_SIZE": "1", "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_deepspeed_leaves_a_buffer_that_unlink_own_buffer_finds_and_llmasr_makes_none():
    port = free_port()
    out = one_rank(PLAIN_DEEPSPEED, port)
    if "no shm op" in out:
        pytest.skip("DeepSpeed cannot build its shared-memory op here")
    # the leak, and our name for it (DeepSpeed's shm.cpp: SHM_BUFFER_NAME, uid, master address and port, rank)
    assert "made True" in out and "unlinked True False" in out, out
    assert not shm.run_buffers(port)

    port = free_port()
    out = one_rank(LLMASR, port)
    assert "made False" in out and "built successfully" not in out, out  # the op is not even compiled or loaded
    assert not shm.run_buffers(port)


def test_run_buffers_finds_a_runs_buffers_by_port(tmp_path):
    mine = f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1"
    for name in (f"{mine}_29500_0", f"{mine}_29500_1", f"{mine}_29501_0", "other_29500_0"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name[-7:] for p in shm.run_buffers(29500, tmp_path)] == ["29500_0", "29500_1"]
    assert shm.run_buffers(29502, tmp_path) == []


def test_unlink_own_buffer_waits_for_every_rank_first(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29600")
    calls = []
    assert shm.unlink_own_buffer(1, barrier=lambda: calls.append("barrier"), shm_dir=tmp_path) is False
    assert calls == []  # nothing made, nothing to wait for
    (tmp_path / shm.buffer_name(1)).write_bytes(b"x")
    assert shm.unlink_own_buffer(1, barrier=lambda: calls.append("barrier"), shm_dir=tmp_path) is True
    assert calls == ["barrier"] and not (tmp_path / shm.buffer_name(1)).exists()
