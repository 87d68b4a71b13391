"""`llmasr check`'s "deepspeed config" section: the config a run hands DeepSpeed, each key that matters with where its
value came from (the recipe key llmasr filled it from, as written in the JSON, or DeepSpeed's default), then every
other key the JSON sets. Where a value came from is recorded where resolve_ds fills it (llmasr.train.ds_config)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from llmasr.train.ds_config import PRESETS, ResolvedDs, preset_path
from llmasr.train.ds_owned import value_at

WIDTH = 140  # as the longest lines above it
MICRO = "train_micro_batch_size_per_gpu"
_KEEP = "\x00"  # a key and its value are not wrapped apart
# (key, DeepSpeed's value where the JSON leaves it out) of the keys shown first, in this order
_ZERO = (("zero_optimization.stage", 0), ("zero_optimization.offload_optimizer.device", "none"),
         ("zero_optimization.offload_param.device", "none"))  # fmt: skip
_RECIPE = ("gradient_clipping", "gradient_accumulation_steps", MICRO, "train_batch_size")


def _leaves(node, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else k)]
    return [(prefix, node)]


def _value(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _joined(items: list[tuple[str, object]], space: str = " ") -> str:
    """`key value, ...`, keys of one top-level section written once as `section.{key value, ...}`; `space` between
    a key and its value."""
    tops = {key.split(".")[0] for key, _ in items}
    if len(items) == 1 or len(tops) > 1 or "." not in items[0][0]:
        return ", ".join(f"{key}{space}{_value(value)}" for key, value in items)
    top = tops.pop()
    return f"{top}.{{" + ", ".join(f"{key.removeprefix(top + '.')}{space}{_value(value)}" for key, value in items) + "}"


def _source_name(resolved: ResolvedDs) -> tuple[str, str]:
    """(the header's name of the JSON, the short name "as written in" uses)."""
    given = resolved.source
    if given in PRESETS:
        return f"the preset {given} ({preset_path(given)})", f"{given}.json"
    return given, Path(given).name


def ds_lines(resolved: ResolvedDs, world_size: int) -> list[str]:
    """The section's lines: the keys that matter grouped by where their values came from, then the rest as written
    (a section switched off marked so: DeepSpeed does not read its other keys)."""
    ds, written, filled = resolved.config, resolved.written, resolved.filled
    header, name = _source_name(resolved)
    bf16 = "bfloat16" if "bfloat16" in ds else "bf16"

    def origin(key: str, default=None) -> tuple[object, str]:
        value = value_at(ds, key)
        if value is None:
            return default, "DeepSpeed's default"
        said = filled.get(key) or "as written"
        return value, said.replace("as written", f"as written in {name}", 1)

    shown = [key for key, _ in _ZERO] + [f"{bf16}.enabled", "fp16.enabled", *_RECIPE]
    groups: list[tuple[str, list]] = []  # consecutive keys of one origin share a line
    for key, default in (*_ZERO, (f"{bf16}.enabled", None), ("fp16.enabled", None), *((k, None) for k in _RECIPE)):
        value, said = origin(key, default)
        if key == MICRO:
            said += " (nominal: data.batching decides the real batches)"
        if groups and groups[-1][0] == said:
            groups[-1][1].append((key, value))
        else:
            groups.append((said, [(key, value)]))
    lines = [f"deepspeed config: {header}, resolved for world size {world_size}"]
    lines += [f"  {_joined(items)}: {said}" for said, items in groups]
    rest, off = [], []
    for top, section in written.items():
        leaves = [(k, v) for k, v in _leaves(ds.get(top, section), top) if k not in shown and value_at(written, k)
                  is not None]  # fmt: skip
        if not leaves:
            continue
        text = _joined(leaves, space=_KEEP)
        (off if isinstance(ds.get(top), dict) and ds[top].get("enabled") is False else rest).append(text)
    for label, texts in ((f"also as written in {name}", rest), ("switched off, so not read", off)):
        if texts:
            wrapped = textwrap.wrap(f"{label}: {'; '.join(texts)}", WIDTH, initial_indent="  ",
                                    subsequent_indent="    ", break_on_hyphens=False)  # fmt: skip
            lines += [line.replace(_KEEP, " ") for line in wrapped]
    return lines
