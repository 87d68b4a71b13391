"""Opt-in (LLMASR_PARITY=1 and funasr importable, see tests/fixtures/make_zoo_fixture.py): llmasr's SANMEncoder with
`context: chunked` against FunASR's SANMEncoderChunkOpt as FunASR runs it in evaluation (its forward with chunk
configuration 0, then its `remove_chunk`, as ParaformerStreaming's CTC branch reads the frames), on the chunk
configurations of tests/models/test_sanm_chunk.py: FunASR's outputs for every utterance alone against llmasr's on
a padded batch. The pinned case (always on) is in tests/models/test_parity_zoo.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from llmasr.models.sanm import SANMEncoder
from tests.models.test_sanm_chunk import CONFIGS

pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(
        os.environ.get("LLMASR_PARITY") != "1" or importlib.util.find_spec("funasr") is None,
        reason="opt-in: set LLMASR_PARITY=1 and install funasr (see tests/fixtures/make_zoo_fixture.py)",
    ),
]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LENGTHS = [53, 40, 24, 17, 9, 1]  # several chunks, whole and partial ones, a single frame


def _maker():
    spec = importlib.util.spec_from_file_location("make_zoo_fixture", FIXTURES / "make_zoo_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_chunked_context_against_funasr(name):
    maker = _maker()
    conf = {**maker.CASES["streaming"][2], **CONFIGS[name]}
    if len(conf["chunk_size"]) == 1:
        conf["decoder_att_look_back_factor"] = [1]
    torch.manual_seed(31)
    ref = maker.funasr_encoder("SANMEncoderChunkOpt", conf, chunked=True).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.15)
    xs = torch.randn(len(LENGTHS), max(LENGTHS), maker.INPUT)
    lens = torch.tensor(LENGTHS)
    want = maker.run_chunked_alone(ref, xs, lens)
    ours = SANMEncoder(input_size=maker.INPUT, **conf, context="chunked").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        got, got_lens = ours(xs, lens)
        full = SANMEncoder(input_size=maker.INPUT, **conf).eval()
        full.load_state_dict(ref.state_dict(), strict=True)
        unchunked = full(xs, lens)[0]
    assert got_lens.tolist() == LENGTHS
    for b, n in enumerate(LENGTHS):
        torch.testing.assert_close(got[b, :n], want[b], rtol=0, atol=1e-5, msg=lambda m, b=b: f"{name} item {b}: {m}")
    assert (unchunked[0, :53] - want[0]).abs().max() > 1e-3  # full context is another output
