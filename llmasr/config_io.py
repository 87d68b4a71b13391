"""Recipe YAML -> typed dataclasses, checked once (dotted command-line overrides: llmasr.config_overrides).

Every unknown key and every wrongly typed value is an error naming its dotted path, so a typo in a recipe fails
at start-up instead of being ignored for a whole run."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import re
import types
import typing
import weakref
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from llmasr.atomic_file import write_atomic
from llmasr.funasr_keys import funasr_hint

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that cannot be turned into the typed config."""


class UnsetError(ConfigError):
    """A setting the run needs that the recipe leaves unset (its manifests): the recipe is named with it, as no
    line of it can be (llmasr.recipe.located)."""


def check_dropout(path: str, value: float) -> None:
    """A dropout probability in [0, 1), refused by its key (torch's own error names no key, and only once the model
    is built)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{path}: must be in [0, 1), got {value}")


class _Int(int):
    """An integer as YAML read it, with the text it was written as (`raw`): a string field takes that text, not
    the number's (`output_dir=0755` is the folder 0755, not 493)."""

    raw: str


class _Float(float):
    raw: str


class _Quoted(str):
    """Text written in quotes that YAML reads as a number unquoted (`"5e-4"`, `'2'`): the text itself for a string
    field, refused where a number is typed (a number read from text there as well had made `lr: "5e-4"` a number
    and `epochs: "2"` an error)."""


class RecipeLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently: a recipe with two
    `optim:` sections lost the first), keeps the text of every number (_Int, _Float), reads YAML 1.2's floats (1e-4)
    as numbers, and marks a quoted number as text (_Quoted)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base constructor says so
                continue
            if first is not key_node:
                a, b = first.start_mark, key_node.start_mark
                where = f"line {a.line + 1} and line {b.line + 1}" if a.line != b.line else (
                    f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}")  # fmt: skip
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping ({where}): the second would silently "
                    "replace the first", key_node.start_mark,
                )  # fmt: skip
        return super().construct_mapping(node, deep)


def _number(kind: type, construct):
    def build(loader, node):
        value = kind(construct(loader, node))
        value.raw = node.value
        return value

    return build


def _none(loader, node):
    raise yaml.constructor.ConstructorError(None, None, "None is the text 'None' in YAML: write null (or ~) for "
                                            "nothing, or quote it for the text", node.start_mark)  # fmt: skip


# YAML 1.2's floats that YAML 1.1 (PyYAML) reads as text: an exponent without a dot or its sign (1e-4, 5E-4, -1e3,
# 1.0e4), a signed leading dot (-.5); the forms YAML 1.1 reads as numbers are resolved before these
_FLOAT_12 = re.compile(r"^(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+|[-+]\.[0-9]+)$")


def _text(loader, node):
    text = loader.construct_scalar(node)
    reads = loader.resolve(yaml.ScalarNode, text, (True, False))
    if node.style in ("'", '"') and reads in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return _Quoted(text)
    return text


