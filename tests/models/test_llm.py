"""models.llm: loading a Hugging Face LLM directory."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_transformers_from_before_the_dtype_rename_gets_torch_dtype(tiny_llm_dir, monkeypatch, pretrained):
    """pyproject.toml allows transformers releases whose loaders know the dtype as `torch_dtype` and hand a `dtype`
    on to the model's constructor, which refuses it: every load had failed there ("Qwen2ForCausalLM.__init__() got
    an unexpected keyword argument 'dtype'"), `llmasr check` and training alike. Such a release is stood in for by its
    version and loaders that refuse the new name as it does."""
    import transformers
    from transformers import AutoModelForCausalLM

    from llmasr.models.llm import load_llm

    def older(real):
        def load(*args, **kwargs):
            if "dtype" in kwargs:
                raise TypeError("Qwen2ForCausalLM.__init__() got an unexpected keyword argument 'dtype'")
            return real(*args, **kwargs)

        return load

    monkeypatch.setattr(transformers, "__version__", "4.51.3")
    for name in ("from_pretrained", "from_config"):
        monkeypatch.setattr(AutoModelForCausalLM, name, older(getattr(AutoModelForCausalLM, name)))
    model, _ = load_llm(tiny_llm_dir, dtype="bfloat16", pretrained=pretrained)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
