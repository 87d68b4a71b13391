"""The DeepSpeed side of training: ZeRO-3 model construction, the optimizer, the engine and its checkpoints (the
process group: process_group.py).

In the training package, only this module, process_group.py and shm.py (process-group start-up), ds_keys.py and
ds_files.py (DeepSpeed's own config reader and checkpoint files) and universal.py (its universal checkpoints)
import deepspeed. The training loop (trainer.py) talks to a `TrainEngine`, which owns the accumulation
boundary explicitly:

    engine.micro_step(batch, token_normalizer=..., utt_normalizer=..., boundary=last_of_window, zero_loss=empty)

`backward` runs with scale_wrt_gas=False: the trainer's normalisers already make the loss of every micro batch a
share of the whole window's token-level mean, so DeepSpeed must not divide by gradient_accumulation_steps again.
DeepSpeed still averages gradients over the data-parallel ranks; the trainer multiplies by the world size for it.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from pathlib import Path

import torch

from llmasr.config_io import ConfigError
from llmasr.data.batch import Batch
from llmasr.errors import write_error
from llmasr.models.llm_files import beyond_range
from llmasr.train.ds_config import zero_stage
from llmasr.train.zero_memory import optimizer_state_bytes

log = logging.getLogger("llmasr.train")


def check_precision(precision: str) -> None:
    """Refuse a precision the accelerator cannot run, before any model is loaded (DeepSpeed would fail later)."""
    if problem := precision_problem(precision):
        raise ConfigError(problem)


def precision_problem(precision: str) -> str | None:
    """Why this machine's accelerator cannot run `precision` (llmasr check, which checks for the cluster, says it
    as a note); None where it can."""
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    supported = {"fp32": True, "bf16": bool(acc.is_bf16_supported()), "fp16": bool(acc.is_fp16_supported())}
    if supported.get(precision, False):
        return None
    ok = [p for p, yes in supported.items() if yes]
    return (
        f"train.precision: {precision} is not supported by DeepSpeed's {acc.device_name()} accelerator on this "
        f"machine; use one of {ok} (e.g. train.precision=fp32)"
    )


def zero3_model_context(ds_config: dict):
    """Under ZeRO-3, an HfDeepSpeedConfig that must stay referenced while the LLM is loaded: transformers then
    builds it inside deepspeed.zero.Init and no rank ever holds all of its weights. None for other stages."""
    if zero_stage(ds_config) != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def build_model_for_training(model_cfg, ds_config: dict, *, all_gather=None):
    """SpeechLLM for `model_cfg`; under ZeRO-3 with the LLM created partitioned (see zero3_model_context).

    The partitioned load is a series of collectives: a rank that fails before it (a weight file only its node lacks
    or holds cut short) would leave the others waiting in it. So under ZeRO-3, with `all_gather` (the run's
    all_gather_object, more than one rank), every rank first reads the names and shapes in every weight file the
    build reads (build_model's "shapes", as `llmasr check` does), and a failure on any rank stops them all."""
    from llmasr.models import builder
    from llmasr.rank_verdict import run_together

    if zero_stage(ds_config) == 3 and all_gather is not None:  # before HfDeepSpeedConfig: its meta build stays whole
        run_together("read the model's weight files", lambda: builder.build_model(model_cfg, weights="shapes"),
                     all_gather)  # fmt: skip
    hf_ds = zero3_model_context(ds_config)
    if hf_ds is not None:
        log.info("ZeRO-3: the LLM is created partitioned (deepspeed.zero.Init) as it loads")
    model = builder.build_model(model_cfg)
    if hf_ds is not None:
        cast_unpartitioned(model, ds_config)
    check_half_range(model, ds_config)
    return model, hf_ds


def half_dtype(ds_config: dict) -> torch.dtype | None:
    """bf16 or fp16 when the DeepSpeed config trains in it, else None."""
    for key, dtype in (("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("fp16", torch.float16)):
        if (ds_config.get(key) or {}).get("enabled"):
            return dtype
    return None


def cast_unpartitioned(model: torch.nn.Module, ds_config: dict) -> int:
    """Cast the parameters zero.Init did not create (encoder, adaptor, CTC head) to the training dtype; returns
    how many. DeepSpeed casts a model's parameters to bf16/fp16 only when none of them is ZeRO-partitioned yet,
    so with the LLM created partitioned the other branches would stay fp32 and the first matmul fails on mixed
    dtypes. Buffers stay as they are, as DeepSpeed leaves them for an unpartitioned model."""
    dtype = half_dtype(ds_config)
    if dtype is None:
        return 0
    cast = 0
    for p in model.parameters():
        if not hasattr(p, "ds_id") and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            cast += 1
    return cast


def check_half_range(model: torch.nn.Module, ds_config: dict) -> None:
    """Under fp16, refuse weights float16 cannot hold, naming them, before DeepSpeed casts the model: a finite weight
    past 65504 became inf, every loss NaN, and every update was skipped with a warning that pointed at the data.
    ZeRO-3's partitions, created in float16 as the LLM loaded, are checked for values that already became inf (each
    rank its own). bf16 has float32's range."""
    if half_dtype(ds_config) != torch.float16:
        return
    held = ((name, p.ds_tensor if hasattr(p, "ds_id") else p.data) for name, p in model.named_parameters())
    too_large = [f"{name} (largest |value| {largest:.6g})" for name, largest in beyond_range(held, torch.float16)]
    limit = torch.finfo(torch.float16).max
    if too_large:
        raise ConfigError(
            f"train.precision fp16: {len(too_large)} weight tensor(s) hold values beyond float16's largest finite "
            f"value {limit:g}, which become inf in fp16 and make every loss NaN: {', '.join(too_large[:5])}"
            f"{' ...' if len(too_large) > 5 else ''}; train in bf16 (float32's range) or fp32"
        )


def offloads_optimizer(ds_config: dict) -> bool:
    dev = ((ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device")
    return dev not in (None, "none")


def make_optimizer(groups: list[dict], ds_config: dict):
    """AdamW over our param groups: DeepSpeedCPUAdam when ZeRO offloads the optimizer to the CPU (DeepSpeed refuses
    a torch optimizer there), torch.optim.AdamW otherwise. Per-group lr/betas/eps/weight_decay are kept."""
    if offloads_optimizer(ds_config):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        # bf16.bf16_optimizer_states: DeepSpeed refuses a CPU Adam that would keep the moments in fp32
        _, moment_bytes = optimizer_state_bytes(ds_config)
        return DeepSpeedCPUAdam(groups, adamw_mode=True, fp32_optimizer_states=moment_bytes == 4)
    return torch.optim.AdamW(groups)


class TrainEngine:
    """A DeepSpeed engine around a SpeechLLM, with our optimizer and BranchLRScheduler."""

    def __init__(self, model, groups: list[dict], schedules, ds_config: dict, device: torch.device, optimizer=None):
        """`optimizer`: make_optimizer(groups, ds_config), where the caller built it already (a run builds it in
        the start-up step whose failure every rank hears, llmasr.rank_verdict: DeepSpeedCPUAdam compiles its op)."""
        import deepspeed

        from llmasr.train.schedulers import BranchLRScheduler

        self.ds_config = ds_config
        self.stage = zero_stage(ds_config)
        self.device = device
        optimizer = make_optimizer(groups, ds_config) if optimizer is None else optimizer
        self.scheduler = BranchLRScheduler(optimizer, schedules)
        self.engine, self.optimizer, _, sched = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=self.scheduler, config=ds_config
        )
        if sched is not self.scheduler:
            raise RuntimeError('DeepSpeed replaced the lr scheduler; remove any "scheduler" block from the JSON')
        self.module = self.engine.module
        if self.engine.bfloat16_enabled():
            self.dtype = torch.bfloat16
        elif self.engine.fp16_enabled():
            self.dtype = torch.float16
        else:
            self.dtype = torch.float32
        self._plain_grads = self.stage == 0 and self.dtype == torch.float32
        self._grad_norm = None

    # -- batches ------------------------------------------------------------------------------------------------
    def to_device(self, batch: Batch) -> Batch:
        """The batch on the device, its features in the engine's compute dtype."""
        return batch.to(self.device, self.dtype, non_blocking=True)

    # -- one micro batch ------------------------------------------------------------------------------------------
    def micro_step(
        self,
        batch: Batch,
        *,
        token_normalizer,
        utt_normalizer,
        boundary: bool,
        zero_loss: bool = False,
        counter=None,
        skip_update: bool = False,
    ):
        """Forward, backward and engine.step() for one micro batch; the optimizer updates when `boundary`.

        `zero_loss` (an all-bad batch's stand-in) still runs the full forward and backward, so every rank calls
        every collective, but contributes nothing to the gradient. `skip_update` (with `boundary`, on every rank
        alike: a window of stand-ins only) skips the update as a non-finite gradient is skipped: counted in
        skipped_steps, the lr schedules held, the weights and the optimizer's moments untouched (a zero gradient
        stepped would still move them by Adam's momentum and weight decay); under fp16 the loss scale then halves,
        as on any overflow. A `counter` (llmasr.train.flops.FlopCounter) counts the forward's FLOPs; the backward's
        activation-checkpoint recomputation stays outside it."""
        self.engine.set_gradient_accumulation_boundary(bool(boundary))
        # the counter reads the host batch's lengths: the device copy's would make the host wait for the device
        with counter.measure(batch) if counter is not None else nullcontext():
            out = self.engine(self.to_device(batch), token_normalizer=token_normalizer, utt_normalizer=utt_normalizer)
        # a tensor of its own: DeepSpeed's hook on out.loss divides by gradient_accumulation_steps when it runs first
        loss = out.loss * (0.0 if zero_loss else 1.0)
        if skip_update and boundary:  # DeepSpeed's optimizers skip a non-finite gradient, resetting what they hold
            loss = loss * float("nan")
        self.engine.backward(loss, scale_wrt_gas=False)
        skip = False
        if boundary and self._plain_grads:
            self._grad_norm = self._norm_of_grads()
            skip = not math.isfinite(self._grad_norm)
        if skip:
            # A plain torch optimizer would write the NaN into every weight of every rank (the reduced gradients are
            # the same everywhere); DeepSpeed's ZeRO and half-precision optimizers skip such an update, so this does
            # too: its step does nothing this once, and the overflow flag has DeepSpeed count the update in
            # skipped_steps, hold the lr schedules and clear the gradients, as it does there.
            self.optimizer.step = lambda *args, **kwargs: None  # shadows the class's step on this instance
            self.optimizer.overflow = True
        try:
            self.engine.step()
        finally:
            if skip:
                del self.optimizer.step
                self.optimizer.overflow = False
        return out

    def _norm_of_grads(self) -> float:
        # DeepSpeed reports no norm for a plain torch optimizer (ZeRO-0, fp32): the reduced grads are in .grad.
        norms = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return float(torch.stack(norms).norm()) if norms else 0.0

    # -- state ----------------------------------------------------------------------------------------------------
    @property
    def global_steps(self) -> int:
        return int(self.engine.global_steps)

    @property
    def skipped_steps(self) -> int:
        return int(self.engine.skipped_steps)

    def lrs(self) -> dict[str, float]:
        return {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}

    def grad_norm(self) -> float | None:
        value = self.engine.get_global_grad_norm()
        if value is None:
            return self._grad_norm
        return float(value.item() if torch.is_tensor(value) else value)

    def loss_scale(self) -> float | None:
        if not self.engine.fp16_enabled():
            return None
        scale = getattr(self.optimizer, "cur_scale", None) or getattr(self.optimizer, "loss_scale", None)
        return float(scale) if scale is not None else None

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def gathered_params(self):
        """Context that gathers ZeRO-3 partitions (for reading weights); a no-op otherwise."""
        if self.stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def save(self, save_dir: str, tag: str, client_state: dict) -> None:
        """Every rank must call this. Frozen base weights are not stored (they come back from the recipe). A full
        disk is reported as such, naming the checkpoint folder (torch's own message has neither)."""
        try:
            self.engine.save_checkpoint(
                save_dir, tag=tag, client_state=client_state, save_latest=False, exclude_frozen_parameters=True
            )
        except Exception as err:
            full = write_error(Path(save_dir) / tag, err)
            if full is None:
                raise
            raise full from err

    def load(self, load_dir: str, tag: str) -> dict:
        from llmasr.safe_load import weights_only_engine

        # ZeRO-1/2 refuse a checkpoint saved with clipping into compute_grad_norm false, though the saved clipping
        # value is replaced by this run's (0 there) just below
        norm_off = getattr(self.optimizer, "compute_grad_norm", True) is False
        # strict=False: the frozen tensors were deliberately left out; the trainer checks the trainable names itself.
        # Weights-only: a checkpoint is data, and a pickled callable in it would run here (llmasr.safe_load).
        if norm_off:
            self.optimizer.compute_grad_norm = True
        try:
            with weights_only_engine(self.engine):
                path, client_state = self.engine.load_checkpoint(
                    load_dir, tag=tag, load_module_strict=False, load_optimizer_states=True,
                    load_lr_scheduler_states=True,
                )  # fmt: skip
        finally:
            if norm_off:
                self.optimizer.compute_grad_norm = False
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint {tag!r} in {load_dir}")
        # DeepSpeed's ZeRO-1/2 and fp16/bf16 optimizers take back the clipping value they were saved with (also on
        # the universal path); train.grad_clip may change on resume (llmasr.train.resume), so this run's wins
        if hasattr(self.optimizer, "clip_grad"):
            self.optimizer.clip_grad = self.engine.gradient_clipping()
        # torch's load_state_dict hands back the saved groups: saved by torch's AdamW, they lack DeepSpeedCPUAdam's
        # own settings (bias_correction), which a run that now offloads the optimizer needs at its first step
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        for group in self.optimizer.param_groups:
            for key, value in inner.defaults.items():
                group.setdefault(key, value)
        return client_state or {}
