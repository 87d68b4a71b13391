"""Whether every rank of a run sees one run directory: the checkpoints' own files are written by the rank that holds
them (DeepSpeed's shards) and the rest by rank 0 alone (llmasr_meta.json, `latest`, train.log), and every rank reads
the folder to resume. On node-local disks a run had trained on with its checkpoints split between the nodes: the
meta recorded only the files its ranks found on their own disk, and the next `train.resume: auto` resumed on node 0
and started afresh on node 1, whose ranks then waited in different collectives until the job was killed.

    token = plant_token(run_dir)                                          # rank 0, holding the lock
    check_shared(run_dir, token, rank=rank, resume=resume, all_gather=g)  # every rank

Rank 0 writes a file of a name no rank has looked up before (so no cached "no such file" answers for it), every
rank looks for it, and one gather tells every rank which ranks did not find it, naming their hosts.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

from llmasr.config_io import ConfigError
from llmasr.rank_verdict import node_name

TOKEN_PREFIX = ".shared-by-rank0-"
WAIT_S = 10.0  # how long a rank looks for the token: a network filesystem may show a new file a little late
POLL_S = 0.2


def plant_token(run_dir: str | Path) -> str:
    """Rank 0: a fresh file in `run_dir`; returns its name."""
    name = f"{TOKEN_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    (Path(run_dir) / name).write_text(socket.gethostname(), encoding="utf-8")
    return name


def _sees(path: Path, wait_s: float) -> str | None:
    """None once `path` is a file; else why not, after `wait_s` seconds of looking."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if path.is_file():
                return None
            why = "no such file"
        except OSError as err:
            why = err.strerror or str(err)
        if time.monotonic() >= deadline:
            return why
        time.sleep(POLL_S)


def check_shared(run_dir: str | Path, token: str, *, rank: int, resume: str | None, all_gather,
                 wait_s: float = WAIT_S) -> None:  # fmt: skip
    """Every rank: ConfigError on every rank alike when a rank cannot see rank 0's `token` in `run_dir`, or would
    resume otherwise than rank 0 (`resume`: what this rank made of train.resume / --resume). Rank 0 removes the
    token."""
    path = Path(run_dir) / token
    try:
        # the folder as this rank resolves it: a relative train.output_dir is read from each rank's working directory
        folder = os.path.abspath(run_dir)
        mine = {"node": node_name(), "missing": None if rank == 0 else _sees(path, wait_s), "resume": resume,
                "folder": folder}  # fmt: skip
        everyone = all_gather(mine)
    finally:
        if rank == 0:
            path.unlink(missing_ok=True)
    first = everyone[0]
    unseen = [(r, o) for r, o in enumerate(everyone) if o["missing"] is not None]
    if unseen:
        who = "; ".join(f"rank {r} (node {o['node']}) in {o['folder']}: {o['missing']}" for r, o in unseen)
        relative = "" if os.path.isabs(run_dir) else " (a relative path is read from each rank's working directory)"
        raise ConfigError(
            f"train.output_dir {run_dir} is not one folder every rank shares: rank 0 (node {first['node']}) wrote "
            f"{token} in {first['folder']}, which these ranks do not see: {who}. Every rank writes its checkpoint "
            "shards there and rank 0 the checkpoints' meta and `latest`, which every rank reads to resume: put "
            f"train.output_dir on a filesystem every node mounts at the same path{relative}"
        )
    differ = [(r, o) for r, o in enumerate(everyone) if o["resume"] != first["resume"]]
    if differ:

        def plan(o) -> str:
            return f"resume from {o['resume']!r}" if o["resume"] is not None else "start afresh"

        who = "; ".join(f"rank {r} (node {o['node']}) would {plan(o)}" for r, o in differ)
        raise ConfigError(f"the ranks disagree on how to start in {run_dir}: rank 0 would {plan(first)}; {who}")
