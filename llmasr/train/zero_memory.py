"""Per-rank memory of a model's parameters, gradients and optimizer states under each ZeRO stage, with offload: what
`llmasr check` prints before a run (bench/zero_memory.py measures it against a real run)."""

from __future__ import annotations


def estimate_zero_memory(
    num_params_total: int,
    num_trainable: int,
    stage: int,
    world_size: int,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    precision: str = "bf16",
    largest_layer_params: int = 0,
    master_bytes: int = 4,
    moment_bytes: int = 4,
    param_bytes: int | None = None,
) -> dict:
    """Bytes per rank of the model states (no activations, no buffers) under ZeRO `stage`, where N = all parameters,
    T = trainable ones, W = world size, and a "partition" is 1/W of a tensor set (stage >= its ZeRO level):

    mixed precision (bf16 / fp16):
      params            2N                      16-bit weights; partitioned (2N/W) at stage 3
      grads             2T (+4T fp32)           16-bit grads, partitioned from stage 2; plus the fp32 grads the
                                                optimizer steps on, partitioned from stage 1. With the optimizer
                                                offloaded, grads are reduced straight into fp32 CPU buffers (4T/W);
                                                at stage 3 DeepSpeed's estimator counts 4T/W in all. At stage 1,
                                                which does not partition grads in the backward, the 16-bit ones
                                                (2T) also stay on the device until the accumulation boundary.
      optimizer_states  12T                     fp32 master weights + Adam moments, partitioned from stage 1
      `master_bytes` / `moment_bytes` (optimizer_state_bytes) replace the 4 bytes of the master weight (and of the
      gradient the optimizer steps on, kept in its dtype) and of each Adam moment where the DeepSpeed config keeps
      them in 16 bits.
      At stage 3 without offload DeepSpeed holds both the 16-bit and the master gradient partitions: 6T/W, measured
      by bench/zero_memory.py (DeepSpeed's own stage-3 estimator counts 4T/W and falls short by 2T/W).
    fp32: params 4N (`param_bytes` when given: the weights in the dtypes they were built in, which fp32 precision
    keeps, e.g. a frozen bf16 LLM at 2 bytes a weight), grads 4T; optimizer_states 8T at stage 0 (the weights are
    the master copy), 12T/W from stage 1, where ZeRO keeps a separate fp32 master partition even for fp32 weights
    (measured); offloaded as above.

    Offloaded states count under "cpu", the rest under "device". At stage 3 the largest layer is gathered in full
    on every rank (DeepSpeed counts 4 bytes per parameter of it): pass `largest_layer_params` to include it. With
    every parameter trainable and one node this reproduces DeepSpeed's estimate_zero2/3_model_states_mem_needs
    device figure (additional_buffer_factor aside; at stage 3 without offload 2T/W above it, see above), and, when
    offloading, their CPU figure divided by the ranks of the node (zero_init=True at stage 3; at stage 2 for up to 4
    ranks, above which DeepSpeed counts every rank's fp32 copy of the model loaded in CPU memory instead).
    """
    _check_zero_args(stage, offload_optimizer, offload_params, precision)
    params, grads, optim, kept = _state_bytes(
        num_params_total,
        num_trainable,
        stage,
        world_size,
        offload_optimizer,
        precision,
        master_bytes,
        moment_bytes,
        param_bytes,
    )
    gathered = 4 * largest_layer_params if stage == 3 else 0
    device = gathered + (0 if offload_params else params) + (kept if offload_optimizer else grads + optim)
    cpu = (params if offload_params else 0) + (grads - kept + optim if offload_optimizer else 0)
    return {
        "params": int(params),
        "grads": int(grads),
        "optimizer_states": int(optim),
        "gathered_layer": int(gathered),
        "device": int(device),
        "cpu": int(cpu),
    }


def _check_zero_args(stage: int, offload_optimizer: bool, offload_params: bool, precision: str) -> None:
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {stage}")
    if offload_params and stage != 3:
        raise ValueError("parameter offload needs ZeRO stage 3")
    if offload_optimizer and stage == 0:
        raise ValueError("optimizer offload needs ZeRO stage >= 1")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")


def _state_bytes(
    N: int,
    T: int,
    stage: int,
    W: int,
    offload_optimizer: bool,
    precision: str,
    master: int = 4,
    moment: int = 4,
    param_bytes: int | None = None,
) -> tuple[float, float, float, float]:
    """(params, grads, optimizer_states, the grads that stay on the device with the optimizer offloaded) bytes per
    rank; see estimate_zero_memory for the accounting."""

    def part(n: float, level: int) -> float:
        return n / W if stage >= level else n

    # ZeRO-1 with the optimizer offloaded: the full gradients in the training dtype stay on the device
    kept = (4 if precision == "fp32" else 2) * T if offload_optimizer and stage == 1 else 0
    if precision == "fp32":
        grads = kept + 4 * T / W if offload_optimizer else part(4 * T, 2)
        weights = 4 * N if param_bytes is None else param_bytes
        return part(weights, 3), grads, (8 * T if stage == 0 else 12 * T / W), kept
    params = part(2 * N, 3)
    if offload_optimizer:
        grads = kept + master * T / W
    elif stage == 3:
        grads = (2 + master) * T / W
    else:
        grads = part(2 * T, 2) + part(master * T, 1)
    return params, grads, part((master + 2 * moment) * T, 1), kept


def optimizer_state_bytes(ds: dict) -> tuple[int, int]:
    """(master weight, each Adam moment) bytes per trained parameter under DeepSpeed config `ds`: fp32, or 16-bit
    where bf16.bf16_master_weights_and_grads / bf16_optimizer_states or fp16.fp16_master_weights_and_grads keep them
    so (llmasr.train.ds_config allows them where DeepSpeed runs them, under their own train.precision)."""
    bf16 = ds.get("bf16") or ds.get("bfloat16") or {}
    half_master = bf16.get("bf16_master_weights_and_grads") or (ds.get("fp16") or {}).get(
        "fp16_master_weights_and_grads"
    )
    return (2 if half_master else 4), (2 if bf16.get("bf16_optimizer_states") else 4)
