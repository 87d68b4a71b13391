"""model.llm.fused_kernels: refused where it cannot run (CPU, ZeRO-3, no liger-kernel, unknown model type, old
liger), and dispatched to liger's API on the real tiny model; liger itself is a stand-in module put in
sys.modules (it needs triton and CUDA), whose loss computes what liger's documents: the summed CE of
`_input @ lin_weight.T` and the token accuracy."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from llmasr.commands.check import main as check_main
from llmasr.models.builder import build_model
from llmasr.models.config import LLMConfig, LoraConfig
from llmasr.models.fused_kernels import FusedKernelError, apply_fused_kernels, check_fused_kernels
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.testing.tiny_recipe import random_batch, tiny_model_section
from llmasr.train.flops import FlopCounter

CUDA = torch.device("cuda")  # a device object only: nothing runs on it


class FakeFusedLinearCE(nn.Module):
    def __init__(self, ignore_index=-100, reduction="mean", return_token_accuracy=False):
        super().__init__()
        self.reduction, self.accuracy = reduction, return_token_accuracy

    def forward(self, lin_weight, _input, target, bias=None):
        logits = F.linear(_input, lin_weight, bias).float()
        loss = F.cross_entropy(logits, target, reduction=self.reduction)
        if not self.accuracy:
            return loss
        return SimpleNamespace(loss=loss, token_accuracy=(logits.argmax(-1) == target).float().mean())


class OldFusedLinearCE(nn.Module):
    def __init__(self, ignore_index=-100, reduction="mean"):
        super().__init__()


@pytest.fixture
def fake_liger(monkeypatch):
    """liger_kernel.transformers with a Qwen2 patch that records its calls."""
    calls = []
    api = types.ModuleType("liger_kernel.transformers")
    api.apply_liger_kernel_to_qwen2 = lambda **kw: calls.append(kw)
    api.apply_liger_kernel_to_llama = lambda **kw: calls.append(kw)
    api.LigerFusedLinearCrossEntropyLoss = FakeFusedLinearCE
    pkg = types.ModuleType("liger_kernel")
    pkg.transformers = api
    monkeypatch.setitem(sys.modules, "liger_kernel", pkg)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", api)
    return SimpleNamespace(api=api, calls=calls)


def liger_cfg(llm_dir) -> LLMConfig:
    return LLMConfig(path=str(llm_dir), fused_kernels="liger")


def test_none_asks_for_nothing(tiny_llm_dir):
    check_fused_kernels(LLMConfig(path=str(tiny_llm_dir)), zero_stage=3, device=torch.device("cpu"))


def test_refused_on_cpu_before_anything_else(tiny_llm_dir, fake_liger):
    with pytest.raises(FusedKernelError, match="CUDA only; this run is on cpu.*fused_kernels=none"):
        check_fused_kernels(liger_cfg(tiny_llm_dir), zero_stage=2, device=torch.device("cpu"))


def test_refused_without_liger_kernel_saying_how_to_install(tiny_llm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(FusedKernelError, match="liger_kernel is not importable.*pip install liger-kernel"):
        check_fused_kernels(liger_cfg(tiny_llm_dir), zero_stage=2, device=CUDA)


def test_refused_under_zero3(tiny_llm_dir, fake_liger):
    with pytest.raises(FusedKernelError, match="ZeRO stage 3 partitions"):
        check_fused_kernels(liger_cfg(tiny_llm_dir), zero_stage=3, device=CUDA)


def test_refused_for_a_model_type_liger_does_not_know(tiny_llm_dir, fake_liger):
    del fake_liger.api.apply_liger_kernel_to_qwen2
    with pytest.raises(FusedKernelError, match="no kernels for the LLM's model type 'qwen2'.*it has: llama"):
        check_fused_kernels(liger_cfg(tiny_llm_dir), zero_stage=2, device=CUDA)


def test_refused_for_a_liger_without_token_accuracy(tiny_llm_dir, fake_liger):
    fake_liger.api.LigerFusedLinearCrossEntropyLoss = OldFusedLinearCE
    with pytest.raises(FusedKernelError, match="upgrade it"):
        check_fused_kernels(liger_cfg(tiny_llm_dir), zero_stage=2, device=CUDA)
    fake_liger.api.LigerFusedLinearCrossEntropyLoss = FakeFusedLinearCE
    check_fused_kernels(liger_cfg(tiny_llm_dir), zero_stage=2, device=CUDA)  # the complete API passes


def _loss_grads_flops(model, batch):
    model.eval()  # the encoder's dropout off: both passes see the same network
    model.zero_grad(set_to_none=True)
    counter = FlopCounter(model)
    with counter.measure(batch):
        out = model(batch)
    out.loss.backward()
    counter.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, counter.take().flops


def test_dispatch_patches_the_base_llm_and_keeps_the_labels_only_loss(tiny_llm_dir, fake_liger):
    torch.manual_seed(0)
    model = build_model(tiny_model_section(tiny_llm_dir))
    batch = random_batch(model, ["hello world", "the quick brown fox"], frames=[20, 26])
    plain, plain_grads, plain_flops = _loss_grads_flops(model, batch)
    keys = set(model.state_dict())
    apply_fused_kernels(model, liger_cfg(tiny_llm_dir))
    base = model.llm.get_base_model()
    assert fake_liger.calls == [
        {"model": base, "rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
         "fused_linear_cross_entropy": False}
    ]  # fmt: skip
    assert model.fused_head.weight is base.get_output_embeddings().weight
    assert set(model.state_dict()) == keys  # the fused head owns nothing: checkpoints are unchanged
    fused, fused_grads, fused_flops = _loss_grads_flops(model, batch)
    torch.testing.assert_close(fused.loss, plain.loss)
    assert int(fused.n_tokens) == int(plain.n_tokens) == batch.labelled_tokens
    assert int(fused.n_correct) == int(plain.n_correct)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, msg=name)
    assert fused_flops == pytest.approx(plain_flops, rel=1e-12)  # the head's matmul is still counted


def test_fused_loss_only_sees_labelled_positions(tiny_llm_dir, fake_liger):
    seen = []
    model = build_model(tiny_model_section(tiny_llm_dir))
    apply_fused_kernels(model, liger_cfg(tiny_llm_dir))
    model.fused_head.register_forward_hook(lambda mod, args, out: seen.append(args))
    batch = random_batch(model, ["hello world"], frames=[20])
    model(batch)
    selected, target_ids = seen[0]
    assert selected.shape == (batch.labelled_tokens, model.llm.get_base_model().config.hidden_size)
    assert (target_ids >= 0).all()  # no ignore_index rows reach the kernel


def test_check_command_refuses_without_liger(tiny_llm_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    manifest = write_tiny_corpus(tmp_path / "c", n=4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=tmp_path / "run")))
    args = ["--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path / "o")]
    assert check_main([*args, "model.llm.fused_kernels=liger"]) == 2
    assert "pip install liger-kernel" in capsys.readouterr().err
    assert check_main([*args, "model.llm.fused_kernels=triton"]) == 2
    assert "fused_kernels" in capsys.readouterr().err


def test_train_refuses_on_cpu_before_loading_anything(tiny_llm_dir, tmp_path, fake_liger, capsys):
    from llmasr.cli import main

    manifest = write_tiny_corpus(tmp_path / "c", n=4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=tmp_path / "run")))
    argv = ["train", "--config", str(recipe), "--deepspeed", "zero2", "model.llm.fused_kernels=liger"]
    assert main(argv) == 2
    assert "CUDA only; this run is on cpu" in capsys.readouterr().err
    assert fake_liger.calls == []  # refused before any model was built or patched


@pytest.mark.parametrize("targets", [["q_proj", "lm_head"], "lm_head", ".*(lm_head|q_proj)"])
def test_refused_for_lora_on_the_output_head_before_liger_is_asked(tiny_llm_dir, targets, monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # the recipe alone is at fault: found without liger
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    cfg = LLMConfig(path=str(tiny_llm_dir), fused_kernels="liger", lora=LoraConfig(target_modules=targets))
    with pytest.raises(FusedKernelError, match="model.llm.lora.target_modules wraps the output head \\(lm_head\\)"):
        check_fused_kernels(cfg, zero_stage=2, device=CUDA)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear", ".*_proj", ["head"]])
def test_lora_elsewhere_passes(tiny_llm_dir, fake_liger, targets):
    cfg = LLMConfig(path=str(tiny_llm_dir), fused_kernels="liger", lora=LoraConfig(target_modules=targets))
    check_fused_kernels(cfg, zero_stage=2, device=CUDA)


@pytest.mark.parametrize(
    ("saved", "field"),
    [({"target_modules": ["lm_head", "q_proj"]}, "target_modules"), ({"modules_to_save": ["head"]}, "modules_to_save")],
)
def test_refused_for_a_saved_adapter_on_the_output_head(tiny_llm_dir, tmp_path, fake_liger, saved, field):
    """peft matches target_modules by whole name and modules_to_save by any ending ("head" takes lm_head)."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"target_modules": ["q_proj"], **saved}))
    cfg = LLMConfig(path=str(tiny_llm_dir), fused_kernels="liger", adapter=str(adapter))
    with pytest.raises(FusedKernelError, match=f"the adapter's {field} \\(.*adapter_config.json\\) wraps the output"):
        check_fused_kernels(cfg, zero_stage=2, device=CUDA)
    (adapter / "adapter_config.json").write_text(json.dumps({"target_modules": ["q_proj"], "modules_to_save": None}))
    check_fused_kernels(cfg, zero_stage=2, device=CUDA)


