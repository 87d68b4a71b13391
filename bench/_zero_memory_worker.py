"""One rank of the ZeRO memory benchmark (started by bench/zero_memory.py through `deepspeed --num_gpus N`).

Builds an MLP of `--width`-wide linear layers (every parameter trainable, as DeepSpeed's estimators assume),
initialises DeepSpeed with an llmasr preset resolved against a TrainConfig, runs two training steps and counts the
bytes of tensor storage this rank holds after initialize and, in the second (steady-state) step, during backward,
after backward, inside the optimizer step (when gradients and optimizer states coexist) and after the step.

Counting: every tensor reachable from Python (gc) plus the .grad of every model and optimizer parameter, each
storage counted once, sorted into
  params            the model's parameter storage (the ZeRO-3 partition `ds_tensor` where present)
  optimizer_states  the inner optimizer's parameters when they are not the model's (fp32 master copies) and its
                    state tensors (Adam moments)
  reduce_buckets    DeepSpeed's contiguous gradient-reduction buffers (reduce_bucket_size elements each)
  grads             everything else: parameter gradients, gradient partitions and other engine buffers.
Rank 0 writes the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import torch
from torch import nn


def build_model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.LayerNorm(width))


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return (s.data_ptr(), t.device.type), s.nbytes()


class Ledger:
    """Storage bytes by category; a storage goes to the first category that claims it."""

    def __init__(self):
        self.seen: dict = {}
        self.bytes: dict[str, int] = {}
        self.items: dict[str, list] = {}

    def add(self, category: str, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        key, nbytes = _storage_key(t)
        if nbytes == 0 or key in self.seen:
            return
        self.seen[key] = category
        self.bytes[category] = self.bytes.get(category, 0) + nbytes
        self.items.setdefault(category, []).append((nbytes, list(t.shape), str(t.dtype).replace("torch.", "")))


def _walk_tensors(obj, depth: int = 0):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _walk_tensors(x, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for x in obj.values():
            yield from _walk_tensors(x, depth + 1)


def count_states(engine, stage: int) -> dict:
    gc.collect()
    ledger = Ledger()
    module_params = list(engine.module.parameters())
    for p in module_params:
        ledger.add("params", getattr(p, "ds_tensor", None))  # ZeRO-3 partition
        ledger.add("params", p.data)  # full weights (stages 0-2; gathered or persistent ones at stage 3)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    # fp32 master partitions: ZeRO-1/2 and ZeRO-3 attribute names
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        for t in _walk_tensors(getattr(engine.optimizer, name, None)):
            ledger.add("optimizer_states", t)
    for group in inner.param_groups:
        for p in group["params"]:
            ledger.add("optimizer_states", p.data)  # fp32 master partition; already counted when it is the param
    for state in inner.state.values():
        for t in _walk_tensors(state):
            ledger.add("optimizer_states", t)
    for bucket in getattr(engine.optimizer, "ipg_buckets", {}).values():
        for t in _walk_tensors(getattr(bucket, "buffer", None)):  # a list at stages 1-2, one tensor at stage 3
            ledger.add("reduce_buckets", t)
    for p in module_params:
        ledger.add("grads", p.grad)
    for group in inner.param_groups:
        for p in group["params"]:
            ledger.add("grads", p.grad)
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            ledger.add("grads", obj)
    out = {k: ledger.bytes.get(k, 0) for k in ("params", "grads", "optimizer_states", "reduce_buckets")}
    out["total"] = sum(out.values())
    out["total_without_buckets"] = out["total"] - out["reduce_buckets"]
    # the largest storages of the catch-all category, to tell what they are
    out["largest_grads"] = sorted(ledger.items.get("grads", []), reverse=True)[:4]
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", required=True)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--out", required=True)
    p.add_argument("--local_rank", type=int, default=None)  # passed by the deepspeed launcher
    args = p.parse_args()

    import deepspeed

    from llmasr.train.config import TrainConfig
    from llmasr.train.ds_config import resolve_ds_config, zero_stage
    from llmasr.train.process_group import init_distributed

    init_distributed()  # as `llmasr train` does: no shared-memory all-reduce buffers left in /dev/shm

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tcfg = TrainConfig(precision=args.precision, grad_accum=1, micro_batch_per_gpu=4, grad_clip=1.0)
    ds = resolve_ds_config(args.preset, tcfg, world_size=world)
    stage = zero_stage(ds)
    model = build_model(args.width, args.depth)
    n_params = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    rank = engine.global_rank

    points = {"after_initialize": count_states(engine, stage)}
    torch.manual_seed(1 + rank)
    x = torch.randn(4, args.width, dtype=dtype)
    current = {"step": 0}

    def snapshot(name):
        if current["step"] == 2:  # the first step allocates the Adam moments; the second is the steady state
            points.setdefault(name, count_states(engine, stage))

    # The first layer's backward hook runs while the stage 1/2 reduction buffers are alive (they are freed when
    # backward ends; ZeRO-3 keeps its own for the engine's life). The inner optimizer's step pre-hook runs when
    # the fp32 gradients the optimizer steps on and the moments coexist: the model-state peak.
    hooks = [
        engine.module[0].register_full_backward_hook(lambda *_: snapshot("during_backward")),
        getattr(engine.optimizer, "optimizer", engine.optimizer).register_step_pre_hook(
            lambda *_: snapshot("in_optimizer_step")
        ),
    ]
    for step in (1, 2):
        current["step"] = step
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        if step == 2:
            points["after_backward"] = count_states(engine, stage)
        engine.step()
        del loss
    for h in hooks:
        h.remove()
    points["after_step"] = count_states(engine, stage)

    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, points)
    if rank == 0:
        result = {
            "preset": args.preset,
            "stage": stage,
            "precision": args.precision,
            "world_size": world,
            "num_params": n_params,
            "largest_layer_params": largest,
            "reduce_bucket_size": ds.get("zero_optimization", {}).get("reduce_bucket_size"),
            "ranks": gathered,
        }
        Path(args.out).write_text(json.dumps(result, indent=1))
    torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    from llmasr.train.process_group import exit_rank

    exit_rank(main())  # no gloo worker thread may abort the rank at exit
