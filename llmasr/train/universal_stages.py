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
them). The weights, moments and step are copied as they are (an offloaded optimizer's int step as the tensor
torch's Adam steps with), so a run continues exactly at any stage.

ZeRO-0 keeps no partitions, so ds_to_universal has nothing to convert: DeepSpeed saves its module whole and, in fp32,
torch's AdamW state as it is, per parameter, in the model-states file. `from_stage0` writes the same universal copy
from that file (the optimizer numbers the parameters group by group; llmasr's groups hold them in model order, so
each is named by param_groups.group_name and checked against its shape). DeepSpeed's ZeRO-0 engine loads no universal
checkpoint (it skips the module there), so `to_stage0` writes, inside the universal copy, the ZeRO-0 checkpoint it
does load: the weights whole and torch's AdamW state, numbered as this run's optimizer holds its parameters. A ZeRO-0
run under bf16/fp16 keeps fp32 masters per group in a DeepSpeed wrapper instead: its changes are refused
(`stage_change_allowed`).
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


def stage_change_allowed(saved: int, stage: int, precision: str = "fp32") -> bool:
    """Whether a checkpoint saved at ZeRO `saved` loads at `stage` (converted where they differ) in a run of
    train.precision `precision` (which cannot change on resume: the checkpoint's own)."""
    if saved == stage or (saved in CONVERTIBLE and stage in CONVERTIBLE):
        return True
    return precision == "fp32" and {saved, stage} - {0} <= set(CONVERTIBLE)  # ZeRO-0 in fp32: torch's own state


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
    if step is not None and not torch.is_tensor(step):  # DeepSpeedCPUAdam's count (offload): torch's Adam, which
        step = torch.tensor(float(step))  # ZeRO-3 loads it into as it is, steps only with a tensor
    for name, shape in shapes.items():
        for key in STATES:
            path = zero / name / f"{key}.pt"
            value = _load(path)
            if torch.is_tensor(value):  # ZeRO-3's flat tensor
                if value.numel() != shape.numel():
                    raise ValueError(f"{path}: {value.numel()} values, the parameter's shape {tuple(shape)} holds "
                                     f"{shape.numel()}")  # fmt: skip
                torch.save({"param": value.reshape(shape), "cat_dim": 0}, path)
        counted = zero / name / "step.pt"
        if step is not None and not (counted.is_file() and torch.is_tensor(_load(counted))):
            torch.save(step, counted)
    inner = optim.pop("optimizer_state_dict", None) or {}
    groups = optim.get("param_groups") or inner.get("param_groups") or []
    optim["param_groups"] = groups
    optim.setdefault("ds_version", model_states.get("ds_version"))
    optim.pop("fp32_flat_groups", None)  # rank 0's ZeRO-3 partition, read by no universal load
    optim["optimizer_state_dict"] = {"state": {0: {"step": step}} if step is not None else {}, "param_groups": groups}
    torch.save(optim, optim_path)
    _link_or_copy(model_file, folder / (ZERO3_MODEL if model_file.name == ZERO12_MODEL else ZERO12_MODEL))


def from_stage0(src: Path, dst: Path, trainable: list[str]) -> None:
    """Write into `dst` the universal copy (as `any_stage` leaves one) of the fp32 ZeRO-0 checkpoint folder `src`,
    whose meta lists the `trainable` parameters in model order; ValueError naming what does not line up."""
    from llmasr.train.param_groups import group_name  # the grouping the trainer built the optimizer with

    model_file = Path(src) / ZERO12_MODEL
    from llmasr.train.ds_files import strip_module_prefix

    states = _load(model_file)
    module, optim = states.get("module"), states.get("optimizer")
    module = strip_module_prefix(module) if isinstance(module, dict) else module
    if not isinstance(module, dict) or not isinstance(optim, dict) or not {"state", "param_groups"} <= set(optim):
        raise ValueError(f"{model_file}: no torch optimizer state beside the module; only a ZeRO-0 checkpoint trained "
                         "in fp32 converts to another stage")  # fmt: skip
    zero = Path(dst) / "zero"
    names = [n for n in trainable if n in module]
    step = next((s["step"] for s in optim["state"].values() if "step" in s), None)
    for group in optim["param_groups"]:
        members = [n for n in names if group_name(n, module[n].dim()) == group.get("name")]
        if len(members) != len(group["params"]):
            raise ValueError(f"{model_file}: param group {group.get('name')!r} holds {len(group['params'])} tensors, "
                             f"the checkpoint's trainable parameters name {len(members)} for it")  # fmt: skip
        for name, index in zip(members, group["params"]):
            weight, saved = module[name].float(), optim["state"].get(index, {})
            (zero / name).mkdir(parents=True)
            for key in STATES:
                value = weight if key == "fp32" else saved.get(key, torch.zeros_like(weight))  # no grad yet: none
                if value.shape != weight.shape:
                    raise ValueError(f"{model_file}: {key} of {name} (optimizer index {index}) has shape "
                                     f"{tuple(value.shape)}, the weight {tuple(weight.shape)}")  # fmt: skip
                torch.save({"param": value.float(), "cat_dim": 0}, zero / name / f"{key}.pt")
            if step is not None:
                torch.save(saved.get("step", step), zero / name / "step.pt")
    groups = [dict(g) for g in optim["param_groups"]]
    torch.save({"param_groups": groups, "ds_version": states.get("ds_version"), "zero_stage": 0,
                "optimizer_state_dict": {"state": {0: {"step": step}} if step is not None else {},
                                         "param_groups": groups}},
               zero / "optimizer_state.pt")  # fmt: skip
    _link_or_copy(model_file, Path(dst) / ZERO12_MODEL)
    _link_or_copy(model_file, Path(dst) / ZERO3_MODEL)


def to_stage0(folder: Path, out: Path, groups: list[tuple[dict, list[str]]]) -> None:
    """Write into `out` the fp32 ZeRO-0 checkpoint of the universal copy `folder` (as `any_stage` leaves it) for an
    optimizer whose param groups are `groups`, (settings, names of its parameters in order): the model-states file
    DeepSpeed's ZeRO-0 engine loads (the copy's client state, schedule and counters; its buffers)."""
    folder, zero = Path(folder), Path(folder) / "zero"
    states = _load(folder / ZERO12_MODEL)
    named = {n for _, names in groups for n in names}
    source = states.get("module") or {}
    module = {k: v for k, v in source.items() if k not in named and torch.is_tensor(v) and v.numel() > 0}  # buffers
    state, saved_groups, index = {}, [], 0
    for settings, names in groups:
        saved_groups.append({**settings, "params": list(range(index, index + len(names)))})
        for name in names:
            module[name] = _load(zero / name / "fp32.pt")["param"]
            entry = {key: _load(zero / name / f"{key}.pt")["param"] for key in STATES[1:]}
            state[index] = {"step": _load(zero / name / "step.pt"), **entry}
            index += 1
    out.mkdir(parents=True)
    torch.save({**states, "module": module, "optimizer": {"state": state, "param_groups": saved_groups}},
               out / ZERO12_MODEL)  # fmt: skip
