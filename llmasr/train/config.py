"""Typed training sections of a recipe: the loop (`TrainConfig`), the optimizer (`OptimConfig`) and its
per-branch settings (`BranchOptimConfig`), and the learning-rate schedules (`SchedulerConfig`).

The model has four branches, each with its own optimizer settings: `encoder`, `adaptor`, `ctc` (the CTC head) and
`llm`. A branch that sets nothing inherits the optimizer-wide values and the top-level `optim.scheduler`; its peak
learning rate defaults to `DEFAULT_LRS[branch]`. Example recipe fragment::

    optim:
      scheduler: {type: tri_stage, phase_ratio: [0.1, 0.2, 0.7]}
      branches:
        encoder: {lr: 5.0e-5}
        llm: {lr: 1.0e-5, scheduler: {type: warmup_cosine, warmup_ratio: 0.05}}
    train:
      epochs: 10
      grad_accum: 4
      precision: bf16
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

from llmasr.config_io import ConfigError
from llmasr.config_paths import path_field
from llmasr.unread_fields import default_of, other_types_fields, refuse_unread

BRANCHES: tuple[str, ...] = ("encoder", "adaptor", "ctc", "llm")

# Peak learning rates used when a recipe names none for a branch. The pretrained encoder moves slowly (5e-5); the
# adaptor and the CTC head start from random weights and take 1e-4 (the projector-only rate peers use); the LLM, the
# largest and most fragile part, gets 1e-5, 5-10x below the rest (users fine-tuning with one rate for everything
# report the LLM degrading). LoRA-only LLM runs may raise `llm.lr` to about 1e-4.
DEFAULT_LRS: dict[str, float] = {"encoder": 5e-5, "adaptor": 1e-4, "ctc": 1e-4, "llm": 1e-5}

SchedulerType = Literal["tri_stage", "warmup", "warmup_cosine", "warmup_linear", "constant"]


# A schedule field that only some types read; set on another type it would change nothing.
TYPE_FIELDS = {"phase_ratio": ("tri_stage",), "init_lr_scale": ("tri_stage",), "final_lr_scale": ("tri_stage",),
               "min_lr_ratio": ("warmup_cosine", "warmup_linear")}  # fmt: skip


@dataclass
class SchedulerConfig:
    """One learning-rate schedule, a pure function of the number of optimizer updates done (see
    llmasr.train.schedulers). Every lr is relative to its group's peak lr (`BranchOptimConfig.lr`)."""

    # tri_stage: FunASR/fairseq TriStageLR: linear warmup from init_lr_scale*peak, hold at peak, exponential decay
    #   to final_lr_scale*peak, phases sized by `phase_ratio` of the total updates.
    # warmup: FunASR WarmupLR (Noam): peak * w^0.5 * min(s^-0.5, s * w^-1.5), s = updates done + 1. It reaches the
    #   peak at s == w and decays as 1/sqrt(s) after; it never reaches zero.
    # warmup_cosine / warmup_linear: linear warmup to the peak, then cosine / linear decay towards min_lr_ratio*peak,
    #   reached just after the last update (so the last update never runs at a floor of 0).
    # constant: the peak lr, after an optional linear warmup.
    type: SchedulerType = "warmup_cosine"
    # Warmup length in updates. Exclusive with warmup_ratio; neither means no warmup (warmup_cosine, warmup_linear,
    # constant). `warmup` needs one of them. tri_stage takes its warmup from phase_ratio and accepts neither.
    warmup_steps: int | None = None
    # Warmup length as a fraction of the total updates (floor of ratio * total).
    warmup_ratio: float | None = None
    # tri_stage only: [warmup, hold, decay] fractions of the total updates; must sum to 1 (within 1e-6).
    phase_ratio: list[float] | None = None
    # tri_stage only: the lr at update 0 is init_lr_scale * peak.
    init_lr_scale: float = 0.01
    # tri_stage only: the lr after the decay phase is final_lr_scale * peak (must be in (0, 1]).
    final_lr_scale: float = 0.01
    # warmup_cosine / warmup_linear only: the lr the decay ends at, min_lr_ratio * peak, reached after the last update.
    min_lr_ratio: float = 0.0

    @staticmethod
    def unread_fields(section: dict) -> dict[str, str]:
        """What a scheduler section sets that its type does not read (llmasr.unread_fields)."""
        return other_types_fields(SchedulerConfig, section, TYPE_FIELDS)

    def validate(self, path: str) -> None:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ConfigError(f"{path}: set warmup_steps or warmup_ratio, not both")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"{path}.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"{path}.warmup_ratio: must be in [0, 1], got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{path}.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.type == "tri_stage":
            if self.warmup_steps is not None or self.warmup_ratio is not None:
                raise ConfigError(
                    f"{path}: tri_stage takes its warmup from phase_ratio[0]; remove warmup_steps/warmup_ratio"
                )
            if self.phase_ratio is None:
                raise ConfigError(f"{path}.phase_ratio: tri_stage needs [warmup, hold, decay], e.g. [0.1, 0.4, 0.5]")
            if len(self.phase_ratio) != 3 or any(r < 0 for r in self.phase_ratio):
                raise ConfigError(f"{path}.phase_ratio: three non-negative fractions expected, got {self.phase_ratio}")
            if not math.isclose(sum(self.phase_ratio), 1.0, rel_tol=0.0, abs_tol=1e-6):
                raise ConfigError(
                    f"{path}.phase_ratio: must sum to 1, got {self.phase_ratio} (sum {sum(self.phase_ratio)})"
                )
            if not 0.0 <= self.init_lr_scale <= 1.0:
                raise ConfigError(f"{path}.init_lr_scale: must be in [0, 1], got {self.init_lr_scale}")
            if not 0.0 < self.final_lr_scale <= 1.0:
                raise ConfigError(
                    f"{path}.final_lr_scale: must be in (0, 1] (the decay is exponential), got {self.final_lr_scale}"
                )
        refuse_unread(self, path)  # another type's field would pass and change nothing
        if self.type == "warmup":
            if not self.warmup_steps and not self.warmup_ratio:
                raise ConfigError(f"{path}: type warmup (FunASR WarmupLR) needs warmup_steps or warmup_ratio > 0")

    def warmup_updates(self, total: int) -> int:
        """Warmup length in updates for a run of `total` updates."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_ratio is not None:
            return int(math.floor(self.warmup_ratio * total + 1e-9))  # 0.29 * 100 is 28.999999999999996
        return 0


@dataclass
class BranchOptimConfig:
    """Optimizer settings of one branch; every field left unset inherits the optimizer-wide value."""

    # Peak learning rate of the branch (defaults to DEFAULT_LRS[branch]).
    lr: float | None = None
    # AdamW decoupled weight decay of the branch's decayed tensors (biases and norms never decay).
    weight_decay: float | None = None
    # AdamW (beta1, beta2).
    betas: list[float] | None = None
    # AdamW epsilon.
    eps: float | None = None
    # The branch's schedule; replaces `optim.scheduler` as a whole (fields are not merged one by one).
    scheduler: SchedulerConfig | None = None

    def validate(self, path: str) -> None:
        _check_optim_values(path, self.lr, self.weight_decay, self.betas, self.eps)


def _check_optim_values(path: str, lr, weight_decay, betas, eps) -> None:
    if lr is not None and not 0 < lr < math.inf:
        raise ConfigError(f"{path}.lr: must be > 0 and finite, got {lr}")
    if weight_decay is not None and not 0 <= weight_decay < math.inf:
        raise ConfigError(f"{path}.weight_decay: must be >= 0 and finite, got {weight_decay}")
    if betas is not None and (len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas)):
        raise ConfigError(f"{path}.betas: two numbers in [0, 1) expected, got {betas}")
    if eps is not None and not 0 < eps < math.inf:
        raise ConfigError(f"{path}.eps: must be > 0, got {eps}")


@dataclass
class ResolvedBranch:
    """A branch's settings with every inherited value filled in (what the param groups and schedules use)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    scheduler: SchedulerConfig


