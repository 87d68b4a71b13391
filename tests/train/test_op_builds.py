"""A build lock torch left behind in the JIT-extension cache is named at start-up (llmasr.train.op_builds)."""

from __future__ import annotations

import logging
import os
import time

from llmasr.train.op_builds import build_cache, warn_stale_build_locks


def test_a_lock_older_than_any_build_is_named_and_a_fresh_one_is_not(tmp_path, monkeypatch, caplog):
    """A job killed while DeepSpeed compiled its shared-memory op left deepspeed_shm_comm/lock: every later launch
    that loads the op waited on it, with no word, until its timeout. A lock as old as a build in progress is left
    alone; the cache is TORCH_EXTENSIONS_DIR's where it is set."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert build_cache() == tmp_path
    for name, age in (("deepspeed_shm_comm", 2 * 3600), ("cpu_adam", 60), ("fused_adam", None)):
        (tmp_path / name).mkdir()
        if age is not None:
            lock = tmp_path / name / "lock"
            lock.touch()
            os.utime(lock, (time.time() - age, time.time() - age))
    with caplog.at_level(logging.WARNING, logger="llmasr.train"):
        found = warn_stale_build_locks()
    assert [lock for lock, _ in found] == [tmp_path / "deepspeed_shm_comm" / "lock"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'deepspeed_shm_comm' / 'lock'}: a lock torch left")
    assert (
        "op 'deepspeed_shm_comm' 120 minutes ago" in said[0] and f"delete {tmp_path / 'deepspeed_shm_comm'}" in said[0]
    )
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "none here"))
    assert warn_stale_build_locks() == []
