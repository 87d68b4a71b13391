"""Feature extraction: frame counts, LFR, CMVN, dither, Whisper log-mel against transformers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from llmasr.data import features as features_mod
from llmasr.data.features import FeatureExtractor, apply_lfr, whisper_mel_filters
from llmasr.data.frontend import FrontendConfig, write_kaldi_cmvn


def noise(n: int, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * amp).astype(np.float32)


LENGTHS = [4, 5, 100, 399, 400, 401, 559, 560, 561, 1360, 1519, 1520, 1521, 16000, 16077, 48000 + 13]


@pytest.mark.parametrize("snip_edges", [True, False])
@pytest.mark.parametrize("lfr", [(1, 1), (7, 6), (4, 3), (2, 2)])
def test_num_frames_exact_fbank(snip_edges, lfr):
    fe = FeatureExtractor(FrontendConfig(lfr_m=lfr[0], lfr_n=lfr[1], snip_edges=snip_edges))
    for n in LENGTHS:
        feats = fe(noise(n, n), train=False)
        assert feats.shape == (fe.num_frames(n), 80 * lfr[0]), (n, feats.shape)
        assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert fe.num_frames(0) == 0
    assert fe(np.zeros(0, np.float32), train=False).shape == (0, 80 * lfr[0])
    assert fe(noise(2), train=False).shape[0] == fe.num_frames(2) == 0  # too short for one frame


def direct_knf_fbank(wave: np.ndarray, n_mels: int, snip_edges: bool) -> np.ndarray:
    """kaldi-native-fbank called with FunASR's options (window shrunk to a short clip); raises where it refuses."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.frame_length_ms = min(25.0, len(wave) / 16000 * 1000)
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hamming"
    opts.frame_opts.snip_edges = snip_edges
    opts.mel_opts.num_bins = n_mels
    opts.energy_floor = 0.0
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000, wave * 32768)
    fb.input_finished()
    return np.array([fb.get_frame(i) for i in range(fb.num_frames_ready)]).reshape(-1, n_mels)


@pytest.mark.parametrize("snip_edges", [True, False])
@pytest.mark.parametrize(("n_mels", "shortest"), [(80, 257), (40, 129), (23, 65)])
def test_shortest_clip_is_decided_from_the_options(snip_edges, n_mels, shortest):
    """A clip too short for one frame with every mel bin filled gives no frame (the dataset reports it as bad),
    decided from the sample count and options alone; one sample more gives FunASR's frame."""
    fe = FeatureExtractor(FrontendConfig(n_mels=n_mels, snip_edges=snip_edges, dither=0.0))
    if not snip_edges:  # Kaldi's centred frames: the first needs half a shift of audio
        shortest = max(shortest, 80)
    assert fe.min_samples == shortest
    below, at = noise(shortest - 1, 1), noise(shortest, 2)
    assert fe.num_frames(len(below)) == 0 and fe(below, train=False).shape == (0, n_mels)
    ours = fe(at, train=False)
    assert ours.shape == (fe.num_frames(len(at)), n_mels) and len(ours) >= 1
    np.testing.assert_allclose(ours, direct_knf_fbank(at, n_mels, snip_edges), atol=1e-3, rtol=0)
    # What kaldi-native-fbank itself makes of one sample less: no frame (centred frames), or an FFT too coarse for
    # the mel bank, which recent releases refuse and older ones answer with a bin stuck at log(epsilon).
    try:
        ref = direct_knf_fbank(below, n_mels, snip_edges)
    except ValueError as err:
        assert "num_mel_bins too large" in str(err)
    else:
        assert np.isclose(ref, np.log(np.finfo(np.float32).eps), atol=1e-4).any(axis=1).all()


