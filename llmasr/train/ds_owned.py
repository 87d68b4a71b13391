"""DeepSpeed config keys whose effect llmasr has or does otherwise (its optimizer and schedules, checkpoints, data
loader, logging): a copied config that sets one is refused with what to do instead, unless its value changes nothing.
Every such key is named in one error, so a config copied from HF's or DeepSpeed's examples is fixed in one go; its
"optimizer" and "scheduler" blocks are refused with the recipe settings that do what they did, values carried over."""

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
    ("autotuning.enabled", (False,), "DeepSpeed's autotuner runs through `deepspeed --autotuning`; a run that only "
                                     "carries the block ends its process (exit status 0, nothing saved since the "
                                     "last checkpoint) after autotuning.end_profile_step + 1 updates: remove it"),
    ("comms_logger.enabled", (False,), "DeepSpeed's info log is silenced and nothing prints its summary, so it "
                                       "would only add a wait after every collective: remove it"),
    ("compile.deepcompile", (False,), "DeepCompile acts only once engine.compile() is called, which llmasr does not "
                                      "call (DeepSpeed says so in its silenced info log): remove it"),
    ("hybrid_engine.enabled", (False,), "DeepSpeed-Chat's RLHF engine (generation rollouts between training steps) "
                                        "is swapped in for the training engine llmasr drives, and llmasr decodes "
                                        "with its own search: remove it"),
    ("dump_state", (False,), "it writes to DeepSpeed's info log, which llmasr silences (RUN_DIR/ds_config.json holds "
                             "the config the run used): remove it"),
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


# DeepSpeed's lr schedules -> the recipe's nearest (optim.scheduler.type); OneCycle and LRRangeTest have none
_SCHEDULES = {"WarmupLR": "constant", "WarmupDecayLR": "warmup_linear", "WarmupCosineLR": "warmup_cosine"}
BLOCKS = {  # refused whole (their keys' "auto" too: the blocks go)
    "scheduler": "llmasr steps one schedule per param group (optim.scheduler and optim.branches.<branch>.scheduler in "
    "the recipe); DeepSpeed's WarmupLR/WarmupDecayLR would write one lr into every group and collapse the per-branch "
    "learning rates",
    "optimizer": "llmasr builds AdamW over its per-branch param groups itself; set the type, lrs, betas, eps and "
    "weight decay in the recipe's optim section (optim.branches.<branch>)",
}


def _params(block) -> dict:
    """A block's "params" without the "auto" values (HF's Trainer fills those; llmasr's recipe has its own)."""
    params = block.get("params") if isinstance(block, dict) else None
    return {k: v for k, v in params.items() if v != "auto"} if isinstance(params, dict) else {}


def _flow(fields: dict) -> str:
    """YAML flow text of `fields`, as a recipe would write it."""
    return "{" + ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in fields.items()) + "}"


def _scheduler_in_recipe(block) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    ours, params = _SCHEDULES.get(kind), _params(block)
    if ours is None:
        return (f"llmasr has no schedule like {json.dumps(kind)}: optim.scheduler.type is one of tri_stage, warmup, "
                "warmup_cosine, warmup_linear, constant")  # fmt: skip
    fields = {"type": ours} | ({"warmup_steps": params["warmup_num_steps"]} if "warmup_num_steps" in params else {})
    if kind == "WarmupCosineLR" and "cos_min_ratio" in params:
        fields["min_lr_ratio"] = params["cos_min_ratio"]
    said = [f"its {kind} in the recipe: optim.scheduler: {_flow(fields)}"]
    if "warmup_max_lr" in params:
        said.append(f"the peak (warmup_max_lr {json.dumps(params['warmup_max_lr'])}) is optim.branches.<branch>.lr")
    if "total_num_steps" in params:
        said.append(
            f"the decay ends at the run's last update (total_num_steps {params['total_num_steps']} is not read)"
        )
    return "; ".join(said)


def _optimizer_in_recipe(block) -> str:
    kind, params = block.get("type") if isinstance(block, dict) else None, _params(block)
    said = [] if str(kind).lower() in ("adam", "adamw") else [f"llmasr trains with AdamW only, not {json.dumps(kind)}"]
    shared = {k: params[k] for k in ("betas", "eps", "weight_decay") if k in params}
    if shared:
        said.append(f"in the recipe: optim: {_flow(shared)}")
    if "lr" in params:
        lr = json.dumps(params["lr"])
        said.append(f"lr {lr} is each branch's optim.branches.<branch>.lr (encoder, adaptor, ctc, llm)")
    return "; ".join(said)


def check_owned(ds: dict, source: str) -> None:
    """Refuse the "optimizer" and "scheduler" blocks and the keys of _OWNED, all in one error, and a
    zero_optimization that is true (DeepSpeed: stage 1; llmasr would count 0) or neither false (dropped: stage 0)
    nor an object."""
    if ds.get("zero_optimization") is False:  # DeepSpeed's stage 0, as no section at all
        del ds["zero_optimization"]
    zero = ds.get("zero_optimization")
    if "zero_optimization" in ds and not isinstance(zero, dict):  # null too: DeepSpeed's TypeError names no key
        raise ConfigError(
            f'{source}: "zero_optimization" is {json.dumps(zero)}; write it as an object, e.g. '
            '"zero_optimization": {"stage": 2}'
        )
    refused = []
    for block, why in BLOCKS.items():
        if block in ds:
            advice = (_scheduler_in_recipe if block == "scheduler" else _optimizer_in_recipe)(ds[block])
            refused.append(f'remove the "{block}" block. {why}' + (f"; {advice}" if advice else ""))
    for key, allowed, why in _OWNED:
        *parents, last = key.split(".")
        node = value_at(ds, ".".join(parents)) if parents else ds
        if not isinstance(node, dict) or last not in node:
            continue
        value = node[last]
        if _off(value) if allowed == ("off",) else value in allowed and not isinstance(value, dict):
            continue
        refused.append(f"{key} is {json.dumps(value)}; {why}")
    if len(refused) == 1:
        raise ConfigError(f"{source}: {refused[0]}")
    if refused:
        raise ConfigError(
            f"{source}: {len(refused)} settings llmasr does otherwise or not at all:\n  - " + "\n  - ".join(refused)
        )
