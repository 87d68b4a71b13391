"""Which modules a recipe's `lora.target_modules` reaches, as peft matches it: a list entry by the whole module name
or a dotted suffix of it (q_proj, self_attn.q_proj), any string but all-linear as a regular expression over the
whole name (re.fullmatch, peft's check_target_module_exists); and the start-up checks that what it reaches is
linear layers (or an MoE's fused expert weights), that each entry reaches one, and that peft wrapped what a regular
expression matches."""

from __future__ import annotations

import re

from torch import nn

from llmasr.config_io import ConfigError

# Per-expert names peft maps an MoE's fused expert weights onto (transformers' gate_up_proj and down_proj): a target
# reaches such a weight through these names, as the checkpoints' own per-expert layers were called
_EXPERT_NAMES = {"gate_up_proj": ("gate_proj", "up_proj", "w1", "w3"), "down_proj": ("down_proj", "w2")}


def is_regex(targets) -> bool:
    """Whether peft reads `targets` as a regular expression: a string other than all-linear."""
    return isinstance(targets, str) and targets != "all-linear"


def reaches(target: str, path: str) -> bool:
    """Whether a target_modules list entry names the module at `path`, as peft matches list entries: the whole
    name, or a suffix of it after a dot (q_proj, self_attn.q_proj)."""
    return path == target or path.endswith("." + target)


def matches(targets, path: str) -> bool:
    """Whether `targets` (a list, or a regular expression) reaches the module at `path`."""
    if is_regex(targets):
        return re.fullmatch(targets, path) is not None
    return any(reaches(t, path) for t in targets)


def linear_paths(model: nn.Module) -> list[str]:
    """The linear layers peft wraps as such: nn.Linear, and transformers' Conv1D (GPT-2's c_attn, c_proj, c_fc: a
    linear layer whose weight is stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, mod in model.named_modules() if isinstance(mod, (nn.Linear, Conv1D))]


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers LoRA can wrap (e.g. q_proj), the vocabulary `target_modules` is mostly written
    in."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_paths(model)})


def expert_weights(model: nn.Module) -> list[str]:
    """The names of an MoE's fused expert weights in `model`: 3-D parameters (transformers' gate_up_proj and
    down_proj, [experts, out, in]), which peft wraps with its ParamWrapper rather than as linear layers."""
    return [name for name, p in model.named_parameters() if len(getattr(p, "ds_shape", p.shape)) == 3]


def names_experts(target: str, cubes: list[str]) -> bool:
    """Whether the list entry `target` names fused expert weights as peft maps the checkpoints' per-expert names
    onto them (gate_proj and up_proj onto gate_up_proj)."""
    leaf = target.rsplit(".", 1)[-1]
    wanted = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}.get(leaf, leaf)
    return any(name.rsplit(".", 1)[-1] == wanted for name in cubes)


def regex_reaches_weight(pattern: str, key: str) -> bool:
    """Whether the regular expression `pattern` reaches the fused expert weight `key` (model.layers.0.mlp.experts.
    gate_up_proj): peft probes the per-expert names in its place (….experts.gate_proj, ….experts.up_proj)."""
    container, _, leaf = key.rpartition(".")
    return any(re.fullmatch(pattern, f"{container}.{old}") for old in _EXPERT_NAMES.get(leaf, ()))


def reaching(targets, cubes: list[str]) -> str:
    """Which of `targets` reach the fused expert weights `cubes`."""
    if targets == "all-linear":
        return "all-linear"
    return str([t for t in targets if names_experts(t, cubes)])


def _reached(model: nn.Module, targets, skip: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Each module of `model` `targets` reach, but those at the paths `skip`: "target -> path (type)" for a list's
    entries, "path (type)" for a regular expression."""
    found = [(p, m) for p, m in model.named_modules() if p and p not in skip]
    if is_regex(targets):
        return [f"{p} ({type(m).__name__})" for p, m in found if matches(targets, p)]
    return [f"{t} -> {p} ({type(m).__name__})" for t in targets for p, m in found if reaches(t, p)]