def whisper_frames_reaching(n: int, hop: int = 160, n_fft: int = 400, window: int = 480_000) -> int:
    """The STFT frames (centred, transformers keeps those centred inside the window) whose n_fft samples
    [t * hop - n_fft / 2, t * hop + n_fft / 2) reach a clip of n samples."""
    return sum(1 for t in range(-(-window // hop)) if t * hop - n_fft // 2 < n)


def test_num_frames_exact_whisper():
    """The frames whose window reaches the clip, not ceil(N / hop): transformers computes the one or two after
    that over the clip's last samples, and those frames had been left to the silence floor."""
    fe = FeatureExtractor(FrontendConfig(kind="whisper"))
    assert fe.min_samples == 1 and fe.num_frames(0) == 0  # no window shrinking: one sample makes a frame
    for n in [1, 2, 3, 159, 160, 161, 199, 200, 201, 240, 241, 400, 1600, 1601, 1640, 1641, 16000, 16077]:
        assert fe(noise(n, n), train=False).shape == (fe.num_frames(n), 80) == (whisper_frames_reaching(n), 80)
    assert fe.num_frames(1600) == 12 and fe.num_frames(1641) == 12 and fe.num_frames(1561) == 12


@pytest.mark.parametrize("n", [479_400, 479_559, 479_560, 479_600, 479_700, 479_799, 479_800, 479_847, 479_999])
def test_num_frames_whisper_near_the_window(n):
    """Near the 30 s window the count stops at the window's 3000 frames (transformers drops the STFT frame centred
    on the window's end); a clip past the window counts on, so the encoder refuses it rather than cut it."""
    fe = FeatureExtractor(FrontendConfig(kind="whisper"))
    assert fe.num_frames(n) == whisper_frames_reaching(n) == min(-(-(n + 200) // 160), 3000)
    assert fe.num_frames(480_000) == 3000 and fe.num_frames(480_001) > 3000


@pytest.mark.parametrize(
    "n", [1, 41, 159, 160, 161, 199, 200, 201, 1561, 1600, 1601, 1640, 1641, 1760, 1761, 12345, 15439, 15440, 15441,
          15600, 15700, 15799, 15800, 15847, 15959, 15960, 15999, 16000],
)  # fmt: skip
def test_whisper_frames_past_the_count_are_transformers_silence_floor(n):
    """transformers' features (1 s window here) equal ours over num_frames(n) frames, and every frame after them
    is the floor the encoder pads with: no frame that hears the clip is left to the padding."""
    from transformers import WhisperFeatureExtractor

    x = noise(n, n, 0.05)
    x[-200:] *= 10  # a loud end: the frames after ceil(n / 160) hear it
    fe = FeatureExtractor(FrontendConfig(kind="whisper", dither=0.0, chunk_seconds=1.0))
    ours = fe(x, train=False)
    ref = WhisperFeatureExtractor(feature_size=80, chunk_length=1)(x, sampling_rate=16000, return_tensors="np")
    ref = ref["input_features"][0].T  # [100, 80]
    t = fe.num_frames(n)
    assert ours.shape == (t, 80) and t <= len(ref)
    np.testing.assert_allclose(ours, ref[:t], atol=2e-5, rtol=0)
    floor = max(float(ref.max()) - 2.0, -1.5)
    np.testing.assert_allclose(ref[t:], np.full_like(ref[t:], floor), atol=1e-6, rtol=0)


def test_lfr_layout():
    t, d = 13, 3
    feats = np.arange(t * d, dtype=np.float32).reshape(t, d)
    out = apply_lfr(feats, 7, 6)
    assert out.shape == (3, 21)  # ceil(13 / 6)
    rows = out.reshape(3, 7, d)[:, :, 0] / d  # which input frame each sub-frame holds
    np.testing.assert_array_equal(rows[0], [0, 0, 0, 0, 1, 2, 3])  # first frame repeated (7-1)//2 = 3 times
    np.testing.assert_array_equal(rows[1], [3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(rows[2], [9, 10, 11, 12, 12, 12, 12])  # past the end: the last frame
    assert apply_lfr(feats, 1, 1) is feats


def test_cmvn_applied_after_lfr_and_read_once(tmp_path, monkeypatch):
    shift = np.linspace(-5, 5, 560).astype(np.float32)
    scale = np.linspace(0.5, 2, 560).astype(np.float32)
    path = tmp_path / "am.mvn"
    write_kaldi_cmvn(path, shift, scale)
    calls = []
    real = features_mod.read_kaldi_cmvn
    monkeypatch.setattr(features_mod, "read_kaldi_cmvn", lambda p: calls.append(p) or real(p))
    features_mod._cached_cmvn.cache_clear()
    fe = FeatureExtractor(FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=str(path)))
    FeatureExtractor(FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=str(path)))
    raw = FeatureExtractor(FrontendConfig(lfr_m=7, lfr_n=6))
    x = noise(8000)
    np.testing.assert_allclose(fe(x, train=False), (raw(x, train=False) + shift) * scale, rtol=1e-6, atol=1e-5)
    fe(x, train=False)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="CMVN has 560 dims, features have 80"):
        FeatureExtractor(FrontendConfig(cmvn_file=str(path)))


def test_dither_in_training_and_out_of_it_each_reproducible():
    """Training draws its dither from the caller's generator; decoding, validation and CMVN statistics dither too
    (as FunASR's frontend does), from the audio itself: without it digital silence read log(epsilon), far below the
    floor every training frame of silence sits on."""
    fe = FeatureExtractor(FrontendConfig(lfr_m=7, lfr_n=6, dither=1.0))
    x = noise(16000)
    x[4000:8000] = 0.0  # digital silence: where dither shows most
    eval1, eval2 = fe(x, train=False), fe(x, train=False)
    np.testing.assert_array_equal(eval1, eval2)  # the same audio, the same features
    a = fe(x, train=True, rng=np.random.default_rng(5))
    b = fe(x, train=True, rng=np.random.default_rng(5))
    c = fe(x, train=True, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, eval1)
    assert np.isfinite(a).all()
    silent = slice(5, 8)  # LFR frames (6 fbank frames of 160 samples each) inside the silence
    other = x.copy()
    other[0] += 1e-3  # other audio: other noise
    assert not np.array_equal(fe(other, train=False)[silent], eval1[silent])
    no_dither = FeatureExtractor(FrontendConfig(lfr_m=7, lfr_n=6, dither=0.0))
    plain = no_dither(x, train=False)
    np.testing.assert_array_equal(no_dither(x, train=True, rng=np.random.default_rng(5)), plain)
    assert plain[silent].min() < -15.0  # log(epsilon)
    assert abs(float(eval1[silent].mean()) - float(a[silent].mean())) < 0.5  # where training put silence
    assert np.abs(eval1[silent] - a[silent]).max() < 6.0


def test_whisper_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank

    for n_mels in (80, 128):
        ref = mel_filter_bank(
            num_frequency_bins=201,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=16000,
            norm="slaney",
            mel_scale="slaney",
        )
        np.testing.assert_allclose(whisper_mel_filters(n_mels, 400, 16000), ref, atol=1e-7)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("n", [1600, 16000 * 3 + 77, 16000 * 7, 16000 * 30 - 1000, 16000 * 30 - 20, 16000 * 30])
def test_whisper_logmel_matches_transformers(n_mels, n):
    from transformers import WhisperFeatureExtractor

    t = np.arange(n) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * (t < t[-1] / 2) + noise(n, 1, 0.02)).astype(np.float32)
    x[-400:] *= 5  # a loud tail: the frames past the end must see the same zero padding as transformers' 30 s pad
    ours = FeatureExtractor(FrontendConfig(kind="whisper", n_mels=n_mels, dither=0.0))(x, train=True)
    ref = WhisperFeatureExtractor(feature_size=n_mels)(x, sampling_rate=16000, return_tensors="np")
    ref = ref["input_features"][0].T
    assert ours.shape == (whisper_frames_reaching(n), n_mels) and ref.shape == (3000, n_mels)
    assert np.max(np.abs(ours - ref[: len(ours)])) < 1e-4


@pytest.mark.parametrize("n", [16000, 15990])
def test_whisper_floor_ignores_the_frame_transformers_drops(n):
    """A clip that fills the window and ends loud: the STFT frame centred on the window's end (which hears the end
    twice, reflected) is the loudest, and transformers drops it before taking the max the 8-decade floor hangs on.
    It had been in the max here, lifting the floor of every quiet frame."""
    from transformers import WhisperFeatureExtractor

    x = noise(n, 0, 1e-4)
    x[-40:] = 0.9
    ours = FeatureExtractor(FrontendConfig(kind="whisper", dither=0.0, chunk_seconds=1.0))(x, train=False)
    ref = WhisperFeatureExtractor(feature_size=80, chunk_length=1)(x, sampling_rate=16000, return_tensors="np")
    ref = ref["input_features"][0].T
    assert ours.shape == (100, 80)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("n", [16000 + 77, 16000 * 30 - 20])
def test_whisper_dither_as_transformers_adds_it(n, monkeypatch):
    """preprocessor_config.json's `dither` (it had been read and never applied): dither * N(0, 1) on the
    zero-padded waveform before the STFT, as transformers adds it; with its torch.randn fed the same normals, the
    same features. Training draws them from the caller's generator, evaluation from the audio (content_rng)."""
    import torch
    from transformers import WhisperFeatureExtractor

    t = np.arange(n) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * (t < t[-1] / 2)).astype(np.float32)  # silence after: dither shows
    x[-160:] = 0.5  # the loudest frames are the audio's, not the noise's (as in speech)
    fe = FeatureExtractor(FrontendConfig(kind="whisper", dither=1e-3))
    normals = np.random.default_rng([7, n]).standard_normal(16000 * 30, dtype=np.float32)  # a prefix: ours

    def randn(shape, **kwargs):  # transformers' draw, over the 30 s of padded audio
        return torch.from_numpy(normals[: int(np.prod(shape))].reshape(shape).copy())

    monkeypatch.setattr(torch, "randn", randn)
    ref = WhisperFeatureExtractor(feature_size=80, dither=1e-3)(x, sampling_rate=16000, return_tensors="np")
    ref = ref["input_features"][0].T
    monkeypatch.undo()
    ours = fe(x, train=True, rng=np.random.default_rng([7, n]))
    assert np.max(np.abs(ours - ref[: len(ours)])) < 1e-4
    plain = FeatureExtractor(FrontendConfig(kind="whisper", dither=0.0))(x, train=True)
    quiet = slice(len(ours) // 2 + 2, len(ours) - 3)
    assert ours[quiet].mean() > plain[quiet].mean() + 0.1  # the noise lifts the silence off the 8-decade floor
    evaluated = fe(x, train=False)
    np.testing.assert_array_equal(evaluated, fe(x, train=False))  # the same audio, the same noise
    assert not np.array_equal(evaluated, ours)
    np.testing.assert_array_equal(fe(x, train=True, rng=np.random.default_rng([7, n])), ours)


def test_whisper_without_dither_ignores_the_generator():
    fe = FeatureExtractor(FrontendConfig(kind="whisper", dither=0.0))
    x = noise(16000)
    np.testing.assert_array_equal(fe(x, train=True, rng=np.random.default_rng(1)), fe(x, train=False))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="fbank window 'bogus'"):  # kaldi-native-fbank would exit the process
        FeatureExtractor(FrontendConfig(window="bogus"))
    fe = FeatureExtractor(FrontendConfig())
    with pytest.raises(ValueError, match="mono 1-D"):
        fe(np.zeros((2, 100), np.float32), train=False)


@pytest.mark.parametrize("kind", ["fbank", "whisper"])
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, bool])
def test_integer_pcm_is_refused_not_scaled_twice(kind, dtype):
    """Integer samples were taken as they were and scaled by waveform_scale again (int16 PCM read 32768 times too
    loud); the error names the dtype and what to pass. Float samples of any width are read as float32."""
    fe = FeatureExtractor(FrontendConfig(kind=kind, window="hann") if kind == "whisper" else FrontendConfig())
    pcm = (noise(16000) * 32767).astype(dtype)
    message = rf"got dtype {np.dtype(dtype)}; pass float32 samples in \[-1, 1\]"
    with pytest.raises(TypeError, match=message):
        fe(pcm, train=False)
    with pytest.raises(TypeError, match=message):
        fe.scaled_wave(pcm)  # the waveform the device path reads
    x = noise(16000)
    np.testing.assert_array_equal(fe(x.astype(np.float64), train=False), fe(x, train=False))


