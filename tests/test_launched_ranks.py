"""RANK / WORLD_SIZE left over in a shell (an earlier job's, exported) against a launcher's ranks
(llmasr.launched_ranks): a one-process verb on a launcher's rank > 0 stays silent, rank 0 speaking for it; the same
variables in a plain shell made `llmasr check` exit at once without a word (and `llmasr decode` wait for a rank 0
in its process group, up to its timeout, with MASTER_ADDR / MASTER_PORT left over too). Every case runs in
subprocesses, as a user's shell and a launcher start them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from llmasr.testing.launcher import LAUNCHER_VARIABLES, assert_no_shm_left, srun_env
from llmasr.train.process_group import free_port

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# llmasr's entry, meeting the other ranks for 3 s at most where no launcher started it
ENTRY = "import sys, llmasr.launched_ranks as l; l.MEET_WAIT_S = 3.0; from llmasr.cli import entry; sys.exit(entry())"
LEFT_OVER = (
    "in the environment, but {why}, and no launcher started this process: they look left over from an "
    "earlier job (a launcher sets them for the ranks it starts). Unset RANK, WORLD_SIZE and LOCAL_RANK"
)
VERBS = [["check", "--config", "r.yaml", "--deepspeed", "zero2"], ["export", "--checkpoint", "run", "--output", "out"],
         ["data", "check", "m.jsonl"], ["score", "--ref", "ref.txt", "--hyp", "hyp.txt"],
         ["transcribe", "--model", "m", "a.wav"], ["decode", "--model", "m", "--data", "d.jsonl", "--output", "o"],
         ["train", "--config", "r.yaml", "--deepspeed", "zero2"]]  # fmt: skip


def shell_env(**ranks) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM")}
    return {**env, "PYTHONPATH": os.pathsep.join([HERE, env.get("PYTHONPATH", "")]), **ranks}


def llmasr(argv, env, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ENTRY, *argv], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


@pytest.mark.parametrize("argv", VERBS, ids=lambda argv: argv[0])
def test_ranks_left_over_in_a_shell_are_named(tmp_path, argv):
    """`export RANK=1 WORLD_SIZE=2 LOCAL_RANK=1` left in the shell: the verb said nothing and exited (0 for check; 1
    for decode and train, whose process group wanted MASTER_ADDR, an error rank 0 alone would have said)."""
    env = shell_env(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    out, err = llmasr(argv, env, tmp_path).communicate(timeout=120)
    prog = "llmasr " + " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    why = "no MASTER_ADDR / MASTER_PORT to meet the other ranks at"
    assert err.startswith(f"{prog}: error: RANK=1 WORLD_SIZE=2 " + LEFT_OVER.format(why=why)), err
    assert not list(tmp_path.iterdir())  # nothing ran


def test_every_launcher_variable_left_over_is_named_within_the_wait(tmp_path):
    """The hard case: all of a torchrun job's variables exported (MASTER_ADDR/PORT, TORCHELASTIC_*); no rank 0 answers
    there, and rank 1 says so once its wait is over. A left-over rank 0 waits for ranks that never come, likewise."""
    port = str(free_port())
    stale = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "LOCAL_WORLD_SIZE": "2",
             "GROUP_RANK": "0", "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "0"}  # fmt: skip
    for rank, why in (
        ("1", f"rank 0 did not answer at 127.0.0.1:{port} (MASTER_ADDR:MASTER_PORT) within 3 s"),
        ("0", f"1 of the other ranks did not check in at port {port} (MASTER_PORT) within 3 s"),
    ):
        env = shell_env(**stale, RANK=rank, LOCAL_RANK=rank)
        proc = llmasr(VERBS[0], env, tmp_path)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and out == "", err
        assert err.startswith(f"llmasr check: error: RANK={rank} WORLD_SIZE=2 " + LEFT_OVER.format(why=why)), err


def test_ranks_started_by_another_launcher_meet_and_rank_0_alone_speaks(tmp_path):
    """A launcher llmasr does not know (its parent: a test's Python) sets RANK / WORLD_SIZE / MASTER_*: the ranks meet
    at MASTER_PORT, rank 1 stays silent, rank 0 runs the verb."""
    port = str(free_port())
    procs = [llmasr(VERBS[0], shell_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                        MASTER_PORT=port), tmp_path) for r in (1, 0)]  # fmt: skip
    (out1, err1), (out0, err0) = (p.communicate(timeout=120) for p in procs)
    assert (procs[0].returncode, out1, err1) == (0, "", "")  # check's other ranks end at once, as before
    assert procs[1].returncode == 2 and "llmasr check: error: recipe not found: r.yaml" in err0, err0
    assert "left over" not in err0


def test_a_launchers_rank_1_stays_silent(tmp_path):
    """Under deepspeed's launcher rank 1 of `llmasr check` is silent at once (its parent is the launcher)."""
    port = free_port()
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), "--module", "llmasr", "check", "--config",
           "r.yaml", "--deepspeed", "zero2"]  # fmt: skip
    proc = subprocess.run(cmd, env=shell_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said[-3000:]
    assert said.count("llmasr check: error: recipe not found: r.yaml") == 1 and "left over" not in said, said[-3000:]
    assert_no_shm_left(port)


def test_torchrun_started_with_python_options_is_a_launcher(tmp_path):
    """`python -X faulthandler -u -m torch.distributed.run ...`: the module comes after the interpreter's options. Its
    ranks had not been told as a launcher's: rank 0 met at MASTER_PORT, which torchrun's own store holds, and stopped
    the real launch as left over ("Address already in use")."""
    cmd = [
        sys.executable,
        "-X",
        "faulthandler",
        "-u",
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "llmasr",
        "check",
        "--config",
        "r.yaml",
        "--deepspeed",
        "zero2",
    ]
    proc = subprocess.run(cmd, env=shell_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    said = proc.stdout + proc.stderr
    assert "left over" not in said, said[-3000:]
    assert said.count("llmasr check: error: recipe not found: r.yaml") == 1, said[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_while_the_ranks_meet_is_said(tmp_path, signum):
    """A rank waiting for rank 0's answer (up to MEET_WAIT_S) is stopped: SIGTERM had ended it without a word, Ctrl-C
    with a traceback. It says the one stop line, with its rank, and exits 128 + N, as every stopped rank does."""
    with socket.create_server(("127.0.0.1", 0)) as rank_0:  # a rank 0 that takes the check-in and never answers
        env = shell_env(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(rank_0.getsockname()[1]))  # fmt: skip
        entry = ENTRY.replace("MEET_WAIT_S = 3.0", "MEET_WAIT_S = 120.0")
        proc = subprocess.Popen([sys.executable, "-c", entry, *VERBS[0]], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        rank_0.settimeout(120)
        conn, _ = rank_0.accept()
        with conn:
            assert conn.recv(64).startswith(b"llmasr-rank 1")
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=120)
    when = " while meeting the other ranks (nothing to save)" if signum == signal.SIGTERM else ""  # Ctrl-C: no when
    assert err == f"llmasr check: rank 1 stopped by {signal.Signals(signum).name}{when}\n", err
    assert (proc.returncode, out) == (128 + signum, "")
    assert not list(tmp_path.iterdir())


def test_srun_tasks_numbered_by_the_batch_script_wait_for_no_meeting(tmp_path):
    """A batch script that exports WORLD_SIZE / MASTER_* and runs `srun bash -c 'RANK=$SLURM_PROCID ... llmasr ...'`:
    its tasks' parent is slurmstepd. They had met at MASTER_PORT for at most MEET_WAIT_S, so a rank 0 that came
    later (its node still importing the job's container) stopped a real job as left over. RANK / WORLD_SIZE that are
    this srun task's own (SLURM_PROCID, SLURM_STEP_NUM_TASKS) are a launcher's: nothing is waited for."""
    env = srun_env(1, RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    proc = llmasr(VERBS[0], env, tmp_path)  # no rank 0 anywhere
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (0, "", "")  # check's other ranks end at once, rank 0 speaking for them
    stale = srun_env(0, RANK="1", WORLD_SIZE="2")  # an earlier job's export inside a 2-task step: still named
    out, err = llmasr(VERBS[0], stale, tmp_path).communicate(timeout=120)
    assert "RANK=1 WORLD_SIZE=2 in the environment, but no MASTER_ADDR / MASTER_PORT" in err, err


def test_no_rank_goes_on_where_rank_0_met_too_few(tmp_path):
    """Three ranks, rank 2 never comes: rank 0 stops at the end of its wait, and rank 1, which rank 0 had answered at
    once, had gone on to wait in its process group for a rank 0 that had left (up to its timeout). Rank 0's
    answer now waits for every rank: rank 1 stops too, saying why."""
    env = {"WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [llmasr(VERBS[0], shell_env(**env, RANK=str(r), LOCAL_RANK=str(r)), tmp_path) for r in (1, 0)]
    (out1, err1), (out0, err0) = (p.communicate(timeout=120) for p in procs)
    why = f"1 of the other ranks did not check in at port {env['MASTER_PORT']} (MASTER_PORT) within 3 s"
    assert procs[1].returncode == 2 and err0.startswith("llmasr check: error: RANK=0 WORLD_SIZE=3 " +
                                                       LEFT_OVER.format(why=why)), err0  # fmt: skip
    why = (
        f"1 of the other ranks did not check in with rank 0 at 127.0.0.1:{env['MASTER_PORT']} (MASTER_ADDR:MASTER_PORT)"
    )
    assert procs[0].returncode == 2 and err1.startswith("llmasr check: error: RANK=1 WORLD_SIZE=3 " +
                                                       LEFT_OVER.format(why=why)), err1  # fmt: skip


def test_world_size_without_rank_is_named_as_it_is(tmp_path):
    """`export WORLD_SIZE=2` alone (a batch script's, before a plain srun): the message said RANK=0 was in the
    environment, where there is no RANK to unset or look for."""
    out, err = llmasr(VERBS[0], shell_env(WORLD_SIZE="2"), tmp_path).communicate(timeout=120)
    assert err.startswith("llmasr check: error: WORLD_SIZE=2 (and no RANK) in the environment, but no MASTER_ADDR"), err


def test_a_master_port_another_program_holds_is_named_as_taken(tmp_path):
    """Rank 0's MASTER_PORT held by another program (another job's ranks on the node, at the default port): rank 0
    was told its variables look left over and to unset them, which would have made each rank a run of its own."""
    with socket.create_server(("", 0)) as taken:
        port = taken.getsockname()[1]
        env = shell_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        proc = llmasr(VERBS[0], env, tmp_path)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and out == "", err
    assert err.startswith(
        f"llmasr check: error: MASTER_PORT={port} is in use on this node (Address already in use)"
        ": another program holds it (another job's ranks?): give each job its own MASTER_PORT"
    ), err
    assert "RANK=0 WORLD_SIZE=2 in the environment" in err  # and, where they are left over, what to unset
