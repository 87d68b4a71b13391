"""ConformerEncoder vs FunASR's ConformerEncoder.

(a) opt-in (LLMASR_PARITY=1 and funasr importable): FunASR built with random weights, its state dict copied in,
    compared on a padded batch. FunASR itself is not padding-invariant (its convolution module reads padded frames
    and its masks count frames that read padding), so: the longest utterance is compared against FunASR's padded
    batch directly, every other utterance against FunASR run on it alone, unpadded.
(b) always on: the same comparison against tests/fixtures/conformer_parity.pt, written once by
    tests/fixtures/make_conformer_fixture.py with FunASR.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from llmasr.models.conformer import ConformerEncoder
from llmasr.models.state_dict import load_into, torch_load

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "conformer_parity.pt"
TOL = 1e-5


def _check_case(conf: dict, state: dict, xs: torch.Tensor, lens: torch.Tensor, expected: list[torch.Tensor]):
    ours = ConformerEncoder(**conf).eval()
    load_into(ours, state, source="funasr ConformerEncoder")
    with torch.no_grad():
        ys, ys_lens = ours(xs, lens)
    for b, ref in enumerate(expected):
        assert int(ys_lens[b]) == ref.size(0), (b, ys_lens, ref.shape)
        diff = (ys[b, : ref.size(0)] - ref).abs().max().item()
        assert diff < TOL, f"utterance {b} ({conf['input_layer']}): max abs diff {diff}"


def test_fixture_parity():
    data = torch_load(FIXTURE)
    assert len(data["cases"]) >= 3
    layers = set()
    for case in data["cases"]:
        _check_case(case["conf"], case["state_dict"], case["xs"], case["lens"], case["outputs"])
        layers.add((case["conf"]["input_layer"], case["conf"].get("rel_pos_type", "legacy")))
    assert ("conv2d", "latest") in layers and ("conv2d6", "legacy") in layers


def _funasr_available() -> bool:
    return importlib.util.find_spec("funasr") is not None


@pytest.mark.parity
@pytest.mark.skipif(os.environ.get("LLMASR_PARITY") != "1", reason="set LLMASR_PARITY=1 to compare against funasr")
@pytest.mark.skipif(not _funasr_available(), reason="funasr is not installed")
@pytest.mark.parametrize(
    "input_layer,rel_pos_type",
    [("conv2d", "latest"), ("conv2d", "legacy"), ("conv2d6", "latest"), ("conv2d8", "legacy")],
)
def test_live_funasr_parity(input_layer, rel_pos_type):
    from funasr.models.conformer.encoder import ConformerEncoder as FunasrConformer

    conf = dict(
        input_size=40,
        output_size=64,
        attention_heads=4,
        linear_units=128,
        num_blocks=3,
        input_layer=input_layer,
        rel_pos_type=rel_pos_type,
        macaron_style=True,
        use_cnn_module=True,
        cnn_module_kernel=15,
    )
    torch.manual_seed(0)
    ref = FunasrConformer(**conf).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    lens = torch.tensor([97, 70, 41])
    xs = torch.randn(3, 97, 40)
    with torch.no_grad():
        batch_out, batch_lens, _ = ref(xs, lens)
        expected = [batch_out[0, : int(batch_lens[0])]]  # the unpadded utterance, from the padded batch
        for b in range(1, 3):
            expected.append(ref(xs[b : b + 1, : lens[b]], lens[b : b + 1])[0][0])
    _check_case(conf, ref.state_dict(), xs, lens, expected)