def test_frontend_config_refuses_values_that_would_kill_the_process_later():
    import pytest

    from llmasr.config_io import ConfigError, from_dict
    from llmasr.data.frontend import FrontendConfig

    with pytest.raises(ConfigError, match=r"frontend.window: 'hamm' is not one of"):
        from_dict(FrontendConfig, {"window": "hamm"}, "frontend")
    with pytest.raises(ConfigError, match=r"frontend.n_mels: must be positive"):
        from_dict(FrontendConfig, {"n_mels": 0}, "frontend")
    with pytest.raises(ConfigError, match=r"frontend.n_mels: 128 mel bins do not fit a 25 ms window \(400 samples"):
        from_dict(FrontendConfig, {"n_mels": 128}, "frontend")
    assert from_dict(FrontendConfig, {"n_mels": 128, "frame_length_ms": 64}, "frontend").n_mels == 128
    with pytest.raises(ConfigError, match=r"frontend.n_mels: Kaldi fbank needs at least 3 mel bins, got 2"):
        from_dict(FrontendConfig, {"n_mels": 2}, "frontend")
    with pytest.raises(ValueError, match="fbank n_mels 128 mel bins do not fit"):  # built without from_dict
        FeatureExtractor(FrontendConfig(n_mels=128))
    with pytest.raises(ConfigError, match="whisper frontend takes no cmvn_file and no LFR"):
        from_dict(FrontendConfig, {"kind": "whisper", "window": "hann", "lfr_m": 7}, "frontend")


