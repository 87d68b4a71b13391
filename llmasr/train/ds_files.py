"""DeepSpeed's files in a checkpoint folder, per ZeRO stage, and reading the trained tensors back from them offline
(CPU only, no engine, no torch.distributed): what `llmasr export` and `llmasr decode --checkpoint` load.

engine.save_checkpoint(..., exclude_frozen_parameters=True) writes into RUN_DIR/checkpoints/<tag>/:

- ZeRO-0: `mp_rank_00_model_states.pt` whose "module" is the state dict of the trained parameters (and buffers),
  in the dtype the engine trained in; under bf16/fp16 its "optimizer" also holds the fp32 master weights, per param
  group and unnamed (`stage0_masters` names them and reads those).
- ZeRO-1/2: the same model file (a low-precision copy under bf16/fp16) plus one `*_optim_states.pt` per rank
  holding a flat fp32 partition of the master weights.
- ZeRO-3: one `zero_pp_rank_R_mp_rank_00_model_states.pt` per rank (parameters are empty placeholders) plus one
  `*_optim_states.pt` per rank.

For stages 1-3 the fp32 master weights are consolidated with `deepspeed.utils.zero_to_fp32`, which only reads
files. Before anything is read, the files are checked against the sizes and sha256 sums the save recorded in the
meta (llmasr.run_dir.files); every torch.load, zero_to_fp32's included, is weights-only with DeepSpeed's own few
classes allowed (llmasr.safe_load), so a checkpoint that pickles anything else is refused instead of executed.
"""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout
from pathlib import Path

import torch

from llmasr.run_dir.files import verify_tag
from llmasr.run_dir.layout import MODEL_STATES
from llmasr.run_dir.meta import CheckpointMeta
from llmasr.safe_load import CheckpointError, load_weights_only, weights_only_torch_load

log = logging.getLogger(__name__)

OPTIM_STATES = "*_optim_states.pt"
CLIENT_KEY = "llmasr"  # our entry of DeepSpeed's client state: epoch, loader position, every rank's RNG, ...
STATE_FILES = (MODEL_STATES, OPTIM_STATES)


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def check_shards(tag_dir: Path, meta: CheckpointMeta) -> tuple[list[Path], list[Path]]:
    """(model files, optimizer files) of a tag; CheckpointError when the stage and world size want others."""
    model_files = sorted(tag_dir.glob(MODEL_STATES))
    optim_files = sorted(tag_dir.glob(OPTIM_STATES))
    if not model_files:
        raise CheckpointError(f"{tag_dir}: no {MODEL_STATES} file; the checkpoint is incomplete")
    stage, world = meta.zero_stage, meta.world_size
    if stage in (1, 2) and len(optim_files) != world:
        raise CheckpointError(
            f"{tag_dir}: ZeRO-{stage} checkpoint of world size {world} but {len(optim_files)} optimizer "
            f"shard(s) ({OPTIM_STATES}) found; a shard is missing (partial save?)"
        )
    if stage == 3 and (len(optim_files) != world or len(model_files) != world):
        raise CheckpointError(
            f"{tag_dir}: ZeRO-3 checkpoint of world size {world} but {len(model_files)} model and "
            f"{len(optim_files)} optimizer shard(s) found; a shard is missing (partial save?)"
        )
    return model_files, optim_files


def read_client_state(tag_dir: str | Path, meta: CheckpointMeta) -> tuple[dict, dict, dict]:
    """llmasr's entry of a checkpoint's client state (epoch, loader position, rng), the DeepSpeed config it was
    saved under and its lr scheduler's state (BranchLRScheduler.state_dict), read weights-only and memory mapped from
    its first model-states file (no tensor is read into memory); {} for each where it has none."""
    model_files, _ = check_shards(Path(tag_dir), meta)
    state = load_weights_only(model_files[0], mmap=True)
    state = state if isinstance(state, dict) else {}
    found = [state.get(CLIENT_KEY), state.get("ds_config"), state.get("lr_scheduler")]
    client, ds, scheduler = (x if isinstance(x, dict) else {} for x in found)
    return client, ds, scheduler


