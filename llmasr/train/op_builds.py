"""DeepSpeed's JIT-built ops (CPU Adam, fused Adam, the CPU shared-memory all-reduce) and torch's cache they are
built in: a build killed mid-compile (a job's time limit) leaves torch's `lock` file in the op's folder, and every
later launch that loads the op waits on it, silently and for ever. A lock older than any build is named at start-up.
Offload to NVMe where the async_io op cannot be built is refused at start-up (`llmasr check` too), not once the model
is built.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from llmasr.config_io import ConfigError

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


def check_nvme_offload(ds: dict, source: str) -> None:
    """ConfigError for offload to NVMe (in a resolved DeepSpeed config `ds` from `source`) on a machine where
    DeepSpeed's async_io op, which does the swapping, is neither installed prebuilt nor buildable: DeepSpeed loads it
    only once the model is built, and fails there ("Unable to JIT load the async_io op")."""
    from llmasr.train.ds_owned import value_at

    keys = [f"zero_optimization.{block}.device" for block in ("offload_optimizer", "offload_param")
            if value_at(ds, f"zero_optimization.{block}.device") == "nvme"]  # fmt: skip
    if not keys:
        return
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops

    accelerator = get_accelerator()
    builder = accelerator.create_op_builder("AsyncIOBuilder")
    if builder is not None:
        if installed_ops.get(builder.name) and accelerator_name == accelerator._name:  # as DeepSpeed's load decides
            return
        if builder.is_compatible(verbose=False):  # libaio's header and library found (it compiles a probe)
            return
    raise ConfigError(
        f"{source}: {' and '.join(keys)} {'is' if len(keys) == 1 else 'are'} 'nvme', but DeepSpeed's async_io op, "
        f"which swaps to NVMe, cannot be built on this machine ({platform.node()}, {accelerator._name}): it needs "
        "libaio's header and library (apt install libaio-dev, or set CFLAGS and LDFLAGS to where they are), and "
        "DeepSpeed would fail on it only once the model is built; or offload to 'cpu' (zero2_offload, zero3_offload)"
    )
