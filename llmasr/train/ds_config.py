"""DeepSpeed JSON configs: presets, loading, and resolution of "auto" against the recipe (the ZeRO memory estimate:
llmasr.train.zero_memory).

The presets (llmasr/ds_configs/zero0.json ... zero3_offload.json, package data, so `--deepspeed zero2` resolves from
any install; a checkout's top-level ds_configs/ links to them) hold only what is DeepSpeed's own business (ZeRO
stage, offload, buckets) and "auto" for what the recipe decides:

    train_batch_size                 micro * grad_accum * world size
    train_micro_batch_size_per_gpu   train.micro_batch_per_gpu (nominal: batches are dynamic), else 1
    gradient_accumulation_steps      train.grad_accum
    gradient_clipping                train.grad_clip
    bf16.enabled / fp16.enabled      train.precision

`resolve_ds_config` replaces every "auto" (`resolve_ds` also records where each value it fills comes from, for
`llmasr check`'s report: llmasr.train.check_ds), and refuses a concrete value that contradicts the recipe or is of
the wrong JSON type (one error lists every such key) rather than letting one silently win, and a key DeepSpeed does
not know (ds_keys.py). A key missing from the JSON is filled from the recipe like an "auto". The JSON holds no
"scheduler" and no "optimizer" block: llmasr builds one AdamW param group per branch and one schedule per group
(param_groups.py, schedulers.py); DeepSpeed's WarmupLR / WarmupDecayLR write one lr into every group, collapsing the
per-branch lrs, and its "optimizer" block would group parameters its own way. The optimizer's settings live in the
recipe's `optim`.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, NamedTuple

from llmasr.config_io import ConfigError
from llmasr.errors import nearest_hint
from llmasr.text_files import unique_keys
from llmasr.train.config import TrainConfig
from llmasr.train.ds_keys import check_ds_keys
from llmasr.train.ds_owned import BLOCKS, check_owned
from llmasr.train.ds_owned import value_at as _get
from llmasr.train.ds_precision import check_accumulation_dtype, check_master_weights

PRESETS: tuple[str, ...] = ("zero0", "zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")
PRESET_DIR = Path(__file__).resolve().parents[1] / "ds_configs"

AUTO = "auto"
# the keys whose "auto" llmasr fills from the recipe (one left "auto" is refused by the check that fills it)
FILLED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
          "bf16.enabled", "bfloat16.enabled", "fp16.enabled")  # fmt: skip
# ZeRO keys HF's Trainer fills from the model's hidden size h where its configs say "auto"
_HF_FROM_HIDDEN = {"reduce_bucket_size": "h*h", "stage3_prefetch_bucket_size": "0.9*h*h",
                   "stage3_param_persistence_threshold": "10*h"}  # fmt: skip


def preset_path(name_or_path: str | Path) -> Path:
    """A preset name ("zero2") -> its JSON file; anything else is taken as a path."""
    if str(name_or_path) in PRESETS:
        path = PRESET_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError(
                f"DeepSpeed preset {name_or_path!r}: {path} not found; this llmasr install is incomplete (reinstall it)"
            )
        return path
    path = Path(name_or_path)
    if not path.is_file():
        given = repr(str(name_or_path))
        stem = path.name[: -len(".json")] if path.name.lower().endswith(".json") else path.name
        if stem in PRESETS:  # a checkout's ds_configs/zero2.json, run where there is none (a pip install)
            raise ConfigError(
                f"DeepSpeed config {given} is neither a file nor a preset: no such file here, and the preset of that "
                f"name (the same file, shipped in the package) is --deepspeed {stem}"
            )
        hint = nearest_hint(str(name_or_path), PRESETS) if not path.suffix and len(path.parts) == 1 else ""
        raise ConfigError(f"DeepSpeed config {given} is neither a file nor a preset ({', '.join(PRESETS)}){hint}")
    return path


def load_ds_config(path: str | Path) -> dict:
    """Read a DeepSpeed JSON file (or a preset name); bad JSON is reported with file, line and column. Comments
    (// # /* */) and trailing commas are read as DeepSpeed's own reader (hjson) reads them; the rest of Hjson
    (unquoted keys and text, which would read YAML as odd text values) is not."""
    path = preset_path(path)
    try:
        hook = functools.partial(unique_keys, functools.partial(_repeated, path))
        data = json.loads(without_comments(path.read_text(encoding="utf-8-sig")), object_pairs_hook=hook)
    except json.JSONDecodeError as err:
        yaml = " (a YAML file? --deepspeed takes DeepSpeed's JSON; the recipe is --config)"
        raise ConfigError(
            f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}"
            + (yaml if path.suffix.lower() in (".yaml", ".yml") else "")
        ) from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a DeepSpeed JSON file (not UTF-8 text: {err.reason} at byte {err.start})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object, got {type(data).__name__}")
    return data


def without_comments(text: str) -> str:
    """`text` with its comments (// and # to the line's end, /* */) and trailing commas (before } or ]) blanked out
    outside strings, every other character where it was (JSON errors keep their line and column)."""
    out, i, n, comma = list(text), 0, len(text), None
    while i < n:
        c = text[i]
        if c == '"':  # past the string; the closing quote is the last character looked at
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "#" or text.startswith(("//", "/*"), i):
            block = text.startswith("/*", i)
            end = text.find("*/", i + 2) + 2 if block else text.find("\n", i)
            end = n if end < i + 2 * block else end  # unclosed: to the end of the text
            out[i:end] = [ch if ch == "\n" else " " for ch in text[i:end]]
            i = end
            continue
        if c == ",":
            comma = i
        elif c in "}]" and comma is not None:
            out[comma] = " "
        if not c.isspace() and c != ",":
            comma = None
        i += 1
    return "".join(out)


def _repeated(path: Path, key: str) -> ConfigError:
    """A key repeated in one object (a second "zero_optimization" would silently replace the first)."""
    return ConfigError(f"{path}: key {key!r} appears twice in one object; keep one")


def _find_autos(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _find_autos(v, f"{path}.{k}" if path else k)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _find_autos(v, f"{path}[{i}]")]
    return [path] if node == AUTO else []


def _set(ds: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = ds
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


class ResolvedDs(NamedTuple):
    """A resolved DeepSpeed config and what it was made from."""

    config: dict  # what deepspeed.initialize gets
    written: dict  # the JSON as read, before resolution
    filled: dict[str, str]  # dotted key -> where llmasr took its value from (the keys llmasr filled or checked)
    source: str  # the file or preset, as given


def resolve_ds_config(
    ds: dict | str | Path, train_cfg: TrainConfig, *, world_size: int, source: str | None = None
) -> dict:
    """The DeepSpeed config to pass to deepspeed.initialize: every "auto" replaced from `train_cfg`, checked against
    it. `ds` is a dict, a path or a preset name; `source` names it in error messages. The input is not modified."""
    return resolve_ds(ds, train_cfg, world_size=world_size, source=source).config


def resolve_ds(
    ds: dict | str | Path, train_cfg: TrainConfig, *, world_size: int, source: str | None = None
) -> ResolvedDs:
    """resolve_ds_config's config, with the JSON as written and where each value llmasr filled came from."""
    if isinstance(ds, dict):
        source = source or "DeepSpeed config"
        ds = copy.deepcopy(ds)
    else:
        source = source or str(ds)
        ds = load_ds_config(ds)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    written, filled = copy.deepcopy(ds), {}
    bf16_key = _check_blocks(ds, source)
    # a copied config's refusals all in one error (it had taken a run each: the owned blocks, then the values that
    # disagree with the recipe, then train_batch_size); each check below sees the recipe's value where the JSON's
    # disagreed, as it will once mended
    checks = (
        lambda: check_owned(ds, source),
        lambda: _check_layout(ds, source),
        lambda: check_accumulation_dtype(ds, bf16_key, train_cfg.precision, source),
        lambda: check_master_weights(ds, bf16_key, train_cfg.precision, source),
        lambda: _fill_from_recipe(ds, train_cfg, bf16_key, source, filled),
        lambda: _check_grad_norm(ds, source),
        lambda: _fill_batch_sizes(ds, world_size, source, filled),
        lambda: _check_autos(ds, source),
    )
    refusals = []
    for check in checks:
        try:
            check()
        except ConfigError as err:
            refusals.append(str(err).removeprefix(f"{source}: "))
    if len(refusals) == 1:
        raise ConfigError(f"{source}: {refusals[0]}")
    if refusals:
        groups = "\n".join("- " + text.replace("\n", "\n  ") for text in refusals)
        raise ConfigError(f"{source}: {len(refusals)} groups of refusals; mend them all before the next run:\n{groups}")
    # misspelt keys: DeepSpeed ignores them, or refuses them only after the model loads (its reader needs a config
    # that passed the checks above)
    check_ds_keys(ds, source, world_size)
    return ResolvedDs(ds, written, filled, source)


def _check_autos(ds: dict, source: str) -> None:
    """Refuse an "auto" llmasr does not fill (HF's Trainer fills some of ZeRO's from the model's hidden size)."""
    left = [key for key in _find_autos(ds) if key.split(".")[0] not in BLOCKS and key not in FILLED]
    if left:
        hf = [f"{key} with {_HF_FROM_HIDDEN[key.rpartition('.')[2]]}" for key in left
              if key.rpartition(".")[2] in _HF_FROM_HIDDEN]  # fmt: skip
        named = [key for key in FILLED if key != "bfloat16.enabled"]  # bf16's alias: named as bf16
        raise ConfigError(
            f'{source}: "auto" left at {left}; llmasr fills only {", ".join(named[:-1])} and {named[-1]}: remove each '
            "of those keys for DeepSpeed's default, or set a number there"
            + (f" (HF's Trainer fills {', '.join(hf)}, h the LLM's hidden_size)" if hf else "")
        )


def _check_blocks(ds: dict, source: str) -> str:
    """Refuse contradictory precision and a precision block that is not an object; return the bf16 key used (the
    blocks llmasr owns: ds_owned)."""
    if "bf16" in ds and "bfloat16" in ds:
        raise ConfigError(f'{source}: both "bf16" and its alias "bfloat16" are set; keep "bf16" only')
    bf16_key = "bfloat16" if "bfloat16" in ds else "bf16"
    for key in (bf16_key, "fp16"):  # (the checks after this one read and fill their "enabled")
        if key in ds and not isinstance(ds[key], dict):
            raise ConfigError(f'{source}: "{key}" is {json.dumps(ds[key])}; write it as an object, e.g. '
                              f'"{key}": {{"enabled": "auto"}}')  # fmt: skip
    if _get(ds, f"{bf16_key}.enabled") is True and _get(ds, "fp16.enabled") is True:
        raise ConfigError(f"{source}: fp16.enabled and {bf16_key}.enabled are both true; pick one (train.precision)")
    return bf16_key


def _check_layout(ds: dict, source: str) -> None:
    """Refuse what would pass here and fail or mislead later: model parallelism (llmasr trains data-parallel:
    DeepSpeed would count fewer data ranks than the batch sizes assume), offload at a ZeRO stage that does not take
    it, and partial optimizer offload."""
    for key in ("sequence_parallel_size", "data_parallel_size", "tensor_parallel.autotp_size", "pipeline.stages"):
        value = _get(ds, key)
        if value not in (None, 0, 1):
            raise ConfigError(f"{source}: {key} is {value}; llmasr trains data-parallel only (every rank a whole "
                              "model and its own batches): remove it")  # fmt: skip
    if _get(ds, "torch_autocast.enabled") not in (None, False):
        raise ConfigError(
            f"{source}: torch_autocast is enabled; it would run the forward in its own dtype whatever "
            "train.precision says: remove the block and set train.precision (fp32, bf16 or fp16)"
        )
    stage = _get(ds, "zero_optimization.stage") or 0
    if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage <= 3:
        raise ConfigError(f"{source}: zero_optimization.stage is {json.dumps(stage)}; write 0, 1, 2 or 3 (a number)")
    for block, lowest in (("offload_param", 3), ("offload_optimizer", 1)):
        device = _get(ds, f"zero_optimization.{block}.device")
        if device not in (None, "none") and stage < lowest:
            raise ConfigError(
                f"{source}: zero_optimization.{block}.device is {device!r} but zero_optimization.stage is {stage}; "
                f"{block} needs stage {lowest} or more (the presets zero2_offload and zero3_offload offload)"
            )
        if device == "nvme" and not _get(ds, f"zero_optimization.{block}.nvme_path"):
            raise ConfigError(
                f"{source}: zero_optimization.{block}.device is 'nvme' but {block}.nvme_path is not set: name the "
                "folder on the NVMe drive to swap to (DeepSpeed fails on it only once the model is built)"
            )
    ratio = _get(ds, "zero_optimization.offload_optimizer.ratio")
    if ratio not in (None, 1):
        # ZeRO-3 steps the part kept on the GPU with a torch AdamW of its own whose first param group is a copy
        raise ConfigError(
            f"{source}: zero_optimization.offload_optimizer.ratio is {json.dumps(ratio)}; llmasr offloads all of the "
            "optimizer or none of it: for the part a ratio keeps on the GPU DeepSpeed builds a second optimizer, "
            "which llmasr's per-branch lr schedules never reach (its lr would stay at its first value): remove the "
            "key (or write 1)"
        )


def _fill_from_recipe(ds: dict, train_cfg: TrainConfig, bf16_key: str, source: str, filled: dict) -> None:
    """Fill each missing or "auto" key the recipe decides, recording its recipe field in `filled`; one error lists
    every concrete value that disagrees."""
    # (JSON key, recipe value or None where the recipe leaves it to the JSON, recipe field, recipe value shown)
    precision, disagreements = train_cfg.precision, []
    wanted = [
        ("train_micro_batch_size_per_gpu", train_cfg.micro_batch_per_gpu, "train.micro_batch_per_gpu", None),
        ("gradient_accumulation_steps", train_cfg.grad_accum, "train.grad_accum", None),
        ("gradient_clipping", train_cfg.grad_clip, "train.grad_clip", None),
        (f"{bf16_key}.enabled", precision == "bf16", "train.precision", precision),
        ("fp16.enabled", precision == "fp16", "train.precision", precision),
    ]
    for key, want, field, shown in wanted:
        have = _get(ds, key)
        named = field if shown is None else f"{field} {shown}"
        if have is None or have == AUTO:
            if want is not None:
                _set(ds, key, want)
                filled[key] = f"from {named}"
        elif isinstance(have, bool) != key.endswith(".enabled") or isinstance(have, str):  # "true", or 1 as true
            kind = "true or false (a JSON boolean)" if key.endswith(".enabled") else "a number"
            disagreements.append(f'  {key}: {json.dumps(have)} in the JSON is not {kind}; write one, or "auto"')
            if want is not None:
                _set(ds, key, want)  # (the later checks see it mended)
        elif want is not None and have != want:
            shown = want if shown is None else shown
            disagreements.append(f"  {key}: {have!r} in the JSON, but {field} = {shown!r} in the recipe")
            _set(ds, key, want)
        elif want is not None:
            filled[key] = f"as written, as {named} says"
    if disagreements:
        raise ConfigError(
            f'{source}: concrete value(s) disagree with the recipe (set them to "auto", or make them agree):\n'
            + "\n".join(disagreements)
        )


def _check_grad_norm(ds: dict, source: str) -> None:
    """zero_optimization.compute_grad_norm false where DeepSpeed's ZeRO optimizer needs the norm: to clip by it, or
    with the optimizer offloaded (it refuses both once the model is built)."""
    if _get(ds, "zero_optimization.compute_grad_norm") not in (False, "false"):
        return
    clip, device = ds.get("gradient_clipping"), _get(ds, "zero_optimization.offload_optimizer.device")
    if clip:
        why = f"gradient_clipping {clip} (train.grad_clip): clipping needs the norm; remove the key or clip at 0"
    elif device not in (None, "none"):
        why = f"offload_optimizer.device {device!r}: DeepSpeed offloads only with the norm computed; remove the key"
    else:
        return
    raise ConfigError(f"{source}: zero_optimization.compute_grad_norm is false with {why}")


def _fill_batch_sizes(ds: dict, world_size: int, source: str, filled: dict) -> None:
    """Micro batch (nominal 1 when unset), accumulation (required) and train_batch_size = their product * ranks."""
    if _get(ds, "train_micro_batch_size_per_gpu") in (None, AUTO):
        ds["train_micro_batch_size_per_gpu"] = 1  # nominal: batches are dynamic
        filled["train_micro_batch_size_per_gpu"] = "llmasr's 1, as train.micro_batch_per_gpu is not set"
    if _get(ds, "gradient_accumulation_steps") in (None, AUTO):
        raise ConfigError(
            f"{source}: gradient_accumulation_steps is not set: give train.grad_accum in the recipe "
            "(or a number in the JSON); llmasr never assumes 1"
        )
    micro, accum = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    for key, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", accum)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{source}: {key} must be an integer >= 1, got {value!r}")
    expected = micro * accum * world_size
    tbs = ds.get("train_batch_size")
    product = f"micro x accumulation x world size ({micro} x {accum} x {world_size})"
    if tbs is None or tbs == AUTO:
        ds["train_batch_size"] = expected
        filled["train_batch_size"] = f"from {product}"
    elif tbs == expected:
        filled["train_batch_size"] = f"as written, = {product}"
    else:
        raise ConfigError(
            f"{source}: train_batch_size is {tbs!r}, but train_micro_batch_size_per_gpu * "
            f"gradient_accumulation_steps * world size = {micro} * {accum} * {world_size} = {expected}; "
            'set it to "auto"'
        )


def zero_stage(ds: dict) -> int:
    return int(_get(ds, "zero_optimization.stage") or 0)
