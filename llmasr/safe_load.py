"""Loading checkpoint files without running code from them: weights-only unpickling with DeepSpeed's few types.

A torch checkpoint is a pickle; `torch.load(weights_only=False)`, which DeepSpeed's loaders use, runs any callable
the file names. Here every load is `weights_only=True` (tensors, containers and plain values only) with exactly the
classes DeepSpeed itself pickles into its model and optimizer states allow-listed. They were found by reading
DeepSpeed's `state_dict()` methods and confirmed with `torch.serialization.get_unsafe_globals_in_checkpoint` on
real checkpoints of every preset (ZeRO 0/1/2/3, with and without CPU offload, fp32 and bf16):

    deepspeed.runtime.fp16.loss_scaler.LossScaler / DynamicLossScaler   ZeRO optimizer states (static / fp16 scaler)
    deepspeed.runtime.zero.config.ZeroStageEnum                         ZeRO optimizer states
    deepspeed.utils.tensor_fragment.fragment_address                    ZeRO-1/2 param_slice_mappings

A file that pickles anything else is refused with the file and the global named. Used by `--resume` (through
`weights_only_engine`, which swaps the DeepSpeed engine's checkpoint loader) and by export (`weights_only_torch_load`
around DeepSpeed's zero_to_fp32, which calls torch.load itself).
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import re
from pathlib import Path

import torch

DEEPSPEED_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read, trusted or used."""


def allowed_globals() -> list:
    """The DeepSpeed classes above that this DeepSpeed has (a version without one never pickles it)."""
    out = []
    for module, name in DEEPSPEED_GLOBALS:
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return out


def unsafe_globals(path: str | Path) -> list[str]:
    """Globals `path` pickles beyond torch's weights-only set and DeepSpeed's classes, read without unpickling.

    [] where they cannot be listed (a torch before 2.5; a file in torch's legacy, non-zip format, which the lister
    does not read): the weights-only load itself still refuses them."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if lister is None:
        return []
    try:
        found = lister(str(path))
    except (ValueError, RuntimeError, OSError):  # not a zip archive: torch's legacy format, or no checkpoint at all
        return []
    allowed = {f"{module}.{name}" for module, name in DEEPSPEED_GLOBALS}
    return [g for g in found if g not in allowed]


def refusal(path: str | Path, names: list[str]) -> str:
    return (
        f"{path}: refused: it pickles {', '.join(names)}, which is neither a tensor nor a type DeepSpeed stores in "
        "its checkpoints; loading it would run code from the file. Only load checkpoints you wrote yourself"
    )


def _short(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def _load(original, f, args, kwargs):
    kwargs["weights_only"] = True
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return original(f, *args, **kwargs)
    except pickle.UnpicklingError as err:
        names = unsafe_globals(f) if isinstance(f, str | Path) else []
        names = names or _GLOBAL_RE.findall(str(err)) or [f"an object ({_short(err)})"]
        raise CheckpointError(refusal(f, names)) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{f}: cannot be read ({_short(err)}); the file is truncated, corrupt or not a torch checkpoint file"
        ) from err


def load_weights_only(path: str | Path, *, map_location="cpu", mmap: bool = False):
    """torch.load(path) weights-only with DeepSpeed's classes allowed; errors name the file (CheckpointError)."""
    return _load(torch.load, str(path), (), {"map_location": map_location, "mmap": mmap})


@contextlib.contextmanager
def weights_only_torch_load():
    """Within this context every torch.load is weights-only (for library code that calls torch.load itself)."""
    original = torch.load

    def load(f, *args, **kwargs):
        return _load(original, f, args, kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


class WeightsOnlyCheckpointEngine:
    """A DeepSpeed checkpoint engine whose `load` is weights-only; everything else is the wrapped engine's."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def load(self, path: str, map_location=None):
        return _load(torch.load, path, (), {"map_location": map_location})


@contextlib.contextmanager
def weights_only_engine(ds_engine):
    """While loading a checkpoint into a DeepSpeed engine: its files are read weights-only. Every file the engine
    reads for a (non-universal) checkpoint goes through `engine.checkpoint_engine.load`."""
    inner = ds_engine.checkpoint_engine
    ds_engine.checkpoint_engine = WeightsOnlyCheckpointEngine(inner)
    try:
        yield
    finally:
        ds_engine.checkpoint_engine = inner
