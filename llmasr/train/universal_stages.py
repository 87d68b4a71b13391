"""One universal checkpoint for every ZeRO stage 1-3: resuming at another stage than the one that saved.

DeepSpeed's universal checkpoint (deepspeed.checkpoint.ds_to_universal) holds every trainable tensor's fp32 weight
and Adam moments whole, but in two layouts, each read by its own stage's loader only:

- from ZeRO-1/2: `mp_rank_00_model_states.pt`; zero/<param>/{fp32,exp_avg,exp_avg_sq}.pt as {"param": tensor in
  the parameter's shape, ...} and a `step.pt` per parameter; zero/optimizer_state.pt the optimizer's global state
  and the base optimizer's `param_groups` (runtime/base_optimizer.py reads these);
- from ZeRO-3: `zero_pp_rank_R_mp_rank_00_model_states.pt`; the same three states as bare flat tensors, no step
  file; zero/optimizer_state.pt rank 0's whole optimizer state, whose `optimizer_state_dict` gives the step and the
  group settings (runtime/zero/stage3.py, load_hp_checkpoint_state_from_checkpoint_dir_stage3).

`any_stage` rewrites a converted copy into what both loaders read: the model-states file under both names (a hard
link where the filesystem allows), each state in its parameter's shape in the ZeRO-1/2 dict, a `step.pt` per
parameter, and an optimizer_state.pt with both stages' keys (rank 0's ZeRO-3 partitions left out: nothing reads
them). The weights, moments and step are copied as they are, so a run continues exactly at any stage.

ZeRO-0 has no universal form: DeepSpeed saves its optimizer state whole in the model-states file, and its engine
reads no universal checkpoint (the module is not loaded from one), so a stage change to or from 0 is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

ZERO12_MODEL = "mp_rank_00_model_states.pt"
ZERO3_MODEL = "zero_pp_rank_0_mp_rank_00_model_states.pt"  # the only one a ZeRO-3 universal load reads
STATES = ("fp32", "exp_avg", "exp_avg_sq")
CONVERTIBLE = (1, 2, 3)


def stage_change_allowed(saved: int, stage: int) -> bool:
    """Whether a checkpoint saved at ZeRO `saved` loads at `stage` (converted where they differ)."""
    return saved == stage or (saved in CONVERTIBLE and stage in CONVERTIBLE)


def _load(path: Path):
    from llmasr.safe_load import load_weights_only

    return load_weights_only(path)  # the model-states files are the checkpoint's own, copied: data, read as such


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _param_shapes(model_states: dict) -> dict[str, torch.Size]:
    shapes = model_states.get("param_shapes") or []
    return {name: torch.Size(shape) for group in shapes for name, shape in group.items()}


def _step_of(optim: dict, zero: Path, names: list[str]):
    """The Adam step the checkpoint's optimizer reached: ZeRO-3 keeps it in the base optimizer's state, ZeRO-1/2 in
    each parameter's step.pt (one count for all)."""
    state = (optim.get("optimizer_state_dict") or {}).get("state") or {}
    for entry in state.values():
        if "step" in entry:
            return entry["step"]
    for name in names:
        if (zero / name / "step.pt").is_file():
            return _load(zero / name / "step.pt")
    return None


def any_stage(folder: Path) -> None:
    """Rewrite the universal checkpoint `folder` (ds_to_universal's output, from ZeRO-1, 2 or 3) so that every stage
    1-3 loads it; ValueError naming the file where it is not what the conversion writes."""
    folder, zero = Path(folder), Path(folder) / "zero"
    model_file = folder / ZERO12_MODEL if (folder / ZERO12_MODEL).is_file() else folder / ZERO3_MODEL
    if not model_file.is_file():
        raise ValueError(f"{folder}: neither {ZERO12_MODEL} nor {ZERO3_MODEL}; not a universal checkpoint")
    model_states = _load(model_file)
    shapes = _param_shapes(model_states)
    if not shapes:
        raise ValueError(f"{model_file}: no param_shapes; not a DeepSpeed ZeRO model-states file")
    optim_path = zero / "optimizer_state.pt"
    optim = _load(optim_path)
    names = list(shapes)
    step = _step_of(optim, zero, names)
    for name, shape in shapes.items():
        for key in STATES:
            path = zero / name / f"{key}.pt"
            value = _load(path)
            if torch.is_tensor(value):  # ZeRO-3's flat tensor
                if value.numel() != shape.numel():
                    raise ValueError(f"{path}: {value.numel()} values, the parameter's shape {tuple(shape)} holds "
                                     f"{shape.numel()}")  # fmt: skip
                torch.save({"param": value.reshape(shape), "cat_dim": 0}, path)
        if step is not None and not (zero / name / "step.pt").is_file():
            torch.save(step, zero / name / "step.pt")
    inner = optim.pop("optimizer_state_dict", None) or {}
    groups = optim.get("param_groups") or inner.get("param_groups") or []
    optim["param_groups"] = groups
    optim.setdefault("ds_version", model_states.get("ds_version"))
    optim.pop("fp32_flat_groups", None)  # rank 0's ZeRO-3 partition, read by no universal load
    optim["optimizer_state_dict"] = {"state": {0: {"step": step}} if step is not None else {}, "param_groups": groups}
    torch.save(optim, optim_path)
    _link_or_copy(model_file, folder / (ZERO3_MODEL if model_file.name == ZERO12_MODEL else ZERO12_MODEL))
