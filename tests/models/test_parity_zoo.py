"""FunASR model directories beyond Paraformer and Conformer, loaded by llmasr, against FunASR's own classes.

Paraformer-streaming (SANMEncoderChunkOpt, full context, WavFrontendOnline), SeACo-Paraformer (its SAN-M encoder)
and SenseVoiceSmall (SenseVoiceEncoderSmall): each written as a FunASR-layout directory holding FunASR's weights,
loaded through `load_funasr_encoder`, and compared on a padded batch with FunASR's output for every utterance run
alone (1e-5); llmasr's batched output equals its one-by-one output.

Always on: tests/fixtures/funasr_zoo_parity.pt, written by tests/fixtures/make_zoo_fixture.py with FunASR.
Opt-in (LLMASR_PARITY=1 and funasr importable; install it in a separate venv, see the fixture script): the same
comparisons on fresh weights, inputs and audio made by FunASR now.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import pytest
import torch

from llmasr.data.features import FeatureExtractor
from llmasr.models.funasr_dir import funasr_frontend, load_funasr_encoder
from llmasr.models.sanm_chunk import ChunkSettings
from llmasr.models.state_dict import torch_load
from llmasr.testing.tiny_funasr import write_funasr_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "funasr_zoo_parity.pt"
TOL = 1e-5
LEFT_OUT = {
    "streaming": "decoder, predictor",
    "seaco": "bias_embed, bias_encoder, decoder, hotword_output_layer, predictor, seaco_decoder",
    "sensevoice": "ctc, embed",
}


def _fixture() -> dict:
    return torch_load(FIXTURE)


def check_case(case: dict, tmp_path: Path, caplog) -> torch.nn.Module:
    model_dir = write_funasr_dir(
        tmp_path / case["model"],
        model=case["model"],
        encoder_type=case["encoder"],
        encoder_conf=case["conf"],
        frontend_conf=case["frontend_conf"],
        encoder_state=case["state_dict"],
    )
    with caplog.at_level(logging.INFO, logger="llmasr.models.funasr_checks"):
        encoder, _ = load_funasr_encoder(model_dir)
    encoder.eval()
    xs, lens = case["xs"], case["lens"]
    with torch.no_grad():
        batched, out_lens = encoder(xs, lens)
        alone = [encoder(xs[b : b + 1, :n], lens[b : b + 1])[0][0] for b, n in enumerate(lens.tolist())]
    assert out_lens.tolist() == lens.tolist()
    for b, ref in enumerate(case["outputs"]):
        n = ref.size(0)
        diff = (batched[b, :n] - ref).abs().max().item()
        assert diff < TOL, f"{case['model']} utterance {b}: max abs diff {diff} against FunASR"
        torch.testing.assert_close(alone[b], batched[b, :n], rtol=0, atol=1e-6)
    return encoder


def test_fixture_is_small_and_complete():
    assert FIXTURE.stat().st_size < 300_000
    data = _fixture()
    assert set(data["cases"]) == set(LEFT_OUT)
    assert data["cases"]["streaming"]["encoder"] == "SANMEncoderChunkOpt"
    assert data["cases"]["sensevoice"]["conf"]["tp_blocks"] > 0


@pytest.mark.parametrize("name", sorted(LEFT_OUT))
def test_pinned_funasr_outputs(name, tmp_path, caplog):
    case = _fixture()["cases"][name]
    encoder = check_case(case, tmp_path, caplog)
    records = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(records) == 1 and records[0].endswith(f"of the modules {LEFT_OUT[name]}"), records
    if name == "streaming":
        chunk = case["conf"]
        assert encoder.chunk == ChunkSettings.from_conf(chunk)
        assert list(encoder.chunk.chunk_size) == chunk["chunk_size"] and list(encoder.chunk.stride) == chunk["stride"]
    else:
        assert getattr(encoder, "chunk", None) is None


def _online_features(fx: dict, tmp_path: Path) -> torch.Tensor:
    model_dir = write_funasr_dir(
        tmp_path / "online",
        model="ParaformerStreaming",
        encoder_conf=_fixture()["cases"]["streaming"]["conf"],
        frontend_conf=dict(fx["frontend_conf"]),
        cmvn=(fx["shift"].numpy(), fx["scale"].numpy()),
    )
    frontend = funasr_frontend(model_dir)
    return torch.from_numpy(FeatureExtractor(frontend)(fx["wave"].numpy(), train=False))


def test_pinned_wav_frontend_online(tmp_path):
    fx = _fixture()["frontend_online"]
    ours = _online_features(fx, tmp_path)
    assert ours.shape == fx["features"].shape
    torch.testing.assert_close(ours, fx["features"], rtol=0, atol=1e-4)


# ---- opt-in: live against the funasr package ------------------------------------------------------------------

_live = pytest.mark.skipif(
    os.environ.get("LLMASR_PARITY") != "1" or importlib.util.find_spec("funasr") is None,
    reason="opt-in: set LLMASR_PARITY=1 and install funasr (see tests/fixtures/make_zoo_fixture.py)",
)


def _maker():
    spec = importlib.util.spec_from_file_location("make_zoo_fixture", FIXTURES / "make_zoo_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parity
@_live
@pytest.mark.parametrize("name", sorted(LEFT_OUT))
def test_live_against_funasr(name, tmp_path, caplog):
    # fresh weights and inputs; for streaming the maker also checks FunASR's ChunkOpt without masks == SANMEncoder
    check_case(_maker().encoder_case(name, seed=2024), tmp_path, caplog)


@pytest.mark.parity
@_live
def test_live_wav_frontend_online(tmp_path):
    fx = _maker().frontend_case(seed=99)
    torch.testing.assert_close(_online_features(fx, tmp_path), fx["features"], rtol=0, atol=1e-4)