@pytest.mark.parametrize(
    "tag,index,value,want",
    [("AddShift", 79, "nan", "finite"), ("AddShift", 3, "-inf", "finite"), ("Rescale", 0, "inf", "finite and nonzero"),
     ("Rescale", 79, "0", "finite and nonzero"), ("Rescale", 5, "1e40", "finite and nonzero")],
)  # fmt: skip
def test_cmvn_refuses_values_that_make_every_frame_inf_or_nan(tmp_path, tag, index, value, want):
    """A non-finite shift or scale, or a zero scale (FunASR's tool writes 1/std), made that dimension of every
    frame inf, NaN or 0; it is refused when the config is read, naming the file, the tag and the first bad index."""
    from llmasr.config_io import ConfigError, from_dict
    from llmasr.data.frontend import read_kaldi_cmvn

    rows = {"AddShift": ["-8.0"] * 80, "Rescale": ["0.25"] * 80}
    rows[tag][index] = value
    rows[tag][min(index + 1, 79)] = value  # a second bad value after the first (none past the last)
    path = tmp_path / "am.mvn"
    path.write_text(
        "<Nnet>\n"
        + "".join(f"<{t}> 80 80\n<LearnRateCoef> 0 [ {' '.join(v)} ]\n" for t, v in rows.items())
        + "</Nnet>\n"
    )
    message = rf"{re.escape(str(path))}: <{tag}> value {index} is \S+; every value must be {want} \(in float32\)$"
    with pytest.raises(ConfigError, match=message):
        read_kaldi_cmvn(path)
    with pytest.raises(ConfigError, match=rf"^encoder.frontend.cmvn_file: {message}"):
        from_dict(FrontendConfig, {"cmvn_file": str(path)}, "encoder.frontend")


