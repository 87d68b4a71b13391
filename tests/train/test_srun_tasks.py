"""`srun -n 2 python -m llmasr train ...`: two processes given the environment srun gives the two tasks of one step
(SLURM_* only; MASTER_ADDR / MASTER_PORT from the batch script) train as one 2-rank run. Before, each task made a
1-rank run of its own in the same folder: one trained alone, the other failed on the folder's lock. And the SLURM
preemption story on that path: SIGUSR1 to every task, then the requeued job's step resuming."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from llmasr import run_dir as ck
from llmasr.testing.launcher import srun_env
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.process_group import free_port
from llmasr.train.progress import parse_log_line

pytestmark = pytest.mark.slow


def launch_tasks(recipe_file, out_dir, tag="task", **extra) -> list[tuple[subprocess.Popen, object]]:
    """The tasks of the step, started; each in a process group of its own, as slurmstepd starts a task."""
    cmd = [sys.executable, "-m", "llmasr", "train", "--config", str(recipe_file), "--deepspeed", "zero0"]
    procs = []
    for rank in range(2):
        out = open(out_dir / f"{tag}{rank}.txt", "w+", encoding="utf-8")  # noqa: SIM115 - read back by wait_tasks
        procs.append((subprocess.Popen(cmd, env=srun_env(rank, **extra), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True), out))  # fmt: skip
    return procs


def wait_tasks(procs) -> list[tuple[int, str]]:
    """(exit status, output) of each task of the step."""
    try:
        for proc, _ in procs:
            proc.wait(timeout=180)
    finally:
        for proc, _ in procs:
            proc.kill()
    done = []
    for proc, out in procs:
        out.seek(0)
        done.append((proc.returncode, out.read()))
        out.close()
    return done


def start_tasks(recipe_file, out_dir, tag="task", **extra) -> list[tuple[int, str]]:
    """(exit status, output) of each task of the step, run to its end."""
    return wait_tasks(launch_tasks(recipe_file, out_dir, tag, **extra))


def test_the_tasks_of_an_srun_step_train_as_one_run(tiny_llm_dir, tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus", n=8)
    run = tmp_path / "run"
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run, grad_accum=1,
                                                           epochs=2)))  # fmt: skip
    tasks = start_tasks(recipe_file, tmp_path, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    assert [code for code, _ in tasks] == [0, 0], tasks[0][1][-3000:] + tasks[1][1][-3000:]
    log = (run / ck.TRAIN_LOG).read_text(encoding="utf-8")
    assert "ranks from SLURM (job 4242, srun step 0): rank 0 of 2 tasks on 1 node(s)" in log
    assert "(world size 2)" in log and "x world 2 = train_batch_size 2" in log and "1 CPU thread per rank" in log
    assert log.count(" train update=") == 2  # 8 lines, 4 per rank: 1 update an epoch
    assert "train update=" not in tasks[1][1]  # rank 1 reports nothing of its own


def test_an_srun_step_without_master_addr_is_refused_once_with_how_to_set_it(tiny_llm_dir, tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus", n=4)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")))
    tasks = start_tasks(recipe_file, tmp_path)
    assert [code for code, _ in tasks] == [2, 2], tasks[0][1][-3000:] + tasks[1][1][-3000:]
    out = tasks[0][1] + tasks[1][1]
    assert out.count("llmasr train: error: an srun step of 2 tasks needs MASTER_ADDR and MASTER_PORT") == 1, out
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in out
    assert not (tmp_path / "run").exists() and "Traceback" not in out


def losses(run) -> dict:
    lines = (run / ck.TRAIN_LOG).read_text(encoding="utf-8").splitlines()
    return {r["update"]: (r["epoch"], r["loss"]) for r in (parse_log_line(x) for x in lines if " train update=" in x)}


def test_sigusr1_to_every_task_stops_the_step_and_the_requeued_step_resumes_it(tiny_llm_dir, tmp_path):
    """`--signal=USR1@SECONDS`: slurmstepd signals every process of every task at about the same time, with no
    launcher between. Each task finishes the update, the checkpoint is saved once, every task exits 138 (what
    RequeueExit sees) and rank 0 says why in one line; the requeued job runs the same srun line with
    `train.resume: auto`, and trains the uninterrupted run's updates (dropout on: a wrong RNG state shows)."""
    corpus = write_tiny_corpus(tmp_path / "corpus", n=24)

    def recipe(name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / name,
                                                        grad_accum=1, epochs=2, dropout=0.1, deterministic=True,
                                                        resume="auto")))  # fmt: skip
        return path

    def meet():
        return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}

    run, log = tmp_path / "run", tmp_path / "run" / ck.TRAIN_LOG
    procs = launch_tasks(recipe("run"), tmp_path, "stop", **meet())
    deadline = time.monotonic() + 150
    while not (log.is_file() and " train update=1 " in log.read_text(encoding="utf-8")):
        assert time.monotonic() < deadline and all(p.poll() is None for p, _ in procs), wait_tasks(procs)
        time.sleep(0.05)
    for proc, _ in procs:
        os.killpg(proc.pid, signal.SIGUSR1)
    stopped = wait_tasks(procs)
    assert [code for code, _ in stopped] == [128 + signal.SIGUSR1] * 2, stopped[0][1][-3000:] + stopped[1][1][-3000:]
    said = [line for line in stopped[0][1].splitlines() if "stopped by" in line]
    assert len(said) == 1 and "stopped by SIGUSR1 after update " in said[0], stopped[0][1][-3000:]
    assert "stopped by" not in stopped[1][1] and "Traceback" not in stopped[0][1] + stopped[1][1]
    update = int(said[0].split(" after update ")[1].split(":")[0])
    assert ck.latest(run / "checkpoints") == ck.tag_for(update) and max(losses(run)) == update

    requeued = start_tasks(recipe("run"), tmp_path, "requeue", **meet())
    assert [code for code, _ in requeued] == [0, 0], requeued[0][1][-3000:] + requeued[1][1][-3000:]
    assert f"resumed from {run / 'checkpoints' / ck.tag_for(update)}" in requeued[0][1]
    whole = start_tasks(recipe("whole"), tmp_path, "whole", **meet())
    assert [code for code, _ in whole] == [0, 0], whole[0][1][-3000:] + whole[1][1][-3000:]
    assert update < max(losses(tmp_path / "whole")), f"the stop came too late to test a resume: after update {update}"
    assert losses(run) == losses(tmp_path / "whole")


