"""llmasr's SANMEncoder against FunASR's `funasr.models.sanm.encoder.SANMEncoder` on the same weights.

Always on: a pinned fixture made once with FunASR 1.x (tests/fixtures/sanm_parity.pt, written by
tests/fixtures/make_sanm_fixture.py: FunASR's state dict, a padded batch and FunASR's eval-mode output).
Opt-in (LLMASR_PARITY=1 and funasr importable): a live comparison on fresh random weights and inputs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from llmasr.models.sanm import SANMEncoder

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sanm_parity.pt"


def _ours(conf: dict, state: dict) -> SANMEncoder:
    model = SANMEncoder(**conf).eval()
    assert set(model.state_dict()) == set(state), "parameter names differ from FunASR's"
    model.load_state_dict(state, strict=True)
    return model


def test_fixture_is_small():
    assert FIXTURE.stat().st_size < 200_000


@pytest.mark.parametrize("case", ["paraformer_like", "shifted_fsmn"])
def test_pinned_funasr_fixture(case):
    fx = torch.load(FIXTURE, weights_only=True)["cases"][case]
    model = _ours(fx["conf"], fx["state_dict"])
    with torch.no_grad():
        ys, ys_lens = model(fx["xs"], fx["xs_lens"])
    assert ys_lens.tolist() == fx["ys_lens"].tolist()
    # every frame, padded ones included: the arithmetic is the same, not just the valid outputs
    assert (ys - fx["ys"]).abs().max().item() < 1e-5


_live = pytest.mark.skipif(
    os.environ.get("LLMASR_PARITY") != "1" or importlib.util.find_spec("funasr") is None,
    reason="opt-in: set LLMASR_PARITY=1 and install funasr (pip install --no-deps funasr + its small deps)",
)


@pytest.mark.parity
@_live
@pytest.mark.parametrize(
    "conf",
    [
        dict(input_size=560, output_size=64, attention_heads=4, linear_units=128, num_blocks=4, kernel_size=11),
        dict(
            input_size=80, output_size=32, attention_heads=2, linear_units=48, num_blocks=2, kernel_size=7, sanm_shfit=1
        ),
        dict(
            input_size=32,
            output_size=32,
            attention_heads=4,
            linear_units=48,
            num_blocks=3,
            kernel_size=5,
            normalize_before=False,
        ),
    ],
)
def test_live_against_funasr(conf):
    from funasr.models.sanm.encoder import SANMEncoder as FunASRSANMEncoder

    torch.manual_seed(7)
    ref = FunASRSANMEncoder(input_layer="pe", **conf).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    model = _ours(conf, ref.state_dict())
    xs = torch.randn(4, 23, conf["input_size"])
    lens = torch.tensor([23, 19, 6, 1])
    with torch.no_grad():
        want, want_lens, _ = ref(xs, lens)
        got, got_lens = model(xs, lens)
    assert got_lens.tolist() == want_lens.tolist()
    assert (got - want).abs().max().item() < 1e-5
