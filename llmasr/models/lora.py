"""Wrapping a model with LoRA adapters through peft: the LLM (a transformers model, get_peft_model) and the encoder
(inject_adapter_in_model), each recipe target checked against the linear layers there are (llmasr.models.
lora_targets)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import warnings

from torch import nn

from llmasr.config_io import ConfigError
from llmasr.errors import EVERY_RANK
from llmasr.models.config import LoraConfig
from llmasr.models.lora_targets import (
    check_targets,
    check_wrapped,
    expert_weights,
    is_regex,
    linear_module_names,
    linear_paths,
    reaching,
)

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


def apply_lora(model: nn.Module, lora: LoraConfig, *, what: str, hf_model: bool, freeze: bool = True):
    """Wrap `model` with LoRA adapters; every named target must exist (peft alone accepts a partial match). peft
    leaves the adapters and the biases `lora.bias` names trainable; `freeze` False trains the base as well."""
    import peft

    targets = lora.target_modules
    if targets != "all-linear":
        check_targets(model, targets, what=what, hf_model=hf_model)
    elif not hf_model:
        # peft's "all-linear" shortcut needs a transformers model. Whole names: a leaf name such as "0" (a Linear
        # in a Sequential) would also reach every module whose name ends in ".0", a layer or a convolution.
        targets = linear_paths(model)
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
                    f"{what}.lora.target_modules {_said(lora.target_modules)} reach this MoE's fused expert weights "
                    f"({', '.join(_short(expert_weights(model)))}: 3-D parameters, which peft wraps with its "
                    f"ParamWrapper), and peft trains those without dropout only: set {what}.lora.dropout: 0, or "
                    f"{_leave_out(lora.target_modules, model)}"
                ) from None
        if is_regex(lora.target_modules):
            check_wrapped(model.get_base_model(), lora.target_modules, what=what)
        if _BUILT_TO_TRAIN.get():
            _say_tied_head(model, what)
            _say_expert_lora(model, what, lora.target_modules)
    else:
        with peft_wrapping():
            model = peft.inject_adapter_in_model(config, model)
        if is_regex(lora.target_modules):
            check_wrapped(model, lora.target_modules, what=what)
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


def _said(targets) -> str:
    """`targets` as a message quotes them: a regular expression as written (its repr doubles each backslash)."""
    return f"'{targets}'" if is_regex(targets) else str(targets)


def _leave_out(targets, model: nn.Module) -> str:
    """How to keep `targets` off an MoE's fused expert weights."""
    linear = linear_module_names(model)
    if is_regex(targets):
        return f"make the regular expression match linear layers alone (their last names: {linear})"
    reach = reaching(targets, expert_weights(model))
    return f"leave out the names that reach them ({reach}; the linear layers: {linear})"


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
