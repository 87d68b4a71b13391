"""Paths in a recipe: which dataclass fields hold them (`path_field`), where a relative one is looked for, and the
input paths a config names (what an export must not overwrite).

A relative input path is looked for beside the recipe, then in the working directory; `resolve_paths` makes one
that exists there absolute, so that RUN_DIR/recipe.yaml names the same file from any folder (export, decode and
resume read it later, from wherever they are started). One that names two different files, one beside the recipe
and one in the working directory, is refused unless written ./x or ../x (beside the recipe): which one a run reads
must not depend on the folder it is started from.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

from llmasr.config_io import ConfigError


def path_field(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    output: bool = False,
    keys: tuple[str, ...] = (),
    keywords: tuple[str, ...] = (),
) -> Any:
    """A dataclass field holding a file path that a recipe may write relative to itself.

    `output=True`: a folder that may not exist yet, made recipe-relative only when written as ./x or ../x.
    `keys`: the field is a mapping and these of its keys hold paths (e.g. a frontend's cmvn_file).
    `keywords`: values that are words, not paths (ctc.vocab: llm), even beside a folder of that name."""
    kind = "keys" if keys else "output" if output else "input"
    metadata = {"path": kind, "path_keys": tuple(keys), "path_keywords": tuple(keywords)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


_LOOKED = " (a relative path is looked for beside the recipe, then in the working directory {})"


def not_found(key: str, what: str, path: str | Path) -> str:
    """The error for a recipe path with nothing there: the key, for a relative path where it was looked for, and
    the path as ModelScope spells it where that is there (modelscope_spelling)."""
    where = _LOOKED.format(Path.cwd()) if not Path(path).is_absolute() else ""
    return f"{key}: {what} not found: {path}{where}{_spelling_hint(key, Path(path))}"


def override_not_found(message: str) -> str:
    """not_found's `message` for a path an override gave: that is read from the working directory alone (the
    recipe's folder was never looked in, though the file may be there)."""
    return message.replace(_LOOKED.format(Path.cwd()), f" (an override's relative path is read from the working "
                                                       f"directory {Path.cwd()} alone)")  # fmt: skip


def modelscope_spelling(path: Path) -> Path | None:
    """Where `path` is missing but is there with a name's dots written "___", as a ModelScope download writes them
    (Qwen/Qwen2___5-1___5B-Instruct), or with such "___" written back as dots: that path; else None. Only the
    names that are missing are respelled (a .cache folder above them keeps its dot)."""
    found, respelled = Path(path.anchor), False
    for part in path.parts[1:] if path.anchor else path.parts:
        if not (found / part).exists():
            other = next((o for o in (part.replace(".", "___"), part.replace("___", ".")) if o != part
                          and (found / o).exists()), None)  # fmt: skip
            if other is None:
                return None
            part, respelled = other, True
        found = found / part
    return found if respelled else None


def _spelling_hint(key: str, path: Path) -> str:
    try:
        spelled = modelscope_spelling(path)
    except OSError:  # a name too long for the filesystem: no hint
        return ""
    if spelled is None:
        return ""
    more = str(spelled).count("___") > str(path).count("___")
    how = "a name's dots written ___ (as a ModelScope download writes them)" if more else "___ written as dots"
    return f". {spelled} is there, the same path with {how}: set {key} to that path"


def nested_hint(folder: Path, marker: str, key: str) -> str:
    """Where `folder` lacks `marker` (config.yaml, config.json) but folders under it hold one, as ModelScope's cache
    nests a model (hub/[models/]OWNER/NAME, with a name's dots written "___"): a sentence naming them for `key`;
    else ""."""
    found = sorted(_holding(folder, marker))
    if not found:
        return ""
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (
        f". Folders under it hold one: {', '.join(map(str, found[:3]))}{more}: set {key} to the model's own folder "
        "(a ModelScope download nests it as [models/]OWNER/NAME)"
    )


def file_problem(path: str | os.PathLike, what: str = "file") -> str | None:
    """Why `path` is no `what` to read (empty, a directory, a pipe or device, or nothing there); None when it is a
    file."""
    article = "an" if what[0] in "aeiou" else "a"
    if not os.fspath(path):  # Path("") is ".", the working directory: an unset name, not a folder given
        return f"an empty path, not {article} {what}"
    path = Path(path)
    if path.is_dir():
        return f"a directory, not {article} {what}"
    if path.exists() and not path.is_file():  # read more than once (a header probe, then the data): not a stream
        return f"a pipe or device, not {article} {what} (save it to a file first)"
    return None if path.is_file() else f"no such {what}"


def output_problem(output: Path) -> str | None:
    """Why the output folder cannot be written, found without creating anything (a refused run leaves no folder):
    it is a file or a folder that may not be written into, or its nearest existing ancestor is a file or not
    writable; None when it can be."""
    if output.exists():
        if not output.is_dir():
            return "a file, not a folder"
        # a folder of another user's, or on a read-only mount: the first file written into it fails
        return None if os.access(output, os.W_OK | os.X_OK) else "a folder this user may not write into"
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create the folder: {parent} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the folder: {parent} is not writable"
    return None


def output_file_problem(out: Path, inputs=()) -> str | None:
    """Why `out` is no file to write, found before any work (a refused command writes nothing): a folder, a folder
    that cannot be made, or one of the command's `inputs`, which writing it would destroy; None when it can be."""
    if out.is_dir():
        return "a folder, not a file"
    if folder := output_problem(out.parent):
        return f"{out.parent}: {folder}"
    same = next((p for p in map(Path, inputs) if p.exists() and p.resolve() == out.resolve()), None)
    return None if same is None else f"one of the inputs ({same}): writing it would destroy it; name a new file"


def input_paths(obj: Any, prefix: str = ""):
    """(dotted key, path) of every input path a config holds (fields declared with `path_field`, not outputs, not
    keywords), through nested sections and lists of sections."""
    for f in dataclasses.fields(obj):
        value, kind, key = getattr(obj, f.name), f.metadata.get("path"), f"{prefix}{f.name}"
        values = value if isinstance(value, list) else [value]
        if kind == "keys" and isinstance(value, dict):
            yield from ((f"{key}.{k}", value[k]) for k in f.metadata["path_keys"] if value.get(k))
        elif kind == "input":
            for v in values:
                if dataclasses.is_dataclass(v):
                    yield from input_paths(v, f"{key}.")
                elif isinstance(v, str) and v and v not in f.metadata.get("path_keywords", ()):
                    yield key, v
        elif kind is None:
            for v in values:
                if dataclasses.is_dataclass(v):
                    yield from input_paths(v, f"{key}.")


def _dataclass_args(tp: Any) -> list[type]:
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [a for arg in typing.get_args(tp) for a in _dataclass_args(arg)]


def _resolve_one(value: Any, kind: str, base: Path, key: str, cwd: Path | None) -> Any:
    if isinstance(getattr(value, "raw", None), str):  # a name YAML reads as a number (2026, 1e3): found as written
        found = _resolve_one(value.raw, kind, base, key, cwd)
        return value if found == value.raw else found
    if isinstance(value, str) and value.startswith("~"):
        value = os.path.expanduser(value)  # the home folder, as manifests and export read it (not a folder named ~)
    if not isinstance(value, str) or not value or "\n" in value or Path(value).is_absolute():
        return value  # (a field that takes a path or text, as a chat template, may hold the text itself)
    marked = value.startswith(("./", "../"))  # beside the recipe, said so
    if kind == "output":
        return str((base / value).resolve()) if marked else value
    try:
        here = (base / value).resolve() if (base / value).exists() else None
        there = (cwd / value).resolve() if cwd is not None and not marked and (cwd / value).exists() else None
        if here is None and not Path(value).exists() and modelscope_spelling(base / value):
            # missing, but there beside the recipe as ModelScope spells it: named where it was looked for, so that
            # not_found's hint finds that spelling (it is never read in its place)
            return str((base / value).resolve())
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL: text, not a path
        return value
    if here is not None and there not in (None, here):
        raise ConfigError(
            f"{key}: {value} names two different files, {here} beside the recipe and {there} in the working "
            "directory; a recipe's relative path is read beside the recipe first, so the run would read the first: "
            f"write ./{value} for it, or the absolute path of the other"
        )
    return value if here is None else str(here)


def resolve_paths(cls: type, data: dict, base: Path, *, cwd: Path | None = None, prefix: str = "") -> None:
    """Make the path fields (those declared with `path_field`) of a raw recipe dict for dataclass `cls` absolute
    against `base`, in place, through nested sections and lists of sections. Input paths are changed only where
    the recipe-relative file exists, so absolute and working-directory paths keep working. `cwd`: the working
    directory, where a relative path naming another file than beside `base` is refused (ConfigError naming its
    dotted key, `prefix` + the field's)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, kind, key = data[f.name], f.metadata.get("path"), prefix + f.name
        if isinstance(value, str) and value in f.metadata.get("path_keywords", ()):
            continue
        if kind == "keys":
            if isinstance(value, dict):
                for k in f.metadata["path_keys"]:
                    if k in value:
                        value[k] = _resolve_one(value[k], "input", base, f"{key}.{k}", cwd)
        elif kind is not None and isinstance(value, list):
            subs = _dataclass_args(hints[f.name])
            for i, item in enumerate(value):
                if isinstance(item, dict) and subs:
                    resolve_paths(subs[0], item, base, cwd=cwd, prefix=f"{key}[{i}].")
                else:
                    value[i] = _resolve_one(item, kind, base, f"{key}[{i}]", cwd)
        elif kind is not None:
            data[f.name] = _resolve_one(value, kind, base, key, cwd)
        elif isinstance(value, dict):
            subs = _dataclass_args(hints[f.name])
            if subs:
                resolve_paths(subs[0], value, base, cwd=cwd, prefix=key + ".")


def _holding(folder: Path, marker: str, depth: int = 3, budget: int = 2000) -> list[Path]:
    """The folders up to `depth` levels under `folder` that hold `marker`, looking into at most `budget` folders: an
    error's hint, never a crawl of a corpus tree the path was set to by mistake."""
    found, level = [], [folder]
    for _ in range(depth):
        below = []
        for d in level:
            try:
                with os.scandir(d) as entries:
                    below += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=True)]
            except OSError:
                continue
            if len(below) > budget:
                return found
        found += [d for d in below if (d / marker).is_file()]
        level = below
    return found
