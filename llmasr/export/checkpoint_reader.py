"""Reading the trained tensors of llmasr/DeepSpeed checkpoints offline: CPU only, no engine, no torch.distributed.

A run directory holds::

    RUN_DIR/recipe.yaml                 the resolved recipe (frozen base weights are rebuilt from its paths)
    RUN_DIR/checkpoints/<tag>/          engine.save_checkpoint(..., exclude_frozen_parameters=True)
    RUN_DIR/checkpoints/<tag>/llmasr_meta.json   update, epoch, world_size, zero_stage, metrics,
                                                 base_fingerprint, trainable (SpeechLLM parameter names)
    RUN_DIR/checkpoints/latest          the newest tag
    RUN_DIR/checkpoints/best.json       [{"tag", "metric", "value"}], best first

What a tag directory holds depends on the ZeRO stage:

- ZeRO-0: `mp_rank_00_model_states.pt` whose "module" is the state dict of the trained parameters (and buffers),
  in the dtype the engine trained in.
- ZeRO-1/2: the same model file (a low-precision copy under bf16/fp16) plus one `*_optim_states.pt` per rank
  holding a flat fp32 partition of the master weights.
- ZeRO-3: one `zero_pp_rank_R_mp_rank_00_model_states.pt` per rank (parameters are empty placeholders) plus one
  `*_optim_states.pt` per rank.

For stages 1-3 the fp32 master weights are consolidated with `deepspeed.utils.zero_to_fp32`, which only reads
files. Before anything is read, the files are checked against the sizes and sha256 sums the save recorded in the
meta (llmasr.checkpoint_files); every torch.load, zero_to_fp32's included, is weights-only with DeepSpeed's own few
classes allowed (llmasr.safe_load), so a checkpoint that pickles anything else is refused instead of executed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from llmasr.checkpoint_files import verify_tag
from llmasr.safe_load import CheckpointError, load_weights_only, weights_only_torch_load

log = logging.getLogger(__name__)

META_FILE = "llmasr_meta.json"
LATEST_FILE = "latest"
BEST_FILE = "best.json"


@dataclass(frozen=True)
class CheckpointRef:
    run_dir: Path  # holds recipe.yaml
    root: Path  # RUN_DIR/checkpoints
    tag: str

    @property
    def path(self) -> Path:
        return self.root / self.tag


# ------------------------------------------------------------------------------------------------- locating
def _is_tag_dir(path: Path) -> bool:
    return path.is_dir() and ((path / META_FILE).is_file() or any(path.glob("*_model_states.pt")))


def _run_dir_of(root: Path) -> Path:
    return root.parent if root.name == "checkpoints" else root


def read_latest(root: Path) -> str:
    latest = root / LATEST_FILE
    if not latest.is_file():
        tags = list_tags(root)
        hint = (
            f"; tags present: {', '.join(tags[-5:])} (pass one explicitly)" if tags else "; no checkpoint tags either"
        )
        raise CheckpointError(f"{latest}: no 'latest' file, so there is no newest checkpoint to pick{hint}")
    tag = latest.read_text().strip()
    if not tag:
        raise CheckpointError(f"{latest}: empty")
    if not (root / tag).is_dir():
        raise CheckpointError(f"{latest} names tag {tag!r} but {root / tag} does not exist")
    return tag


def list_tags(root: Path) -> list[str]:
    """Tag directories under `root`, oldest first (by the update recorded in their meta, else the tag's number)."""
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if _is_tag_dir(p)]
    return sorted(tags, key=lambda t: (tag_update(root / t), t))


def tag_update(tag_dir: Path) -> int:
    meta = tag_dir / META_FILE
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text()).get("update", -1))
        except (ValueError, TypeError, json.JSONDecodeError):
            pass
    nums = re.findall(r"\d+", tag_dir.name)
    return int(nums[-1]) if nums else -1


def resolve_checkpoint(spec: str | Path, tag: str | None = None) -> CheckpointRef:
    """RUN_DIR, RUN_DIR/checkpoints, RUN_DIR/checkpoints/TAG or RUN_DIR/TAG (+ optional explicit tag).

    Without a tag, RUN_DIR/checkpoints/latest decides.
    """
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"checkpoint path not found: {path}")
    if tag is None and _is_tag_dir(path):
        root = path.parent
        return CheckpointRef(_run_dir_of(root), root, path.name)
    if (path / "checkpoints").is_dir():
        root = path / "checkpoints"
    elif path.name == "checkpoints" and path.is_dir():
        root = path
    else:
        raise CheckpointError(
            f"{path}: not a run directory (no checkpoints/ folder) and not a checkpoint tag directory "
            f"(no {META_FILE} or *_model_states.pt)"
        )
    if tag is None:
        tag = read_latest(root)
    if not (root / tag).is_dir():
        tags = list_tags(root)
        raise CheckpointError(
            f"checkpoint tag {tag!r} not found under {root}; available: {', '.join(tags) if tags else 'none'}"
        )
    return CheckpointRef(_run_dir_of(root), root, tag)


def read_meta(tag_dir: Path) -> dict:
    path = Path(tag_dir) / META_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing. An llmasr checkpoint records its update, ZeRO stage, world size, base-model "
            "fingerprint and trainable parameter names there; this directory was not written by `llmasr train` "
            "or its save did not finish"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); the checkpoint save may have been interrupted") from err
    for key in ("trainable", "base_fingerprint"):
        if key not in meta:
            raise CheckpointError(f"{path}: no {key!r} entry")
    return meta


