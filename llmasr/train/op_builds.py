"""DeepSpeed's JIT-built ops (CPU Adam, fused Adam, the CPU shared-memory all-reduce) and torch's cache they are
built in: a build killed mid-compile (a job's time limit) leaves torch's `lock` file in the op's folder, and every
later launch that loads the op waits on it, silently and for ever. A lock older than any build is named at start-up.
Offload to NVMe where the async_io op cannot be built, or to an nvme_path that is not a writable folder, and ZeRO++'s
quantization where DeepSpeed's quantizer op has no build (the CPU accelerator has none), are refused at start-up on
every rank, each on its node (`llmasr check` on its machine), not once the model is built.
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


def _op_problem(name: str) -> str | None:
    """Why DeepSpeed's op builder `name` ("AsyncIOBuilder") cannot load on this machine's accelerator, None when it
    can: installed prebuilt for it, or buildable (its probe compiles). The CPU accelerator maps an op it has no code
    for to a NotImplementedBuilder, which says it is compatible and raises once loaded."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops

    accelerator = get_accelerator()
    builder = accelerator.create_op_builder(name)
    where = f"on this machine ({platform.node()}, {accelerator._name})"
    if builder is None or type(builder).__name__ == "NotImplementedBuilder":
        return f"has no build for the {accelerator._name} accelerator {where}"
    if installed_ops.get(builder.name) and accelerator_name == accelerator._name:  # as DeepSpeed's load decides
        return None
    if builder.is_compatible(verbose=False):
        return None
    return f"cannot be built {where}"


def _nvme_path_problem(path) -> str | None:
    """Why DeepSpeed cannot swap into the folder `path` here, None when it can. A folder not there is refused too:
    DeepSpeed would create it, on whatever drive holds its parent (the root disk, where the NVMe drive is not
    mounted on this node)."""
    if not isinstance(path, str) or not path.strip():
        return f"is {path!r}, not a folder's path"
    if not os.path.exists(path):
        return "is not there"
    if not os.path.isdir(path):
        return "is not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is a folder this user cannot write in"
    return None


def check_nvme_offload(ds: dict, source: str) -> None:
    """ConfigError for offload to NVMe (in a resolved DeepSpeed config `ds` from `source`) to an nvme_path that is
    not a writable folder on this node, or on a machine where DeepSpeed's async_io op, which does the swapping, is
    neither installed prebuilt nor buildable: DeepSpeed loads the op and opens the folder only once the model is
    built, and fails there ("Unable to JIT load the async_io op", "PATH: No such file or directory")."""
    from llmasr.train.ds_owned import value_at

    blocks = [block for block in ("offload_optimizer", "offload_param")
              if value_at(ds, f"zero_optimization.{block}.device") == "nvme"]  # fmt: skip
    for block in blocks:
        path = value_at(ds, f"zero_optimization.{block}.nvme_path")
        if path is not None and (why := _nvme_path_problem(path)):
            raise ConfigError(
                f"{source}: zero_optimization.{block}.nvme_path {path!r} {why} on this node ({platform.node()}); "
                "DeepSpeed swaps there and would fail on it only once the model is built: name a folder on the NVMe "
                "drive that this user can write in, there on every node (mkdir -p it)"
            )
    keys = [f"zero_optimization.{block}.device" for block in blocks]
    if not keys or not (why := _op_problem("AsyncIOBuilder")):
        return
    raise ConfigError(
        f"{source}: {' and '.join(keys)} {'is' if len(keys) == 1 else 'are'} 'nvme', but DeepSpeed's async_io op, "
        f"which swaps to NVMe, {why}: it needs libaio's header and library (apt install libaio-dev; installed "
        "elsewhere, CPATH and LIBRARY_PATH naming its include and lib folders: DeepSpeed's build reads those, not "
        "CFLAGS), and DeepSpeed would fail on it only once the model is built; or offload to "
        "'cpu' (zero2_offload, zero3_offload)"
    )


# ZeRO++'s quantized all-gathers, stored weights and reduce-scatters: ZeRO-3 loads DeepSpeed's quantizer op for each
_QUANTIZED = ("zero_quantized_weights", "zero_quantized_nontrainable_weights", "zero_quantized_gradients")


def check_quantizer(ds: dict, source: str) -> None:
    """ConfigError for ZeRO++ quantization at ZeRO stage 3 (in a resolved DeepSpeed config `ds` from `source`) on a
    machine where DeepSpeed's quantizer op cannot load: ZeRO-3 loads it as the model is built, partitioned, inside
    the LLM's load, whose error then blamed the model ("not loadable as a causal LM: This op had not been implemented
    on CPU backend"). At other stages ZeRO++ options are refused by llmasr.train.ds_keys."""
    from llmasr.train.ds_config import zero_stage
    from llmasr.train.ds_owned import value_at

    if zero_stage(ds) != 3:
        return
    keys = [f"zero_optimization.{name}" for name in _QUANTIZED if value_at(ds, f"zero_optimization.{name}") is True]
    if not keys or not (why := _op_problem("QuantizerBuilder")):
        return
    raise ConfigError(
        f"{source}: {' and '.join(keys)} {'is' if len(keys) == 1 else 'are'} true, but DeepSpeed's quantizer op, "
        f"which ZeRO++ quantizes with, {why} (it is a CUDA op), and DeepSpeed would fail on it inside the LLM's load: "
        f"remove {'it' if len(keys) == 1 else 'them'} (ZeRO++ quantization needs CUDA GPUs)"
    )
