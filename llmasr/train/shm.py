"""DeepSpeed's CPU shared-memory all-reduce: not set up for training, and its /dev/shm buffers never left behind.

On the CPU accelerator `deepspeed.init_distributed` builds a shared-memory all-reduce op and, when every rank runs
on one node (LOCAL_SIZE == world size, as the deepspeed launcher sets it), each rank writes a ~69 MB segment
/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank> that DeepSpeed never unlinks: /dev/shm
is RAM, so every multi-rank CPU run leaked 138 MB until the machine was rebooted. Only
`deepspeed.comm.inference_all_reduce` (tensor-parallel inference) uses the op; training reduces through
torch.distributed (gloo), so `without_shm_allreduce` keeps DeepSpeed from building it.

Should a DeepSpeed version create the buffers anyway (a renamed builder), `unlink_own_buffer` removes them right
after start-up, once every rank has mapped every other rank's buffer: the mappings stay valid and the kernel frees
the memory when the last rank exits, on a clean exit, an error or a signal alike.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SHM_DIR = Path("/dev/shm")
BUFFER_PREFIX = "deepspeed_allreduce_buffer"


def buffer_name(rank: int, environ=os.environ) -> str:
    """The name DeepSpeed's shm.cpp gives rank `rank`'s buffer (SHM_BUFFER_NAME, uid, master address and port)."""
    return f"{BUFFER_PREFIX}_{os.getuid()}_{environ.get('MASTER_ADDR', '')}_{environ.get('MASTER_PORT', '')}_{rank}"


def run_buffers(port: int | str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """The buffers any rank of the run on master port `port` left in `shm_dir` (for checks and tests)."""
    if not shm_dir.is_dir():
        return []
    prefix = f"{BUFFER_PREFIX}_{os.getuid()}_"
    return sorted(p for p in shm_dir.iterdir() if p.name.startswith(prefix) and f"_{port}_" in p.name[len(prefix) :])


@contextmanager
def without_shm_allreduce() -> Iterator[None]:
    """Inside, `deepspeed.init_distributed` sets up no shared-memory all-reduce op (nor compiles it)."""
    # `import deepspeed.comm.torch as m` would bind torch itself: deepspeed.comm re-exports the name `torch`
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    original: Callable | None = getattr(ds_torch, "build_shm_op", None)
    if original is None:  # another DeepSpeed layout: unlink_own_buffer still removes what it creates
        yield
        return
    ds_torch.build_shm_op = lambda: None
    try:
        yield
    finally:
        ds_torch.build_shm_op = original


def unlink_own_buffer(rank: int, barrier: Callable[[], None], shm_dir: Path = SHM_DIR) -> bool:
    """Remove this rank's buffer if DeepSpeed created one; True if it did. `barrier` waits for every rank: a rank
    maps the others' buffers by name while it starts, so no name may go before all ranks are up. Every rank of a
    run sees the same DeepSpeed and LOCAL_SIZE, so either all of them call the barrier or none does."""
    path = shm_dir / buffer_name(rank)
    if not path.exists():
        return False
    barrier()
    path.unlink(missing_ok=True)
    return True
