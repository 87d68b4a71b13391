"""Dotted command-line overrides (`train.epochs=3`, `data.train[0].weight=2`) applied to a recipe's YAML tree.

Each value is read as YAML, as the recipe's own values are (llmasr.config_io.RecipeLoader), with the mistakes a shell
or YAML makes of an override refused naming it: a `key = value` the shell split at its spaces, an `&anchor` YAML
drops, a ` #` YAML reads as a comment, a list index past the end or on no list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from llmasr.config_io import ConfigError, RecipeLoader, unshared

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # a recipe override, unless a file of that name exists


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """A data command's positional arguments as (manifests, recipe overrides): `key.path=value` is an override
    unless a file of that name exists (`lang=en/x.jsonl` may be a manifest)."""
    overrides = [a for a in items if OVERRIDE.match(a) and not Path(a).exists()]
    return [a for a in items if a not in overrides], overrides


def _split_hint(overrides: list[str], i: int) -> str:
    """Where override `i` (no '=' in it) is a piece of one the shell split at its spaces: `train.epochs = 3`, or a
    value with a space left unquoted (`model.prompt.task=Transcribe this`), how to write it."""
    item, before, after = overrides[i], overrides[i - 1] if i else "", overrides[i + 1 : i + 3]
    if after and after[0].startswith("="):  # key = value, key =value
        pieces = [item, *after[: 2 if after[0] == "=" else 1]]
    elif before.endswith("=") and before.count("=") == 1:  # key= value
        pieces = [before, item]
    elif "=" in before:  # key=two words
        key, value = before.split("=", 1)
        return (f"; the shell split the value of '{before} {item}' at its spaces: quote it, "
                f"{key}='{value} {item}'")  # fmt: skip
    else:
        return ""
    return f"; the shell split {' '.join(pieces)!r} at its spaces: write {''.join(pieces)}"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (value parsed as YAML) to a nested dict, returning a new dict. A list item is
    named as errors name it, `data.train[0].weight`, or as OmegaConf does, `data.train.0.weight`."""
    out = unshared(data)
    for i, item in enumerate(overrides):
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value{_split_hint(overrides, i)}")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.load(raw, Loader=RecipeLoader) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
        if any(isinstance(token, yaml.AnchorToken) for token in yaml.scan(raw)):  # `&x y` reads as y
            raise ConfigError(f"override {item!r}: YAML reads &NAME as an anchor and drops it; quote the value")
        value = _without_comment(item, raw, value)
        parts = [int(p[1:-1]) if p[0] == "[" else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", key)]
        if _dotted(parts) != key:
            raise ConfigError(f"override {item!r}: {key!r} is no key (a.b.c, or a.b[0].c for a list item)")
        node = out
        for i, part in enumerate(parts):
            here = _dotted(parts[:i])
            if isinstance(node, list):
                if not str(part).isdigit():
                    raise ConfigError(f"override {item!r}: {here} is a list: name an item, {here}[0].{part}")
                if (part := int(part)) >= len(node):
                    raise ConfigError(f"override {item!r}: {here}[{part}] is past the end of a list of {len(node)}")
                parts[i] = part
            elif isinstance(part, int):
                raise ConfigError(f"override {item!r}: {here} is no list here: set the whole list ({here}=[...])")
            if i == len(parts) - 1:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}  # a section the recipe leaves out or sets to null
                node = node[part]
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {item!r}: {_dotted(parts[: i + 1])} is a value, not a section")
    return out


def _dotted(parts: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


_HASH = "\ue000"  # a private-use character standing in for '#' while YAML reads the value


def _without_comment(item: str, raw: str, value: Any) -> Any:
    """An override's value as written: YAML reads ' #' as a comment and drops the rest (`output_dir=exp/run #2`
    would be exp/run, another run's folder). A value that reads as one string with its '#' is that string; one
    that does not is refused."""
    if "#" not in raw:
        return value
    try:
        literal = _restore_hash(yaml.load(raw.replace("#", _HASH), Loader=RecipeLoader))
    except yaml.YAMLError:
        literal = None
    if literal == value:
        return value
    if isinstance(literal, str):
        return literal
    raise ConfigError(f"override {item!r}: YAML reads ' #' as the start of a comment, which would drop what follows; "
                      "quote the value, or leave the comment out")  # fmt: skip


def _restore_hash(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_HASH, "#")
    if isinstance(value, list):
        return [_restore_hash(v) for v in value]
    if isinstance(value, dict):
        return {_restore_hash(k): _restore_hash(v) for k, v in value.items()}
    return value
