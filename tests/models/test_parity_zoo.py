"""FunASR model directories beyond Paraformer and Conformer, loaded by llmasr, against FunASR's own classes.

Paraformer-streaming (SANMEncoderChunkOpt, WavFrontendOnline), SeACo-Paraformer (its SAN-M encoder) and
SenseVoiceSmall (SenseVoiceEncoderSmall): each written as a FunASR-layout directory holding FunASR's weights, loaded
through `load_funasr_encoder`, and compared on a padded batch with FunASR's output for every utterance run alone
(1e-5); llmasr's batched output equals its one-by-one output. Paraformer-streaming twice: as loaded (context
chunked: FunASR's forward with chunk configuration 0, frames taken back by its remove_chunk) and with context full
(FunASR's chunk masks off). More chunk configurations: tests/models/test_parity_sanm_chunk.py.

SenseVoiceSmall whole, with its query frames (encoder conf `queries`) and its own CTC head (`model.ctc.init_from`
model.pt, prefix `ctc.`): the head's log-probabilities on the speech frames are those of FunASR's
`SenseVoiceSmall.inference` (after its four query frames), batched and alone, for two query settings.

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
from torch import nn

from llmasr.config_io import ConfigError
from llmasr.data.features import FeatureExtractor
from llmasr.models.builder import load_ctc_weights
from llmasr.models.ctc import CTCHead
from llmasr.models.ctc_config import CTCConfig
from llmasr.models.funasr_dir import funasr_frontend, load_funasr_encoder
from llmasr.models.sanm_chunk import ChunkSettings
from llmasr.models.state_dict import CheckpointMismatchError, torch_load
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


# per case: (model.encoder.conf over the directory, the case's FunASR outputs that llmasr's then equal)
RUNS = {"streaming": [(None, "chunked_outputs"), ({"context": "full"}, "outputs")]}


def check_case(case: dict, tmp_path: Path, caplog, overrides: dict | None = None, key: str = "outputs") -> nn.Module:
    model_dir = write_funasr_dir(
        tmp_path / case["model"],
        model=case["model"],
        encoder_type=case["encoder"],
        encoder_conf=case["conf"],
        frontend_conf=case["frontend_conf"],
        encoder_state=case["state_dict"],
    )
    with caplog.at_level(logging.INFO, logger="llmasr.models.funasr_checks"):
        encoder, _ = load_funasr_encoder(model_dir, conf_overrides=overrides)
    encoder.eval()
    xs, lens = case["xs"], case["lens"]
    with torch.no_grad():
        batched, out_lens = encoder(xs, lens)
        alone = [encoder(xs[b : b + 1, :n], lens[b : b + 1])[0][0] for b, n in enumerate(lens.tolist())]
    assert out_lens.tolist() == lens.tolist()
    for b, ref in enumerate(case[key]):
        n = ref.size(0)
        diff = (batched[b, :n] - ref).abs().max().item()
        assert diff < TOL, f"{case['model']} {key} utterance {b}: max abs diff {diff} against FunASR"
        torch.testing.assert_close(alone[b], batched[b, :n], rtol=0, atol=1e-6)
    return encoder


def test_fixture_is_small_and_complete():
    assert FIXTURE.stat().st_size < 300_000
    data = _fixture()
    assert set(data["cases"]) == set(LEFT_OUT)
    assert [r["queries"]["language"] for r in data["sensevoice_ctc"]["runs"]] == ["auto", "en"]
    assert data["cases"]["streaming"]["encoder"] == "SANMEncoderChunkOpt"
    assert data["cases"]["sensevoice"]["conf"]["tp_blocks"] > 0


@pytest.mark.parametrize("name", sorted(LEFT_OUT))
def test_pinned_funasr_outputs(name, tmp_path, caplog):
    case = _fixture()["cases"][name]
    for i, (overrides, key) in enumerate(RUNS.get(name, [(None, "outputs")])):
        caplog.clear()
        encoder = check_case(case, tmp_path / str(i), caplog, overrides, key)
        records = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
        assert len(records) == 1 and records[0].endswith(f"of the modules {LEFT_OUT[name]}"), records
        if name == "streaming":
            chunk = case["conf"]
            assert encoder.chunk == ChunkSettings.from_conf(chunk)
            assert list(encoder.chunk.chunk_size) == chunk["chunk_size"]
            assert list(encoder.chunk.stride) == chunk["stride"]
            assert encoder.context == (overrides or {}).get("context", "chunked")
        else:
            assert getattr(encoder, "chunk", None) is None


def sensevoice_dir(encoder_case: dict, others: dict, tmp_path: Path) -> Path:
    """A SenseVoiceSmall directory holding the encoder case's weights and FunASR's query embeddings and CTC head."""
    model_dir = write_funasr_dir(
        tmp_path / "sensevoice_ctc", model="SenseVoiceSmall", encoder_conf=encoder_case["conf"],
        frontend_conf=encoder_case["frontend_conf"], encoder_state=encoder_case["state_dict"],
    )  # fmt: skip
    state = torch_load(model_dir / "model.pt")
    state.update(others)
    torch.save(state, model_dir / "model.pt")
    return model_dir


def check_sensevoice_ctc(encoder_case: dict, ctc_case: dict, tmp_path: Path, caplog) -> None:
    model_dir = sensevoice_dir(encoder_case, ctc_case["state_dict"], tmp_path)
    xs, lens, vocab = encoder_case["xs"], encoder_case["lens"], ctc_case["vocab_size"]
    for run in ctc_case["runs"]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="llmasr.models.funasr_checks"):
            encoder, _ = load_funasr_encoder(model_dir, conf_overrides={"queries": run["queries"]})
        assert any(r.getMessage().endswith("of the modules ctc") for r in caplog.records)  # embed is taken
        head = CTCHead(encoder.output_size(), vocab)
        load_ctc_weights(head, CTCConfig(init_from=str(model_dir / "model.pt"), init_prefix="ctc."), vocab, 16, "x")
        encoder.eval(), head.eval()
        with torch.no_grad():
            batched = head(*encoder(xs, lens))
            alone = [head(*encoder(xs[b : b + 1, :n], lens[b : b + 1]))[0] for b, n in enumerate(lens.tolist())]
        for b, ref in enumerate(run["log_probs"]):
            n = int(lens[b])
            assert ref.shape[0] == n
            torch.testing.assert_close(batched[b, :n], ref, rtol=0, atol=TOL)
            torch.testing.assert_close(alone[b], ref, rtol=0, atol=TOL)


def test_pinned_sensevoice_ctc_head_over_its_query_frames(tmp_path, caplog):
    data = _fixture()
    check_sensevoice_ctc(data["cases"]["sensevoice"], data["sensevoice_ctc"], tmp_path, caplog)


def test_sensevoice_queries_need_the_query_embeddings(tmp_path):
    data = _fixture()
    model_dir = sensevoice_dir(data["cases"]["sensevoice"], {}, tmp_path)
    state = torch_load(model_dir / "model.pt")
    del state["embed.weight"]
    torch.save(state, model_dir / "model.pt")
    with pytest.raises(CheckpointMismatchError, match="no embed.weight, the query embeddings"):
        load_funasr_encoder(model_dir, conf_overrides={"queries": {"language": "zh"}})
    with pytest.raises(ConfigError, match=r"queries.language 'de' is not one of \['auto', 'en'"):
        load_funasr_encoder(model_dir, conf_overrides={"queries": {"language": "de"}})


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
    case = _maker().encoder_case(name, seed=2024)
    for i, (overrides, key) in enumerate(RUNS.get(name, [(None, "outputs")])):
        check_case(case, tmp_path / str(i), caplog, overrides, key)


@pytest.mark.parity
@_live
def test_live_wav_frontend_online(tmp_path):
    fx = _maker().frontend_case(seed=99)
    torch.testing.assert_close(_online_features(fx, tmp_path), fx["features"], rtol=0, atol=1e-4)


@pytest.mark.parity
@_live
def test_live_sensevoice_ctc_head_against_funasr(tmp_path, caplog):
    maker = _maker()
    encoder_case = maker.encoder_case("sensevoice", seed=2025)
    check_sensevoice_ctc(encoder_case, maker.sensevoice_ctc_case(encoder_case, seed=2026), tmp_path, caplog)
