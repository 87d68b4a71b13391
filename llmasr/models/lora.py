"""Wrapping a model with LoRA adapters through peft: the LLM (a transformers model, get_peft_model) and the encoder
(inject_adapter_in_model), each recipe target checked against the linear layers there are."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import warnings

from torch import nn

from llmasr.config_io import ConfigError
from llmasr.errors import EVERY_RANK
from llmasr.models.config import LoraConfig

log = logging.getLogger(__name__)

# False while a model is built to take a run's trained weights (export, decode of a checkpoint): the tied-head note
# is for the run that trains the adapters, and the export says what it does with the pair (llmasr.export.merge)
_BUILT_TO_TRAIN = contextvars.ContextVar("llmasr_lora_built_to_train", default=True)


@contextlib.contextmanager
def building_to_read_trained_weights():
    """Within it, apply_lora says nothing of the LLM's tied head."""
    token = _BUILT_TO_TRAIN.set(False)
    try:
        yield
    finally:
        _BUILT_TO_TRAIN.reset(token)


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers LoRA can wrap (e.g. q_proj), the vocabulary `target_modules` is mostly written
    in."""
    return sorted({name.rsplit(".", 1)[-1] for name in _linear_paths(model)})


def _linear_paths(model: nn.Module) -> list[str]:
    """The linear layers peft wraps as such: nn.Linear, and transformers' Conv1D (GPT-2's c_attn, c_proj, c_fc: a
    linear layer whose weight is stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, mod in model.named_modules() if isinstance(mod, (nn.Linear, Conv1D))]


def _reaches(target: str, path: str) -> bool:
    """Whether a target_modules entry names the module at `path`, as peft matches list entries: the whole name, or a
    suffix of it after a dot (q_proj, self_attn.q_proj)."""
    return path == target or path.endswith("." + target)


@contextlib.contextmanager
def peft_wrapping():
    """peft reads transformers' deprecated `is_gradient_checkpointing` as it wraps a model: a FutureWarning each run
    about peft's own code, which a user cannot act on. Its notes on a Conv1D target (fan_in_fan_out set to True),
    and on an nn.Linear one after it (set back to False), neither: it sets that per layer, as each layer's weight is
    stored, and no recipe key sets it; nor its caution on
    a tied head under LoRA (ensure_weight_tying): llmasr says what it does of that (apply_lora). Other warnings
    pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False but the target module is `Conv1D`")
        warnings.filterwarnings(
            "ignore", message="fan_in_fan_out is set to True but the target module is `torch.nn.Linear`"
        )
        warnings.filterwarnings("ignore", message="Model has `tie_word_embeddings=True` and a tied layer is part of")
        yield


def _reached(model: nn.Module, targets: list[str], skip: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Each module of `model` a target name reaches, but those at the paths `skip`, as "target -> path (type)"."""
    return [f"{t} -> {p} ({type(m).__name__})" for t in targets for p, m in model.named_modules()
            if p and p not in skip and _reaches(t, p)]  # fmt: skip


def apply_lora(model: nn.Module, lora: LoraConfig, *, what: str, hf_model: bool, freeze: bool = True):
    """Wrap `model` with LoRA adapters; every named target must exist (peft alone accepts a partial match). peft
    leaves the adapters and the biases `lora.bias` names trainable; `freeze` False trains the base as well."""
    import peft

    paths = _linear_paths(model)
    targets = lora.target_modules
    if targets != "all-linear":
        # a name of fused MoE expert weights (3-D parameters: gate_proj/up_proj of gate_up_proj, down_proj) peft
        # puts LoRA on, as it does for the nn.Linear experts of the checkpoints' own layout
        cubes = expert_weights(model) if hf_model else []
        missing = [t for t in targets if not any(_reaches(t, p) for p in paths) and not _names_experts(t, cubes)]
        if missing:
            # a name peft could wrap otherwise (embed_tokens, an nn.Embedding) is no typo: say what it names
            reached = _reached(model, missing)
            named = (
                f"; {reached[:5]}: LoRA wraps nn.Linear and Conv1D layers only (train such a module whole with "
                f"{what}.freeze: false)"
                if reached
                else ""
            )
            raise ConfigError(
                f"{what}.lora.target_modules: {missing} match no nn.Linear or Conv1D layer in the {what}; available: "
                f"{linear_module_names(model)}{named}"
            )
        others = _reached(model, targets, skip=set(paths))
        if others:
            raise ConfigError(
                f"{what}.lora.target_modules also name modules that are not nn.Linear or Conv1D layers: {others[:5]}; "
                "name the linear layers by a longer suffix (e.g. self_attn.linear_q)"
            )
    elif not hf_model:
        # peft's "all-linear" shortcut needs a transformers model. Whole names: a leaf name such as "0" (a Linear
        # in a Sequential) would also reach every module whose name ends in ".0", a layer or a convolution.
        targets = paths
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias=lora.bias,
        task_type="CAUSAL_LM" if hf_model else None,
    )
    if hf_model:
        with peft_wrapping():
            try:
                model = peft.get_peft_model(model, config)
            except ValueError as err:
                if "ParamWrapper" not in str(err):
                    raise
                raise ConfigError(
                    f"{what}.lora.target_modules {lora.target_modules} reach this MoE's fused expert weights "
                    f"({', '.join(_short(expert_weights(model)))}: 3-D parameters, which peft wraps with its "
                    f"ParamWrapper), and peft trains those without dropout only: set {what}.lora.dropout: 0, or leave "
                    f"out the names that reach them ({_reaching(lora.target_modules, expert_weights(model))}; the "
                    f"linear layers: {linear_module_names(model)})"
                ) from None
        if _BUILT_TO_TRAIN.get():
            _say_tied_head(model, what)
            _say_expert_lora(model, what, lora.target_modules)
    else:
        with peft_wrapping():
            model = peft.inject_adapter_in_model(config, model)
    if not freeze:  # full fine-tuning plus adapters: peft froze the base, undo that
        model.requires_grad_(True)
    return model


