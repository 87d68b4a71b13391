"""Weights saved as a DeepSpeed checkpoint: a folder FunASR's DeepSpeed trainer leaves under the weights' name.

FunASR's trainer_ds calls `engine.save_checkpoint(save_dir=output_dir, tag="model.pt", client_state=...)`, so
`model.pt` (and model.pt.ep<N>, model.pt.best) is a folder. Under ZeRO 0-2 its `mp_rank_00_model_states.pt` holds
the whole weights under `module` (the client state's `state_dict` holds them again), beside DeepSpeed's bookkeeping
(`ds_config`, `param_shapes`, ...); FunASR's own AutoModel reads that file when init_param names it. Under ZeRO-3
each rank writes `zero_pp_rank_<r>_mp_rank_00_model_states.pt` whose tensors are empty placeholders: the weights
exist only in the optimizer partitions, which DeepSpeed's zero_to_fp32 gathers into one state dict.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = "zero_pp_rank_*_mp_rank_*_model_states.pt"


def weights_in(path: Path) -> Path:
    """`path`, or the file holding its whole weights when it is a DeepSpeed checkpoint folder (ZeRO 0-2). A folder
    without that file (ZeRO-3's partitions, anything else) is returned as it is: the callers name it."""
    inner = path / MODEL_STATES
    return inner if path.is_dir() and inner.is_file() else path


class NotWholeWeights(ValueError):
    """A DeepSpeed model-states file that does not hold the whole weights (llmasr.models.state_dict reports it as a
    checkpoint that does not fit)."""


def zero3_partitions(folder: Path) -> list[Path]:
    """The ZeRO-3 model-state files of a DeepSpeed checkpoint folder ([] for any other folder)."""
    return sorted(folder.glob(ZERO3_MODEL_STATES)) if folder.is_dir() else []


def zero_to_fp32_advice(folder: Path) -> str:
    return (
        f"Write its weights as one state dict with DeepSpeed's zero_to_fp32 (tag {folder.name}) and put that file "
        "in the folder's place."
    )


def is_model_states(obj: object) -> bool:
    """A DeepSpeed engine's model-states dict (what save_checkpoint writes to *_model_states.pt)."""
    return isinstance(obj, dict) and "ds_version" in obj and ("module" in obj or "state_dict" in obj)


def _stage(obj: dict) -> int | None:
    zero = (obj.get("ds_config") or {}).get("zero_optimization") or {}
    stage = zero.get("stage") if isinstance(zero, dict) else None
    return int(stage) if isinstance(stage, int | str) and str(stage).isdigit() else None


def _saved_shapes(obj: dict) -> dict[str, tuple]:
    """The parameters' real shapes, which DeepSpeed records (param_shapes, one mapping per parameter group)."""
    out: dict[str, tuple] = {}
    for group in obj.get("param_shapes") or []:
        if isinstance(group, dict):
            out.update({k: tuple(v) for k, v in group.items()})
    for k, v in (obj.get("frozen_param_shapes") or {}).items():
        out[k] = tuple(v)
    return out


def module_weights(obj: dict, source: str) -> dict:
    """The whole weights of a DeepSpeed model-states dict: `module`, else the client state's `state_dict` (FunASR's
    trainer writes both). ZeRO-3's partition placeholders and one model-parallel shard of several are refused."""
    key = "module" if isinstance(obj.get("module"), dict) else "state_dict"
    weights = obj.get(key)
    if not isinstance(weights, dict):
        raise NotWholeWeights(f"{source}: a DeepSpeed checkpoint with neither `module` nor `state_dict` weights")
    folder = Path(source).parent
    mp = obj.get("mp_world_size")
    if isinstance(mp, int) and mp > 1:
        raise NotWholeWeights(
            f"{source}: one of {mp} model-parallel shards of a DeepSpeed checkpoint, not the whole weights. "
            + zero_to_fp32_advice(folder)
        )
    stage, shapes = _stage(obj), _saved_shapes(obj)
    empty = [
        k
        for k, v in weights.items()
        if isinstance(v, torch.Tensor) and v.numel() == 0 and (math.prod(shapes[k]) > 0 if k in shapes else stage == 3)
    ]
    if empty:
        example = empty[0]
        real = f", {list(shapes[example])} in the model" if example in shapes else ""
        raise NotWholeWeights(
            f"{source}: a DeepSpeed ZeRO-3 checkpoint's partition placeholders, not weights: {len(empty)} of its "
            f"{len(weights)} tensors are empty (e.g. {example}: {list(weights[example].shape)}{real}); the weights "
            f"are partitioned in {folder}'s *_optim_states.pt files. " + zero_to_fp32_advice(folder)
        )
    log.info(
        "%s: a DeepSpeed checkpoint (ZeRO stage %s, DeepSpeed %s): read its `%s` weights, %d tensors",
        source,
        "?" if stage is None else stage,
        obj.get("ds_version"),
        key,
        len(weights),
    )
    return weights
