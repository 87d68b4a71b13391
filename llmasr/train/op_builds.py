"""DeepSpeed's JIT-built ops (CPU Adam, fused Adam, the CPU shared-memory all-reduce) and torch's cache they are
built in: a build killed mid-compile (a job's time limit) leaves torch's `lock` file in the op's folder, and every
later launch that loads the op waits on it, silently and for ever. A lock older than any build is named at start-up.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("llmasr.train")

STALE_AFTER_S = 1800  # an op builds in seconds to minutes; a lock this old outlived the build that made it


def build_cache() -> Path:
    """The folder torch builds JIT extensions in for this interpreter: TORCH_EXTENSIONS_DIR as set, else the default
    root with the interpreter's and accelerator's folder torch appends to it."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        accelerator = "cu" + torch.version.cuda.replace(".", "")
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def stale_build_locks(cache: Path | None = None, older_than_s: float = STALE_AFTER_S) -> list[tuple[Path, float]]:
    """(lock file, its age in seconds) of each op folder in `cache` (default build_cache()) whose lock is older than
    `older_than_s`; none when the cache cannot be read."""
    cache = build_cache() if cache is None else cache
    now, found = time.time(), []
    try:
        for lock in sorted(cache.glob("*/lock")):
            age = now - lock.stat().st_mtime
            if age > older_than_s:
                found.append((lock, age))
    except OSError:
        return []
    return found


def warn_stale_build_locks(cache: Path | None = None) -> list[tuple[Path, float]]:
    """A warning for each stale lock (stale_build_locks), before DeepSpeed loads an op; returns them."""
    found = stale_build_locks(cache)
    for lock, age in found:
        log.warning(
            "%s: a lock torch left while building DeepSpeed's op '%s' %.0f minutes ago; unless that build still runs "
            "(a job killed while compiling leaves it), delete %s: a launch loading the op waits on the lock for ever",
            lock, lock.parent.name, age / 60, lock.parent,
        )  # fmt: skip
    return found