def _say_tied_head(llm, what: str) -> None:
    """LoRA on an output head tied to the input embeddings adapts that side alone (llmasr.export.merge)."""
    from peft.tuners.lora import LoraLayer

    base = llm.get_base_model()
    head, inputs = base.get_output_embeddings(), base.get_input_embeddings()
    if isinstance(head, LoraLayer) and head.get_base_layer().weight is inputs.weight:
        name = next(n for n, m in base.named_modules() if m is head)
        log.warning(
            "%s.lora.target_modules reaches %s, whose weight the LLM ties to its input embeddings "
            "(tie_word_embeddings): the adapter changes the output side only; `llmasr export` writes the merged LLM "
            "with the two untied (%s a weight of its own), --adapter-only keeps the base tied", what, name, name,
            extra=EVERY_RANK,  # every rank builds the LLM alike, and twice under ZeRO-3 (engine's shapes build)
        )  # fmt: skip


def expert_weights(model: nn.Module) -> list[str]:
    """The names of an MoE's fused expert weights in `model`: 3-D parameters (transformers' gate_up_proj and
    down_proj, [experts, out, in]), which peft wraps with its ParamWrapper rather than as linear layers."""
    return [name for name, p in model.named_parameters() if len(getattr(p, "ds_shape", p.shape)) == 3]


def _names_experts(target: str, cubes: list[str]) -> bool:
    """Whether `target` names fused expert weights as peft maps the checkpoints' per-expert names onto them
    (gate_proj and up_proj onto gate_up_proj)."""
    leaf = target.rsplit(".", 1)[-1]
    wanted = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}.get(leaf, leaf)
    return any(name.rsplit(".", 1)[-1] == wanted for name in cubes)


def _reaching(targets, cubes: list[str]) -> str:
    """Which of `targets` reach the fused expert weights `cubes`."""
    return "all-linear" if targets == "all-linear" else str([t for t in targets if _names_experts(t, cubes)])


def _short(names: list[str]) -> list[str]:
    """Parameter names with the layer index and peft's base_layer taken out, each once (mlp.experts.gate_up_proj)."""
    short = (n.split(".layers.", 1)[-1].split(".", 1)[-1].replace(".base_layer", "") for n in names)
    return list(dict.fromkeys(short))


def _say_expert_lora(llm, what: str, targets) -> None:
    """Which fused expert weights and routers the LoRA reaches (peft's ParamWrapper): a router with LoRA changes
    which experts each token runs."""
    wrapped = [f"{name}.{m.parameter_name}" for name, m in llm.named_modules() if type(m).__name__ == "ParamWrapper"]
    if not wrapped:
        return
    cubes = set(_short(expert_weights(llm)))
    experts = [n for n in _short(wrapped) if n in cubes or n.endswith(tuple("." + c.rsplit(".", 1)[-1] for c in cubes))]
    routers = [n for n in _short(wrapped) if n not in experts]
    router = (f"; and on its router ({', '.join(routers)}): which experts each token runs trains too (name the "
              "linear layers alone to keep the routing as released)") if routers else ""  # fmt: skip
    log.warning(
        "%s.lora.target_modules %s put LoRA on this MoE's fused expert weights (%s, in each MoE layer)%s",
        what, targets, ", ".join(experts) or "none", router, extra=EVERY_RANK,
    )  # fmt: skip
