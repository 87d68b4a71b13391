"""The DeepSpeed JSON's precision keys against `train.precision` (part of llmasr.train.ds_config's resolution):
`data_types` (the parameter and gradient-accumulation dtypes) and the half-precision master weights and optimizer
states, allowed only as DeepSpeed runs them and llmasr counts them; DeepSpeed itself refuses most of these only once
the model is built."""

from __future__ import annotations

import json

from llmasr.config_io import ConfigError
from llmasr.train.ds_owned import value_at as _get

_DTYPES = {"fp32": ("fp32", "float32", "float", "torch.float32"), "bf16": ("bf16", "bfloat16", "torch.bfloat16"),
           "fp16": ("fp16", "float16", "half", "torch.float16")}  # fmt: skip


def check_accumulation_dtype(ds: dict, bf16_key: str, precision: str, source: str) -> None:
    """data_types.param_dtype other than train.precision's, data_types.grad_accum_dtype other than the training
    dtype at ZeRO 0 (DeepSpeed refuses both once the model is built) or bf16 with fp32 at ZeRO 1 (DeepSpeed's
    BF16_Optimizer, whose checkpoints zero_to_fp32 cannot read: nothing could be exported)."""
    param = _get(ds, "data_types.param_dtype")
    if param is not None and param not in _DTYPES[precision]:
        raise ConfigError(
            f"{source}: data_types.param_dtype is {json.dumps(param)} but train.precision is {precision}; DeepSpeed "
            "refuses the contradiction once the model is built: remove the key (train.precision decides)"
        )
    dtype = _get(ds, "data_types.grad_accum_dtype")
    if dtype is None or dtype in _DTYPES[precision]:
        return
    stage = _get(ds, "zero_optimization.stage") or 0
    offload = _get(ds, "zero_optimization.offload_optimizer.device") == "cpu"  # as DeepSpeed's zero_cpu_offload()
    if stage == 0 or (stage == 1 and precision == "bf16" and dtype in _DTYPES["fp32"] and not offload):
        why = "DeepSpeed does not run that mix" if stage == 0 else "its checkpoints (BF16_Optimizer) cannot be exported"
        raise ConfigError(
            f"{source}: data_types.grad_accum_dtype is {json.dumps(dtype)} with train.precision {precision} at ZeRO "
            f"stage {stage}: {why}; use ZeRO stage 2 or 3 for gradients accumulated in another dtype, or remove the key"
        )


def check_master_weights(ds: dict, bf16_key: str, precision: str, source: str) -> None:
    """Half-precision master weights and optimizer states only as DeepSpeed runs them and llmasr counts them
    (zero_memory, checkpoint_space): under their own precision at ZeRO 1-3, bf16 states beside bf16 weights, the
    weights in an offloaded optimizer unless their states are bf16 too (DeepSpeed refuses anything else once the
    model is built)."""
    master, states = f"{bf16_key}.bf16_master_weights_and_grads", f"{bf16_key}.bf16_optimizer_states"
    fp16_master = "fp16.fp16_master_weights_and_grads"
    offloaded = _get(ds, "zero_optimization.offload_optimizer.device") not in (None, "none")
    stage = _get(ds, "zero_optimization.stage") or 0
    for key in (master, states, fp16_master):
        if not _get(ds, key):
            continue
        half = "fp16" if key == fp16_master else "bf16"
        if precision != half:
            why = f"train.precision is {precision}: they are {half} copies for {half} training; remove the key"
        elif key == states and not _get(ds, master):
            why = f"{master} is not: DeepSpeed keeps bf16 optimizer states only beside bf16 master weights; set both"
        elif stage == 0:
            why = "zero_optimization.stage is 0: only DeepSpeed's ZeRO optimizers (stage 1-3) keep them"
        elif not offloaded and half == "fp16":
            why = (
                "the optimizer is not offloaded (zero_optimization.offload_optimizer): DeepSpeed keeps fp16 master "
                "weights only in an offloaded DeepSpeedCPUAdam; use zero2_offload or zero3_offload, or remove the key"
            )
        elif not offloaded and not _get(ds, states):
            why = (
                "the optimizer is not offloaded (zero_optimization.offload_optimizer): DeepSpeed keeps bf16 master "
                f"weights in an offloaded DeepSpeedCPUAdam, or on the device beside bf16 Adam moments ({states} "
                "true as well); use zero2_offload or zero3_offload, set both keys, or remove this one"
            )
        else:
            continue
        raise ConfigError(f"{source}: {key} is {json.dumps(_get(ds, key))} but {why}")
