"""Our linear and transformer adaptors against FunASR's `Linear` and `Transformer` on the same weights.

Always on: pinned fixtures made once with FunASR (tests/fixtures/make_adaptor_fixtures.py).
Opt-in (LLMASR_PARITY=1 and funasr importable): a live comparison on fresh random weights and inputs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from llmasr.models.adaptors import build_adaptor
from llmasr.models.config import AdaptorConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_adaptor_fixtures as gen  # noqa: E402

sys.path.remove(str(FIXTURES))


def ours_from_funasr_kwargs(kind: str, kwargs: dict):
    # FunASR's Linear takes n_layer and attention_heads and reads neither; llmasr refuses them on a linear adaptor
    blocks = {"n_layer": kwargs.get("n_layer", 2), "n_head": kwargs.get("attention_heads", 8)}
    cfg = AdaptorConfig(
        type=kind,
        downsample=kwargs["downsample_rate"],
        ffn_dim=kwargs["ffn_dim"],
        **(blocks if kind == "transformer" else {}),
    )
    return build_adaptor(cfg, kwargs["encoder_dim"], kwargs["llm_dim"]).eval()


def assert_valid_match(ours_out, ours_lens, ref_out):
    for b, n in enumerate(ours_lens.tolist()):
        assert n >= 1
        torch.testing.assert_close(ours_out[b, :n], ref_out[b, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_pinned_funasr_fixture(kind):
    fx = torch.load(FIXTURES / f"adaptor_{kind}.pt", weights_only=True)
    model = ours_from_funasr_kwargs(kind, fx["kwargs"])
    model.load_state_dict(fx["state_dict"], strict=True)
    with torch.no_grad():
        out, out_lens = model(fx["x"], fx["lens"])
    if kind == "transformer":
        k = fx["kwargs"]["downsample_rate"]
        assert out_lens.tolist() == ((fx["lens"] - 1) // k + 1).tolist()
        assert out.shape == fx["out"].shape
    else:
        # FunASR drops T % k trailing frames: same number of positions for the longest item.
        assert out.shape[1] == fx["out"].shape[1]
    assert_valid_match(out, out_lens, fx["out"])


def funasr_or_skip():
    if os.environ.get("LLMASR_PARITY") != "1":
        pytest.skip("set LLMASR_PARITY=1 (and make funasr importable) for the live FunASR comparison")
    try:
        return gen.import_funasr_adaptors()
    except ImportError as err:
        pytest.skip(f"funasr not importable: {err}")


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["linear", "transformer"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_live_funasr_parity(kind, k):
    adaptor = funasr_or_skip()
    kwargs = dict(downsample_rate=k, encoder_dim=32, llm_dim=64, ffn_dim=48, n_layer=2, attention_heads=4)
    torch.manual_seed(k)
    ref = getattr(adaptor, "Linear" if kind == "linear" else "Transformer")(**kwargs).eval()
    for name, p in ref.named_parameters():
        if "norm" in name:
            p.data.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    ours = ours_from_funasr_kwargs(kind, kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    lens = [23, 17, 9, max(k, 3)]
    x, ilens = gen.padded_batch(lens, 32, seed=k)
    ref_out = gen.run_funasr(ref, "Linear" if kind == "linear" else "Transformer", x, ilens)
    with torch.no_grad():
        out, out_lens = ours(x, ilens)
    assert_valid_match(out, out_lens, ref_out)
