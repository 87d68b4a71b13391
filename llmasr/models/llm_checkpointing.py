"""Activation checkpointing of a Hugging Face causal LM, every layer or every N-th (model.llm.gradient_checkpointing,
model.llm.checkpoint_every)."""

from __future__ import annotations

from torch import nn

from llmasr.config_io import ConfigError


def set_activation_checkpointing(model: nn.Module, every: int) -> int:
    """Recompute activations in the backward for every `every`-th decoder layer of an HF causal LM (1: all of them,
    0: none); the other layers keep theirs. Returns how many modules recompute. Checkpointing every second layer
    frees about half the activation memory for about half the recompute time of checkpointing all."""
    if every < 0:
        raise ValueError(f"every must be >= 0, got {every}")
    if every == 0:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        return 0
    # transformers 5 renamed it activation checkpointing; 4.x only has the old name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if every == 1:
        return sum(1 for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True)
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError as err:
        raise ConfigError(
            "model.llm.checkpoint_every > 1 needs per-layer checkpointing flags (transformers >= 4.52)"
        ) from err
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ConfigError(f"model.llm.checkpoint_every: {type(model).__name__} has no per-layer checkpointing flags")
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i % every == 0  # the per-layer flag transformers' layers read
    return sum(bool(layer.gradient_checkpointing) for layer in layers)
