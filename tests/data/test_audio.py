"""Audio reading: header probes, ranged reads, channels, resampling quality, and every failure kind."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.audio import AudioError, load_audio, probe_duration, resample


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_formats_probe_and_load(tmp_path, fmt, subtype):
    x = sine(440, 16000, 1.5)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    assert probe_duration(path) == pytest.approx(1.5, abs=1e-3)
    y = load_audio(path, sample_rate=16000)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == pytest.approx(24000, abs=2)
    assert dominant_freq(y, 16000) == pytest.approx(440, abs=2)
    if fmt != "OGG":  # lossless
        np.testing.assert_allclose(y, x, atol=1e-4)


def test_range_read_only_requested_frames(tmp_path):
    sr = 16000
    x = np.arange(sr * 3, dtype=np.float32) / (sr * 3)
    path = tmp_path / "ramp.wav"
    sf.write(path, x, sr, subtype="FLOAT")
    y = load_audio(path, sample_rate=sr, start=1.0, end=1.5)
    assert len(y) == 8000
    np.testing.assert_array_equal(y, x[16000:24000])
    tail = load_audio(path, sample_rate=sr, start=2.5)
    np.testing.assert_array_equal(tail, x[40000:])


def test_channels_select_and_mixdown(tmp_path):
    sr = 16000
    left, right = sine(300, sr, 1.0), sine(1200, sr, 1.0, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, sample_rate=sr, channel=0), left)
    np.testing.assert_array_equal(load_audio(path, sample_rate=sr, channel=1), right)
    np.testing.assert_allclose(load_audio(path, sample_rate=sr), (left + right) / 2, atol=1e-7)
    with pytest.raises(AudioError, match="channel 2 requested but the file has 2"):
        load_audio(path, sample_rate=sr, channel=2)


def test_resample_keeps_a_sine_a_sine():
    x = sine(1000, 22050, 2.0)
    y = resample(x, 22050, 16000)
    assert len(y) == 32000
    assert dominant_freq(y, 16000) == pytest.approx(1000, abs=1)
    ref = sine(1000, 16000, 2.0)
    inner = slice(400, -400)  # edges see the zero padding
    err = y[inner] - ref[inner]
    snr = 10 * np.log10(np.mean(ref[inner] ** 2) / np.mean(err**2))
    assert snr > 80, snr


@pytest.mark.parametrize("orig,new", [(44100, 16000), (8000, 16000), (48000, 16000), (16000, 17600), (22051, 16000)])
def test_resample_rates_length_and_accuracy(orig, new):
    x = sine(700, orig, 1.0)
    y = resample(x, orig, new)
    assert len(y) == -(-len(x) * new // orig)
    ref = sine(700, new, len(y) / new)[: len(y)]
    inner = slice(600, -600)
    assert np.max(np.abs(y[inner] - ref[inner])) < 1e-3


def test_resample_rejects_aliases():
    # 10 kHz is above the 8 kHz Nyquist frequency of 16 kHz audio: it must be filtered, not folded to 6 kHz.
    x = sine(10000, 22050, 1.0)
    y = resample(x, 22050, 16000)
    assert np.sqrt(np.mean(y[400:-400] ** 2)) < 1e-3
    # and 6 kHz passes with under 0.5 dB loss
    y6 = resample(sine(6000, 22050, 1.0), 22050, 16000)
    gain_db = 20 * np.log10(np.sqrt(np.mean(y6[400:-400] ** 2)) / (0.5 / np.sqrt(2)))
    assert abs(gain_db) < 0.5


def test_load_resamples_to_model_rate(tmp_path):
    path = tmp_path / "a22k.wav"
    sf.write(path, sine(523, 22050, 1.0), 22050)
    y = load_audio(path, sample_rate=16000)
    assert len(y) == 16000
    assert dominant_freq(y, 16000) == pytest.approx(523, abs=1.5)


def test_real_speech_from_espeak(tmp_path):
    path = tmp_path / "hello.wav"
    try:
        subprocess.run(["espeak-ng", "-w", str(path), "hello world"], check=True, capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.SubprocessError):
        pytest.skip("espeak-ng not available")
    info = sf.info(str(path))
    y = load_audio(path, sample_rate=16000)
    assert abs(len(y) - info.frames * 16000 / info.samplerate) <= 1
    assert probe_duration(path) == pytest.approx(info.frames / info.samplerate)
    assert 0.01 < np.abs(y).max() <= 1.0


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="file not found") as e:
        load_audio(tmp_path / "nope.wav", sample_rate=16000)
    assert e.value.path.endswith("nope.wav") and e.value.reason == "file not found"
    with pytest.raises(AudioError, match="file not found"):
        probe_duration(tmp_path / "nope.wav")


def test_corrupt_file(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + bytes(100))
    with pytest.raises(AudioError, match="unreadable or corrupt"):
        load_audio(path, sample_rate=16000)
    with pytest.raises(AudioError, match="unreadable or corrupt"):
        probe_duration(path)
    text = tmp_path / "notaudio.flac"
    text.write_text("hello, I am not audio\n" * 20)
    with pytest.raises(AudioError, match="unreadable or corrupt"):
        load_audio(text, sample_rate=16000)


def test_empty_audio(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty audio \(0 samples\)"):
        load_audio(path, sample_rate=16000)
    with pytest.raises(AudioError, match=r"empty audio \(0 samples\)"):
        probe_duration(path)


def test_range_past_end(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, sine(440, 16000, 0.5), 16000)
    with pytest.raises(AudioError, match="past the end"):
        load_audio(path, sample_rate=16000, start=1.0)
