"""The process group of a training or decoding run: joining it (gloo on CPU, nccl on CUDA), the CPU cores a rank
takes, how a rank's process ends, and the few collectives the rest of the package uses, each a no-op on one rank."""

from __future__ import annotations

import atexit
import logging
import os
import random
import socket
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from llmasr import slurm_env
from llmasr.config_io import ConfigError


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def _ports_outside_the_kernels_picks() -> range | None:
    """Ports below the range the kernel picks from for a bind to port 0 (Linux's ip_local_port_range), or None where
    it cannot be read (not Linux) or leaves too few."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(max(1024, low - 12000), low) if low - 1024 >= 1000 else None


def _unheld(port: int) -> bool:
    # a plain bind on every address: refused while anyone listens there or a connection of it lingers in TIME_WAIT
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A local port for ranks to meet at, held against everyone else until they listen there. A port merely bound
    and released is the kernel's to hand out again: another process's bind to port 0 (a second test worker's
    free_port, a gloo listener) could take it in the seconds before rank 0 listened, and the run stopped with
    "address in use". Where the kernel's range is known the port is drawn below it: no bind to port 0, on any of the
    node's addresses (gloo listens at the host name's), is given it. A connection closed from the listening end
    leaves that end in TIME_WAIT (a minute): the port is then refused to a plain bind (another free_port's check) and
    to a bind of port 0 at 127.0.0.1 where the range is unknown, while a listener with SO_REUSEADDR (torch's
    TCPStore, launched_ranks' meeting, Python's create_server) still binds it."""
    outside = _ports_outside_the_kernels_picks()
    # drawn apart from the random module: runs seeded alike would draw alike
    for candidate in random.SystemRandom().sample(outside, 50) if outside else ():
        # 29500: torch's and DeepSpeed's default MASTER_PORT, another job's launcher's to take after the check
        if candidate != 29500 and _unheld(candidate):
            try:
                return _left_in_time_wait(candidate)
            except OSError:  # taken between the check and the listen
                continue
    return _left_in_time_wait(0)


def _left_in_time_wait(port: int) -> int:
    with socket.create_server(("127.0.0.1", port), backlog=1) as server:
        port = int(server.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = server.accept()
            conn.close()  # the listening end closes first: the TIME_WAIT is the port's own
    return port


def cpu_threads_per_rank(environ=os.environ, cpu_count: int | None = None) -> int | None:
    """Intra-op threads for a CPU rank: the cores split between the ranks of this node, or None to leave torch's
    default (OMP_NUM_THREADS set by the user, or one rank). Ranks that each take every core oversubscribe them;
    measured on 2 cores with 2 ranks: 5.7x slower per step than one thread each."""
    if environ.get("OMP_NUM_THREADS"):
        return None
    # deepspeed's launcher sets LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE
    local = int(environ.get("LOCAL_WORLD_SIZE") or environ.get("LOCAL_SIZE") or 1)
    if local <= 1:
        return None
    return max(1, (cpu_count or os.cpu_count() or 1) // local)


def share_cpu_cores() -> None:
    threads = cpu_threads_per_rank()
    if threads is not None:
        torch.set_num_threads(threads)


@contextmanager
def meeting_port_errors(environ=os.environ) -> Iterator[None]:
    """Rank 0's store failing to listen on MASTER_PORT (another job's ranks hold it on this node, say), as an error
    naming the port and how to choose another rather than torch's socket error alone. The other ranks cannot tell:
    they wait for rank 0 until their launcher ends them (srun: --kill-on-bad-exit=1) or the timeout."""
    try:
        yield
    except torch.distributed.DistNetworkError as err:
        if "EADDRINUSE" not in str(err):
            raise
        raise ConfigError(
            f"MASTER_PORT={environ.get('MASTER_PORT', '?')}, where the ranks meet, is taken on "
            f"{environ.get('MASTER_ADDR', '?')} (MASTER_ADDR) by another process, another job's ranks say: choose "
            "another free port, one for each job that shares the node (a batch script's `export MASTER_PORT=...`, "
            f"e.g. {slurm_env.JOB_PORT}; a launcher's --master_port)"
        ) from None


def init_distributed() -> DistInfo:
    """Join (or, without a launcher, create) the process group: gloo on CPU, nccl on CUDA (DeepSpeed's accelerator
    decides). Under `deepspeed` or `torchrun` the launcher's RANK/WORLD_SIZE/MASTER_* are used, in an srun step of
    several tasks SLURM's (llmasr.slurm_env); a plain `llmasr train` becomes a 1-rank group on a free local port."""
    slurm_env.adopt()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)  # its per-step INFO lines drown the progress report
    # DeepSpeed's ZeRO collectives call torch ones that torch has deprecated: their FutureWarnings, which no user can
    # act on, came from every rank, and again whenever a module's catch_warnings reset the warnings shown
    warnings.filterwarnings(
        "ignore", r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated", FutureWarning
    )
    from llmasr.train import shm

    acc = get_accelerator()
    backend = acc.communication_backend_name()
    with shm.without_shm_allreduce(), meeting_port_errors():  # see llmasr.train.shm: reduced by torch.distributed
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    shm.unlink_own_buffer(torch.distributed.get_rank(), barrier)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if acc.device_name() == "cpu":
        device = torch.device("cpu")
        share_cpu_cores()
    else:
        acc.set_device(local_rank)
        device = torch.device(acc.device_name(local_rank))
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=backend,
    )


def exit_rank(status: int) -> NoReturn:
    """End a rank's process without the interpreter's finalization, as multiprocessing ends its children: release
    the process group (after a success only: a failed rank's peers may never join a shutdown), run the atexit
    functions, flush, `os._exit`. A gloo worker thread that drops the last reference to a finished collective just
    after the main thread has returned from waiting for it needs the GIL to free the collective's tensors; during
    finalization it cannot take it and the rank aborts ("terminate called without an active exception", exit -6),
    and `destroy_process_group` does not join those threads (the C++ side still holds the groups)."""
    if status == 0 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to lose
            pass
    os._exit(status)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def all_gather_object(obj) -> list:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]
