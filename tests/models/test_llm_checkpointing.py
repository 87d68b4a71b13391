"""model.llm.gradient_checkpointing with checkpoint_every: which decoder layers recompute, and that the gradients
are those of a run without checkpointing."""

from __future__ import annotations

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.builder import build_model
from llmasr.models.config import LLMConfig
from llmasr.models.llm import load_llm
from llmasr.models.llm_checkpointing import set_activation_checkpointing
from llmasr.testing.tiny_llm import write_tiny_llm_dir
from llmasr.testing.tiny_recipe import random_batch, tiny_model_section


def _flags(llm) -> list[bool]:
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return [bool(layer.gradient_checkpointing) for layer in base.model.layers]


def test_every_second_layer_recomputes(tmp_path):
    path = write_tiny_llm_dir(tmp_path / "llm", num_layers=4)
    model, _ = load_llm(path, gradient_checkpointing=True, checkpoint_every=2)
    assert _flags(model) == [True, False, True, False]
    assert set_activation_checkpointing(model, 3) == 2 and _flags(model) == [True, False, False, True]
    set_activation_checkpointing(model, 1)
    assert _flags(model) == [True] * 4
    set_activation_checkpointing(model, 0)
    assert _flags(model) == [False] * 4
    with pytest.raises(ValueError, match=">= 0"):
        set_activation_checkpointing(model, -1)


def _grads(model, batch):
    model.eval()  # dropout off; checkpointing still applies (it needs grad mode, not train mode)
    for layer in model.llm.get_base_model().model.layers:
        layer.train()  # transformers checkpoints only layers in training mode
    model.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("every", [1, 2])
def test_selective_checkpointing_keeps_the_gradients(tiny_llm_dir, every):
    section = tiny_model_section(tiny_llm_dir)
    torch.manual_seed(0)
    plain = build_model(section)
    batch = random_batch(plain, ["hello world", "the quick brown fox"], frames=[20, 26])
    expected = _grads(plain, batch)
    section["llm"].update(gradient_checkpointing=True, checkpoint_every=every)
    torch.manual_seed(0)
    ckpt = build_model(section)
    assert _flags(ckpt.llm) == [True, every == 1]
    got = _grads(ckpt, batch)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, msg=name)


def test_checkpoint_every_is_validated():
    with pytest.raises(ConfigError, match="checkpoint_every: must be >= 1"):
        LLMConfig(path="x", gradient_checkpointing=True, checkpoint_every=0).validate("model.llm")
    with pytest.raises(ConfigError, match="gradient_checkpointing is off"):
        LLMConfig(path="x", checkpoint_every=2).validate("model.llm")
    LLMConfig(path="x", gradient_checkpointing=True, checkpoint_every=2).validate("model.llm")


@pytest.mark.parametrize("lora", [True, False])
def test_a_frozen_llm_without_lora_still_recomputes(tiny_llm_dir, lora):
    """Adaptor-only training (llm.freeze, no LoRA) keeps the LLM in eval mode, yet gradients pass through it to the
    adaptor: with gradient_checkpointing its layers must still recompute in the backward (they had kept every
    activation), with dropout still off."""
    section = tiny_model_section(tiny_llm_dir, lora=lora)
    section["llm"]["gradient_checkpointing"] = True
    model = build_model(section).train()
    assert ("llm" in model.frozen_branches()) is not lora
    layers = model.llm.get_base_model().model.layers if lora else model.llm.model.layers
    calls = []
    mlp, forward = layers[0].mlp, layers[0].mlp.forward
    mlp.forward = lambda *args, **kwargs: (calls.append(1), forward(*args, **kwargs))[1]
    out = model(random_batch(model, ["zero one", "two three"]))
    assert len(calls) == 1
    out.loss.backward()
    assert len(calls) == 2  # recomputed in the backward
    if not lora:  # the frozen LLM's own modules stay in eval mode
        assert not any(m.training for m in layers[0].modules() if m is not layers[0])
