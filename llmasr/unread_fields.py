"""Fields a config section sets that its other settings leave unread: another type's field (a Q-Former's
`num_queries` on a linear adaptor, a tri_stage schedule's `init_lr_scale` on a cosine one), or a key prefix with
no weights file to apply it to. A new recipe is refused them: they would change nothing, and say nothing. A run's
saved recipe, or an export, written before the refusal has them dropped with a warning, so that it still loads.

A section class lists its rules in a staticmethod `unread_fields(section: dict) -> dict[str, str]` (field name to
the reason it is not read), over the section as written (a dict), so the same rule serves both. A name may reach into
a dict the section holds ("frontend.n_fft": the encoder's frontend settings, read with the encoder's type)."""

from __future__ import annotations

import logging
from dataclasses import MISSING, fields

from llmasr.config_io import ConfigError

log = logging.getLogger(__name__)


def default_of(cls, name: str):
    """The default of dataclass `cls`'s field `name` (its default_factory's value)."""
    spec = cls.__dataclass_fields__[name]
    return spec.default_factory() if spec.default is MISSING else spec.default


def changed(cls, section: dict, names) -> list[str]:
    """Those of `names` that `section` sets to other than the default: a saved recipe or an export writes every
    field, defaults too, so only a value a user chose counts."""
    return [name for name in names if name in section and section[name] != default_of(cls, name)]


def other_types_fields(cls, section: dict, type_fields: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The fields of `type_fields` (name -> the types that read it) that `section` sets and its `type` (cls's
    default where unset) does not read."""
    kind = section.get("type", default_of(cls, "type"))
    return {
        name: f"only used by type {' or '.join(types)}, not {kind}"
        for name, types in type_fields.items()
        if kind not in types and changed(cls, section, [name])
    }


NO_INIT_FROM = "selects (and strips) a key prefix of init_from's weights, and init_from is not set"
NO_BLOCKS = "is read only by the transformer blocks, and n_layer is 0 (there are none): leave it unset"


def blockless(cls, section: dict) -> dict[str, str]:
    """n_head and dropout of a section whose `n_layer` transformer blocks are none."""
    if section.get("n_layer", cls.n_layer) != 0:
        return {}
    return {name: NO_BLOCKS for name in changed(cls, section, ["n_head", "dropout"])}


def as_section(obj) -> dict:
    """A config object's own fields as a section dict (nested sections stay objects)."""
    return {spec.name: getattr(obj, spec.name) for spec in fields(obj)}


def refuse_unread(obj, path: str) -> None:
    """ConfigError naming the first field `obj` sets that nothing reads (for a section's validate)."""
    for name, why in type(obj).unread_fields(as_section(obj)).items():
        raise ConfigError(f"{path}.{name}: {why}")


def drop_unread(cls, section, label: str, where) -> dict:
    """`section` (as written in `where`, at `label`) without the fields `cls` would refuse as unread, each named in a
    warning. Anything that is not a dict is given back as it is, for the typed load to name."""
    if not isinstance(section, dict):
        return section
    for name, why in cls.unread_fields(section).items():
        log.warning("%s: %s.%s: %s; dropped", where, label, name, why)
        section = _without(section, name.split("."))
    return section


def _without(section: dict, keys: list[str]) -> dict:
    """A copy of `section` without the key that `keys` reaches through nested dicts."""
    head, *rest = keys
    if not rest:
        return {key: value for key, value in section.items() if key != head}
    return {**section, head: _without(section[head], rest)}


def drop_unread_at(data, keys: tuple[str, ...], cls, where, label: str = ""):
    """`data` (a whole saved file, as written) with drop_unread applied to the section that `keys` reach ("*": each
    item of a list, or each value of a mapping); anything on the way that is missing or not a dict or list is left
    as it is."""
    if not keys:
        return drop_unread(cls, data, label, where)
    head, *rest = keys
    if head == "*":
        if isinstance(data, dict):
            return {k: drop_unread_at(v, tuple(rest), cls, where, f"{label}.{k}") for k, v in data.items()}
        if not isinstance(data, list):
            return data
        return [drop_unread_at(item, tuple(rest), cls, where, f"{label}[{i}]") for i, item in enumerate(data)]
    if not isinstance(data, dict) or head not in data:
        return data
    return {**data, head: drop_unread_at(data[head], tuple(rest), cls, where, f"{label}.{head}" if label else head)}
