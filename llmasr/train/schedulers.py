"""Per-group learning-rate schedules, stepped together by one scheduler object that DeepSpeed accepts.

Every schedule is a pure function `lr(u)` of u, the number of optimizer updates done: the lr at u is the one the
(u+1)-th update uses. There is no hidden state besides u, so resuming only needs u, and the value at any update can
be computed ahead (`lr_curve`, used by `llmasr check`).

DeepSpeed (0.19) takes one `lr_scheduler` object in `deepspeed.initialize`. The engine calls `step()` once per
applied optimizer update (at gradient-accumulation boundaries, and not on fp16-overflow-skipped updates), and
`state_dict()` / `load_state_dict()` when it saves and loads checkpoints; the engine's own `get_lr()` reads the
optimizer's param groups. It needs no torch LRScheduler subclass (its only isinstance check asks that a torch
LRScheduler come with an instantiated optimizer), so `BranchLRScheduler` is a plain object; it does not patch
`optimizer.step` the way torch schedulers do.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from llmasr.config_io import ConfigError, from_dict
from llmasr.train.config import OptimConfig, SchedulerConfig

NO_DECAY_SUFFIX = "_no_decay"


def branch_of_group(name: str) -> str:
    """Branch of a param group name: "llm_no_decay" -> "llm"."""
    return name[: -len(NO_DECAY_SUFFIX)] if name.endswith(NO_DECAY_SUFFIX) else name


# --- the schedules: lr at update count u (u >= 0) --------------------------------------------------------------


def tri_stage_lr(
    u: int, peak: float, total: int, phase_ratio: Sequence[float], init_lr_scale: float, final_lr_scale: float
) -> float:
    """FunASR/fairseq TriStageLR with `total` as max_update: linear warmup from init_lr_scale*peak to the peak over
    int(total*r0) updates, the peak for int(total*r1), peak*exp(-k*t) with k = -ln(final_lr_scale)/decay_steps for
    int(total*r2) updates, then final_lr_scale*peak."""
    warmup, hold, decay = (int(total * r) for r in phase_ratio)
    init_lr, final_lr = init_lr_scale * peak, final_lr_scale * peak
    if u < warmup:
        return init_lr + (peak - init_lr) / warmup * u
    u -= warmup
    if u < hold:
        return peak
    u -= hold
    if u <= decay and decay > 0:
        return peak * math.exp(math.log(final_lr_scale) / decay * u)
    return final_lr


def noam_warmup_lr(u: int, peak: float, warmup: int) -> float:
    """FunASR WarmupLR: peak * w^0.5 * min(s^-0.5, s * w^-1.5) with s = u + 1; equals the peak at s == w."""
    s = u + 1
    return peak * warmup**0.5 * min(s**-0.5, s * warmup**-1.5)


def _linear_warmup(u: int, peak: float, warmup: int) -> float:
    # (u+1)/warmup: the first update already moves (a warmup starting at lr 0 wastes an update); the peak is reached
    # at update u = warmup - 1.
    return peak * (u + 1) / warmup


def warmup_decay_lr(u: int, peak: float, total: int, warmup: int, min_lr_ratio: float, shape: str) -> float:
    """Linear warmup over `warmup` updates, then `shape` ("cosine" or "linear") decay from the peak at u = warmup to
    min_lr_ratio * peak at u = total, held there after. u = total is the lr after the last update, so every update
    of the run moves the weights: a floor of 0 reached at u = total - 1 made the last update (and the only update of
    a 1-update run) a wasted one at lr 0."""
    if u < warmup:
        return _linear_warmup(u, peak, warmup)
    span = total - warmup
    progress = 1.0 if span <= 0 else min(1.0, (u - warmup) / span)
    floor = min_lr_ratio * peak
    factor = 0.5 * (1.0 + math.cos(math.pi * progress)) if shape == "cosine" else 1.0 - progress
    return floor + (peak - floor) * factor


def schedule_lr(cfg: SchedulerConfig, u: int, peak: float, total: int) -> float:
    """The lr of a group with peak lr `peak` under `cfg` after u updates of a run of `total` updates."""
    if cfg.type == "tri_stage":
        return tri_stage_lr(u, peak, total, cfg.phase_ratio, cfg.init_lr_scale, cfg.final_lr_scale)
    warmup = cfg.warmup_updates(total)
    if cfg.type == "warmup":
        return noam_warmup_lr(u, peak, max(warmup, 1))
    if cfg.type in ("warmup_cosine", "warmup_linear"):
        return warmup_decay_lr(u, peak, total, warmup, cfg.min_lr_ratio, cfg.type.split("_")[1])
    if cfg.type == "constant":
        return _linear_warmup(u, peak, warmup) if u < warmup else peak
    raise ConfigError(f"unknown scheduler type {cfg.type!r}")


def peak_update(cfg: SchedulerConfig, total: int) -> int | None:
    """The update (counted from 0, as schedule_lr's u) whose lr first reaches the peak; None without a warmup. A
    linear warmup's (u+1)/warmup and WarmupLR's s = u + 1 peak at u = warmup - 1; TriStageLR's holds at u = warmup."""
    if cfg.type == "tri_stage":
        warmup = int(total * cfg.phase_ratio[0])
        return warmup or None
    warmup = cfg.warmup_updates(total)
    return warmup - 1 if warmup > 0 else None


@dataclass
class GroupSchedule:
    """The schedule of one param group, found in the optimizer by its "name"."""

    name: str
    peak_lr: float
    total: int
    cfg: SchedulerConfig

    def lr(self, u: int) -> float:
        return schedule_lr(self.cfg, u, self.peak_lr, self.total)

    def to_state(self) -> dict:
        return {"name": self.name, "peak_lr": self.peak_lr, "total": self.total, "cfg": asdict(self.cfg)}

    @classmethod
    def from_state(cls, state: dict) -> GroupSchedule:
        cfg = from_dict(SchedulerConfig, copy.deepcopy(state["cfg"]), f"schedule {state['name']}")
        return cls(name=state["name"], peak_lr=state["peak_lr"], total=state["total"], cfg=cfg)


def build_group_schedules(groups: Iterable[dict], optim_cfg: OptimConfig, total: int) -> list[GroupSchedule]:
    """One schedule per param group (as built by llmasr.train.param_groups): the group's "lr" is its peak and its
    branch's scheduler config (own, or the optimizer-wide one) its shape."""
    if total < 1:
        raise ValueError(f"total updates must be >= 1, got {total}")
    return [GroupSchedule(g["name"], float(g["lr"]), total, optim_cfg.branch(g["branch"]).scheduler) for g in groups]


def warmup_warnings(optim_cfg: OptimConfig, branches: Iterable[str], total: int) -> list[str]:
    """One line per branch whose warmup is not shorter than the run (FunASR's usual 25000 updates on a short
    fine-tune): its lr never reaches the peak it was given."""
    out = []
    for branch in sorted(set(branches)):
        cfg = optim_cfg.branch(branch)
        warmup = cfg.scheduler.warmup_updates(total) if cfg.scheduler.type != "tri_stage" else 0
        if warmup > total:  # (a warmup of exactly the run reaches its peak at the last update)
            last = schedule_lr(cfg.scheduler, total - 1, cfg.lr, total)
            out.append(
                f"optim: the {branch} branch warms up over {warmup} updates, but the run has {total}: its lr ends at "
                f"{last:.3g}, never its peak {cfg.lr:.3g} (shorten the warmup: warmup_steps or warmup_ratio)"
            )
    return out


def lr_curve(optim_cfg: OptimConfig, group_names: Iterable[str], total: int) -> dict[str, np.ndarray]:
    """lr of each named group for updates 0..total-1 (the lr each update uses), from the recipe alone."""
    out = {}
    for name in group_names:
        branch = optim_cfg.branch(branch_of_group(name))
        out[name] = np.array([schedule_lr(branch.scheduler, u, branch.lr, total) for u in range(total)])
    return out


class BranchLRScheduler:
    """Steps one schedule per param group, finding each group by its "name" key (never by position, so groups that
    DeepSpeed reorders or filters stay matched). `step()` counts one optimizer update and writes every group's lr;
    the lrs for update 0 are written at construction, so the first update already uses its scheduled lr.

    Pass it as `deepspeed.initialize(..., optimizer=opt, lr_scheduler=sched)`: the engine steps it at each applied
    update, so `last_update == engine.global_steps - engine.skipped_steps`, and checkpoints it with the engine.
    """

    def __init__(self, optimizer, schedules: Sequence[GroupSchedule], last_update: int = 0):
        self.optimizer = optimizer
        self.schedules = list(schedules)
        names = [s.name for s in self.schedules]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate schedule names: {names}")
        unscheduled = [g.get("name") for g in optimizer.param_groups if g.get("name") not in set(names)]
        if unscheduled:
            raise ValueError(
                f"optimizer param group(s) {unscheduled} have no schedule (schedules exist for {names}); "
                "build the optimizer and the schedules from the same param groups"
            )
        self.last_update = last_update
        self._apply()

    def _groups_by_name(self) -> dict[str, dict]:
        return {g.get("name"): g for g in self.optimizer.param_groups}

    def _apply(self) -> None:
        groups = self._groups_by_name()
        missing = [s.name for s in self.schedules if s.name not in groups]
        if missing:
            raise RuntimeError(
                f"param group(s) {missing} vanished from the optimizer (it has {sorted(map(str, groups))}); "
                "DeepSpeed drops empty groups: build param groups with trainable parameters only"
            )
        for s in self.schedules:
            groups[s.name]["lr"] = s.lr(self.last_update)

    def step(self) -> None:
        """Count one optimizer update and set the lrs for the next one."""
        self.last_update += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current lr of each group, in schedule order."""
        return [s.lr(self.last_update) for s in self.schedules]

    def get_lr_by_name(self) -> dict[str, float]:
        return {s.name: s.lr(self.last_update) for s in self.schedules}

    def state_dict(self) -> dict:
        return {"last_update": self.last_update, "schedules": [s.to_state() for s in self.schedules]}

    def _check_same_groups(self, schedules: Sequence[GroupSchedule], what: str) -> None:
        other, current = sorted(s.name for s in schedules), sorted(s.name for s in self.schedules)
        if other != current:
            raise ValueError(
                f"{what} are for groups {other}, this optimizer's are {current}: the set of trainable branches "
                "changed since the checkpoint"
            )

    @staticmethod
    def saved(state: dict) -> tuple[list[GroupSchedule], int]:
        """The schedules and update count a state_dict (a checkpoint's) holds, as load_state_dict restores them."""
        return [GroupSchedule.from_state(s) for s in state["schedules"]], int(state["last_update"])

    def load_state_dict(self, state: dict) -> None:
        """Restore the update count and the schedules exactly as saved, and write their lrs into the optimizer."""
        schedules, last_update = self.saved(state)
        self._check_same_groups(schedules, "checkpoint schedules")
        self.schedules = schedules
        self.last_update = last_update
        self._apply()

    def replace_schedules(self, schedules: Sequence[GroupSchedule]) -> None:
        """Continue from the current update with other schedules (a resumed run whose recipe changed them)."""
        self._check_same_groups(schedules, "the new schedules")
        self.schedules = list(schedules)
        self._apply()