@dataclass
class OptimConfig:
    """The optimizer: AdamW over one param group per (branch, decay / no-decay)."""

    # Only AdamW (torch.optim.AdamW; DeepSpeed's CPU/fused Adam variants are not wired in).
    type: Literal["adamw"] = "adamw"
    # Defaults for every branch; a branch overrides them in `branches`.
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # Schedule of every branch that sets none of its own.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Per-branch settings, keyed by branch name: encoder, adaptor, ctc, llm.
    branches: dict[str, BranchOptimConfig] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        unknown = sorted(set(self.branches) - set(BRANCHES))
        if unknown:
            named = "unknown branch" if len(unknown) == 1 else f"unknown branches {unknown}"  # the first one's key:
            raise ConfigError(f"{path}.branches.{unknown[0]}: {named}; the branches are {list(BRANCHES)}")  # its line
        _check_optim_values(path, None, self.weight_decay, self.betas, self.eps)

    def branch(self, name: str) -> ResolvedBranch:
        """The settings of branch `name` with inherited values filled in."""
        if name not in BRANCHES:
            raise ConfigError(f"unknown branch {name!r}; the branches are {list(BRANCHES)}")
        own = self.branches.get(name) or BranchOptimConfig()
        return ResolvedBranch(
            lr=own.lr if own.lr is not None else DEFAULT_LRS[name],
            weight_decay=own.weight_decay if own.weight_decay is not None else self.weight_decay,
            betas=tuple(own.betas if own.betas is not None else self.betas),
            eps=own.eps if own.eps is not None else self.eps,
            scheduler=own.scheduler if own.scheduler is not None else self.scheduler,
        )


