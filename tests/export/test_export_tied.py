"""Export of an LLM with tied input/output embeddings (Qwen2.5-0.5B/1.5B, Qwen3-1.7B tie them): plain transformers
loads DIR/llm and computes what the trained peft model computed; the config stays tied unless LoRA sat on one side
of the pair, in which case the export unties it and says so."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from llmasr.export.export import export_model, merge_llm
from llmasr.models.exported import load_exported
from llmasr.testing.run_dirs import TARGETS, train_run
from llmasr.testing.tiny_recipe import random_batch, speech_logits, tiny_model_section

IDS = torch.tensor([[1, 5, 9, 20, 33, 2, 7, 250], [3, 3, 40, 41, 42, 100, 200, 299]])
UNTIE_MESSAGE = "LoRA was trained on one side of tied input/output embeddings: the export unties them"

# name: (LLM LoRA target_modules, LLM frozen under the LoRA, ZeRO stage, config still tied after export)
CASES = {
    # ZeRO-0 saves the frozen tied matrix under its second name (lm_head.weight); the export must accept that.
    "attention_lora_zero0": (["q_proj", "v_proj"], True, 0, True),
    "attention_lora_zero2": (["q_proj", "v_proj"], True, 2, True),
    "lm_head_lora": (["q_proj", "lm_head"], True, 3, False),
    "full_finetune_attention_lora": (["q_proj", "v_proj"], False, 3, True),
    "full_finetune_lm_head_lora": (["v_proj", "lm_head"], False, 2, False),
}


@pytest.fixture(scope="module")
def tied_llm(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    path = write_tiny_llm_dir(tmp_path_factory.mktemp("tied") / "llm", tie_word_embeddings=True)
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is True
    llm = AutoModelForCausalLM.from_pretrained(str(path))
    assert llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    return path


def untie_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmasr.export.merge" and "unties" in r.getMessage()]


@pytest.mark.parametrize("case", list(CASES))
def test_tied_embeddings_export(tied_llm, train_corpus, case, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    targets, frozen, stage, stays_tied = CASES[case]
    section = tiny_model_section(tied_llm, ctc_weight=0.0)  # SAN-M from conf, fully trained
    section["llm"]["lora"]["target_modules"] = targets
    section["llm"]["freeze"] = frozen
    run = train_run(tmp_path / "run", section, train_corpus, preset=f"zero{stage}")
    ref = run.reference_model()  # the trainer's own tensors
    base = ref.llm.get_base_model()
    embedding = base.get_input_embeddings().weight.detach().clone()
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight  # the trained model is tied
    with torch.no_grad():
        want = ref.llm(input_ids=IDS).logits

    caplog.set_level(logging.WARNING, logger="llmasr.export.merge")
    caplog.clear()  # the training's own notes
    out = export_model(run.run_dir, tmp_path / "model", dtype="fp32")
    assert untie_warnings(caplog) == ([] if stays_tied else [UNTIE_MESSAGE])
    # the training's tied-head note is not said again as the export builds the model for the trained weights
    assert not [r.getMessage() for r in caplog.records if r.name == "llmasr.models.lora"]
    config = json.loads((out / "llm" / "config.json").read_text())
    assert config["tie_word_embeddings"] is stays_tied

    plain = AutoModelForCausalLM.from_pretrained(str(out / "llm")).eval()
    assert (plain.lm_head.weight is plain.model.embed_tokens.weight) is stays_tied
    if not frozen:  # full fine-tuning moved the shared matrix, and the export carries the moved values
        from safetensors.torch import load_file

        original = load_file(str(tied_llm / "model.safetensors"))["model.embed_tokens.weight"]
        assert not torch.allclose(original, embedding)
    torch.testing.assert_close(plain.model.embed_tokens.weight.detach(), embedding, rtol=0, atol=0)
    if not stays_tied:  # the head carries the merged adapter, the input side does not
        assert not torch.allclose(plain.lm_head.weight, plain.model.embed_tokens.weight)
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, want, rtol=0, atol=1e-5)

    # The whole speech model through `llmasr decode --model DIR`'s loader agrees too.
    model = load_exported(out)
    batch = random_batch(ref, TARGETS, seed=4)
    torch.testing.assert_close(speech_logits(model, batch), speech_logits(ref, batch), rtol=0, atol=1e-5)


def test_adapter_only_export_of_lm_head_lora_on_tied_embeddings(tied_llm, train_corpus, tmp_path):
    """--adapter-only keeps the base tied and applies the lm_head adapter at load time: same model as merged."""
    section = tiny_model_section(tied_llm, ctc_weight=0.0)
    section["llm"]["lora"]["target_modules"] = ["q_proj", "lm_head"]
    run = train_run(tmp_path / "run", section, train_corpus)
    ref = run.reference_model()
    merged = load_exported(export_model(run.run_dir, tmp_path / "merged", dtype="fp32"))
    adapter = load_exported(export_model(run.run_dir, tmp_path / "adapter", adapter_only=True))
    # only the adapter's own tensors: peft's save_pretrained had added full copies of the frozen, unresized embedding
    # and head (vocab x hidden each, a GB for a 1.5B Qwen) whenever lm_head was a target
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert sorted(k for k in f.keys() if "lora_" not in k) == []
    batch = random_batch(ref, TARGETS, seed=6)
    want = speech_logits(ref, batch)
    torch.testing.assert_close(speech_logits(adapter, batch), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(speech_logits(merged, batch), want, rtol=0, atol=1e-5)
    # without those copies, plain peft over the base still computes what the merged LLM does
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    over_base = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tied_llm)), str(tmp_path / "adapter" / "adapter")
    )
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged" / "llm"))
    with torch.no_grad():
        torch.testing.assert_close(
            over_base.eval()(input_ids=IDS).logits, plain.eval()(input_ids=IDS).logits, rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("targets", [["embed_tokens"], ["embed_tokens", "q_proj", "lm_head"]])
def test_merge_llm_with_lora_on_the_input_embedding(tied_llm, tmp_path, caplog, targets):
    """LoRA on embed_tokens (peft's Embedding layer; the recipe only names Linear layers, so this is built directly):
    the merged input embedding differs from the output head, so the saved model is untied and still exact."""
    import peft
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(str(tied_llm))
    llm = peft.get_peft_model(llm, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():  # lora_embedding_B starts at zero: give every adapter tensor non-trivial values
        g = torch.Generator().manual_seed(3)
        for p in (p for p in llm.parameters() if p.requires_grad):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    llm.eval()
    head = llm.get_base_model().get_output_embeddings().weight.detach().clone()
    with torch.no_grad():
        want = llm(input_ids=IDS).logits
    caplog.set_level(logging.WARNING, logger="llmasr.export.merge")
    merged = merge_llm(llm)
    assert untie_warnings(caplog) == [UNTIE_MESSAGE]
    assert merged.config.tie_word_embeddings is False
    merged.save_pretrained(str(tmp_path / "llm"))
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "llm")).eval()
    assert json.loads((tmp_path / "llm" / "config.json").read_text())["tie_word_embeddings"] is False
    assert plain.lm_head.weight is not plain.model.embed_tokens.weight
    if "lm_head" not in targets:  # the head kept the pretrained matrix; only the input side moved
        torch.testing.assert_close(plain.lm_head.weight.detach(), head, rtol=0, atol=0)
    assert not torch.allclose(plain.model.embed_tokens.weight, head)
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, want, rtol=0, atol=1e-5)
