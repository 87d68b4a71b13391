"""`llmasr train` (or a test's own script) under the real `deepspeed` launcher with N CPU ranks, for end-to-end tests.

Every run is checked for what DeepSpeed's CPU shared-memory all-reduce would leave in /dev/shm: the buffers of the
run's master port must be gone when it ends (llmasr.train.shm).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llmasr.train.process_group import free_port
from llmasr.train.progress import logged_updates
from llmasr.train.shm import run_buffers


def train_command(recipe_file, preset: str, run_dir, *overrides: str, port: int, ranks: int = 2, resume=False,
                  entry=("--module", "llmasr")):  # fmt: skip
    """`entry`: what each rank runs, llmasr's own entry point or a script that ends by calling it."""
    return ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(port), *entry, "train",
            "--config", str(recipe_file), "--deepspeed", preset, *(["--resume"] if resume else []),
            f"train.output_dir={run_dir}", *overrides]  # fmt: skip


def launcher_env() -> dict:
    """This environment without a rank's variables (a test process may have made itself a 1-rank group), with this
    checkout first on PYTHONPATH: the ranks import the llmasr under test, not another checkout's editable install
    put on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(
        [here, *(os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    return env


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "CROSS_RANK", "MASTER_ADDR",
                      "MASTER_PORT")  # fmt: skip


def srun_env(procid: int, **extra) -> dict:
    """What srun sets for task `procid` of a 2-task step on one node (sbatch -n 2), over this environment without
    any launcher's or SLURM's variables; `extra` (MASTER_ADDR, MASTER_PORT: the batch script's) over that."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM")}
    env.update(SLURM_JOB_ID="4242", SLURM_JOBID="4242", SLURM_STEP_ID="0", SLURM_STEPID="0", SLURM_NTASKS="2",
               SLURM_NPROCS="2", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NUM_NODES="1", SLURM_NNODES="1",
               SLURM_TASKS_PER_NODE="2", SLURM_STEP_TASKS_PER_NODE="2", SLURM_JOB_NODELIST="node01",
               SLURM_STEP_NODELIST="node01", SLURM_NODEID="0", SLURM_PROCID=str(procid), SLURM_LOCALID=str(procid),
               PYTHONPATH=os.pathsep.join(sys.path), **extra)  # fmt: skip
    return env


def assert_no_shm_left(port: int) -> None:
    left = run_buffers(port)
    assert not left, f"shared-memory buffers left in /dev/shm: {[p.name for p in left]}"


def launch_train(recipe_file, preset: str, run_dir, *overrides: str, resume=False, expect_rc: int = 0, timeout=400,
                 entry=("--module", "llmasr")):  # fmt: skip
    """Run to the end; the launcher's exit status must be `expect_rc`. Returns the CompletedProcess. `entry`:
    train_command's."""
    port = free_port()
    cmd = train_command(recipe_file, preset, run_dir, *overrides, port=port, resume=resume, entry=entry)
    proc = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect_rc, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_no_shm_left(port)
    return proc


def launch_script(script, *args, ranks: int = 2, timeout=300) -> subprocess.CompletedProcess:
    """`script` with `args` on `ranks` CPU ranks under the deepspeed launcher, run to a clean end (exit 0, no
    shared-memory buffers left): a test's own code on several ranks."""
    port = free_port()
    cmd = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(port), str(script), *map(str, args)]
    proc = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_no_shm_left(port)
    return proc


def launch_nodes(args: list[str], cwds: list, *, ranks: list[int] | None = None, timeout=300) -> list[tuple[int, str]]:
    """`llmasr ARGS` on simulated nodes of this machine: one `deepspeed.launcher.launch` a node, as DeepSpeed's
    multi-node runner starts it on each host (its --world_info, --node_rank, CROSS_RANK), node i in its own working
    directory `cwds[i]` with `ranks[i]` ranks (1 each by default). Every node has this host's name: the launcher's
    node number tells them apart. Returns each node's (exit status, output); no shm buffer may be left."""
    ranks = ranks or [1] * len(cwds)
    port = free_port()
    world = json.dumps({f"node{i}": list(range(n)) for i, n in enumerate(ranks)})
    info = base64.urlsafe_b64encode(world.encode()).decode()
    env = launcher_env()  # this checkout on PYTHONPATH: the nodes start in other folders
    procs, outs = [], []
    for node, cwd in enumerate(cwds):
        out = open(Path(cwd) / f".node{node}.out", "w+", encoding="utf-8")  # noqa: SIM115 - read back below
        cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={info}", f"--node_rank={node}",
               "--master_addr=127.0.0.1", f"--master_port={port}", "--module", "llmasr", *args]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))  # fmt: skip
        outs.append(out)
    try:
        deadline = time.monotonic() + timeout
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:  # a node left waiting for another: its launcher and ranks
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    texts = []
    for out in outs:
        out.seek(0)
        texts.append(out.read())
        out.close()
    assert_no_shm_left(port)
    return list(zip(codes, texts, strict=True))


class Started:
    """A launch in its own session (process group), its output in a file: for signals sent mid-run."""

    def __init__(self, recipe_file, preset: str, run_dir, *overrides: str, output: Path):
        self.port = free_port()
        self.run_dir = Path(run_dir)
        self.output = Path(output)
        cmd = train_command(recipe_file, preset, run_dir, *overrides, port=self.port)
        with open(self.output, "w", encoding="utf-8") as out:
            self.proc = subprocess.Popen(cmd, env=launcher_env(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip

    def wait_for_update(self, update: int, timeout: float = 300) -> None:
        """Until RUN/train.log reports `update` (or the run ended)."""
        log = self.run_dir / "train.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.is_file() and update in logged_updates(log.read_text(encoding="utf-8")):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (status {self.proc.returncode}):\n{self.text()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no update {update} within {timeout} s:\n{self.text()[-4000:]}")

    def rank_pids(self) -> dict[int, int]:
        import psutil

        found = {}  # pid -> (rank, parent pid)
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd, parent = child.cmdline(), child.ppid()
            except psutil.Error:
                continue
            for arg in cmd:
                if arg.startswith("--local_rank=") and "llmasr" in cmd:
                    found[child.pid] = (int(arg.split("=", 1)[1]), parent)
        # a rank's DataLoader workers are forked with its command line: a rank is the one whose parent is not a rank
        return {rank: pid for pid, (rank, parent) in found.items() if parent not in found}

    def wait_group(self, timeout: float = 180) -> None:
        """Until no live process of the launch's group is left (the launcher's own exit does not wait for ranks)."""
        import psutil

        self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = []
            for p in psutil.process_iter(["status"]):
                try:
                    if os.getpgid(p.pid) == self.proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                        alive.append(p.pid)
                except (ProcessLookupError, psutil.Error):
                    continue
            if not alive:
                return
            time.sleep(0.2)
        raise AssertionError(f"processes of the launch still running after {timeout} s")

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8") if self.output.is_file() else ""
