"""model.llm.rotary_dtype: the one builder rounds every rotary frequency buffer of the LLM (found by module, through
LoRA's wrapper, on the meta device too), held in float32 so nothing casts them back; values and LLMs it cannot
apply to are refused naming the key."""

import pytest
import torch

from llmasr.config_io import ConfigError, from_dict
from llmasr.models.builder import build_model
from llmasr.models.config import ModelConfig
from llmasr.models.llm import base_lm
from llmasr.models.rotary import plain_transformers_line, rotary_buffers
from llmasr.testing.tiny_recipe import tiny_model_section


def frequencies(model) -> dict[str, torch.Tensor]:
    return {f"{path}.{name}": getattr(module, name) for path, module, name in rotary_buffers(model.llm)}


def exact(llm) -> torch.Tensor:
    rotary = base_lm(llm).model.rotary_emb
    return rotary.compute_default_rope_parameters(rotary.config)[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("lora", [True, False])
def test_the_builder_rounds_every_rotary_buffer(tiny_llm_dir, dtype, lora):
    section = tiny_model_section(tiny_llm_dir, lora=lora)
    section["llm"]["rotary_dtype"] = dtype
    model = build_model(section)
    found = frequencies(model)
    assert {k.rsplit(".", 1)[1] for k in found} == {"inv_freq", "original_inv_freq"}
    want = exact(model.llm).to(getattr(torch, dtype)).float()
    assert not torch.equal(want, exact(model.llm))  # the rounding changes these frequencies
    for name, buf in found.items():
        assert buf.dtype == torch.float32 and torch.equal(buf, want), name


def test_without_the_key_the_frequencies_stay_exact(tiny_llm_dir):
    model = build_model(tiny_model_section(tiny_llm_dir))
    assert all(torch.equal(b, exact(model.llm)) for b in frequencies(model).values())


def test_rounded_frequencies_change_the_logits_and_stay_rounded_through_a_forward(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir, lora=False)
    plain = build_model(section).eval()
    section["llm"]["rotary_dtype"] = "bfloat16"
    rounded = build_model(section).eval()
    embeds = torch.randn(1, 300, plain.llm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = plain.llm(inputs_embeds=embeds).logits, rounded.llm(inputs_embeds=embeds).logits
    assert not torch.equal(a, b)  # HF's small initial weights: a small change, but one
    want = exact(rounded.llm).bfloat16().float()
    assert all(torch.equal(buf, want) for buf in frequencies(rounded).values())


def test_the_meta_build_llmasr_check_makes_applies_it_too(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir)
    section["llm"]["rotary_dtype"] = "bfloat16"
    for weights in ("meta", "shapes"):
        found = frequencies(build_model(section, weights=weights))
        assert found and all(b.is_meta and b.dtype == torch.float32 for b in found.values())


@pytest.mark.parametrize("value", ["bf16", "int8", 16])
def test_a_value_other_than_the_three_dtypes_is_refused_naming_the_key(tiny_llm_dir, value):
    section = tiny_model_section(tiny_llm_dir)
    section["llm"]["rotary_dtype"] = value
    with pytest.raises(ConfigError, match=r"model\.llm\.rotary_dtype: .* not one of \['float32', 'bfloat16'"):
        from_dict(ModelConfig, section, "model")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT-2 (learned absolute positions: no rotary embedding)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from llmasr.testing.tiny_llm import DEFAULT_CORPUS, train_bpe_tokenizer

    path = tmp_path_factory.mktemp("gpt2")
    tok = train_bpe_tokenizer(DEFAULT_CORPUS, 300)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("weights", ["pretrained", "meta"])
def test_an_llm_without_rotary_frequencies_is_refused_naming_the_key(gpt2_dir, weights):
    section = tiny_model_section(gpt2_dir, lora=False)
    build_model(section, weights=weights)  # builds without the key
    section["llm"]["rotary_dtype"] = "bfloat16"
    with pytest.raises(ConfigError, match=r"model\.llm\.rotary_dtype: bfloat16, but the LLM .*gpt2.* \(GPT2LMHeadModel"
                       r"\) has no rotary embedding buffer \(inv_freq\) to round; remove the key"):  # fmt: skip
        build_model(section, weights=weights)


def test_the_plain_transformers_line_rounds_a_from_pretrained_model_as_llmasr_does(tiny_llm_dir):
    from transformers import AutoModelForCausalLM

    section = tiny_model_section(tiny_llm_dir, lora=False)
    section["llm"]["rotary_dtype"] = "bfloat16"
    ours = build_model(section)
    line = plain_transformers_line(ours.llm, "bfloat16")
    assert line.startswith("model.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq.to(torch.bfloat16)")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llm_dir))
    exec(line, {"torch": torch, "model": model})
    for name, buf in frequencies(ours).items():
        assert torch.equal(model.get_buffer(name), buf), name
