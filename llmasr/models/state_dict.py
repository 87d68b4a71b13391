"""Loading checkpoint tensors into a module with every mismatch reported by name and shape.

FunASR skips mismatched tensors silently (users then train an output layer that was never loaded). Here a
missing, unexpected or differently shaped key is an error unless the recipe lists it as re-initialised.
"""

from __future__ import annotations

import fnmatch
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmasr.errors import EVERY_RANK
from llmasr.models.ds_checkpoint import NotWholeWeights, is_model_states, module_weights
from llmasr.safe_load import allowed_globals, refusal, unsafe_globals
from llmasr.text_files import LFS_POINTER

log = logging.getLogger(__name__)


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the module built from the config."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the module, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the module
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint shape, module shape)
    reinitialised: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = []
        for key in self.missing:
            lines.append(f"  missing from checkpoint: {key}")
        for key in self.unexpected:
            lines.append(f"  unexpected in checkpoint: {key}")
        for key, ckpt_shape, mod_shape in self.mismatched:
            lines.append(f"  shape mismatch: {key}: checkpoint {list(ckpt_shape)} vs model {list(mod_shape)}")
        return "\n".join(lines)


def torch_load(path: str | Path, *, shapes_only: bool = False) -> dict:
    """torch.load restricted to tensors and plain containers (no pickled code). `shapes_only`: meta tensors (names,
    shapes and dtypes), for checking a file against a model built on the meta device; the file is memory-mapped for
    that, so no tensor data is read, and unmapped before this returns. (Real loads do not map the file: tensors
    backed by a mapping die with SIGBUS when the file is rewritten while they live.)"""
    try:
        try:
            obj = _weights_only(path, mmap=shapes_only)
        except RuntimeError as err:
            if not shapes_only or "mmap" not in str(err):
                raise
            obj = _weights_only(path, mmap=False)  # the legacy (pre-zip) format
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:  # a pickled object beyond tensors and DeepSpeed's data classes
        refuse_lfs_pointer(path)
        names = unsafe_globals(path)
        if names:
            raise CheckpointMismatchError(refusal(path, names)) from err
        raise CheckpointMismatchError(f"{path}: cannot be read as a weights-only torch checkpoint: {err}") from err
    except Exception as err:  # truncated files
        refuse_lfs_pointer(path)
        raise CheckpointMismatchError(f"{path}: cannot be read as a weights-only torch checkpoint: {err}") from err
    return as_meta(obj) if shapes_only else obj


def _weights_only(path: str | Path, *, mmap: bool):
    """torch.load weights-only; a DeepSpeed checkpoint file may pickle DeepSpeed's few data classes (loss scalers,
    the ZeRO stage), allowed then as llmasr.safe_load allows them (importing DeepSpeed only for such a file)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "deepspeed." not in str(err):
            raise
    with torch.serialization.safe_globals(allowed_globals()):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


def refuse_lfs_pointer(path: str | Path) -> None:
    """A Git LFS pointer in place of a weight file (a model repository cloned without LFS) is named as such: the
    readers' own errors (an invalid load key, a header too large) do not say it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError:
        return
    if head.startswith(LFS_POINTER):
        raise CheckpointMismatchError(
            f"{path}: a Git LFS pointer, not the weights (the repository was cloned without LFS): run "
            f"`git lfs pull` in {Path(path).parent}, or download the file itself"
        )


def as_meta(obj):
    """`obj` with every tensor (in nested dicts and lists) replaced by a meta tensor of its shape and dtype."""
    if isinstance(obj, torch.Tensor):
        return torch.empty(obj.shape, dtype=obj.dtype, device="meta")
    if isinstance(obj, dict):
        return {k: as_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_meta(v) for v in obj)
    return obj


