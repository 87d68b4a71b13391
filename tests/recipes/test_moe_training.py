"""The real training loop, export and decode over a tiny Qwen3-MoE whose config.json asks for the router's
load-balancing loss, with LoRA on every linear layer (peft: attention, the fused 3-D expert weights, the router)."""

import json

import pytest
import torch

from llmasr.export.export import export_model
from llmasr.models.exported import load_exported
from llmasr.models.llm import base_lm
from llmasr.testing.run_dirs import TEXTS, model_section, train_run, write_corpus
from llmasr.testing.tiny_llm import write_tiny_llm_dir
from llmasr.testing.tiny_recipe import random_batch


@pytest.fixture(scope="module")
def moe_run(tiny_encoder_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_run")
    llm = write_tiny_llm_dir(root / "llm", arch="qwen3_moe")
    config = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps({**config, "output_router_logits": True, "router_aux_loss_coef": 0.1}))
    section = model_section(llm, tiny_encoder_dir, encoder_lora=False)
    section["llm"]["lora"].update(target_modules="all-linear", dropout=0.0)
    corpus = write_corpus(root / "train", TEXTS * 2, name="train")
    run = train_run(root / "run", section, corpus, preset="zero2", updates=2, valid=corpus, save_every_updates=2)
    return run, export_model(run.run_dir, root / "model", dtype="fp32")


def test_the_router_loss_is_trained_on_and_logged(moe_run):
    run, _ = moe_run
    for stats in run.history:
        assert stats["router_aux_loss"] > 0.5  # top_k (2) for a balanced router: 8 experts x 8 x (2/8 x 1/8)
        want = stats["llm_loss"] + 0.3 * stats["ctc_loss"] + 0.1 * stats["router_aux_loss"]
        assert stats["loss"] == pytest.approx(want, rel=1e-6)
    log = (run.run_dir / "train.log").read_text()
    assert "its router's load-balancing loss is in the training loss, router_aux_loss_coef 0.1 x the loss" in log
    assert log.count(" router_aux_loss=") == 2  # each update's line
    assert "on its router (mlp.gate.weight): which experts each token runs trains too" in log


def test_the_export_s_llm_is_the_trained_moe_to_plain_transformers(moe_run):
    from transformers import AutoModelForCausalLM

    run, out = moe_run
    trained = run.reference_model()
    plain = AutoModelForCausalLM.from_pretrained(str(out / "llm"), dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 33, 2, 40, 41, 42, 7]])
    with torch.no_grad():
        want = base_lm(trained.llm)(input_ids=ids).logits
        torch.testing.assert_close(plain(input_ids=ids).logits, want, rtol=0, atol=1e-5)
    # a training setting the export turns off: plain transformers' batched generate with a mask fails with it on
    assert json.loads((out / "llm" / "config.json").read_text())["output_router_logits"] is False
    ids, mask = torch.tensor([[0, 5, 17, 33], [40, 41, 42, 7]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False).shape == (2, 7)
    exported = load_exported(out)
    batch = random_batch(exported, TEXTS[:2], seed=1)
    assert len(exported.generate(batch, max_new_tokens=3)) == 2