def test_check_command_refuses_lora_on_the_output_head(tiny_llm_dir, tmp_path, fake_liger, capsys):
    manifest = write_tiny_corpus(tmp_path / "c", n=4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=tmp_path / "run")))
    args = ["--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path / "o")]
    assert check_main([*args, "model.llm.fused_kernels=liger", "model.llm.lora.target_modules=[q_proj,lm_head]"]) == 2
    assert "wraps the output head (lm_head)" in capsys.readouterr().err


def test_patch_flags_follow_the_patch_signature():
    """liger's Gemma patches take `geglu` where the others take `swiglu` (passing swiglu made them raise at training
    start), and Pixtral's takes no loss flags at all."""
    from llmasr.models.fused_kernels import patch_flags

    def gemma(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, geglu=True, model=None):
        pass

    def pixtral(rope=True, rms_norm=True, swiglu=True, model=None):
        pass

    assert patch_flags(gemma) == {"rope": True, "rms_norm": True, "geglu": True, "cross_entropy": False,
                                  "fused_linear_cross_entropy": False}  # fmt: skip
    assert patch_flags(pixtral) == {"rope": True, "rms_norm": True, "swiglu": True}
    assert patch_flags(lambda **kw: None)["swiglu"] is True


def test_refused_for_an_llm_that_transforms_its_logits(tmp_path, fake_liger):
    """Gemma 2's soft cap (and Granite's, Cohere's scales) act on the head's logits, which the fused loss never
    forms: refused at start-up, not trained on another loss."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma2", "final_logit_softcapping": 30.0}))
    fake_liger.api.apply_liger_kernel_to_gemma2 = lambda **kw: None
    with pytest.raises(FusedKernelError, match="transforms its output head's logits"):
        check_fused_kernels(liger_cfg(tmp_path), zero_stage=2, device=CUDA)


def test_a_refusal_names_the_recipe_line_that_asks_for_the_kernels(tiny_llm_dir, tmp_path, monkeypatch, capsys):
    """`fused_kernels: liger` written in a recipe, refused by `llmasr check` where liger-kernel does not import: the
    error had named the key as `model.llm.fused_kernels=liger`, which no recipe line or override could be matched
    to, so it alone of the check's refusals named no file and line."""
    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    manifest = write_tiny_corpus(tmp_path / "c", n=4)
    data = tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=tmp_path / "run")
    data["model"]["llm"]["fused_kernels"] = "liger"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if "fused_kernels" in text)
    assert check_main(["--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: model.llm.fused_kernels: liger: liger_kernel is not importable" in err
    assert err.splitlines()[0].endswith(f"or set model.llm.fused_kernels=none ({recipe}, line {line})")


def test_reads_the_llm_config_as_the_loader_does(tiny_llm_dir, tmp_path, fake_liger):
    """A config.json saved with a byte-order mark (as Windows editors write it) loads as the LLM; the fused-kernel
    check had read it with a JSON reader of its own and refused it as unreadable."""
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_bytes(b"\xef\xbb\xbf" + (tiny_llm_dir / "config.json").read_bytes())
    check_fused_kernels(liger_cfg(llm), zero_stage=2, device=CUDA)
    (llm / "config.json").write_text('{\n  "model_type": "qwen2",\n', encoding="utf-8")
    with pytest.raises(FusedKernelError, match=r"cannot read model_type from .*config.json.*line 3"):
        check_fused_kernels(liger_cfg(llm), zero_stage=2, device=CUDA)
    (llm / "config.json").write_text(json.dumps({"hidden_size": 8}), encoding="utf-8")
    with pytest.raises(FusedKernelError, match="has no model_type"):
        check_fused_kernels(liger_cfg(llm), zero_stage=2, device=CUDA)