def refuse_untyped_branch_schedulers(optim) -> None:
    """Refuse a branch's scheduler section, as written, that names no type where `optim.scheduler` names another: it
    replaces optim.scheduler as a whole, so it was the default type, silently (a recipe with a tri_stage
    optim.scheduler given `optim.branches.llm.scheduler.warmup_steps=500` trained its LLM on a cosine curve)."""
    if not isinstance(optim, dict) or not isinstance(optim.get("branches"), dict):
        return  # not a section: the typed load names it
    default = default_of(SchedulerConfig, "type")
    wide = optim.get("scheduler")
    wide_type = wide.get("type", default) if isinstance(wide, dict) else default
    for name, own in optim["branches"].items():
        sched = own.get("scheduler") if isinstance(own, dict) else None
        if isinstance(sched, dict) and "type" not in sched and wide_type != default:
            raise ConfigError(
                f"optim.branches.{name}.scheduler: sets {sorted(map(str, sched))} but no type, so it is {default} "
                f"(the default), not optim.scheduler's {wide_type}: a branch's scheduler replaces optim.scheduler as "
                f"a whole, its fields are not merged; write its type (type: {wide_type} with the fields it needs, or "
                f"type: {default})"
            )


@dataclass
class TrainConfig:
    """The training loop. Batch sizes are DeepSpeed's: with dynamic (duration-bucketed) batches the micro batch is
    nominal, and an optimizer update happens every `grad_accum` micro batches (and at every epoch end)."""

    # Passes over the training data.
    epochs: int = 10
    # Stop after this many optimizer updates; when set it also replaces the epoch-derived total that the schedules
    # are sized by.
    max_updates: int | None = None
    # Micro batches per optimizer update (DeepSpeed's gradient_accumulation_steps). None takes it from the DeepSpeed
    # JSON; where neither sets a number, resolving the DeepSpeed config fails (it is never silently 1).
    grad_accum: int | None = None
    # DeepSpeed's train_micro_batch_size_per_gpu. Batches are dynamic, so this only feeds DeepSpeed's batch
    # arithmetic (train_batch_size = micro * grad_accum * world); None means the JSON's number, else 1.
    micro_batch_per_gpu: int | None = None
    # Training precision: bf16 / fp16 (DeepSpeed mixed precision with fp32 master weights) or fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    # Gradient-norm clipping threshold (DeepSpeed gradient_clipping); 0 disables it.
    grad_clip: float = 1.0
    # Seed of python, numpy and torch (offset by the rank where randomness must differ per rank).
    seed: int = 42
    # Deterministic torch algorithms (slower; some ops then fail loudly instead of running nondeterministically; on
    # CUDA, CUBLAS_WORKSPACE_CONFIG is set to :4096:8 unless exported).
    deterministic: bool = False
    # Let scaled_dot_product_attention use cuDNN's fused attention on CUDA. Off: cuDNN builds a graph on the host for
    # every new input shape, and speech batches change shape from batch to batch (llmasr.models.attention_kernels).
    cudnn_attention: bool = False
    # Log training loss and learning rates every this many updates.
    log_every: int = 50
    # When stderr is not a terminal (a cluster job's log), one plain progress line every this many seconds replaces
    # the progress bar (0: one per update).
    progress_every_s: float = 30.0
    # Peak TFLOP/s of one rank's device in the training dtype, for MFU; None looks the GPU up by name (a CPU, or a
    # GPU not in llmasr.train.efficiency's table, then logs mfu=n/a).
    peak_tflops: float | None = None
    # Save a checkpoint every this many updates (0: only at epoch ends).
    save_every_updates: int = 0
    # Keep the newest this many periodic checkpoints (0: keep all); best checkpoints are kept apart.
    keep_last: int = 3
    # Validate every this many updates (0: only at epoch ends).
    valid_every_updates: int = 0
    # Keep this many best checkpoints by `best_metric` (0: none).
    best_k: int = 1
    # Validation metric that ranks checkpoints: loss, wer (the error rate, counted in characters for a set scored in
    # them: train.log shows it as cer, or mer) or acc (token accuracy).
    best_metric: Literal["loss", "wer", "acc"] = "loss"
    # Whether a lower or higher best_metric is better: min for loss and wer, max for acc (set, it must agree).
    best_mode: Literal["min", "max"] | None = None
    # Stop when this many validations in a row have not improved best_metric on the best so far by more than
    # min_delta (0: never stop early; llmasr.train.early_stop). Needs data.valid.
    patience: int = 0
    min_delta: float = 0.0
    # Run directory: checkpoints, logs, the resolved recipe and DeepSpeed config.
    output_dir: str = path_field("exp/run", output=True)
    # Resume from a checkpoint directory (relative: beside the recipe, as every path) or tag, "latest" (output_dir's
    # newest; an error when there is none), or "auto" (output_dir's newest when there is one, else a fresh start: one
    # command restarts a preempted job).
    resume: str | None = path_field(None, keywords=("latest", "auto"))

    def validate(self, path: str) -> None:
        for name in ("epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_updates", "grad_accum", "micro_batch_per_gpu"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{path}.{name}: must be >= 1 when set, got {value}")
        for name in ("save_every_updates", "keep_last", "valid_every_updates", "best_k", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.progress_every_s < math.inf:
            raise ConfigError(f"{path}.progress_every_s: must be >= 0 seconds and finite, got {self.progress_every_s}")
        if self.peak_tflops is not None and not 0 < self.peak_tflops < math.inf:
            raise ConfigError(f"{path}.peak_tflops: must be > 0 TFLOP/s and finite when set, got {self.peak_tflops}")
        if not 0 <= self.min_delta < math.inf:
            raise ConfigError(f"{path}.min_delta: must be >= 0 and finite, got {self.min_delta}")
        if not 0 <= self.grad_clip < math.inf:
            raise ConfigError(f"{path}.grad_clip: must be >= 0 and finite (0 disables clipping), got {self.grad_clip}")
        natural = "max" if self.best_metric == "acc" else "min"
        if self.best_mode not in (
            None,
            natural,
        ):  # kept as None: a saved recipe run on with another metric re-derives it
            raise ConfigError(
                f"{path}.best_mode: {self.best_mode} ranks {self.best_metric} the wrong way round (the best "
                f"{self.best_metric} is the {'highest' if natural == 'max' else 'lowest'}); leave best_mode unset"
            )

    @property
    def ranking_mode(self) -> str:
        """Whether a lower ("min") or higher ("max") best_metric is better."""
        return "max" if self.best_metric == "acc" else "min"


def need_recipe(recipe, where: str):
    """`recipe` when it is a loaded Recipe; a path or a dict, which `llmasr train --config` would read, is refused
    naming the loader (this package sits below llmasr.recipe and does not read recipe files itself)."""
    if isinstance(recipe, (str, os.PathLike, dict)):
        raise TypeError(
            f"{where}: recipe {recipe if not isinstance(recipe, dict) else 'dict'!r} is not a loaded recipe: pass "
            "llmasr.recipe.load_recipe(path, overrides), which reads a recipe file (or data=dict) as --config does"
        )
    return recipe