@pytest.mark.parametrize(
    "key,value,want",
    [("dither", -1.0, "a finite number >= 0"), ("dither", float("nan"), "a finite number >= 0"),
     ("dither", float("inf"), "a finite number >= 0"), ("waveform_scale", 0.0, "a finite number > 0"),
     ("waveform_scale", -32768.0, "a finite number > 0"), ("waveform_scale", float("nan"), "a finite number > 0")],
)  # fmt: skip
def test_frontend_config_refuses_a_dither_or_scale_that_changes_the_features_silently(key, value, want):
    """A negative dither was no dither here (Kaldi and torchaudio dither at |dither|), NaN dither no dither either,
    and waveform_scale 0 wiped the speech: refused, naming the key."""
    from llmasr.config_io import ConfigError, from_dict

    with pytest.raises(ConfigError, match=rf"^encoder.frontend.{key}: must be {want}.*, got {value}$"):
        FrontendConfig(**{key: value}).validate("encoder.frontend")  # from_dict refuses NaN itself, validate too
    assert from_dict(FrontendConfig, {"dither": 0.0}, "encoder.frontend").dither == 0.0
    whisper = {"kind": "whisper", "window": "hann", "waveform_scale": 1.0}
    assert from_dict(FrontendConfig, whisper, "f").dither == 0.0 and FrontendConfig().dither == 1.0  # unless set
    assert from_dict(FrontendConfig, {**whisper, "dither": 1e-4}, "f").dither == 1e-4
    with pytest.raises(ConfigError, match=r"^f.dither: 1 is noise louder than -40 dB of full scale; a whisper"):
        from_dict(FrontendConfig, {**whisper, "dither": 1.0}, "f")  # fbank's value, copied: full-scale noise
