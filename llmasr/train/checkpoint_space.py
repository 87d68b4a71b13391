"""Disk space for a run's checkpoints, checked before the first update.

A checkpoint holds the trained tensors only (frozen base weights are read again from the recipe's paths): each
trained parameter in the training dtype, plus the optimizer's master copy and Adam's two moments (fp32, or bf16
where the DeepSpeed config keeps them so). A run whose
folder cannot hold one would fail at its first save, an epoch or `train.save_every_updates` into the run; one that
cannot hold as many as rotation keeps would fail later. `llmasr train` refuses the first and warns of the second;
`llmasr check` prints both numbers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from llmasr.errors import free_bytes
from llmasr.train.zero_memory import optimizer_state_bytes

log = logging.getLogger("llmasr.train")

# A trained parameter's own copy. Besides it a checkpoint holds ZeRO's fp32 master partition and Adam's exp_avg and
# exp_avg_sq, 12 bytes (plain torch Adam under ZeRO-0 in fp32 keeps 8: the estimate errs on the side of more), or 2
# for each of them the DeepSpeed config keeps in bf16 (zero_memory.optimizer_state_bytes).
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def size_text(n: float) -> str:
    """Bytes as `llmasr check` prints sizes: GiB from one GiB up, MiB below."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


@dataclass(frozen=True)
class CheckpointSpace:
    run_dir: Path
    per_checkpoint: int  # bytes, estimated
    most_kept: int  # checkpoints on disk at once at most (rotation's, with the one being written)
    free: float  # bytes free on the run folder's file system (inf where no folder above it exists to ask)

    @classmethod
    def estimate(
        cls, train_cfg, *, trainable: int, epochs: int, total: int, validates: bool, ds: dict | None = None
    ) -> CheckpointSpace:
        """For a run of `train_cfg` (train.*) under DeepSpeed config `ds` training `trainable` parameters in `total`
        updates over `epochs` epochs: a save at every epoch end, every save_every_updates, and after every
        valid_every_updates validation when best_k ranks checkpoints and there is validation data (`validates`); an
        upper bound on the count. `epochs` and `total` are what the run trains (RunPlan.epochs_reached, ends_after),
        not the epochs train.max_updates cuts off."""
        master, moment = optimizer_state_bytes(ds or {})
        per = trainable * (WEIGHT_BYTES[train_cfg.precision] + master + 2 * moment)
        every, valid_every = train_cfg.save_every_updates, train_cfg.valid_every_updates
        saves = epochs + (total // every if every else 0)
        if validates and train_cfg.best_k and valid_every:
            saves += total // valid_every
        saves = max(1, saves)
        kept = saves if train_cfg.keep_last == 0 else min(saves, train_cfg.keep_last + train_cfg.best_k + 1)
        run_dir = Path(train_cfg.output_dir)
        free = free_bytes(run_dir)  # the run folder's, or that of the nearest folder above it that exists
        return cls(run_dir, per, kept, math.inf if free is None else free)

    @property
    def needed(self) -> int:
        return self.per_checkpoint * self.most_kept

    def line(self) -> str:
        return (
            f"about {size_text(self.per_checkpoint)} a checkpoint, up to {self.most_kept} on disk at once "
            f"({size_text(self.needed)}); {size_text(self.free)} free at {self.run_dir}"
        )

    def problem(self) -> str | None:
        """Why the run cannot start here (its first save would not fit), or None."""
        if self.free >= self.per_checkpoint:
            return None
        return (
            f"{self.run_dir}: {size_text(self.free)} free, and a checkpoint of this run takes about "
            f"{size_text(self.per_checkpoint)}: the first save would fail. Free space there or set another "
            "train.output_dir"
        )

    def warning(self) -> str | None:
        """What to do when the first save fits but rotation's worth of checkpoints does not, or None."""
        if self.free >= self.needed:
            return None
        return (
            f"checkpoints: {self.line()}: a later save may fail for lack of space; lower train.keep_last / "
            "train.best_k, or free space there"
        )


def check_run_space(train_cfg, rank: int, **estimate) -> None:
    """Every rank of a starting run, with CheckpointSpace.estimate's arguments: rank 0 decides whether the run folder
    holds a checkpoint, for every rank (RunDirError; rank 0 reports it), and warns where rotation's worth does not
    fit."""
    from llmasr.train.process_group import broadcast_object
    from llmasr.train.run_dir import RunDirError

    space = CheckpointSpace.estimate(train_cfg, **estimate)
    problem = broadcast_object(space.problem() if rank == 0 else None)
    if problem is not None:
        raise RunDirError(problem, quiet=rank != 0)
    if rank == 0 and (warning := space.warning()):
        log.warning(warning)
