"""Opt-in (LLMASR_PARITY=1 and funasr importable, see tests/fixtures/make_zoo_fixture.py): llmasr's SANMEncoder with
`context: chunked` against FunASR's SANMEncoderChunkOpt as FunASR runs it (its forward with chunk configuration i
forced, `ind=i`, then its `remove_chunk`, as ParaformerStreaming's CTC branch reads the frames), for every
configuration i of the chunk settings of tests/models/test_sanm_chunk.py (evaluation runs 0, training draws any):
FunASR's outputs for every utterance alone against llmasr's on a padded batch, and FunASR's draw in training. The
pinned case (always on) is in tests/models/test_parity_zoo.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from llmasr.models.sanm import SANMEncoder
from llmasr.models.sanm_chunk import ChunkSettings
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
    ours = SANMEncoder(input_size=maker.INPUT, **conf, context="chunked").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    configurations = len(ChunkSettings.from_conf(conf).chunk_size)
    for i in range(configurations):
        want = maker.run_chunked_alone(ref, xs, lens, ind=i)
        with torch.no_grad():
            got, got_lens = ours(xs, lens, chunk_index=i)
            if i == 0:  # evaluation's own
                torch.testing.assert_close(ours(xs, lens)[0], got, rtol=0, atol=0)
                full = SANMEncoder(input_size=maker.INPUT, **conf).eval()
                full.load_state_dict(ref.state_dict(), strict=True)
                unchunked = full(xs, lens)[0]
                assert (unchunked[0, :53] - want[0]).abs().max() > 1e-3  # full context is another output
        assert got_lens.tolist() == LENGTHS
        for b, n in enumerate(LENGTHS):
            torch.testing.assert_close(got[b, :n], want[b], rtol=0, atol=1e-5,
                                       msg=lambda m, b=b, i=i: f"{name} configuration {i} item {b}: {m}")  # fmt: skip


def test_funasr_draws_uniformly_in_training_and_configuration_0_in_evaluation():
    """What llmasr's ChunkDraw follows: FunASR's random_choice draws every configuration in training, from torch's
    global CPU generator (seeded alike on every rank by its trainers), and 0 in evaluation."""
    maker = _maker()
    ref = maker.funasr_encoder("SANMEncoderChunkOpt", {**maker.CASES["streaming"][2], **CONFIGS["three"]}, chunked=True)
    chunks = ref.overlap_chunk_cls
    torch.manual_seed(3)
    drawn = [chunks.random_choice(training=True) for _ in range(60)]
    torch.manual_seed(3)
    assert drawn == [chunks.random_choice(training=True) for _ in range(60)]  # the global generator's stream
    assert set(drawn) == {0, 1, 2}
    assert {chunks.random_choice(training=False) for _ in range(10)} == {0}