def read_trained_state(tag_dir: str | Path, meta: CheckpointMeta) -> dict[str, torch.Tensor]:
    """The trained tensors of one checkpoint tag (fp32 masters when the checkpoint has them), CPU, prefix-free."""
    tag_dir = Path(tag_dir)
    if not tag_dir.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {tag_dir}")
    model_files, _ = check_shards(tag_dir, meta)
    verify_tag(tag_dir, meta)
    first = load_weights_only(model_files[0])
    if not isinstance(first, dict) or "module" not in first:
        raise CheckpointError(f"{model_files[0]}: no 'module' entry; not a DeepSpeed model-states file")
    if meta.zero_stage >= 1:
        return strip_module_prefix(consolidate_zero(tag_dir))
    module = first["module"]
    if not isinstance(module, dict):
        raise CheckpointError(f"{model_files[0]}: 'module' is not a state dict")
    module = strip_module_prefix(module)
    state = {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    state.update(stage0_masters(first, module, meta.trainable, model_files[0]))
    return state


def stage0_masters(states: dict, module: dict, trainable: list[str], source: Path) -> dict[str, torch.Tensor]:
    """The fp32 master weights a ZeRO-0 bf16/fp16 checkpoint keeps beside its low-precision `module`: DeepSpeed's
    optimizer saves them per param group, in the group's order, unnamed. Named by llmasr's grouping (branch,
    decay or not, model order) and taken only when every one lines up with its tensor (its shape, and rounding to
    exactly the tensor the module saved); else {} (the module's copy is read, as before)."""
    opt = states.get("optimizer")
    groups = opt.get("fp32_groups") if isinstance(opt, dict) else None
    saved = (opt.get("optimizer_state_dict") or {}).get("param_groups") if isinstance(opt, dict) else None
    if not groups or not isinstance(saved, list) or len(saved) != len(groups):
        return {}
    masters = _named_masters(saved, groups, module, [n for n in trainable if n in module])
    if masters is None:
        log.warning("%s: its fp32 master weights do not line up with the model's tensors; reading the model's copy "
                    "(in the precision it trained in)", source)  # fmt: skip
    return masters or {}


def _named_masters(saved: list, groups: list, module: dict, names: list[str]) -> dict[str, torch.Tensor] | None:
    from llmasr.train.param_groups import group_name  # the grouping the trainer built the optimizer with

    masters = {}
    for group, tensors in zip(saved, groups):
        members = [n for n in names if group_name(n, module[n].dim()) == group.get("name")]
        if len(members) != len(tensors):
            return None
        for name, master in zip(members, tensors):
            low = module[name]
            if master.shape != low.shape or not torch.equal(master.to(low.dtype), low):
                return None
            masters[name] = master.float()
    return masters if len(masters) == len(names) else None


def consolidate_zero(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The master weights of a ZeRO-1/2/3 tag in fp32, whole, through DeepSpeed's zero_to_fp32 (reads files only)."""
    from deepspeed.utils import zero_to_fp32  # heavy: only when a ZeRO checkpoint is read

    buf = io.StringIO()
    try:
        with weights_only_torch_load(), redirect_stdout(buf):  # zero_to_fp32 prints progress to stdout
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(
                str(tag_dir.parent), tag=tag_dir.name, exclude_frozen_parameters=True
            )
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{tag_dir}: cannot consolidate the ZeRO shards ({_short(err)}); a shard is missing, truncated or corrupt"
        ) from err
    log.debug("zero_to_fp32: %s", buf.getvalue())
    # masters kept in bf16 (bf16.bf16_master_weights_and_grads) come out in bf16; every reader expects fp32
    return {k: (v.float() if v.is_floating_point() else v).detach().clone().contiguous() for k, v in state.items()}


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)
