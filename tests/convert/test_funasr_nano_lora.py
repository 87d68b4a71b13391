"""`llmasr convert funasr` on a Nano fine-tuned with FunASR's own LoRA (llm_conf.use_lora): its lora_A / lora_B are
folded into the weights they adapt, so OUT's LLM computes what FunASR's LoRA layers compute; what FunASR would not
read, or that does not fit config.yaml's lora_conf, is refused naming the key and both sides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from llmasr.convert.funasr_nano import convert_funasr
from llmasr.testing.tiny_nano import LLM_DIR, write_nano_dir

LAYERS = ("llm.model.layers.0.self_attn.q_proj", "llm.model.layers.1.mlp.down_proj")


def with_lora(src: Path, *, use_lora=True, r=4, alpha=8, rank=4, layers=LAYERS, targets="layers") -> dict:
    """Give the LLM's LAYERS FunASR LoRA tensors of rank `rank` (config.yaml saying `r`, `alpha` and, unless
    `targets` is None, target_modules: by default the layers' own names); returns them."""
    config = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
    lora_conf = {"r": r, "lora_alpha": alpha, "lora_dropout": 0.05}
    if targets is not None:
        lora_conf["target_modules"] = [layer.rsplit(".", 1)[-1] for layer in layers] if targets == "layers" else targets
    config["llm_conf"].update(use_lora=use_lora, lora_conf=lora_conf)
    (src / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    saved = torch.load(src / "model.pt", weights_only=True)
    g = torch.Generator().manual_seed(1)
    added = {}
    for layer in layers:
        out_dim, in_dim = saved["state_dict"][f"{layer}.weight"].shape
        added[f"{layer}.lora_A"] = torch.randn(rank, in_dim, generator=g).to(torch.bfloat16)
        added[f"{layer}.lora_B"] = torch.randn(out_dim, rank, generator=g).to(torch.bfloat16)
    saved["state_dict"].update(added)
    torch.save(saved, src / "model.pt")
    return added


def source_llm(src: Path):
    """The source LLM with model.pt's base weights only (float32), as FunASR builds it before its LoRA layers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    state = torch.load(src / "model.pt", weights_only=True)["state_dict"]
    llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(src / LLM_DIR))).eval()
    llm.load_state_dict({k[4:]: v.float() for k, v in state.items() if k.startswith("llm.") and "lora_" not in k})
    return llm


def test_funasr_lora_is_folded_so_the_llm_computes_what_funasrs_lora_layers_compute(tmp_path):
    from transformers import AutoModelForCausalLM

    src = write_nano_dir(tmp_path / "src")
    lora = with_lora(src)
    convert_funasr(src, tmp_path / "out")
    folded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "llm")).eval()
    assert not any(k.endswith(("lora_A", "lora_B")) for k in folded.state_dict())

    # FunASR's LoRA layer computed beside each base layer: x W^T + b + alpha/r * x A^T B^T (alpha/r = 8/4)
    funasr = source_llm(src)
    for layer in LAYERS:
        a, b = lora[f"{layer}.lora_A"].float(), lora[f"{layer}.lora_B"].float()
        funasr.get_submodule(layer[4:]).register_forward_hook(
            lambda m, args, out, a=a, b=b: out + 2.0 * (args[0] @ a.T @ b.T)
        )
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    with torch.no_grad():
        want, got, without = funasr(ids).logits, folded(ids).logits, source_llm(src)(ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(without, want, atol=1e-2)  # the LoRA changes what the LLM computes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"use_lora": False}, r"llm_conf.use_lora is False: FunASR builds the LLM without them"),
        ({"r": 8}, r"q_proj.lora_A is \[4, 64\] and .lora_B \[64, 4\], but .*config.yaml llm_conf.lora_conf.r is 8"),
        ({"alpha": "big"}, r"config.yaml: llm_conf.lora_conf.lora_alpha is 'big'; it must be a number"),
        ({"layers": ["llm.lm_head"]}, r"llm.lm_head carries LoRA tensors, but the LLM ties lm_head to its input"),
        # FunASR builds LoRA layers only where target_modules says (default q_proj, v_proj); its loader drops the rest
        (
            {"targets": None},
            r"1 layer\(s\) carry LoRA tensors \(llm.model.layers.1.mlp.down_proj\) that FunASR never "
            r"loads: .*config.yaml llm_conf.lora_conf.target_modules is not set "
            r"\(FunASR's default \['q_proj', 'v_proj'\]\)",
        ),
        (
            {"targets": ["q_proj"]},
            r"\(llm.model.layers.1.mlp.down_proj\) that FunASR never loads: .*target_modules is "
            r"\['q_proj'\]",
        ),
        ({"targets": "q_proj"}, r"config.yaml: llm_conf.lora_conf.target_modules is 'q_proj'; it must be a list"),
    ],
)
def test_lora_funasr_would_not_run_as_stated_is_refused(tmp_path, kwargs, message):
    src = write_nano_dir(tmp_path / "src")
    with_lora(src, **kwargs)
    with pytest.raises(Exception, match=message):
        convert_funasr(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lora_on_funasrs_default_targets_folds_without_target_modules(tmp_path):
    """lora_conf without target_modules: FunASR gives q_proj and v_proj LoRA layers, so their tensors fold."""
    src = write_nano_dir(tmp_path / "src")
    layers = ("llm.model.layers.0.self_attn.q_proj", "llm.model.layers.1.self_attn.v_proj")
    lora = with_lora(src, layers=layers, targets=None)
    convert_funasr(src, tmp_path / "out")
    from safetensors.torch import load_file

    folded = load_file(str(tmp_path / "out" / "llm" / "model.safetensors"))
    base = torch.load(src / "model.pt", weights_only=True)["state_dict"]
    for layer in layers:
        a, b = lora[f"{layer}.lora_A"].float(), lora[f"{layer}.lora_B"].float()
        want = base[f"{layer}.weight"].float() + 2.0 * (b @ a)
        torch.testing.assert_close(folded[f"{layer[4:]}.weight"], want)
