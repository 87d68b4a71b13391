"""LoRA on an LLM whose projections are transformers' Conv1D (GPT-2's c_attn, c_proj, c_fc: a linear layer with its
weight stored transposed), which peft wraps as it wraps nn.Linear: a recipe may name them, training touches only
their adapters, and the merged export computes in plain transformers what the trained model computed."""

from __future__ import annotations

import warnings

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.export.export import export_model
from llmasr.models.exported import load_exported
from llmasr.models.llm import load_llm
from llmasr.testing.run_dirs import TARGETS, train_run
from llmasr.testing.tiny_recipe import random_batch, speech_logits, tiny_model_section

IDS = torch.tensor([[1, 5, 9, 20, 33, 2, 7, 250], [3, 3, 40, 41, 42, 100, 200, 299]])


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmasr.testing.tiny_llm import DEFAULT_CORPUS, train_bpe_tokenizer, write_tiny_llm_dir

    tok = train_bpe_tokenizer(DEFAULT_CORPUS, 300)
    torch.manual_seed(0)
    ends = {"bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"), "eos_token_id": tok.eos_token_id}
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=512, **ends)
    return write_tiny_llm_dir(tmp_path_factory.mktemp("gpt2") / "llm", tokenizer=tok, model=GPT2LMHeadModel(config))


def test_lora_names_conv1d_projections(gpt2_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # peft's fan_in_fan_out correction, which no recipe key sets
        llm, _ = load_llm(gpt2_dir, lora={"r": 4, "alpha": 8, "target_modules": ["c_attn", "mlp.c_proj"]})
    trainable = sorted(n for n, p in llm.named_parameters() if p.requires_grad)
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.split(".lora_")[0].split("base_model.model.transformer.")[1] for n in trainable}
    assert wrapped == {f"h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "mlp.c_proj")}


def test_lora_on_conv1d_and_linear_layers_together_is_silent(gpt2_dir):
    """GPT-2's lm_head is an nn.Linear beside its Conv1D projections. peft keeps one fan_in_fan_out for the whole
    config and flips it at each change of kind: once a Conv1D had set it, LoRA on lm_head warned "fan_in_fan_out is
    set to True but the target module is `torch.nn.Linear`", of a setting no recipe key sets. Each layer still gets
    its own as its weight is stored."""
    from peft.tuners.lora import LoraLayer

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        llm, _ = load_llm(gpt2_dir, lora={"r": 4, "alpha": 8, "target_modules": ["c_attn", "lm_head"]})
    kinds = {n.rsplit(".", 1)[-1]: m.fan_in_fan_out for n, m in llm.named_modules() if isinstance(m, LoraLayer)}
    assert kinds == {"c_attn": True, "lm_head": False}


def test_unmatched_target_lists_the_conv1d_names(gpt2_dir):
    with pytest.raises(
        ConfigError, match=r"\['q_proj'\] match no .*available: \['c_attn', 'c_fc', 'c_proj', 'lm_head'\]"
    ):
        load_llm(gpt2_dir, lora={"target_modules": ["q_proj"]})


@pytest.mark.parametrize("targets", [["c_attn", "c_proj"], "all-linear"])
def test_conv1d_lora_merged_export_loads_in_transformers(gpt2_dir, train_corpus, tmp_path, targets):
    from transformers import AutoModelForCausalLM

    section = tiny_model_section(gpt2_dir, ctc_weight=0.0)
    section["llm"]["lora"]["target_modules"] = targets
    run = train_run(tmp_path / "run", section, train_corpus, updates=2)
    ref = run.reference_model()
    base = AutoModelForCausalLM.from_pretrained(str(gpt2_dir)).eval()
    with torch.no_grad():
        want = ref.llm(input_ids=IDS).logits
        assert not torch.allclose(base(input_ids=IDS).logits, want, atol=1e-4)  # the adapters learned something
    out = export_model(run.run_dir, tmp_path / "model", dtype="fp32")
    plain = AutoModelForCausalLM.from_pretrained(str(out / "llm")).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, want, rtol=0, atol=1e-5)
    batch = random_batch(ref, TARGETS, seed=2)
    torch.testing.assert_close(speech_logits(load_exported(out), batch), speech_logits(ref, batch), rtol=0, atol=1e-5)
