"""The weight files of a Hugging Face LLM directory: present, readable, and (for `llmasr check`) holding a tensor of
the right shape for every weight of the model its config.json describes.

transformers fills a weight its files lack with fresh random values and only logs it, and it meets a Git LFS pointer
(a repository cloned without LFS) with a header error that does not say so. Both are found here before the load,
the names-and-shapes comparison without reading any tensor data (safetensors headers, memory-mapped .bin files).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from llmasr.config_io import ConfigError
from llmasr.models.state_dict import read_safetensors, refuse_lfs_pointer, torch_load

# (index, single file) pairs; transformers reads safetensors before bin, and of each the single file before the index
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
_SHOWN = 8  # keys listed per kind of mismatch; the rest are counted


class LLMWeightsError(ConfigError):
    """The LLM directory's weight files are missing, unreadable, or do not fit its config.json."""


def weight_files(path: Path) -> list[Path]:
    """The files holding the LLM's weights (an index's shards, or the single file); each is checked to be there
    and not a Git LFS pointer."""
    for index_name, single_name in WEIGHT_LAYOUTS:
        index, single = path / index_name, path / single_name
        if single.is_file():  # the file transformers reads when both are there
            files = [single]
            break
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
                raise LLMWeightsError(f"{index}: not a readable weight index (a `weight_map` object): {err}") from err
            files = [path / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise LLMWeightsError(f"{index} lists shards that are not in {path}: {', '.join(absent)}")
            break
    else:
        names = ", ".join(name for pair in WEIGHT_LAYOUTS for name in pair)
        raise LLMWeightsError(f"{path}: no weight files ({names}); the directory holds no model weights")
    for f in files:
        refuse_lfs_pointer(f)
    return files


def stored_shapes(files: list[Path]) -> dict:
    """Key -> meta tensor of every tensor the files hold (no data read)."""
    out = {}
    for f in files:
        out.update(
            read_safetensors(f, shapes_only=True) if f.suffix == ".safetensors" else torch_load(f, shapes_only=True)
        )
    return out


def _renamed_on_load(model: nn.Module) -> bool:
    """Whether transformers renames or fuses `model`'s checkpoint keys when it loads them: by its model type, or by
    the class of it or of a model inside it (GPT-NeoX's `embed_out` is read as `lm_head`)."""
    try:
        from transformers import conversion_mapping
    except ImportError:
        return False
    if hasattr(conversion_mapping, "get_model_conversion_mapping"):
        return bool(conversion_mapping.get_model_conversion_mapping(model, add_legacy=False))
    return bool(conversion_mapping.get_checkpoint_conversion_mapping(getattr(model.config, "model_type", "")))


def check_llm_weights(path: Path, model: nn.Module, *, remote_code: bool = False) -> None:
    """Every weight of `model` (built from `path`'s config.json, on the meta device) has a tensor of its shape in the
    directory's weight files, as transformers' load would need; tied weights need one of their names stored, and
    the model class's own `_keys_to_ignore_on_load_missing` may be absent. With `remote_code` (the directory's own
    modeling code, which may map names its own way) only the files' presence and headers are checked."""
    stored = stored_shapes(weight_files(path))
    if remote_code or _renamed_on_load(model):
        return  # the files are readable; their names are the model code's or transformers' to map
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and not any(k.startswith(prefix + ".") for k in stored):
        stored = {f"{prefix}.{k}": v for k, v in stored.items()}  # saved from the bare model, as transformers reads it
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    names_of = {name: names for names in aliases.values() for name in names}
    optional = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]
    missing, mismatched = [], []
    for key, tensor in model.state_dict().items():
        found = next((stored[n] for n in names_of.get(key, [key]) if n in stored), None)
        if found is None:
            if not any(p.search(key) for p in optional):
                missing.append(key)
        elif tuple(found.shape) != tuple(tensor.shape):
            mismatched.append((key, found.shape, tensor.shape))
    refuse_misfit(path, missing, mismatched)


def refuse_misfit(path: Path, missing, mismatched) -> None:
    """LLMWeightsError naming the weights of the model `path`'s config.json describes that its weight files lack
    (`missing`: names) or hold in another shape (`mismatched`: (name, stored shape, config.json's shape)), as
    check_llm_weights finds them from the headers and transformers' load reports them (`output_loading_info`, with
    ignore_mismatched_sizes: it starts both from random values, and only logs it)."""
    missing = sorted(missing or ())
    shapes = [f"{k}: stored {list(a)}, config.json gives {list(b)}" for k, a, b in sorted(mismatched or ())]
    if missing or shapes:
        raise LLMWeightsError(
            f"{path}: the weight files do not fit the model its config.json describes ({len(missing)} weights "
            f"missing, {len(shapes)} of another shape; transformers would start them from random values, different "
            f"at every load):\n{_listed(missing, shapes)}"
        )