def test_a_master_port_another_job_holds_is_named_with_how_to_choose_another(tiny_llm_dir, tmp_path):
    """Task 0 of a train step and of a decode step, MASTER_PORT held by another process on this node (another job's
    ranks): each stops at once naming the port and how to choose one per job, not with torch's socket error
    (`DistNetworkError: The server socket has failed to listen ... EADDRINUSE`) alone."""
    corpus = write_tiny_corpus(tmp_path / "corpus", n=4)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        meet = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        for verb, args in (("train", ["--config", str(recipe_file), "--deepspeed", "zero0"]),
                           ("decode", ["--model", str(tmp_path / "model"), "--data", str(corpus / "data.jsonl"),
                                       "--output", str(tmp_path / "out"), "--device", "cpu"])):  # fmt: skip
            proc = subprocess.run([sys.executable, "-m", "llmasr", verb, *args], env=srun_env(0, **meet),
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            said = [line for line in proc.stderr.splitlines() if line.startswith(f"llmasr {verb}: error: ")]
            assert proc.returncode == 2 and len(said) == 1, proc.stderr[-3000:]
            assert said[0] == (f"llmasr {verb}: error: MASTER_PORT={port}, where the ranks meet, is taken on 127.0.0.1 "
                               "(MASTER_ADDR) by another process, another job's ranks say: choose another free port, "
                               "one for each job that shares the node (a batch script's `export MASTER_PORT=...`, "
                               "e.g. $((20000 + SLURM_JOB_ID % 20000)); a launcher's --master_port)")  # fmt: skip
