"""Preemption under the real `deepspeed` launcher, 2 CPU ranks, ZeRO-2, a DataLoader worker per rank: SIGTERM to
the whole job (as a cluster sends it; the launcher forwards a second copy to every rank, and the workers get it too),
or to one rank only. Every rank stops after the same update, saves, and the resumed run's per-update losses equal
those of a run never interrupted. Nothing is left in /dev/shm."""

import os
import signal

import pytest

from llmasr import run_dir as ck
from llmasr.testing.launcher import Started, assert_no_shm_left, launch_train
from llmasr.train.progress import parse_log_line

pytestmark = pytest.mark.slow

# 24 utterances: 3 batches per rank per epoch, 2 updates per epoch; dropout on, so a wrong RNG state shows
OVERRIDES = ("train.epochs=3", "train.deterministic=true", "data.num_workers=1", "model.encoder.conf.dropout_rate=0.1")
TOTAL = 6


def rows(run_dir):
    lines = (run_dir / "train.log").read_text().splitlines()
    return {r["update"]: r for r in (parse_log_line(line) for line in lines if " train update=" in line)}


def stopped_at(run_dir, signame: str) -> int:
    lines = [line for line in (run_dir / "train.log").read_text().splitlines() if "stopped by" in line]
    assert len(lines) == 1 and f"stopped by {signame} after update " in lines[0], lines
    update = int(lines[0].split(" after update ")[1].split(":")[0])
    assert ck.latest(run_dir / "checkpoints") == ck.tag_for(update)
    assert max(rows(run_dir)) == update  # no update ran after the one the stop followed
    return update


def test_sigterm_to_the_job_saves_and_resume_matches(tiny_recipe_file, tmp_path):
    job = Started(tiny_recipe_file, "zero2", tmp_path / "b", *OVERRIDES, output=tmp_path / "b.out")
    job.wait_for_update(2)  # the stop then mostly follows update 3, inside epoch 1 (the 1-rank tests cover both)
    os.killpg(job.proc.pid, signal.SIGTERM)  # launcher, ranks and DataLoader workers alike
    job.wait_group()
    out = job.text()
    assert "Traceback" not in out, out[-4000:]
    stops = sum("stopped by SIGTERM after update" in line for line in out.splitlines())
    assert stops == 1, out[-4000:]  # rank 0 only
    update = stopped_at(tmp_path / "b", "SIGTERM")
    assert 1 <= update < TOTAL, f"the stop came too late to test a resume: after update {update}"
    assert_no_shm_left(job.port)

    proc = launch_train(tiny_recipe_file, "zero2", tmp_path / "b", *OVERRIDES, resume=True)
    assert f"resumed from {tmp_path / 'b' / 'checkpoints' / ck.tag_for(update)}" in proc.stderr
    launch_train(tiny_recipe_file, "zero2", tmp_path / "a", *OVERRIDES)
    whole, resumed = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert sorted(whole) == sorted(resumed) == list(range(1, TOTAL + 1))
    for u in range(update + 1, TOTAL + 1):  # the resumed updates, as train.log prints them
        assert (resumed[u]["epoch"], resumed[u]["loss"]) == (whole[u]["epoch"], whole[u]["loss"]), u


def test_a_signal_to_one_rank_stops_both_after_the_same_update(tiny_recipe_file, tmp_path):
    job = Started(tiny_recipe_file, "zero2", tmp_path / "c", *OVERRIDES, output=tmp_path / "c.out")
    job.wait_for_update(1)
    pids = job.rank_pids()
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[1], signal.SIGTERM)
    assert job.proc.wait(timeout=300) == 128 + signal.SIGTERM, job.text()[-4000:]
    job.wait_group()
    update = stopped_at(tmp_path / "c", "SIGTERM")
    tag_dir = tmp_path / "c" / "checkpoints" / ck.tag_for(update)
    for rank in (0, 1):  # each rank wrote its ZeRO-2 optimizer partition of that update
        assert (tag_dir / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    assert "Traceback" not in job.text()
    assert_no_shm_left(job.port)