def beyond_range(named, dtype: torch.dtype, *, held_inf: bool = True) -> list[tuple[str, float]]:
    """The tensors of `named` ((name, tensor) pairs) that `dtype` cannot hold, each with its largest |value|: those
    with a finite value a cast to `dtype` makes inf (float16's past 65504; a value below 65520 rounds to 65504), and
    those already holding inf or NaN (largest inf: a load in float16 made them so). `held_inf` False leaves a tensor
    its own inf, only its finite values counted: an export writes a buffer that holds -inf on purpose as it is.
    Empty and integer tensors are left out. Each tensor is read by its min and max: no |x| copy of an embedding."""
    out = []
    for name, tensor in named:
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        held = tensor.detach()
        low, high = torch.aminmax(held)
        if not (torch.isfinite(low) and torch.isfinite(high)):
            finite = held[torch.isfinite(held)] if not held_inf else None  # copied only where inf or NaN is held
            if finite is None or finite.numel() == 0:
                if held_inf:
                    out.append((name, float("inf")))
                continue
            low, high = torch.aminmax(finite)
        if bool(torch.isinf(torch.stack([low, high]).to(dtype)).any()):
            out.append((name, max(abs(float(low)), abs(float(high)))))
    return out


def refuse_non_finite(path: Path, model: nn.Module, dtype_name: str) -> None:
    """A model loaded in float16 whose weights are not all finite: what its files held past float16's largest value
    (65504) loaded as inf, and every output was NaN (an export in bf16 or float32 decoded with --dtype fp16). Named
    here, tensor by tensor. Parameters left empty (ZeRO-3's, created partitioned) are the engine's to check."""
    bad = [name for name, _ in beyond_range(model.named_parameters(), torch.float16)]
    if bad:
        raise LLMWeightsError(
            f"{path}: loaded in {dtype_name}, {len(bad)} weight tensor(s) hold values beyond its largest finite value "
            f"{torch.finfo(torch.float16).max:g}, now inf: {', '.join(bad[:_SHOWN])}"
            f"{' ...' if len(bad) > _SHOWN else ''}; load the LLM in bfloat16 or float32 (model.llm.dtype, --dtype)"
        )


def _listed(missing: list[str], mismatched: list[str]) -> str:
    """The first _SHOWN keys of each kind, one a line, and how many more there are."""
    lines = [f"  missing: {k}" for k in missing[:_SHOWN]] + [f"  shape: {m}" for m in mismatched[:_SHOWN]]
    more = max(len(missing) - _SHOWN, 0) + max(len(mismatched) - _SHOWN, 0)
    return "\n".join(lines) + (f"\n  ... and {more} more" if more else "")


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # peft's, in the order it looks


def check_adapter_weights(adapter: Path, model: nn.Module) -> None:
    """A saved peft adapter (model.llm.adapter) against the adapter `model` carries, built from its
    adapter_config.json on the meta device: every LoRA tensor, and every module it trains whole (modules_to_save),
    stored with its shape. peft leaves a tensor its file
    lacks at the fresh value and only warns; an LLM of another size than the adapter's is named here with both
    shapes. peft saves a tensor without its adapter's name (`lora_A.default.weight` as `lora_A.weight`)."""
    found = next((adapter / name for name in ADAPTER_FILES if (adapter / name).is_file()), None)
    if found is None:
        raise LLMWeightsError(f"{adapter}: no {' or '.join(ADAPTER_FILES)}; the adapter holds no weights")
    refuse_lfs_pointer(found)
    stored = stored_shapes([found])
    missing, mismatched = [], []
    for key, tensor in model.state_dict().items():
        if ".modules_to_save.default." in key:  # a whole module the adapter trained: saved under its own name
            saved = key.replace(".modules_to_save.default", "")
        elif ".lora_" in key:
            saved = re.sub(r"\.default(?=\.|$)", "", key)
        else:
            continue
        have = stored.get(saved, stored.get(saved.removesuffix(".weight")))  # DoRA's magnitude: no `.weight`
        if have is None:
            missing.append(saved)
        elif tuple(have.shape) != tuple(tensor.shape):
            mismatched.append(f"{saved}: stored {list(have.shape)}, the LLM gives {list(tensor.shape)}")
    if missing or mismatched:
        raise LLMWeightsError(
            f"{found}: the adapter does not fit the LLM ({len(missing)} of its tensors missing, {len(mismatched)} of "
            f"another shape; peft would leave the missing ones at fresh values):\n{_listed(missing, mismatched)}"
        )
