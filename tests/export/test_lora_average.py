"""Averaging checkpoints averages the models: LoRA's deltas B @ A, not its factors apart. The merged export holds the
exact mean of the checkpoints' merged weights; an adapter-only export the best rank-r approximation of the mean
delta (exact when the deltas span rank r); one checkpoint is left as it is."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llmasr.export.export import export_model, load_checkpoint_model
from llmasr.export.lora_average import average_lora, rank_r_mean
from llmasr.export.merge import merge_llm, merge_lora_modules
from llmasr.run_dir import CheckpointError, read_meta, resolve_checkpoint, select_tags
from llmasr.train.ds_files import read_trained_state

TAGS = ["update_00000002", "update_00000003", "update_00000004"]


def _states(run, tags):
    root = resolve_checkpoint(run).root
    return [read_trained_state(root / t, read_meta(root / t)) for t in tags]


def _merged(run, tag) -> dict[str, torch.Tensor]:
    """One checkpoint's model with its LoRA merged: encoder and LLM weights, float64, by their exported names."""
    model, _ = load_checkpoint_model(run, tag=tag)
    enc = merge_lora_modules(model.encoder).state_dict()
    llm = merge_llm(model.llm).state_dict()
    return {**{f"encoder/{k}": v.double() for k, v in enc.items()}, **{f"llm/{k}": v.double() for k, v in llm.items()}}


def _lora_modules(state) -> list[str]:
    """Module paths of the LoRA layers in a trained state, e.g. llm.base_model.model.model.layers.0.self_attn.q_proj."""
    return sorted(k.rsplit(".lora_A.", 1)[0] for k in state if ".lora_A." in k)


def _mean_delta(states, module: str) -> torch.Tensor:
    a, b = f"{module}.lora_A.default.weight", f"{module}.lora_B.default.weight"
    return torch.stack([st[b].double() @ st[a].double() for st in states]).mean(0)


def _best_rank(delta: torch.Tensor, r: int) -> tuple[torch.Tensor, float]:
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r], (s[r:].square().sum().sqrt() / s.square().sum().sqrt()).item()


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def _exported_name(module: str) -> str:
    """The exported weight of a LoRA layer: llm.base_model.model.X -> llm/X.weight, encoder.X -> encoder/X.weight."""
    if module.startswith("llm."):
        return "llm/" + module.removeprefix("llm.base_model.model.") + ".weight"
    return module.replace(".", "/", 1) + ".weight"


