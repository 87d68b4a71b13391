"""DeepSpeed config keys whose effect llmasr has or does otherwise (its schedules, checkpoints, data loader, logging):
a copied config that sets one is refused with what to do instead, unless its value changes nothing."""

from __future__ import annotations

import json
from typing import Any

from llmasr.config_io import ConfigError


def value_at(ds: dict, dotted: str) -> Any:
    """The value at a dotted key of a DeepSpeed config, None where it is not set."""
    node = ds
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# Keys DeepSpeed accepts whose effect llmasr does otherwise or not at all: (dotted key, the values that change
# nothing and pass, why the others are refused). The sections of DeepSpeed's own activation checkpointing and data
# loader pass while every value in them is off (copied configs carry such blocks).
_OWNED: tuple[tuple[str, tuple, str], ...] = (
    ("gradient_allreduce_op", ("mean",), "llmasr's gradients are means over the ranks (sum would make them world "
                                          "size times larger under train.grad_clip): remove it"),
    ("checkpoint.load_universal", (False,), "llmasr converts a checkpoint to DeepSpeed's universal format itself "
                                            "when the world size changes on resume: remove it"),
    ("checkpoint.checkpoint_serialization", (True,), "llmasr reads checkpoints memory-mapped, which needs the zip "
                                                     "format: remove it"),
    ("checkpoint.use_node_local_storage", (False,), "llmasr keeps a run's checkpoints in train.output_dir, one "
                                                     "folder every node shares (checked at start), and node-local "
                                                     "storage has each node's local rank 0 write the same model file "
                                                     "into it at once: remove it"),
    ("checkpoint.writer.decoupled", (False,), "a decoupled writer finishes the files after save returns, and "
                                              "llmasr records and checks them as soon as it does: remove it"),
    ("datastates_ckpt", (False,), "DataStates writes checkpoints in the background, and llmasr records and checks "
                                  "them as soon as save returns: remove it"),
    ("zero_optimization.cpu_offload", (False, None), 'an old spelling: write "offload_optimizer": {"device": "cpu"}'),
    ("zero_optimization.cpu_offload_param", (False, None), 'an old spelling: write "offload_param": '
                                                           '{"device": "cpu"}'),
    ("zero_optimization.cpu_offload_use_pin_memory", (False, None), 'an old spelling: write "pin_memory" inside '
                                                                    "offload_optimizer / offload_param"),
    ("activation_checkpointing", ("off",), "DeepSpeed applies it only to models that call its own checkpointing; "
                                           "set model.llm.gradient_checkpointing (and checkpoint_every) or "
                                           "model.encoder.gradient_checkpointing in the recipe"),
    ("data_efficiency", ("off",), "it acts only through DeepSpeed's own data loader, which llmasr does not use "
                                  "(data.batching in the recipe decides the batches)"),
    ("dataloader_drop_last", (False,), "it acts only through DeepSpeed's own data loader, which llmasr does not "
                                       "use: set data.batching.drop_last in the recipe"),
    ("steps_per_print", (None,), "DeepSpeed's progress lines are silenced (they would drown llmasr's progress "
                                 "report): train.log_every sets how often the loss, lrs and throughput are logged"),
    ("managed_gradient_accumulation", (True,), "llmasr marks the accumulation boundary before every micro batch "
                                               "(set_gradient_accumulation_boundary), which DeepSpeed refuses at the "
                                               "first one without it: remove it (train.grad_accum decides)"),
    *((f"{name}.enabled", (False,), "DeepSpeed's monitor logs the first param group's lr as the run's, against "
       "nominal sample counts (llmasr logs every group's lr in RUN_DIR/tensorboard and train.log): remove it")
      for name in ("tensorboard", "wandb", "csv_monitor", "comet")),
)  # fmt: skip


def _off(value) -> bool:
    """Every value in it false, zero, empty or null (a section that switches nothing on)."""
    if isinstance(value, dict):
        return all(_off(v) for v in value.values())
    if isinstance(value, list):
        return all(_off(v) for v in value)
    return not value


def check_owned(ds: dict, source: str) -> None:
    """Refuse the keys of _OWNED, and a zero_optimization that is true (DeepSpeed: stage 1; llmasr would count 0)
    or neither false (dropped: stage 0) nor an object."""
    if ds.get("zero_optimization") is False:  # DeepSpeed's stage 0, as no section at all
        del ds["zero_optimization"]
    zero = ds.get("zero_optimization")
    if "zero_optimization" in ds and not isinstance(zero, dict):  # null too: DeepSpeed's TypeError names no key
        raise ConfigError(
            f'{source}: "zero_optimization" is {json.dumps(zero)}; write it as an object, e.g. '
            '"zero_optimization": {"stage": 2}'
        )
    for key, allowed, why in _OWNED:
        *parents, last = key.split(".")
        node = value_at(ds, ".".join(parents)) if parents else ds
        if not isinstance(node, dict) or last not in node:
            continue
        value = node[last]
        if _off(value) if allowed == ("off",) else value in allowed and not isinstance(value, dict):
            continue
        raise ConfigError(f"{source}: {key} is {json.dumps(value)}; {why}")
