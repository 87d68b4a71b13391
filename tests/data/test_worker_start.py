"""A worker stuck in its fork (CPython gh-112275) no longer hangs the rank (llmasr.data.worker_start): the epoch's
workers start again and the loop gets the batches it would have had; a worker stuck on every try is an error that
says why. The stuck worker is simulated where the real one stops: before its init function marks it started, with
the stop signals blocked as they are during the fork."""

from __future__ import annotations

import logging
import os
import time

import pytest
from speech_fakes import build, cfg, good_corpus

import llmasr.data.worker_start as start
from llmasr.data.worker_map import worker_map
from llmasr.data.worker_start import WorkersNeverStarted, WorkerStarts


def stuck_in_fork(pids_file, worker: int, times: int):
    """A WorkerStarts.mark that holds worker `worker` forever in its first `times` starts (its pid appended to
    `pids_file`), like a child blocked in the fork."""
    real = WorkerStarts.mark

    def mark(self, worker_id):
        seen = pids_file.read_text().split() if pids_file.exists() else []
        if worker_id == worker and len(seen) < times:
            with pids_file.open("a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(3600)  # SIGTERM and SIGINT are still blocked here: only SIGKILL ends it
        real(self, worker_id)

    return mark


def keys_of_an_epoch(loader) -> list[list[str]]:
    return [list(batch.keys) for batch in loader]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def hazardous_loader(tmp_path):
    loader, _ = build(cfg(num_workers=2), [str(good_corpus(tmp_path, 24))], rank=0, world_size=2)
    loader.fork_hazard = True  # as on a Python with the deadlock (llmasr.data.worker_start.fork_deadlock_warning)
    return loader


def test_a_worker_stuck_in_its_fork_is_replaced_and_the_epoch_goes_on(tmp_path, monkeypatch, caplog):
    loader = hazardous_loader(tmp_path)
    loader.set_epoch(1)
    want = keys_of_an_epoch(loader)
    pids = tmp_path / "stuck.pids"
    monkeypatch.setattr(start, "WORKER_START_LIMIT_S", 1.5)
    monkeypatch.setattr(WorkerStarts, "mark", stuck_in_fork(pids, worker=1, times=1))
    loader.set_epoch(1)
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):
        got = keys_of_an_epoch(loader)
    assert got == want and len(want) > 2
    (pid,) = map(int, pids.read_text().split())
    assert gone(pid)
    (line,) = [r.getMessage() for r in caplog.records if "did not start" in r.getMessage()]
    assert f"worker(s) [1] (pid [{pid}])" in line and "gh-112275" in line and "try 1 of 3" in line


def test_a_rank_resuming_mid_epoch_restarts_its_workers_at_the_resumed_batch(tmp_path, monkeypatch):
    loader = hazardous_loader(tmp_path)
    loader.set_epoch(0)
    full = keys_of_an_epoch(loader)
    loader.load_state_dict({"sampler": {**loader.state_dict()["sampler"], "epoch": 0, "batches_yielded": 2}})
    monkeypatch.setattr(start, "WORKER_START_LIMIT_S", 1.5)
    monkeypatch.setattr(WorkerStarts, "mark", stuck_in_fork(tmp_path / "stuck.pids", worker=0, times=1))
    assert keys_of_an_epoch(loader) == full[2:]


def test_workers_stuck_on_every_try_stop_the_rank_with_the_reason(tmp_path, monkeypatch):
    loader = hazardous_loader(tmp_path)
    pids = tmp_path / "stuck.pids"
    monkeypatch.setattr(start, "WORKER_START_LIMIT_S", 1.0)
    monkeypatch.setattr(start, "WORKER_START_TRIES", 2)
    monkeypatch.setattr(WorkerStarts, "mark", stuck_in_fork(pids, worker=0, times=99))
    with pytest.raises(WorkersNeverStarted, match=r"stuck in their fork 2 times \(CPython gh-112275.*num_workers 0"):
        list(loader)
    stuck = list(map(int, pids.read_text().split()))
    assert len(stuck) == 2 and all(gone(pid) for pid in stuck)


def test_a_pass_over_every_recording_restarts_a_worker_stuck_in_its_fork(tmp_path, monkeypatch):
    """The pass that plans a multi-rank decode's windows (llmasr.data.worker_map) forks its workers beside the
    ranks' collectives too: with the hazard they are watched and started again, and every result comes in order."""
    pids = tmp_path / "stuck.pids"
    monkeypatch.setattr(start, "WORKER_START_LIMIT_S", 1.5)
    monkeypatch.setattr(WorkerStarts, "mark", stuck_in_fork(pids, worker=1, times=1))
    assert list(worker_map(lambda i: i * i, range(9), workers=2, hazard=True)) == [i * i for i in range(9)]
    (pid,) = map(int, pids.read_text().split())
    assert gone(pid)
