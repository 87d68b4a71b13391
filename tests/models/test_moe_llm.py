"""A Mixture-of-Experts LLM (Qwen3-MoE, Qwen2-MoE; tiny ones in the on-disk format of a release) as the speech LLM's
decoder: the loss llmasr trains on is the one its own Hugging Face forward computes, the router's load-balancing
term included exactly when config.json's output_router_logits asks for it, and the start-up says which."""

import json

import pytest
import torch

from llmasr.config_io import from_dict
from llmasr.models.builder import build_model
from llmasr.models.config import ModelConfig
from llmasr.models.llm import base_lm
from llmasr.models.start_notes import start_notes
from llmasr.testing.tiny_llm import write_tiny_llm_dir
from llmasr.testing.tiny_recipe import random_batch, tiny_model_section


def moe_dir(path, arch: str, router_logits: bool):
    path = write_tiny_llm_dir(path, arch=arch)
    config = json.loads((path / "config.json").read_text())
    config.update(output_router_logits=router_logits, router_aux_loss_coef=0.5)  # a coefficient the test can see
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("router_logits", [True, False])
@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_the_training_loss_is_the_moe_s_own_forward_loss(tmp_path, arch, router_logits):
    """With output_router_logits true the HF forward adds router_aux_loss_coef x the load-balancing loss; llmasr's
    loss, computed from the decoder's hidden states, had left it out."""
    torch.manual_seed(0)
    model = build_model(tiny_model_section(moe_dir(tmp_path / arch, arch, router_logits), freeze_encoder=True))
    model.train()
    batch = random_batch(model, ["hello world", "the quick brown fox jumps"], frames=[24, 40])
    out = model(batch)
    _, _, _, merged = model._embed(batch, for_generation=False)
    hf = base_lm(model.llm)(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask,
                            position_ids=merged.position_ids, labels=merged.labels, use_cache=False)  # fmt: skip
    assert (hf.aux_loss is not None) == router_logits
    torch.testing.assert_close(out.loss, hf.loss, rtol=1e-5, atol=1e-6)
    if router_logits:  # the term is there, large enough to matter at this coefficient
        assert float(0.5 * hf.aux_loss.detach()) > 0.1
        assert float(out.router_aux_sum / out.n_tokens) == pytest.approx(float(hf.aux_loss), rel=1e-5)
    else:
        assert out.router_aux_sum is None


@pytest.mark.parametrize("router_logits", [True, False])
def test_start_up_says_whether_the_router_loss_is_trained_on(tmp_path, router_logits):
    path = moe_dir(tmp_path / "m", "qwen3_moe", router_logits)
    notes = [
        n for n in start_notes(from_dict(ModelConfig, tiny_model_section(path), "model")) if "Mixture-of-Experts" in n
    ]
    assert len(notes) == 1
    said = "is in the training loss, router_aux_loss_coef 0.5" if router_logits else "is not in the training loss"
    assert f"model.llm.path is a Mixture-of-Experts LLM (8 experts, top-2): its router's load-balancing loss {said}" \
        in notes[0]  # fmt: skip
    dense = write_tiny_llm_dir(tmp_path / "dense")
    assert not [n for n in start_notes(from_dict(ModelConfig, tiny_model_section(dense), "model")) if "Experts" in n]


def test_an_moe_whose_config_asks_for_the_router_loss_decodes(tmp_path):
    """output_router_logits true: transformers' forward computed the load-balancing loss at each cached generation
    step over the whole attention mask and the new position's router logits alone, and raised (validation's WER
    after the first epoch, `llmasr decode`)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_section(moe_dir(tmp_path / "m", "qwen3_moe", True), freeze_encoder=True)).eval()
    batch = random_batch(model, ["hello world", "the quick brown fox jumps"], frames=[24, 40])
    texts = model.generate(batch, max_new_tokens=4)
    assert len(texts) == 2


def test_lora_on_fused_experts_with_dropout_is_refused_naming_the_keys(tmp_path):
    """peft wraps an MoE's 3-D expert weights (and, under all-linear, its router) with its ParamWrapper, which takes
    no dropout: peft's own ValueError had named neither the recipe key nor the experts."""
    from llmasr.config_io import ConfigError

    path = write_tiny_llm_dir(tmp_path / "m", arch="qwen2_moe")
    for targets in ("all-linear", ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]):
        section = tiny_model_section(path)
        section["llm"]["lora"].update(target_modules=targets, dropout=0.05)
        with pytest.raises(ConfigError) as err:
            build_model(section)
        reach = "all-linear" if targets == "all-linear" else "['gate_proj', 'up_proj', 'down_proj']"
        assert str(err.value).startswith(
            f"model.llm.lora.target_modules {targets} reach this MoE's fused expert weights (mlp.experts.gate_up_proj, "
            "mlp.experts.down_proj: 3-D parameters, which peft wraps with its ParamWrapper), and peft trains those "
            f"without dropout only: set model.llm.lora.dropout: 0, or leave out the names that reach them ({reach};"
        )
    section = tiny_model_section(path)  # a regular expression: quoted as written, and how to narrow it said
    section["llm"]["lora"].update(target_modules=r".*\.experts\.(gate|up|down)_proj", dropout=0.05)
    with pytest.raises(ConfigError) as err:
        build_model(section)
    assert str(err.value) == (
        r"model.llm.lora.target_modules '.*\.experts\.(gate|up|down)_proj' reach this MoE's fused expert weights "
        "(mlp.experts.gate_up_proj, mlp.experts.down_proj: 3-D parameters, which peft wraps with its ParamWrapper), "
        "and peft trains those without dropout only: set model.llm.lora.dropout: 0, or make the regular expression "
        "match linear layers alone (their last names: ['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', "
        "'q_proj', 'shared_expert_gate', 'up_proj', 'v_proj'])"
    )


def test_lora_names_of_the_experts_reach_fused_experts_and_all_linear_says_it_trains_the_router(tmp_path, caplog):
    """The recipes' [q_proj, ..., gate_proj, up_proj, down_proj] on a Qwen3-MoE (no nn.Linear of those names: its
    experts are 3-D parameters, which peft reaches by those names) had been refused as matching nothing."""
    path = write_tiny_llm_dir(tmp_path / "m", arch="qwen3_moe")
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for targets, router in ((names, False), ("all-linear", True)):
        section = tiny_model_section(path)
        section["llm"]["lora"].update(target_modules=targets, dropout=0.0)
        caplog.clear()
        with caplog.at_level("WARNING", logger="llmasr.models.lora"):
            model = build_model(section)
        trained = {n.split(".layers.0.", 1)[-1] for n, p in model.llm.named_parameters() if p.requires_grad}
        assert "mlp.experts.lora_A.default.weight" in trained  # down_proj's adapter
        assert ("mlp.gate.lora_A.default.weight" in trained) == router
        said = [r.getMessage() for r in caplog.records if "fused expert weights" in r.getMessage()]
        assert len(said) == 1 and "(mlp.experts.down_proj, mlp.experts.gate_up_proj, in each MoE layer)" in said[0]
        assert ("on its router (mlp.gate.weight): which experts each token runs trains too" in said[0]) == router