def read_best(root: Path) -> list[dict]:
    path = Path(root) / BEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; best-N averaging needs the validation ranking the trainer writes")
    try:
        best = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(best, list) or not all(isinstance(b, dict) and "tag" in b for b in best):
        raise CheckpointError(f"{path}: expected a list of {{'tag', 'metric', 'value'}} objects")
    return best


def select_tags(ref: CheckpointRef, n: int, by: str = "last") -> list[str]:
    """The `n` checkpoints to average: the last n up to and including `ref.tag`, or the best n of best.json."""
    if n < 1:
        raise CheckpointError(f"--average must be >= 1, got {n}")
    if by == "last":
        tags = list_tags(ref.root)
        if ref.tag not in tags:
            tags.append(ref.tag)
        upto = [t for t in tags if tag_update(ref.root / t) <= tag_update(ref.path)]
        chosen = upto[-n:]
    elif by == "best":
        best = [b["tag"] for b in read_best(ref.root)]
        chosen = best[:n]
        for t in chosen:
            if not (ref.root / t).is_dir():
                raise CheckpointError(f"{ref.root / BEST_FILE} lists tag {t!r}, but {ref.root / t} does not exist")
    else:
        raise CheckpointError(f"--average-by must be 'last' or 'best', got {by!r}")
    if len(chosen) < n:
        raise CheckpointError(
            f"asked to average {n} checkpoints ({by}) but only {len(chosen)} are available under {ref.root}: "
            f"{', '.join(chosen) or 'none'}"
        )
    return chosen


# ------------------------------------------------------------------------------------------------- loading
def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _check_shards(tag_dir: Path, meta: dict | None) -> tuple[list[Path], list[Path]]:
    model_files = sorted(tag_dir.glob("*_model_states.pt"))
    optim_files = sorted(tag_dir.glob("*_optim_states.pt"))
    if not model_files:
        raise CheckpointError(f"{tag_dir}: no *_model_states.pt file; the checkpoint is incomplete")
    if meta is not None:
        stage = int(meta.get("zero_stage", -1))
        world = int(meta.get("world_size", 0) or 0)
        if world:
            if stage in (1, 2) and len(optim_files) != world:
                raise CheckpointError(
                    f"{tag_dir}: ZeRO-{stage} checkpoint of world size {world} but {len(optim_files)} optimizer "
                    f"shard(s) (*_optim_states.pt) found; a shard is missing (partial save?)"
                )
            if stage == 3 and (len(optim_files) != world or len(model_files) != world):
                raise CheckpointError(
                    f"{tag_dir}: ZeRO-3 checkpoint of world size {world} but {len(model_files)} model and "
                    f"{len(optim_files)} optimizer shard(s) found; a shard is missing (partial save?)"
                )
    return model_files, optim_files


def read_trained_state(tag_dir: str | Path, meta: dict | None = None) -> dict[str, torch.Tensor]:
    """The trained tensors of one checkpoint tag (fp32 masters when the checkpoint has them), CPU, prefix-free."""
    tag_dir = Path(tag_dir)
    if not tag_dir.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {tag_dir}")
    model_files, optim_files = _check_shards(tag_dir, meta)
    verify_tag(tag_dir, meta or {})
    first = load_weights_only(model_files[0])
    if not isinstance(first, dict) or "module" not in first:
        raise CheckpointError(f"{model_files[0]}: no 'module' entry; not a DeepSpeed model-states file")
    if meta is not None and meta.get("zero_stage") is not None:
        zero_optim = int(meta["zero_stage"]) >= 1
    else:  # no meta: look inside the first optimizer file
        zero_optim = False
        if optim_files:
            head = load_weights_only(optim_files[0], mmap=True)
            osd = head.get("optimizer_state_dict") if isinstance(head, dict) else None
            zero_optim = isinstance(osd, dict) and "zero_stage" in osd
    if zero_optim and not optim_files:
        raise CheckpointError(f"{tag_dir}: a ZeRO checkpoint without *_optim_states.pt files; the save is incomplete")
    if zero_optim:
        state = _consolidate_zero(tag_dir)
    else:
        module = first["module"]
        if not isinstance(module, dict):
            raise CheckpointError(f"{model_files[0]}: 'module' is not a state dict")
        state = {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    return strip_module_prefix(state)


def _consolidate_zero(tag_dir: Path) -> dict[str, torch.Tensor]:
    import io
    from contextlib import redirect_stdout

    from deepspeed.utils import zero_to_fp32

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
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def average_states(states: list[dict[str, torch.Tensor]], names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Element-wise mean of the floating-point tensors of several checkpoints (in float64, returned as float32).

    Non-floating tensors (integer buffers) are taken from the last checkpoint. All key sets and shapes must agree.
    """
    if not states:
        raise CheckpointError("nothing to average")
    if len(states) == 1:
        return dict(states[0])
    names = names or [f"checkpoint {i}" for i in range(len(states))]
    keys = set(states[0])
    for name, st in zip(names[1:], states[1:]):
        if set(st) != keys:
            diff = sorted(set(st) ^ keys)[:10]
            raise CheckpointError(f"cannot average: {name} holds different tensors than {names[0]}: {diff}")
    out = {}
    for k in states[0]:
        shapes = {tuple(st[k].shape) for st in states}
        if len(shapes) > 1:
            raise CheckpointError(f"cannot average: {k} has shapes {sorted(shapes)} across checkpoints")
        if states[0][k].is_floating_point():
            acc = torch.zeros(states[0][k].shape, dtype=torch.float64)
            for st in states:
                acc += st[k].double()
            out[k] = (acc / len(states)).float()
        else:
            out[k] = states[-1][k]
    return out