def check_targets(model: nn.Module, targets, *, what: str, hf_model: bool) -> None:
    """Refuse `targets` (a list, or a regular expression) when one reaches no nn.Linear or Conv1D layer of `model`
    (peft alone accepts a partial match), or reaches other modules (peft's "not supported" once loaded)."""
    paths = linear_paths(model)
    # a name of fused MoE expert weights (3-D parameters: gate_proj/up_proj of gate_up_proj, down_proj) peft puts
    # LoRA on, as it does for the nn.Linear experts of the checkpoints' own layout
    cubes = expert_weights(model) if hf_model else []
    if is_regex(targets):
        if not any(matches(targets, p) for p in paths) and not any(regex_reaches_weight(targets, c) for c in cubes):
            raise ConfigError(_no_layer(model, targets, paths, what))
    else:
        missing = [t for t in targets if not any(reaches(t, p) for p in paths) and not names_experts(t, cubes)]
        if missing:
            raise ConfigError(
                f"{what}.lora.target_modules: {missing} match no nn.Linear or Conv1D layer in the {what}; available: "
                f"{linear_module_names(model)}{_not_linear(model, missing, what)}{_pattern_in_list(missing, paths)}"
            )
    others = _reached(model, targets, skip=set(paths))
    if others and is_regex(targets):
        raise ConfigError(
            f"{what}.lora.target_modules: the regular expression '{targets}' also matches modules that are not "
            f"nn.Linear or Conv1D layers: {others[:5]}; make it match the linear layers' names alone (e.g. end it "
            r"in \.(q_proj|v_proj))"
        )
    if others:
        raise ConfigError(
            f"{what}.lora.target_modules also name modules that are not nn.Linear or Conv1D layers: {others[:5]}; "
            "name the linear layers by a longer suffix (e.g. self_attn.linear_q)"
        )


def _not_linear(model: nn.Module, targets, what: str) -> str:
    """What `targets` that reach no linear layer name instead (embed_tokens, an nn.Embedding, is no typo)."""
    reached = _reached(model, targets)
    if not reached:
        return ""
    return (f"; {reached[:5]}: LoRA wraps nn.Linear and Conv1D layers only (train such a module whole with "
            f"{what}.freeze: false)")  # fmt: skip


def _pattern_in_list(missing: list[str], paths: list[str]) -> str:
    """A list entry written as a regular expression: peft reads each entry as a name, a pattern only alone."""
    patterns = [t for t in missing if _compiles(t) and any(re.fullmatch(t, p) for p in paths)]
    if not patterns:
        return ""
    return (f"; in a list {patterns[0]} is a name, which no module has: a regular expression is written alone, "
            f"as a string (target_modules: '{patterns[0]}')")  # fmt: skip


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _no_layer(model: nn.Module, pattern: str, paths: list[str], what: str) -> str:
    """The refusal of a regular expression that reaches no linear layer: peft matches it against whole names, which a
    leaf name alone (q_proj) never is."""
    leaves = [name for name in linear_module_names(model) if re.fullmatch(pattern, name)]
    hint = (f"; it matches the last names {leaves}, but a regular expression must match the whole name: "
            rf"'.*\.({pattern})' reaches those in every layer") if leaves else ""  # fmt: skip
    return (
        f"{what}.lora.target_modules: the regular expression '{pattern}' matches the whole name of no nn.Linear or "
        f"Conv1D layer in the {what}; their names are like {paths[:4]} ({len(paths)} in all; last names "
        f"{linear_module_names(model)}){hint}{_not_linear(model, pattern, what)}"
    )


def check_wrapped(model: nn.Module, pattern: str, *, what: str) -> None:
    """After peft wrapped `model` (the base model, LoRA layers in place): refuse the layers it wrapped that the
    regular expression `pattern` does not match. On an MoE whose experts transformers fuses (qwen3_moe, mixtral, ...)
    peft reads a regular expression as the last names of what it matches, and puts LoRA on those in every layer."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import ParamWrapper

    wrapped, extra = 0, []
    for path, module in model.named_modules():
        if isinstance(module, ParamWrapper):  # nested when it wraps two weights of one module: base_layer in between
            key = f"{path.replace('.base_layer', '')}.{module.parameter_name}"
            reached = regex_reaches_weight(pattern, key) or matches(pattern, key.rpartition(".")[0])
        elif isinstance(module, LoraLayer):
            key, reached = path, matches(pattern, path)
        else:
            continue
        wrapped += 1
        if not reached:
            extra.append(key)
    if extra:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        kind = f" ({model_type})" if model_type else ""
        raise ConfigError(
            f"{what}.lora.target_modules: peft put LoRA on {len(extra)} of {wrapped} layers that the regular "
            f"expression '{pattern}' does not match, e.g. {extra[:3]}: on this model{kind} peft reads a regular "
            "expression as the last names of what it matches, and wraps those in every layer. To put LoRA on some "
            "layers only, list their whole names (model.layers.N.self_attn.q_proj, ...); a regular expression "
            "matching those names in every layer does what it says"
        )