def test_averaged_merged_export_is_the_mean_of_the_checkpoints_merged_models(trained_run, tmp_path, caplog):
    """Before, A and B were averaged apart: s * mean(B) @ mean(A), another weight than the mean of the models."""
    caplog.set_level("INFO", logger="llmasr")
    assert select_tags(resolve_checkpoint(trained_run), 3, "last") == TAGS
    states = _states(trained_run, TAGS)
    each = [_merged(trained_run, t) for t in TAGS]
    exact = {k: torch.stack([w[k] for w in each]).mean(0) for k in each[0]}
    out = export_model(trained_run, tmp_path / "avg", average=3, dtype="fp32")
    assert f"averaging 3 checkpoints (by last): {', '.join(TAGS)}" in caplog.text  # which ones, named
    got = {f"llm/{k}": v for k, v in load_file(str(out / "llm" / "model.safetensors")).items()}
    got.update({f"encoder/{k}": v for k, v in load_file(str(out / "encoder.safetensors")).items()})
    assert set(got) == set(exact)
    model, _ = load_checkpoint_model(trained_run)
    modules = _lora_modules(states[0])
    assert any(m.startswith("encoder.") for m in modules) and any(m.startswith("llm.") for m in modules)
    for m in modules:
        # the averaged LoRA delta, to float32 rounding of the weights it is added to
        delta = model.get_submodule(m).scaling["default"] * _mean_delta(states, m)
        k = _exported_name(m)
        assert not torch.equal(each[0][k], each[-1][k]), k  # training moved the adapted weights
        assert _relative(got[k] - (exact[k] - delta), delta) < 1e-4, k
    for k in exact:
        torch.testing.assert_close(got[k].double(), exact[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_adapter_only_average_is_the_truncated_svd_of_the_mean_delta(trained_run, tmp_path):
    states = _states(trained_run, TAGS)
    out = export_model(trained_run, tmp_path / "adapter", average=3, adapter_only=True)
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    r = json.loads((out / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))["r"]
    modules = [m for m in _lora_modules(states[0]) if m.startswith("llm.")]
    assert modules
    worst = 0.0
    for module in modules:
        name = module.removeprefix("llm.")
        got = adapter[f"{name}.lora_B.weight"].double() @ adapter[f"{name}.lora_A.weight"].double()
        best, rel = _best_rank(_mean_delta(states, module), r)
        assert _relative(got, best) < 1e-6, module
        worst = max(worst, rel)
    assert worst > 1e-5  # the three deltas span more than rank r: the truncation is tested
    desc = yaml.safe_load((out / "llmasr_model.yaml").read_text(encoding="utf-8"))
    assert desc["source"]["average"]["n"] == 3
    assert desc["source"]["average"]["adapter_residual"] == pytest.approx(worst, rel=1e-4)


def test_checkpoints_sharing_their_A_average_exactly_into_an_adapter(trained_run):
    """All A_i equal: mean(B_i @ A) = mean(B_i) @ A has rank r, so the adapter holds it exactly (no residual)."""
    states = _states(trained_run, TAGS)
    for st in states[1:]:
        for k in st:
            if ".lora_A." in k:
                st[k] = states[0][k].clone()
    model, info = load_checkpoint_model(trained_run)
    trainable = read_meta(resolve_checkpoint(trained_run).path).trainable
    params = dict(model.named_parameters())
    base = {m: params[f"{m}.base_layer.weight"].detach().clone() for m in _lora_modules(states[0])}
    residuals = average_lora(model, states, trainable)
    assert set(residuals) == set(base) and max(residuals.values()) < 1e-6
    for m in base:
        a, b = params[f"{m}.lora_A.default.weight"], params[f"{m}.lora_B.default.weight"]
        torch.testing.assert_close((b @ a).double(), _mean_delta(states, m), rtol=0, atol=1e-8, msg=m)
        torch.testing.assert_close(params[f"{m}.base_layer.weight"], base[m], rtol=0, atol=1e-7, msg=m)


def test_an_average_of_one_checkpoint_is_the_checkpoint(trained_run):
    model, info = load_checkpoint_model(trained_run, average=1, average_by="best")
    tag = info["tags"][0]
    state = _states(trained_run, [tag])[0]
    params = dict(model.named_parameters())
    for k in state:
        if "lora_" in k:
            assert torch.equal(params[k].detach(), state[k].float()), k  # the factors as trained, not refactored
    assert info["lora_residuals"] == {}


def test_rank_r_mean_is_the_truncated_svd_of_the_mean():
    torch.manual_seed(0)
    for out_dim, in_dim, r, n in ((24, 16, 4, 3), (5, 40, 3, 4), (30, 6, 2, 5)):  # N*r above out, above in
        bs = [torch.randn(out_dim, r, dtype=torch.float64) for _ in range(n)]
        as_ = [torch.randn(r, in_dim, dtype=torch.float64) for _ in range(n)]
        mean = torch.stack([b @ a for b, a in zip(bs, as_)]).mean(0)
        b_new, a_new, remainder, rel = rank_r_mean(bs, as_, r)
        best, best_rel = _best_rank(mean, r)
        assert b_new.shape == (out_dim, r) and a_new.shape == (r, in_dim)
        torch.testing.assert_close(b_new @ a_new, best, rtol=0, atol=1e-10)
        torch.testing.assert_close(b_new @ a_new + remainder, mean, rtol=0, atol=1e-10)
        assert rel == pytest.approx(best_rel, rel=1e-9) and rel > 0.1


def test_a_lora_variant_is_refused_naming_the_layer(trained_run):
    """DoRA's magnitude normalises the adapted weight: its average is not base + s * mean(B @ A)."""
    model, _ = load_checkpoint_model(trained_run)
    trainable = read_meta(resolve_checkpoint(trained_run).path).trainable
    states = _states(trained_run, TAGS[:2])
    module = _lora_modules(states[0])[-1]
    layer = model.get_submodule(module)
    layer.use_dora["default"] = True
    with pytest.raises(CheckpointError, match=rf"--average: {module} trains a LoRA variant \(DoRA\)"):
        average_lora(model, states, trainable)


def test_lora_on_a_tied_output_head_averages_without_moving_the_input_embeddings(train_corpus, tmp_path):
    """The part of the mean delta rank r cannot hold goes into the head's base weight: with the head tied to the
    input embeddings it had gone into them too."""
    from transformers import AutoModelForCausalLM

    from llmasr.testing.run_dirs import train_run
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import tiny_model_section

    llm_dir = write_tiny_llm_dir(tmp_path / "llm", tie_word_embeddings=True)
    section = tiny_model_section(llm_dir, ctc_weight=0.0)
    section["llm"]["lora"]["target_modules"] = ["q_proj", "lm_head"]
    run = train_run(tmp_path / "run", section, train_corpus, updates=2, save_every_updates=1, keep_last=0).run_dir
    tags = ["update_00000001", "update_00000002"]
    each = [_merged(run, t) for t in tags]
    out = export_model(run, tmp_path / "avg", average=2, dtype="fp32")
    plain = AutoModelForCausalLM.from_pretrained(str(out / "llm"))
    original = load_file(str(llm_dir / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(plain.model.embed_tokens.weight.detach(), original)
    head = torch.stack([w["llm/lm_head.weight"] for w in each]).mean(0)
    assert not torch.equal(head, original.double())
    torch.testing.assert_close(plain.lm_head.weight.detach().double(), head, rtol=0, atol=1e-6)


def test_the_best_checkpoint_alone_is_named_as_one(trained_run, caplog):
    """--average-by best without --average takes the best one: the log had said "averaging 1 checkpoints"."""
    caplog.set_level("INFO", logger="llmasr")
    _, info = load_checkpoint_model(trained_run, average_by="best")
    assert f"averaging 1 checkpoint (by best): {info['tags'][0]}\n" in caplog.text


def test_an_average_of_copies_of_one_checkpoint_is_that_checkpoint_bit_for_bit(trained_run):
    """N copies of one checkpoint were refactored through the SVD: the merged weights came out a rounding off the
    checkpoint's and the adapter's factors another pair of the same product."""
    single, _ = load_checkpoint_model(trained_run)
    model, _ = load_checkpoint_model(trained_run)
    state = _states(trained_run, [resolve_checkpoint(trained_run).tag])[0]
    trainable = read_meta(resolve_checkpoint(trained_run).path).trainable
    residuals = average_lora(model, [state, dict(state), dict(state)], trainable)
    assert set(residuals) == set(_lora_modules(state)) and set(residuals.values()) == {0.0}
    want = dict(single.named_parameters())
    for k, p in model.named_parameters():
        assert torch.equal(p, want[k]), k
    for got, exact in (
        (merge_llm(model.llm), merge_llm(single.llm)),
        (merge_lora_modules(model.encoder), merge_lora_modules(single.encoder)),
    ):
        exact = exact.state_dict()
        assert all(torch.equal(v, exact[k]) for k, v in got.state_dict().items())
