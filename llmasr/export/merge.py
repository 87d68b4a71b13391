"""What an export makes of the trained model's LoRA and dtype: LoRA layers merged into plain weights (encoder and
LLM, tied embeddings kept consistent), the LLM cast to the export's dtype as transformers would load it, and the
refusal of an adapter-only export that would lose trained weights."""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from llmasr.models.llm_files import beyond_range

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The checkpoint cannot be exported as asked."""


def merge_lora_modules(module: nn.Module) -> nn.Module:
    """Merge every peft LoRA layer inside `module` into its base layer and put the base layer in its place."""
    from peft.tuners.lora import LoraLayer

    found = [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in found:
        if name == "":
            raise ExportError(f"{type(module).__name__} is itself a LoRA layer; cannot merge it in place")
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    left = [n for n, _ in module.named_parameters() if "lora_" in n]
    if left:
        raise ExportError(f"LoRA tensors left after merging: {left[:5]}")
    return module


def untie_adapted_embeddings(llm: nn.Module) -> None:
    """LoRA on one side of the tied embeddings of the peft-wrapped `llm`: give the output head its own weight and
    untie them in the config, so that merging (or adding to) that side leaves the other as the trained model had
    it, with the adapter on one side only."""
    from peft.tuners.lora import LoraLayer

    base = llm.get_base_model()
    in_emb, out_emb = base.get_input_embeddings(), base.get_output_embeddings()
    tied = (
        out_emb is not None and getattr(base.config, "tie_word_embeddings", False) and out_emb.weight is in_emb.weight
    )
    if tied and (isinstance(out_emb, LoraLayer) or isinstance(in_emb, LoraLayer)):
        target = out_emb.get_base_layer() if isinstance(out_emb, LoraLayer) else out_emb
        target.weight = nn.Parameter(target.weight.detach().clone())
        base.config.tie_word_embeddings = False
        log.warning("LoRA was trained on one side of tied input/output embeddings: the export unties them")


def merge_llm(llm: nn.Module) -> nn.Module:
    """A plain transformers model: LoRA merged (peft merge_and_unload) with tied embeddings kept consistent."""
    from peft import PeftModel

    if not isinstance(llm, PeftModel):
        return llm
    untie_adapted_embeddings(llm)
    merged = llm.merge_and_unload(progressbar=False, safe_merge=True)
    left = [n for n, _ in merged.named_parameters() if "lora_" in n]
    if left:
        raise ExportError(f"LoRA tensors left after merge_and_unload: {left[:5]}")
    if getattr(merged.config, "tie_word_embeddings", False) and merged.get_output_embeddings() is not None:
        if merged.get_output_embeddings().weight is not merged.get_input_embeddings().weight:
            raise ExportError("the LLM config ties input/output embeddings but the merged weights differ")
    return merged


def cast_llm(llm: nn.Module, dtype: torch.dtype) -> None:
    """`llm.to(dtype)`, except the tensors its class keeps in float32 when from_pretrained loads it in `dtype`
    (`_keep_in_fp32_modules_strict` in fp16 and bf16: an MoE router's gate and score bias; `_keep_in_fp32_modules` in
    fp16; matched as it matches them): the trained model had them in float32, rounded they route tokens elsewhere.
    A finite weight past the dtype's range (float16's 65504) is refused, naming it: it would be written as inf.
    Buffers outside the state dict stay as they are, as a model loaded in `dtype` has them."""
    names = set(getattr(llm, "_keep_in_fp32_modules_strict", None) or []) if dtype != torch.float32 else set()
    if dtype == torch.float16:
        names |= set(getattr(llm, "_keep_in_fp32_modules", None) or [])
    keep = re.compile("|".join(name.replace("*", ".*") for name in sorted(names))) if names else None
    saved = set(llm.state_dict())  # buffers out of it (rotary inv_freq) are rebuilt in float32 by from_pretrained
    cast = [(name, tensor) for name, tensor in [*llm.named_parameters(), *((n, b) for n, b in llm.named_buffers()
            if n in saved)] if tensor.is_floating_point() and not (keep and keep.search(name))]  # fmt: skip
    beyond = beyond_range(((name, tensor.data) for name, tensor in cast), dtype, held_inf=False)
    too_large = [f"{name} (largest |value| {largest:.6g})" for name, largest in beyond]
    for _, tensor in cast:
        tensor.data = tensor.data.to(dtype)
    if too_large:
        name, limit = str(dtype).removeprefix("torch."), torch.finfo(dtype).max
        raise ExportError(
            f"the LLM in {name}: {len(too_large)} tensor(s) hold values beyond its largest finite value {limit:g}, "
            f"which would be written as inf: {', '.join(too_large[:5])}"
            f"{' ...' if len(too_large) > 5 else ''}; choose --dtype bf16 or fp32"
        )


def exported_llm(llm: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The LLM as a merged export holds it in `dtype`: LoRA merged in float32, then cast. The export writes it and
    `as_exported` decodes a checkpoint with it: one sequence, so the two never drift apart."""
    merged = merge_llm(llm)
    cast_llm(merged, dtype)
    return merged


def as_exported(model: nn.Module, dtype: torch.dtype) -> None:
    """Make the trained SpeechLLM `model` (float32, LoRA unmerged) compute with the weights its export holds in
    `dtype`: LoRA merged into the encoder, the LLM as `exported_llm` makes it. Decoding a checkpoint so gives the
    texts of its export: rounding base weights and adapters apart and adding them at each step (a bfloat16 LLM)
    gave other logits."""
    model.encoder = merge_lora_modules(model.encoder)
    model.llm = exported_llm(model.llm, dtype)


def refuse_adapter_only_of(recipe, trainable: list[str]) -> None:
    """--adapter-only of a run whose recipe trains the base LLM (model.llm.freeze: false), refused from the recipe and
    the checkpoint's list of its trained tensors (`trainable`, its meta's) before any weight is read."""
    if not recipe.model.llm.freeze:
        _refuse_trained_base([n for n in trainable if n.startswith("llm.") and "lora_" not in n], recipe)


# What --adapter-only writes of the peft model, and so what check_adapter_only counts as carried: the adapters and
# the biases lora.bias trains. The base's embedding and head are left out: frozen and unresized (a trained base is
# refused), where peft copies them in whole (vocab x hidden each) whenever lm_head is a LoRA target.
ADAPTER_FILE = {"save_embedding_layers": False}


def check_adapter_only(model: nn.Module, recipe) -> None:
    """--adapter-only writes what peft's adapter file holds (the LoRA tensors, and the biases lora.bias trains):
    refuse when more of the LLM was trained."""
    from peft import PeftModel, get_peft_model_state_dict

    saved = set(get_peft_model_state_dict(model.llm, **ADAPTER_FILE)) if isinstance(model.llm, PeftModel) else set()
    trained = [
        f"llm.{n}" for n, p in model.llm.named_parameters() if p.requires_grad and "lora_" not in n and n not in saved
    ]
    _refuse_trained_base(trained, recipe)


def _refuse_trained_base(trained: list[str], recipe) -> None:
    if not trained:
        return
    why = " (model.llm.freeze: false in the run's recipe)" if not recipe.model.llm.freeze else ""
    more = f" and {len(trained) - 3} more" if len(trained) > 3 else ""
    raise ExportError(
        f"--adapter-only: the base LLM's own weights were trained beside LoRA{why}: {len(trained)} tensor(s), "
        f"{', '.join(trained[:3])}{more}. A peft adapter holds only the LoRA tensors; applied to the untrained base "
        "it would lose what these learned. Export the merged model instead (without --adapter-only)"
    )
