"""How a rank's process ends (llmasr.train.process_group.exit_rank, called by the `llmasr` entry point): a gloo worker
thread still freeing a collective's tensors when the interpreter finalizes aborts the process; exit_rank ends it
first."""

import subprocess
import sys

import pytest

from llmasr import cli
from llmasr.train.process_group import free_port

# A 1-rank gloo group and one collective nobody waits for: the worker thread frees the tensor after the main
# thread has moved on, which at interpreter exit aborts the process (what two-rank runs hit now and then).
RACE = """
import atexit, os, sys
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
import torch
from llmasr.train.process_group import exit_rank

torch.distributed.init_process_group("gloo")
atexit.register(lambda: print("atexit: group still up", torch.distributed.is_initialized()))


def fire():
    torch.distributed.all_reduce(torch.ones(1 << 16), async_op=True)  # neither the tensor nor the work kept


fire()
sys.stdout.write("written before the exit, not flushed")
exit_rank(int(sys.argv[2]))
"""


@pytest.mark.parametrize("status", [0, 0, 0, 3])
def test_a_rank_with_a_collective_in_flight_exits_with_its_status(tmp_path, status):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    proc = subprocess.run([sys.executable, str(script), str(free_port()), str(status)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == status, proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr
    # the atexit functions ran; after a success the group was released first, after a failure it is left alone
    assert f"atexit: group still up {status != 0}" in proc.stdout
    assert "written before the exit, not flushed" in proc.stdout


def test_the_entry_point_ends_through_exit_rank_only_with_a_group(monkeypatch):
    import torch.distributed

    import llmasr.train.process_group as process_group

    ended = []

    def fake_exit_rank(status):
        ended.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(cli, "main", lambda: 5)
    monkeypatch.setattr(process_group, "exit_rank", fake_exit_rank)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    assert cli.entry() == 5 and ended == []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(SystemExit):
        cli.entry()
    assert ended == [5]