RecipeLoader.add_implicit_resolver("tag:llmasr,none", re.compile(r"^None$"), ["N"])  # unquoted only
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+.0123456789"))
RecipeLoader.add_constructor("tag:yaml.org,2002:str", _text)
RecipeLoader.add_constructor("tag:llmasr,none", _none)
RecipeLoader.add_constructor("tag:yaml.org,2002:int", _number(_Int, yaml.SafeLoader.construct_yaml_int))
RecipeLoader.add_constructor("tag:yaml.org,2002:float", _number(_Float, yaml.SafeLoader.construct_yaml_float))
# a date is its text (output_dir=2026-01-02 names a folder; no recipe value is a date)
RecipeLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def _plain(value: Any) -> Any:
    """`value` with every _Int, _Float or _Quoted made a plain int, float or str again (what the typed config
    holds)."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, _Int):
        return int(value)
    if isinstance(value, _Float):
        return float(value)
    if isinstance(value, _Quoted):
        return str(value)
    return value


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a directory, not a recipe file")
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        loader = RecipeLoader(path.read_text(encoding="utf-8-sig"))  # UTF-8 whatever the locale
        loader.name = str(path)  # the file its marks name (PyYAML's own: "<unicode string>")
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        tab = getattr(err, "problem", None) == "found character '\\t' that cannot start any token"
        hint = "\nYAML indents with spaces only: replace the tab at that line with spaces" if tab else ""
        raise ConfigError(f"{path}: not valid YAML: {err}{hint}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save the recipe as UTF-8"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return unshared(data)


def unshared(node: Any) -> Any:
    """A copy in which no two places share a mapping or list: a YAML alias (`*sched`) is the very object its anchor
    (`&sched`) names, so an override of one place had changed every place that shares it."""
    if isinstance(node, dict):
        return {k: unshared(v) for k, v in node.items()}
    return [unshared(v) for v in node] if isinstance(node, list) else node


def _shown(value: Any) -> str:
    """`value` and its type as an error names them: a number as YAML read it is an int or float, not _Int/_Float."""
    value = _plain(value)
    return f"{type(value).__name__} {value!r}"


def coerce(value: Any, tp: Any, path: str) -> Any:
    """`value` checked against type `tp` (converted where YAML reads it loosely: 1e-4 as a string, an int where a
    float is wanted); ConfigError names `path`."""
    origin = typing.get_origin(tp)
    if tp is Any:  # (encoder.conf, frontend: typed when the model is built, after _plain dropped the text)
        _written_in_decimal(value, path)
        return _plain(value)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, path)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {_plain(value)!r} is not one of {list(choices)}")
        return _plain(value)
    if dataclasses.is_dataclass(tp):
        if value is None:  # `prompt:` with nothing under it (its keys' indent lost, or all of them removed)
            raise ConfigError(f"{path}: empty section: give its keys or remove it")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {_shown(value)}")
        return from_dict(tp, value, path)
    if origin in (list, tuple, dict):
        return _coerce_container(value, tp, path)
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, path)
    return _plain(value)


def coerce_arguments(fn, values: dict, path: str) -> dict:
    """`values` for the keyword arguments of `fn`, each converted to its annotated type (unannotated or unknown
    names pass as they are: the callee refuses those); ConfigError names `path`.KEY."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve here: leave the values to the callee
        return dict(values)
    return {k: coerce(v, hints[k], f"{path}.{k}") if k in hints else _plain(v) for k, v in values.items()}


def _coerce_union(value: Any, tp: Any, path: str) -> Any:
    """The first member of the union `tp` that `value` fits (None for an optional)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, path)
        except ConfigError as err:
            errors.append(err)
    if len(errors) == 1:  # an optional section or value: its own error names the key at fault
        raise errors[0]
    names = " | ".join(getattr(a, "__name__", None) or str(a).replace("typing.", "") for a in args)
    raise ConfigError(f"{path}: {value!r} fits none of {names}:\n  " + "\n  ".join(str(e) for e in errors))


def _coerce_container(value: Any, tp: Any, path: str) -> Any:
    """list[X], tuple[X, ...] or dict[K, V]: each item coerced, with its index or key in the path."""
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_shown(value)}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {_plain(k): coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    args = typing.get_args(tp)
    item_tp = args[0] if args else Any
    if not isinstance(value, (list, tuple)):
        one = ""
        sections = [a for a in typing.get_args(item_tp) or [item_tp] if dataclasses.is_dataclass(a)]
        if isinstance(value, str) or (isinstance(value, dict) and sections):  # a manifest's path, or {path, weight}
            flow = value if isinstance(value, str) else "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
            one = f"; a list of one is written [{flow}]"
        raise ConfigError(f"{path}: expected a list, got {_shown(value)}{one}")
    items = [coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


def _written_in_decimal(value: Any, path: str) -> None:
    """Refuse a number YAML 1.1 read in base 60 or 8 (`12:30` is 750, `011` is 9), anywhere in `value`."""
    if isinstance(value, dict):
        for k, v in value.items():
            _written_in_decimal(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _written_in_decimal(v, f"{path}[{i}]")
    raw = getattr(value, "raw", "")
    if ":" in raw or re.fullmatch(r"[-+]?0[0-9_]+", raw):
        raise ConfigError(f"{path}: {raw} reads as {_plain(value)} in YAML (a colon counts in base 60, a leading 0 in "
                          "base 8); write the number in decimal")  # fmt: skip


def _coerce_scalar(value: Any, tp: type, path: str) -> Any:
    """bool, int, float or str: no bool passes as a number, a whole float passes as an int, a number as a str (as it
    was written), NaN as nothing."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    shown = repr(_plain(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {shown}")
    if tp in (int, float):
        _written_in_decimal(value, path)
        if isinstance(value, _Quoted):  # (a list item is written as itself)
            written = value if path.endswith("]") else f"{re.sub(r'.*[.]', '', path)}: {value}"
            raise ConfigError(f"{path}: expected {'an integer' if tp is int else 'a number'}, got the text {shown}: "
                              f"the quotes make it text; write the number without them, {written}")  # fmt: skip
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {shown}")
    if tp is float:
        number = None
        if is_number:
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)  # text from a dict given in Python, or YAML's unquoted inf
            except ValueError:
                pass
        if number is None or math.isnan(number):
            raise ConfigError(f"{path}: expected a number, got {shown}")
        return number
    if isinstance(value, str):
        return str(value)
    if isinstance(value, os.PathLike):  # a dict built in Python holds pathlib paths where YAML holds their text
        return os.fspath(value)
    if is_number:
        return getattr(value, "raw", str(value))
    if isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off unquoted as true/false
        raise ConfigError(f"{path}: expected a string, got {shown} (yes, no, on, off, true and false read as true or "
                          "false: quote the text)")  # fmt: skip
    raise ConfigError(f"{path}: expected a string, got {shown}")


