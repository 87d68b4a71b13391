"""Write a state dict as FunASR's DeepSpeed trainer saves it: a real DeepSpeed engine's save_checkpoint.

FunASR's trainer_ds (use_deepspeed=true) calls `engine.save_checkpoint(save_dir=output_dir, tag="model.pt",
client_state=state)` with `state["state_dict"] = model.module.state_dict()` beside its bookkeeping (epoch, ranked
checkpoints). `model.pt` is then a folder: under ZeRO 0-2 `mp_rank_00_model_states.pt` holds the whole weights under
`module` (and the client `state_dict`), ZeRO-1/2 add `*_optim_states.pt`; under ZeRO-3 each rank writes
`zero_pp_rank_<r>_mp_rank_00_model_states.pt` whose tensors are empty placeholders, the weights only in the optimizer
partitions. Here a one-rank gloo world on the CPU saves a module holding the given tensors under their own names.

The engine runs in a child process (`python -m llmasr.testing.tiny_deepspeed STATE OUT_DIR TAG STAGE`): DeepSpeed
keeps its process groups for the life of a process, which the test process must not inherit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import llmasr

# The bookkeeping FunASR's trainer_ds puts beside the weights in the client state (plain values only).
FUNASR_CLIENT_STATE = {
    "epoch": 1,
    "saved_ckpts": {"model.pt.ep1": 0.5},
    "val_acc_step_or_epoch": {"model.pt.ep1": 0.5},
    "val_loss_step_or_epoch": {"model.pt.ep1": 2.0},
    "best_step_or_epoch": "model.pt.ep1",
    "avg_keep_nbest_models_type": "acc",
    "step": None,
    "step_in_epoch": None,
    "data_split_i": 0,
    "data_split_num": 1,
    "batch_total": 4,
    "train_loss_avg": 2.0,
    "train_acc_avg": 0.5,
}


class StateHolder(nn.Module):
    """A module whose state_dict is `state` (same names, order, values, dtypes): floating tensors as parameters,
    the others as buffers."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        for key, value in state.items():
            parent: nn.Module = self
            *path, leaf = key.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            if value.is_floating_point():
                parent.register_parameter(leaf, nn.Parameter(value.clone()))
            else:
                parent.register_buffer(leaf, value.clone())


def save_with_deepspeed(state_file: Path, out_dir: Path, tag: str, stage: int) -> None:
    """In this process: engine.save_checkpoint(out_dir, tag) of the state dict in `state_file` (a plain or
    {"state_dict": ...} torch file), ZeRO `stage`, FunASR's client state."""
    from llmasr.train.process_group import free_port

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import deepspeed

    state = torch.load(state_file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    module = StateHolder(state)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=module.parameters(), config=config, dist_init_required=True
    )
    client = {**FUNASR_CLIENT_STATE, "state_dict": engine.module.state_dict()}
    with torch.no_grad():
        engine.save_checkpoint(save_dir=str(out_dir), tag=tag, client_state=client)


def deepspeed_save(state_file: Path, out_dir: Path, tag: str, stage: int) -> Path:
    """save_with_deepspeed in a child process; returns the checkpoint folder out_dir/tag."""
    root = str(Path(llmasr.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    args = [sys.executable, "-m", "llmasr.testing.tiny_deepspeed", str(state_file), str(out_dir), tag, str(stage)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"DeepSpeed save of {state_file} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return Path(out_dir) / tag


if __name__ == "__main__":
    save_with_deepspeed(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
