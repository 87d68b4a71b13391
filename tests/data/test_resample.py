"""The windowed-sinc resampler (llmasr.data.resample): accuracy, aliasing, images, clip ends, lengths, bad inputs."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from llmasr.data import resample as resampling
from llmasr.data.resample import resample
from tests.data.test_audio import dominant_freq, sine

# gcd-reduced terms small enough for the FFT path: 22.05/44.1/8/48 kHz corpora, speed perturbation 1.1x and 0.9x
FFT_RATES = [(22050, 16000), (44100, 16000), (8000, 16000), (48000, 16000), (16000, 17600), (14400, 16000)]


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


def multi_sine(sr: int, n: int, freqs: np.ndarray, amp: float = 0.1) -> np.ndarray:
    t = np.arange(n) / sr
    return sum(amp * np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs))


def rms_db(y: np.ndarray, x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2)) / np.sqrt(np.mean(x**2)) + 1e-30))


@pytest.mark.parametrize("orig,new", FFT_RATES)
def test_fft_path_is_the_windowed_sinc_filter(orig, new):
    # Content up to 0.9 of the lower Nyquist frequency comes out as the polyphase evaluation of the same filter
    # (the previous resampler) gives it: measured <= 3.4e-5 for a 0.8 peak, across frame seams and clip ends.
    g = math.gcd(orig, new)
    assert max(orig, new) // g <= resampling.FFT_MAX_TERM
    n = int(3.3 * orig)  # several overlap-save frames
    freqs = np.linspace(0.02, 0.9, 8) * min(orig, new) / 2
    x = (multi_sine(orig, n, freqs) * np.hanning(n)).astype(np.float32)
    y = resample(x, orig, new)
    ref = resampling._resample_polyphase(x, orig // g, new // g, len(y))
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() < 1e-4


ALIAS_CASES = [
    (orig, new, above * new / 2)
    for orig, new in [(22050, 16000), (44100, 16000), (48000, 16000), (17600, 16000)]
    for above in (1.02, 1.1, 1.5)
    if above * new < orig  # representable at the input rate
]


@pytest.mark.parametrize("orig,new,freq", ALIAS_CASES)
def test_tones_above_the_new_nyquist_are_removed(orig, new, freq):
    # The previous resampler let 8.16 kHz through at -22 dB (its transition band crossed the new Nyquist).
    x = sine(freq, orig, 1.0)
    y = resample(x, orig, new)
    edge = new // 20
    assert rms_db(y[edge:-edge], x) < -100  # measured -138 .. -156 dB
    assert rms_db(y, x) < -40  # the whole clip, clicks at the tone's abrupt start and end included: -44 .. -58 dB
    tapered = (x * np.hanning(x.size)).astype(np.float32)
    assert rms_db(resample(tapered, orig, new), tapered) < -100


@pytest.mark.parametrize("orig,new", [(8000, 16000), (16000, 17600)])
def test_upsampling_makes_no_images(orig, new):
    # A tone just below the input Nyquist frequency must not come back mirrored above it (previously: -13 dB).
    x = (sine(0.975 * orig / 2, orig, 1.0) * np.hanning(orig)).astype(np.float32)
    y = resample(x, orig, new).astype(np.float64)
    power = np.abs(np.fft.rfft(y)) ** 2
    above = np.fft.rfftfreq(y.size, 1 / new) > orig / 2
    assert 10 * np.log10(power[above].sum() / power.sum()) < -100  # measured -141 dB


@pytest.mark.parametrize("seconds", [0.3, 1.0])  # one FFT frame (filtered circularly), and several
@pytest.mark.parametrize("orig,new", [(22050, 16000), (8000, 16000), (48000, 16000)])
def test_clip_ends_do_not_leak_into_each_other(orig, new, seconds):
    n = int(orig * seconds)
    ramp = np.concatenate([np.zeros(n // 2), np.linspace(0.0, 1.0, n - n // 2)]).astype(np.float32)
    y = resample(ramp, orig, new)  # ends at full scale
    assert np.abs(y[: y.size // 4]).max() < 1e-5  # measured <= 4e-7
    y = resample(ramp[::-1].copy(), orig, new)  # starts at full scale
    assert np.abs(y[-(y.size // 4) :]).max() < 1e-5
    # Outside the clip is silence, as for the polyphase form: the step at each end rings the same way, to within
    # the filters' differences in the transition band, and the level in between is exact.
    g = math.gcd(orig, new)
    step = np.ones(n, dtype=np.float32)
    y = resample(step, orig, new)
    ref = resampling._resample_polyphase(step, orig // g, new // g, y.size)
    assert np.abs(y - ref).max() < 1e-2  # measured <= 5.5e-3, at the first and last few samples
    assert np.abs(y[new // 50 : -(new // 50)] - 1.0).max() < 1e-4


@pytest.mark.parametrize("orig,new", [(22050, 16000), (8000, 16000), (48000, 16000), (22051, 16000)])
def test_lengths_dtypes_and_tiny_inputs(orig, new):
    for n in [0, 1, 2, 3, 17, 441, 1000, 16384, 40001]:
        y = resample(np.full(n, 0.5), orig, new)  # float64 in
        assert y.dtype == np.float32 and y.shape == (-(-n * new // orig),), n
        assert np.all(np.isfinite(y))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"1-D signal, got shape \(2, 100\)"):
        resample(np.zeros((2, 100), dtype=np.float32), 22050, 16000)
    with pytest.raises(ValueError, match="sample rates must be positive, got 0 -> 16000"):
        resample(np.zeros(100, dtype=np.float32), 0, 16000)
    x = np.arange(5, dtype=np.float32)
    y = resample(x, 16000, 16000)
    np.testing.assert_array_equal(y, x)
    assert y is not x


def test_long_audio_in_several_transform_calls_is_unchanged(monkeypatch):
    x = (np.random.default_rng(0).standard_normal(5 * 22050) * 0.1).astype(np.float32)
    whole = resample(x, 22050, 16000)
    monkeypatch.setattr(resampling, "FFT_CALL_SAMPLES", 1)  # one frame per call
    np.testing.assert_array_equal(resample(x, 22050, 16000), whole)


def test_resampling_does_not_load_torch():
    # torch's intra-op threads stall on a busy machine (16-24 ms per call measured); numpy's FFT runs in-thread.
    code = "import sys, numpy as np; from llmasr.data.resample import resample; "
    code += "resample(np.ones(9000, np.float32), 22050, 16000); resample(np.ones(9000, np.float32), 22051, 16000); "
    code += "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