# What from_dict built, by id while it lives: its fields as they stood when the checks passed, which `checked` trusts
# while they stand so (a recipe's section passed to build_dataloader is not checked again; one edited since is).
# Kept beside the objects, not on them: an attribute of its own had shown in their vars() (a fingerprint's input).
_PASSED: dict[int, tuple[weakref.ref, dict]] = {}


def _passed(obj) -> None:
    key = id(obj)
    with contextlib.suppress(TypeError):  # (a class without weak references is checked again each time)
        _PASSED[key] = (weakref.ref(obj, lambda _, key=key: _PASSED.pop(key, None)), to_dict(obj))


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and bad types raise ConfigError with the dotted path."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - set(fields)))  # (YAML keys may be numbers)
    if unknown:  # a typo's nearest known key first: the full list of a large section hides it
        funasr = [h for k in unknown if (h := funasr_hint(path, k))]  # FunASR's name: the key that does its work
        typos = [k for k in unknown if not funasr_hint(path, k)]
        near = [m for k in typos for m in difflib.get_close_matches(k, sorted(fields), n=1)]
        hint = "".join(f"; {h}" for h in funasr) + (f"; did you mean {', '.join(map(repr, near))}?" if near else "")
        raise ConfigError(f"{path or 'top level'}: unknown key(s) {unknown}{hint}; known keys are {sorted(fields)}")
    kwargs = {name: coerce(value, hints[name], f"{path}.{name}" if path else name) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from err
    check = getattr(obj, "validate", None)
    if callable(check):
        check(path or cls.__name__)
    _passed(obj)
    return obj


def checked(cls: type[T], value: Any, path: str) -> T:
    """`value`, a `cls` built in Python or a dict of its keys, held to a recipe's rules (types, ranges, keys read by
    nothing), as a new `cls`, or `value` itself where from_dict built it and it is unchanged since (checking it again
    reads files again: a hotword distractor list); ConfigError naming `path`.KEY. A dataclass's own constructor checks
    none of them, so an object made in a notebook had reached the model or the loader unchecked, to fail deep in
    torch or not at all."""
    if isinstance(value, cls):
        fields = to_dict(value)
        ref, passed = _PASSED.get(id(value), (None, None))
        if ref is not None and ref() is value and passed == fields:
            return value
        value = fields
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a {cls.__name__} or a dict of its keys, got {_shown(value)}")
    return from_dict(cls, value, path)


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _Dumper(yaml.SafeDumper):
    """Quotes what RecipeLoader would not read back as the text it is (None)."""


_Dumper.add_implicit_resolver("tag:llmasr,none", re.compile(r"^None$"), ["N"])
_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+.0123456789"))  # text "1e-4" quoted


def dump_yaml(obj: Any, path: str | Path) -> None:
    write_atomic(path, yaml.dump(to_dict(obj), Dumper=_Dumper, sort_keys=False))  # a cut-short YAML would parse
