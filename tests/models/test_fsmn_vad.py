"""FunASR's FSMN VAD read from its directory (llmasr.models.fsmn_vad) and its end-point rules
(llmasr.models.vad_endpoints).

Always on: tests/fixtures/funasr_vad_parity.json, FunASR's segments for llmasr.testing.tiny_vad's cases, written by
tests/fixtures/make_vad_fixture.py with FunASR. Opt-in (LLMASR_PARITY=1 and funasr importable): the same, live, on
fresh random weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llmasr.config_io import ConfigError
from llmasr.models.fsmn_vad import FSMN, NET_CHUNK, FsmnVad
from llmasr.models.state_dict import CheckpointMismatchError
from llmasr.models.vad_endpoints import EndpointDetector, VadOptions
from llmasr.testing.tiny_corpus import syllable_bursts
from llmasr.testing.tiny_vad import TINY_FSMN, VAD_CASES, vad_case_audio, write_fsmn_vad_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = {c["name"]: c for c in VAD_CASES}


@pytest.fixture(scope="module")
def fixture() -> dict:
    return {c["name"]: c for c in json.loads((FIXTURES / "funasr_vad_parity.json").read_text())["cases"]}


def _vad(tmp_path: Path, crafted: bool = True, **kwargs) -> FsmnVad:
    return FsmnVad.from_dir(write_fsmn_vad_dir(tmp_path / f"vad_{crafted}", crafted=crafted, **kwargs))


@pytest.mark.parametrize("name", [c["name"] for c in VAD_CASES if c["crafted"]])
def test_segments_match_funasr(name, fixture, tmp_path):
    case = CASES[name]
    got = _vad(tmp_path).segments_ms(vad_case_audio(case), case["max_end_silence_ms"])
    assert got == fixture[name]["segments"]


def test_silence_probs_match_funasr(fixture, tmp_path):
    sil, decibels = _vad(tmp_path).silence_probs(vad_case_audio(CASES["short"]))
    want = np.asarray(fixture["short"]["silence_probs"])
    assert sil.shape == want.shape == decibels.shape
    np.testing.assert_allclose(sil, want, atol=1e-4)


def test_segments_follow_the_pauses(tmp_path):
    # 2 s of speech, 3 s of silence, 2 s of speech: two segments around the pause (FunASR's 2 s end silence)
    wave = syllable_bursts(7.0, gaps=[(2.0, 5.0)], seed=1)
    (a, b), (c, d) = _vad(tmp_path).segments_ms(wave)
    assert a == 0 and 2000 <= b <= 2400 and 4600 <= c <= 5000 and d == 7000 - 20  # the last whole 25 ms frame


def test_silence_and_short_audio_give_no_segment(tmp_path):
    vad = _vad(tmp_path)
    quiet = (0.003 * np.random.default_rng(0).standard_normal(16000 * 5)).astype(np.float32)
    assert vad.segments_ms(quiet) == []
    assert vad.segments_ms(np.zeros(399, dtype=np.float32)) == []  # shorter than one frame: no frame


def test_integer_pcm_is_refused(tmp_path):
    """int16 samples were cast as they were and scaled by the frontend again: every frame read as loud speech."""
    wave = syllable_bursts(3.0, gaps=[(1.0, 2.0)], seed=1)
    vad = _vad(tmp_path)
    with pytest.raises(TypeError, match="got dtype int16; pass float32 samples"):
        vad.segments_ms((wave * 32767).astype(np.int16))
    assert vad.segments_ms(wave.astype(np.float64)) == vad.segments_ms(wave)


def test_fixed_end_silence_splits_at_shorter_pauses(tmp_path):
    wave = syllable_bursts(9.0, gaps=[(3.0, 3.8)], seed=2)
    vad = _vad(tmp_path)
    assert len(vad.segments_ms(wave)) == 1  # the schedule's 2 s at the start: 0.8 s does not end a segment
    assert len(vad.segments_ms(wave, 500)) == 2


def test_network_matches_funasr_layout(tmp_path):
    # model.pt's encoder.* tensors load under FunASR's names; the memory is causal (a frame never sees the next)
    vad = _vad(tmp_path, crafted=False)
    state = torch.load(Path(vad.source) / "model.pt")
    assert sorted(k.removeprefix("encoder.") for k in state) == sorted(vad.net.state_dict())
    x = torch.randn(1, 30, TINY_FSMN["input_dim"])
    y = vad.net(x)
    x2 = x.clone()
    x2[:, 20:] += 5.0
    torch.testing.assert_close(vad.net(x2)[:, :20], y[:, :20])
    torch.testing.assert_close(y.sum(-1), torch.ones(1, 30))


def test_the_network_in_pieces_equals_one_pass(tmp_path):
    vad = _vad(tmp_path, crafted=False)
    feats = torch.randn(NET_CHUNK * 2 + 77, TINY_FSMN["input_dim"])
    with torch.no_grad():
        whole = vad.net(feats[None])[0].numpy()
    np.testing.assert_allclose(vad.frame_probs(feats), whole, rtol=0, atol=1e-6)


def test_chunk_ends_follow_funasr_frontend(tmp_path):
    vad = _vad(tmp_path)
    frames = (150 * 16000 - 400) // 160 + 1
    # each 60 s chunk gives its fbank frames less the two LFR 5/1 waits for; the last gives the rest
    assert vad.chunk_ends(150 * 16000, frames) == [5996, 11996, frames]
    assert vad.chunk_ends(16000, 98) == [98]


def test_single_utterance_mode_stops_after_one_segment():
    opts = VadOptions(detect_mode=0)
    sil = ([0.0] * 100 + [1.0] * 300) * 3  # 1 s speech, 3 s silence, three times
    segments = EndpointDetector(opts, 800).run(sil, [0.0] * len(sil), [len(sil)])
    assert len(segments) == 1
    assert len(EndpointDetector(VadOptions(), 800).run(sil, [0.0] * len(sil), [len(sil)])) == 3


def test_bad_directories_are_named(tmp_path):
    d = write_fsmn_vad_dir(tmp_path / "wrong_model")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": "Paraformer"}))
    with pytest.raises(ConfigError, match="not an FSMN VAD"):
        FsmnVad.from_dir(d)
    d = write_fsmn_vad_dir(tmp_path / "wrong_input")
    (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "encoder_conf": {**cfg["encoder_conf"], "input_dim": 560}}))
    with pytest.raises(ConfigError, match="input_dim is 560"):
        FsmnVad.from_dir(d)
    d = write_fsmn_vad_dir(tmp_path / "bad_pdf")
    (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "model_conf": {**cfg["model_conf"], "sil_pdf_ids": [9]}}))
    with pytest.raises(ConfigError, match="sil_pdf_ids"):
        FsmnVad.from_dir(d)
    d = write_fsmn_vad_dir(tmp_path / "no_weights")
    (d / "model.pt").unlink()
    with pytest.raises(ConfigError, match="model.pt: missing"):
        FsmnVad.from_dir(d)
    d = write_fsmn_vad_dir(tmp_path / "other_shapes")
    state = torch.load(d / "model.pt")
    state["encoder.out_linear2.linear.weight"] = torch.zeros(3, 3)
    torch.save(state, d / "model.pt")
    with pytest.raises(CheckpointMismatchError, match="out_linear2"):
        FsmnVad.from_dir(d)


def test_fsmn_constructor_matches_config_keys():
    net = FSMN(**TINY_FSMN)
    assert len(net.fsmn) == TINY_FSMN["fsmn_layers"]
    assert net.fsmn[0].fsmn_block.conv_left.weight.shape == (TINY_FSMN["proj_dim"], 1, TINY_FSMN["lorder"], 1)


# ---- opt-in: live against the funasr package ------------------------------------------------------------------

_live = pytest.mark.skipif(
    os.environ.get("LLMASR_PARITY") != "1" or importlib.util.find_spec("funasr") is None,
    reason="opt-in: set LLMASR_PARITY=1 and install funasr (see tests/fixtures/make_zoo_fixture.py)",
)


@pytest.mark.parity
@_live
@pytest.mark.parametrize("name", [c["name"] for c in VAD_CASES])
def test_live_segments_against_funasr(name, tmp_path):
    import soundfile as sf

    spec = importlib.util.spec_from_file_location("make_vad_fixture", FIXTURES / "make_vad_fixture.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    case = {**CASES[name], "seed": CASES[name]["seed"] + 100}  # other audio than the pinned fixture's
    model_dir = write_fsmn_vad_dir(tmp_path / "vad", crafted=case["crafted"], seed=7)
    wave = vad_case_audio(case)
    sf.write(str(tmp_path / "a.wav"), wave, 16000, subtype="FLOAT")
    want = maker.funasr_segments(model_dir, tmp_path / "a.wav", case["max_end_silence_ms"])
    assert FsmnVad.from_dir(model_dir).segments_ms(wave, case["max_end_silence_ms"]) == want


def test_weights_are_read_where_configuration_json_says(tmp_path):
    # FunASR's AutoModel loads file_path_metas.init_param; a trained-elsewhere absolute path is found by its name
    d = write_fsmn_vad_dir(tmp_path / "renamed")
    (d / "model.pt").rename(d / "vad.pt")
    metas = {"init_param": "/train/box/vad.pt", "config": "config.yaml", "frontend_conf": {"cmvn_file": "am.mvn"}}
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": metas}))
    vad = FsmnVad.from_dir(d)
    wave = syllable_bursts(7.0, gaps=[(2.0, 5.0)], seed=1)
    assert len(vad.segments_ms(wave)) == 2 and vad.segments_ms(wave) == _vad(tmp_path).segments_ms(wave)
    vad.copy_to(tmp_path / "copied")
    assert FsmnVad.from_dir(tmp_path / "copied").segments_ms(wave) == vad.segments_ms(wave)
    # without a CMVN (configuration.json maps none: FunASR does not normalise), the copy normalises nothing either
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": {"init_param": "vad.pt"}}))
    plain = FsmnVad.from_dir(d)
    assert plain.extractor.frontend.cmvn_file is None
    plain.copy_to(tmp_path / "plain")
    assert FsmnVad.from_dir(tmp_path / "plain").segments_ms(wave) == plain.segments_ms(wave)


def test_weights_saved_as_a_deepspeed_folder_are_read(tmp_path):
    """FunASR's DeepSpeed trainer leaves model.pt as a folder (ZeRO-2): it was refused as 'a directory, not a
    weights file'; its whole weights are read and the VAD's copy loads again."""
    from llmasr.testing.tiny_funasr import as_deepspeed_checkpoint

    d = write_fsmn_vad_dir(tmp_path / "ds")
    plain = FsmnVad.from_dir(d)
    as_deepspeed_checkpoint(d)
    vad = FsmnVad.from_dir(d)
    for key, value in plain.net.state_dict().items():
        assert torch.equal(vad.net.state_dict()[key], value), key
    wave = syllable_bursts(7.0, gaps=[(2.0, 5.0)], seed=1)
    assert vad.segments_ms(wave) == plain.segments_ms(wave)
    vad.copy_to(tmp_path / "copied")
    assert FsmnVad.from_dir(tmp_path / "copied").segments_ms(wave) == plain.segments_ms(wave)
