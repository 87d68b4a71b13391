"""Keys of a DeepSpeed JSON that DeepSpeed would ignore, or refuse only once the model is built, refused at start-up
with the nearest key DeepSpeed knows.

DeepSpeed reads its top-level keys one by one and says nothing of the rest: `"zero_optimisation": {"stage": 2}`
trains at ZeRO stage 0. The known keys come from DeepSpeed itself, not from a list kept here: its own config class
(deepspeed.runtime.config.DeepSpeedConfig) reads a probe config and the user's config through a dict that records
every key it is asked for. Sections DeepSpeed reads with pydantic models (zero_optimization, bf16, tensorboard, ...)
forbid unknown keys themselves, but only inside deepspeed.initialize, after the model is loaded; reading the config
here runs that validation at start-up, and its errors get the dotted key and the nearest field. In the sections read
key by key (checkpoint, flops_profiler, ...) a key DeepSpeed did not ask for but that nearly matches one it did is
refused as a misspelling; one that matches nothing may be read later (an option of a disabled feature) and is kept.
Settings each valid alone that DeepSpeed's ZeRO optimizers refuse together (zero_optimizer_problem), ZeRO++ options
that only stage 3 reads or whose group does not divide the ranks (zero_plus_problem), and fp16 loss scales that fail
or skip every update at the first step (loss_scale_problem), are refused too, read as DeepSpeed
parsed them.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json

from llmasr.config_io import ConfigError
from llmasr.errors import nearest_hint

# Read by deepspeed.initialize itself, before DeepSpeedConfig exists (deepspeed/__init__.py).
INITIALIZE_KEYS = frozenset({"sequence_parallel_size", "data_parallel_size"})
PROBE = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}


class AskedDict(dict):
    """A dict that records the keys asked for; `whole` once it was read whole (iterated or **-unpacked)."""

    def __init__(self, data: dict):
        super().__init__(data)
        self.asked: set = set()
        self.whole = False

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.asked.add(key)
        return super().__contains__(key)

    def keys(self):
        return _AskedKeys(self)

    def __iter__(self):
        self.whole = True
        return super().__iter__()

    def items(self):
        self.whole = True
        return super().items()

    def __copy__(self):
        return self  # DeepSpeedConfig copies the dict before reading it: keep recording


class _AskedKeys:
    def __init__(self, owner: AskedDict):
        self.owner = owner

    def __contains__(self, key) -> bool:
        return key in self.owner

    def __iter__(self):
        self.owner.whole = True
        return iter(dict.keys(self.owner))

    def __len__(self) -> int:
        return dict.__len__(self.owner)


def _read_with_deepspeed(ds: dict):
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig(ds)


def zero_optimizer_problem(config) -> str | None:
    """What DeepSpeed's ZeRO optimizer would refuse in the parsed `config` (a DeepSpeedConfig) once the model is
    built: the removed legacy stage 1, an odd allgather bucket at ZeRO 1-2 (its all-gathers are 4-byte aligned in
    16-bit elements), and a gradient scaling other than a mean after the reduce-scatter of ZeRO 2-3 (stage_1_and_2.py
    / stage3.py assert it; llmasr's gradients are always means, gradient_allreduce_op)."""
    zero, stage = config.zero_config, config.zero_optimization_stage
    if stage >= 1 and zero.legacy_stage1:
        return "zero_optimization.legacy_stage1 is true; DeepSpeed no longer has that stage 1: remove the key"
    if stage in (1, 2) and zero.allgather_bucket_size % 2:
        return (
            f"zero_optimization.allgather_bucket_size is {zero.allgather_bucket_size}; ZeRO stage {stage} needs an "
            "even number of elements"
        )
    if stage < 2 or not zero.reduce_scatter:
        return None
    why = f"at ZeRO stage {stage} with zero_optimization.reduce_scatter DeepSpeed scales gradients only once reduced"
    if config.prescale_gradients:
        return f"prescale_gradients is {json.dumps(config.prescale_gradients)}; {why}: remove the key"
    if config.gradient_predivide_factor != 1.0:
        return f"gradient_predivide_factor is {json.dumps(config.gradient_predivide_factor)}; {why}: remove the key"
    return None


# ZeRO++: hpZ's secondary partition and quantized all-gathers / reduce-scatters, read by ZeRO-3's code only
_ZERO_PLUS = ("zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_nontrainable_weights",
              "zero_quantized_gradients")  # fmt: skip


def zero_plus_problem(config, world_size: int | None) -> str | None:
    """ZeRO++ options in the parsed `config` that do nothing (set at a ZeRO stage other than 3, whose code alone reads
    them) or fail once the model is built (an hpZ group that does not divide `world_size`, as DeepSpeed asserts)."""
    zero, stage = config.zero_config, config.zero_optimization_stage
    if stage != 3:
        on = [
            f"zero_optimization.{name} {json.dumps(getattr(zero, name))}"
            for name in _ZERO_PLUS
            if getattr(zero, name) is True or type(getattr(zero, name)) is int and getattr(zero, name) > 1
        ]
        if not on:
            return None
        it, does, it_ = ("it", "does", "it") if len(on) == 1 else ("they", "do", "them")
        return (
            f"{', '.join(on)} at ZeRO stage {stage}: only ZeRO stage 3 reads ZeRO++ options, so here {it} {does} "
            f"nothing: remove {it_}, or use stage 3 (zero3, zero3_offload)"
        )
    hpz = zero.zero_hpz_partition_size
    group = min(hpz, world_size or 1)
    if hpz > 1 and world_size and world_size % group:
        return (
            f"zero_optimization.zero_hpz_partition_size is {hpz} but the world size is {world_size}: DeepSpeed splits "
            f"the ranks into hpZ groups of {group}, which must divide them (it asserts so once the model is built): "
            "give the ranks per node, or a divisor of the world size"
        )
    return None


# torch turns a Python int operand into a 64-bit number: 2**64 - 1 is the largest it takes ("int too big to convert")
INT_SCALE_LIMIT = 2**64
MAX_SCALE_POWER = 63


def loss_scale_problem(config) -> str | None:
    """What in the parsed `config`'s fp16 loss scaling cannot work, where fp16 is on. DeepSpeed's loss scaler
    multiplies the loss by its scale as it holds it: 2**initial_scale_power, a Python int (dynamic scaling), which
    torch refuses from a power of 64 at the first backward; fp16.min_loss_scale, an int too, once the scale has fallen
    to it; a static fp16.loss_scale as a float, which beyond float32's largest number makes every scaled loss inf."""
    import torch

    fp16 = config.float16_config
    if not fp16.enabled:
        return None
    if fp16.loss_scale:  # static: the power and the floor are not read
        top = torch.finfo(torch.float32).max
        if fp16.loss_scale > top:
            return (
                f"fp16.loss_scale is {fp16.loss_scale:g}; DeepSpeed multiplies the float32 loss by it, and above "
                f"float32's largest number ({top:.4g}) every scaled loss is inf and every update is skipped: give a "
                f"static scale from 1 to {top:.4g}, or 0 for dynamic scaling"
            )
        return None
    power = fp16.initial_scale_power
    if not 0 <= power <= MAX_SCALE_POWER:
        why = (
            f"DeepSpeed multiplies the loss by the integer 2**{power}, which torch cannot take (int too big to "
            "convert) at the first step"
            if power > MAX_SCALE_POWER
            else f"the scale would start at 2**{power}, below 1: it shrinks the gradients toward fp16's underflow, "
            "the opposite of loss scaling, and sits under DeepSpeed's floor fp16.min_loss_scale (an integer >= 1)"
        )
        return f"fp16.initial_scale_power is {power}; {why}: give 0 to {MAX_SCALE_POWER} (DeepSpeed's default 16)"
    if fp16.min_loss_scale >= INT_SCALE_LIMIT:
        return (
            f"fp16.min_loss_scale is {fp16.min_loss_scale}; once the dynamic scale falls to it DeepSpeed multiplies "
            f"the loss by that integer, which torch cannot take (int too big to convert): give 1 to "
            f"{INT_SCALE_LIMIT - 1} (2**64 - 1; DeepSpeed's default 1)"
        )
    return None


@functools.cache
def known_top_level_keys() -> frozenset[str]:
    probe = AskedDict(PROBE)
    _read_with_deepspeed(probe)
    return frozenset(k for k in probe.asked if isinstance(k, str)) | INITIALIZE_KEYS


def nearest(key: str, known) -> str | None:
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return match[0] if match else None


def check_ds_keys(ds: dict, source: str, world_size: int | None = None) -> None:
    """Refuse what DeepSpeed would ignore or refuse late in the resolved config `ds` (see the module doc), for
    `world_size` ranks (None: unknown)."""
    known = known_top_level_keys()
    unknown = [f"  {k!r}: not a DeepSpeed key{nearest_hint(k, known)}" for k in ds if k not in known]
    if unknown:
        raise ConfigError(f"{source}: unknown key(s), which DeepSpeed would silently ignore:\n" + "\n".join(unknown))
    # train_batch_size left out: DeepSpeed derives it from a world size that `llmasr check` only pretends to have
    sections = {k: AskedDict(v) if isinstance(v, dict) else copy.deepcopy(v) for k, v in ds.items()}
    sections.pop("train_batch_size", None)
    probe = AskedDict(sections)
    try:
        config = _read_with_deepspeed(probe)
    except Exception as err:
        raise ConfigError(f"{source}: DeepSpeed refuses it: {_explain(err, ds)}") from err
    misspelt = []
    for name, section in sections.items():
        if not isinstance(section, AskedDict) or section.whole or not section.asked:
            continue
        asked = {k for k in section.asked if isinstance(k, str)}
        for key in section:
            near = nearest(key, asked) if key not in asked else None
            if near is not None and difflib.SequenceMatcher(None, key, near).ratio() >= 0.8:
                misspelt.append(f"  {name}.{key}: DeepSpeed never reads it; did you mean {name}.{near}?")
    if misspelt:
        raise ConfigError(f"{source}: unknown key(s):\n" + "\n".join(misspelt))
    if problem := zero_optimizer_problem(config) or zero_plus_problem(config, world_size) or loss_scale_problem(config):
        raise ConfigError(f"{source}: {problem}")


def _explain(err: Exception, ds: dict) -> str:
    """A pydantic error of DeepSpeed's config models, with each dotted key and, for an unknown one, the nearest."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return f"{type(err).__name__}: {err}"
    model = _model_class(err.title)
    lines = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        path = _dotted(ds, loc, err.title) if loc else _whole_section(ds, model, item["msg"], err.title)
        line = f"{path}: {item['msg']}"
        if item["type"] == "extra_forbidden":
            line = f"{path}: unknown key" + (nearest_hint(loc[-1], _fields_at(model, loc[:-1])) if model else "")
        lines.append(line)
    return "\n  " + "\n  ".join(lines)


def _dotted(ds: dict, loc: tuple[str, ...], title: str | None = None) -> str:
    """The top-level section whose nested keys hold `loc`, joined with it ("zero_optimization.stag"); where several
    hold it ("enabled"), the one whose removal takes DeepSpeed's error of model `title` away."""

    def holds(node, parts) -> bool:
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return isinstance(node, dict) and parts[-1] in node

    tops = [k for k, v in ds.items() if isinstance(v, dict) and holds(v, loc)]
    if len(tops) > 1 and title is not None:
        tops = [k for k in tops if _refused_at(ds, k, title, loc)]
    if len(tops) == 1:
        return ".".join((tops[0], *loc))
    return ".".join(loc) if loc and loc[0] in ds else "<section>." + ".".join(loc)


def _refused_at(ds: dict, section: str, title: str, loc: tuple) -> bool:
    """Whether DeepSpeed's error of model `title` at `loc` comes from `section`: it goes when the section does."""
    from pydantic import ValidationError

    try:
        _read_with_deepspeed({k: copy.deepcopy(v) for k, v in ds.items() if k not in (section, "train_batch_size")})
    except ValidationError as err:
        return err.title != title or all(tuple(str(p) for p in item["loc"]) != loc for item in err.errors())
    except Exception:  # another refusal: this section's is gone
        return True
    return True


def _whole_section(ds: dict, model, msg: str, title: str) -> str:
    """The top-level section a check of DeepSpeed's over a whole section refused (an error without a location): the
    one that `model` refuses with the same message; the model's name where no single section is."""
    from pydantic import ValidationError

    def refuses(section: dict) -> bool:
        try:
            model(**section)
        except ValidationError as err:
            return any(not item["loc"] and item["msg"] == msg for item in err.errors())
        except Exception:  # another section that this model cannot even read
            return False
        return False

    names = [k for k, v in ds.items() if isinstance(v, dict) and model is not None and refuses(v)]
    return names[0] if len(names) == 1 else f"<{title} section>"


def _model_class(name: str):
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    todo, seen = [DeepSpeedConfigModel], set()
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return None


def _fields_at(model, loc: tuple[str, ...]) -> set[str]:
    """Field names and aliases of the pydantic model reached from `model` through the fields in `loc`."""
    for part in loc:
        field = model.model_fields.get(part) or next((f for f in model.model_fields.values() if f.alias == part), None)
        sub = getattr(field, "annotation", None)
        sub = next((a for a in getattr(sub, "__args__", ()) if hasattr(a, "model_fields")), sub)
        if not hasattr(sub, "model_fields"):
            return set()
        model = sub
    return set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