def read_safetensors(path: str | Path, keys=None, *, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file (only `keys` when given); `shapes_only`: meta tensors from its header."""
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys() if keys is None else keys:
                if shapes_only:
                    part = handle.get_slice(key)
                    dtype = _SAFETENSORS_DTYPES.get(part.get_dtype())
                    out[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
                else:
                    out[key] = handle.get_tensor(key)
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors' own error type: a bad header, a truncated file
        refuse_lfs_pointer(path)
        raise CheckpointMismatchError(f"{path}: not a readable safetensors file: {err}") from err
    return out


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def unwrap_state_dict(obj: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """FunASR model.pt files hold the state dict directly or under state_dict / model_state_dict / model, unwrapped in
    that order as FunASR's load_pretrained_model does (a trainer's {"state_dict": {"model": ...}} too). A DeepSpeed
    checkpoint's model states (a FunASR DeepSpeed trainer's model.pt/mp_rank_00_model_states.pt) give their whole
    weights (llmasr.models.ds_checkpoint)."""
    if is_model_states(obj):
        try:
            obj = module_weights(obj, source)
        except NotWholeWeights as err:
            raise CheckpointMismatchError(str(err)) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f"{source}: holds a {type(obj).__name__}, not a state dict of tensors")
    other = {k: type(v).__name__ for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if other:
        shown = ", ".join(f"{k!r} ({t})" for k, t in list(other.items())[:8])
        raise CheckpointMismatchError(
            f"{source}: does not hold a state dict of tensors: {len(other)} of its {len(obj)} entries are not "
            f"tensors: {shown}; looked under state_dict, model_state_dict and model"
        )
    return obj


def select_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under `prefix` (e.g. "encoder.") with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def under_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """`select_prefix`, also for a state dict saved from a DDP-wrapped model (every key under "module.")."""
    found = select_prefix(state, prefix)
    if not found and prefix and not prefix.startswith("module."):
        found = select_prefix(state, "module." + prefix)
    return found


def reinit_patterns(reinit_keys, option: str = "model.encoder.reinit_keys") -> tuple[str, ...]:
    """`reinit_keys` as the tuple of name patterns a loader matches, checked before any file is read: one text would
    be read as its letters, patterns that match no tensor name, and nothing re-initialised, unsaid."""
    if isinstance(reinit_keys, str):
        from llmasr.config_io import ConfigError

        raise ConfigError(f"{option}: a list of name patterns, got the text {reinit_keys!r}; pass [{reinit_keys!r}]")
    return tuple(reinit_keys)


def load_into(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    reinit_keys: list[str] | tuple[str, ...] = (),
    frozen_by: str | None = None,
    reinit_option: str | None = None,
    sizes: dict[str, int] | None = None,
    built_from: str = "the config",
) -> LoadReport:
    """Copy `state` into `module` strictly; keys matching a `reinit_keys` glob may be missing or mismatched.

    Raises CheckpointMismatchError naming every offending key (and both shapes) otherwise, and `built_from`, the
    settings the module was built from (a FunASR directory's config.yaml encoder_conf). `frozen_by`: the recipe key
    that freezes the module; a key re-initialised under it would train never and stay random, so it is refused.
    `reinit_option`: the recipe key that lists `reinit_keys` (model.encoder.reinit_keys), named in the error where
    the module has one. `sizes`: the settings the module was built with that size its tensors ({"config.yaml
    encoder_conf.linear_units": 2048}), named where a mismatched dimension has their value.
    """
    own = module.state_dict()
    report = LoadReport()

    def allowed(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pat) for pat in reinit_keys)

    to_load = {}
    for key, tensor in state.items():
        if key not in own:
            if not allowed(key):
                report.unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(own[key].shape):
            if allowed(key):
                report.reinitialised.append(key)
            else:
                report.mismatched.append((key, tuple(tensor.shape), tuple(own[key].shape)))
            continue
        to_load[key] = tensor
    for key in own:
        if key not in state:
            if allowed(key):
                report.reinitialised.append(key)
            else:
                report.missing.append(key)
    if report.missing or report.unexpected or report.mismatched:
        fresh = f", or list keys that should start fresh under `{reinit_option}`" if reinit_option else ""
        raise CheckpointMismatchError(
            f"{source} does not match the {type(module).__name__} built from {built_from}:\n{report.describe()}\n"
            f"{''.join(line + chr(10) for line in _sized_by(report.mismatched, sizes or {}))}"
            f"Fix {built_from} to match the checkpoint{fresh}."
        )
    if report.reinitialised and frozen_by is not None:
        from llmasr.config_io import ConfigError

        raise ConfigError(
            f"{source}: {', '.join(sorted(report.reinitialised)[:8])} would be re-initialised "
            f"({reinit_option or 'reinit_keys'}) but "
            f"never trained: {frozen_by} is true. Set it to false to train them, or fix the config to match the "
            "checkpoint"
        )
    module.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    if report.reinitialised:
        log.warning("%s: re-initialised (per %s): %s", source, reinit_option or "reinit_keys",
                    ", ".join(sorted(report.reinitialised)), extra=EVERY_RANK)  # fmt: skip
    return report


def _sized_by(mismatched: list[tuple[str, tuple, tuple]], sizes: dict[str, int]) -> list[str]:
    """A line for each setting in `sizes` whose value is the model's size of a dimension the checkpoint sizes
    otherwise, with the checkpoint's size (settings of equal value named together: either may be the one)."""
    found: dict[tuple, None] = {}
    for _, ckpt, mine in mismatched:
        if len(ckpt) == len(mine):
            for theirs, ours in zip(ckpt, mine):
                names = tuple(n for n, v in sizes.items() if v == ours) if theirs != ours else ()
                if names:
                    found[(names, ours, theirs)] = None
    return [f"  {' or '.join(names)} is {ours}, the checkpoint's tensors {theirs}: set it to {theirs}"
            for names, ours, theirs in found]  # fmt: skip
