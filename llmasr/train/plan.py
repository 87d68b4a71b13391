"""The run plan: a run's arithmetic, computed once and shared by `llmasr train` (which logs it) and `llmasr check`
(which prints it), so both always agree.

    plan = plan_run(recipe, ds, rank=0, world_size=8)
    plan.per_epoch      batches per rank in each epoch (the real sampler over the real manifests)
    plan.grad_accum     micro batches per update (the resolved DeepSpeed config)
    plan.total          updates the schedules are sized by (train.max_updates, else what the epochs hold)

A partial accumulation window at an epoch end completes an update, so an epoch of n batches has ceil(n / k) of them.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

from llmasr.data.screen_share import ScreenShare
from llmasr.errors import IN_CHECK_REPORT
from llmasr.rank_verdict import verdict
from llmasr.train.rank_agreement import check_ranks_agree, data_digest
from llmasr.train.resolve import TextSide, batches_per_epoch, build_loaders, text_side

log = logging.getLogger("llmasr.train")


@dataclass
class RunPlan:
    ds: dict  # the resolved DeepSpeed config ("auto" filled in)
    world_size: int
    epochs: int
    max_updates: int | None
    side: TextSide
    per_epoch: list[int]
    loaders: tuple = field(repr=False)  # (train loader, train sampler, valid loader or None)

    @property
    def grad_accum(self) -> int:
        return int(self.ds["gradient_accumulation_steps"])

    @property
    def updates_per_epoch(self) -> list[int]:
        return [math.ceil(n / self.grad_accum) for n in self.per_epoch]

    @property
    def natural(self) -> int:
        """Updates the epochs hold."""
        return sum(self.updates_per_epoch)

    @property
    def total(self) -> int:
        """Updates the schedules are sized by."""
        return self.max_updates if self.max_updates is not None else self.natural

    @property
    def ends_after(self) -> int:
        """The update a fresh run ends after: the epochs' end, or train.max_updates where it comes first."""
        return min(self.total, self.natural)

    @property
    def epochs_reached(self) -> int:
        """The epochs a fresh run trains in: train.max_updates may end it in an earlier one than the last."""
        starts = itertools.accumulate(self.updates_per_epoch[:-1], initial=0)
        return sum(1 for start in starts if start < self.ends_after)

    def batch_line(self) -> str:
        ds, k = self.ds, self.grad_accum
        per = self.per_epoch[0] if len(set(self.per_epoch)) == 1 else self.per_epoch
        return (
            f"micro {ds['train_micro_batch_size_per_gpu']} per rank x accumulation {k} x world {self.world_size} = "
            f"train_batch_size {ds['train_batch_size']}; {per} batches per rank per epoch; {self.total} updates"
        )

    def update_line(self, resumed: int | None = None) -> str:
        """`resumed`: the updates a resume holds (another grad_accum or world size counts the rest anew)."""
        ups = self.updates_per_epoch
        per = ups[0] if len(set(ups)) == 1 else ups
        sized = " (train.max_updates)" if self.max_updates is not None else ""
        if resumed is not None and resumed != self.total:
            return (
                f"per epoch: {per} x {self.epochs} epochs = {self.natural}; resumed, the run holds {resumed}: "
                f"schedules sized by {resumed}{sized}"
            )
        return f"per epoch: {per} x {self.epochs} epochs = {self.natural}; schedules sized by {self.total}{sized}"


def plan_run(
    recipe, ds: dict, *, rank: int, world_size: int, device=None, all_gather=None, resuming: bool = False
) -> RunPlan:
    """Build the data side of `recipe` for `rank` and count what the run will do, once. `device`: the one the
    model trains on, which data.features_on auto follows (None: CUDA when available). `all_gather` (a run's ranks,
    all_gather_object): the ranks of a node share the manifests' screen (llmasr.data.screen_share) and the hotword
    sampler's pass over the training texts (llmasr.data.corpus_stats), and the ranks' findings on the data are
    compared (llmasr.train.rank_agreement). `resuming`: the run continues a checkpoint, whose updates were counted at
    the grad_accum and world size it was saved with: what the epochs hold is the resume's to count
    (universal.short_of_max_updates), not this plan's, which counts a fresh run."""
    tc = recipe.train
    window = int(ds.get("gradient_accumulation_steps") or tc.grad_accum or 1)
    together = all_gather is not None and world_size > 1
    share = ScreenShare.of_node(all_gather) if together else None
    try:  # the tokenizer too: a node may lack its copy of the LLM directory
        side = text_side(recipe.model)
        loaders = build_loaders(recipe, side, rank=rank, world_size=world_size, device=device, window=window,
                                share=share, say_mix=not resuming)  # fmt: skip
        per_epoch, failure = batches_per_epoch(loaders[1], tc.epochs), None
    except Exception as err:  # one rank's refusal (its data too bad, a file it cannot read) stops all of them
        if not together or getattr(err, "ranks_told", False):  # the screen's gather told every rank already
            raise
        loaders, per_epoch, failure = None, None, err
    if together:
        digest = verdict(failure, **({} if failure else data_digest(loaders[1], per_epoch)))
        check_ranks_agree(digest, loaders and loaders[0].dataset.manifest, all_gather, failure,
                          loaders[0].screened if loaders else ())  # fmt: skip
    plan = RunPlan(ds, world_size, tc.epochs, tc.max_updates, side, per_epoch, loaders)
    if rank == 0 and not resuming and tc.max_updates is not None and tc.max_updates > plan.natural:  # every rank's
        log.warning("train.max_updates=%d but %d epochs hold only %d updates", tc.max_updates, tc.epochs, plan.natural,
                    extra=IN_CHECK_REPORT)  # fmt: skip
    return plan
