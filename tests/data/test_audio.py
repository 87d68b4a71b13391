"""Audio reading: header probes, ranged reads, channels, resampling quality, and every failure kind."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from llmasr.data import audio
from llmasr.data.audio import AudioError, load_audio, probe_duration, resample
from llmasr.data.bad_reasons import reason_category

# gcd-reduced terms small enough for the FFT path: 22.05/44.1/8/48 kHz corpora, speed perturbation 1.1x and 0.9x
FFT_RATES = [(22050, 16000), (44100, 16000), (8000, 16000), (48000, 16000), (16000, 17600), (14400, 16000)]


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
    assert max(orig, new) // g <= audio.FFT_MAX_TERM
    n = int(3.3 * orig)  # several overlap-save frames
    freqs = np.linspace(0.02, 0.9, 8) * min(orig, new) / 2
    x = (multi_sine(orig, n, freqs) * np.hanning(n)).astype(np.float32)
    y = resample(x, orig, new)
    ref = audio._resample_polyphase(x, orig // g, new // g, len(y))
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
    ref = audio._resample_polyphase(step, orig // g, new // g, y.size)
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
    monkeypatch.setattr(audio, "FFT_CALL_SAMPLES", 1)  # one frame per call
    np.testing.assert_array_equal(resample(x, 22050, 16000), whole)


def test_resampling_does_not_load_torch():
    # torch's intra-op threads stall on a busy machine (16-24 ms per call measured); numpy's FFT runs in-thread.
    code = "import sys, numpy as np; from llmasr.data.audio import resample; "
    code += "resample(np.ones(9000, np.float32), 22050, 16000); resample(np.ones(9000, np.float32), 22051, 16000); "
    code += "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


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


def test_a_file_of_no_bytes_or_of_a_format_libsndfile_lacks_says_so(tmp_path):
    # Both had read "unreadable or corrupt audio (... Format not recognised.)": a 0-byte file (a failed copy) and an
    # m4a, which wants converting, not repairing.
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for read in (probe_duration, lambda p: load_audio(p, sample_rate=16000)):
        with pytest.raises(AudioError) as e:
            read(empty)
        assert e.value.reason == "empty audio (a file of 0 bytes)"
    m4a = tmp_path / "clip.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42\x00\x00\x00\x08free")
    with pytest.raises(AudioError) as e:
        probe_duration(m4a)
    assert e.value.reason.startswith("unreadable or corrupt audio (")
    assert e.value.reason.endswith(
        "Format not recognised.): no format libsndfile reads (wav, flac, ogg, mp3, ...); one of another (m4a, raw "
        "PCM) wants converting, e.g. with ffmpeg"
    )


def test_a_list_of_files_given_as_audio_is_named_as_text(tmp_path):
    """A file list or a manifest given where audio goes (`llmasr transcribe list.txt`) had been called a format
    wanting conversion with ffmpeg."""
    for name, text in (("list.txt", "a.wav\nb.wav\n"), ("m.jsonl", '{"key": "k", "source": "音.wav"}\n')):
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(AudioError) as e:
            load_audio(tmp_path / name, sample_rate=16000)
        first = text.splitlines()[0]
        assert e.value.reason.endswith(
            f"it is text, not audio (its first line {first!r}): a list of audio files or a manifest given where an "
            "audio file goes?"
        )


def test_a_git_lfs_pointer_in_place_of_audio_is_named_as_such(tmp_path):
    """A data set cloned without LFS holds pointers named .wav / .flac: they had been called a format wanting
    conversion with ffmpeg."""
    pointer = tmp_path / "clips" / "a.flac"
    pointer.parent.mkdir()
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 52311\n")
    for read in (probe_duration, lambda p: load_audio(p, sample_rate=16000)):
        with pytest.raises(AudioError) as e:
            read(pointer)
        assert e.value.reason == (
            f"a Git LFS pointer, not the audio (the data set was cloned without LFS): run `git lfs pull` in "
            f"{pointer.parent}, or download the file itself"
        )
        assert reason_category(e.value.reason) == "Git LFS pointer, not audio"  # a category of its own, counted


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


def test_a_segment_end_past_the_audio_is_trimmed_a_little_and_refused_by_more(tmp_path):
    """An end within Kaldi's --max-overshoot (0.5 s) of the audio's end is rounding, trimmed; one further out had
    been cut short silently while its whole transcript was kept: refused, naming file, segment end and audio end."""
    path = tmp_path / "three.wav"
    x = sine(440, 16000, 3.0)
    sf.write(path, x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, sample_rate=16000, start=2.0, end=3.3), x[32000:])
    for end in (3.5, 9.0):
        with pytest.raises(AudioError, match=rf"three.wav: segment end {end:.3f}s is past the end of the audio "
                           r"\(3.000s\)"):  # fmt: skip
            load_audio(path, sample_rate=16000, start=2.0, end=end)
        with pytest.raises(AudioError, match="past the end of the audio"):
            audio.probe_span(path, 2.0, end)
    header, seconds = audio.probe_span(path, 2.0, 3.3)
    assert (header.seconds, header.sample_rate, header.channels, seconds) == (3.0, 16000, 1, pytest.approx(1.0))
    # a length cap is no segment end: it may pass the audio's end
    np.testing.assert_array_equal(load_audio(path, sample_rate=16000, start=2.0, limit=30.0), x[32000:])
    np.testing.assert_array_equal(load_audio(path, sample_rate=16000, start=2.0, end=3.3, limit=0.5), x[32000:40000])


MP3 = "MP3" in sf.available_formats()


def test_a_file_cut_short_is_refused_not_read_as_a_shorter_clip(tmp_path):
    """Half of a file (an interrupted copy) had loaded as a clip half as long, its whole transcript trained against
    it: a WAV whose header declares more audio than the file holds, an MP3 that decodes to fewer samples than its
    header says. A stream's WAV header, written before its length was known, declares nothing and still reads."""
    x = sine(440, 16000, 2.0)
    path = tmp_path / "whole.wav"
    sf.write(path, x, 16000, subtype="PCM_16")
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    for read in (lambda p: load_audio(p, sample_rate=16000), probe_duration):
        with pytest.raises(AudioError, match=r"cut.wav: truncated: its header declares 64000 bytes of audio, the file "
                                             r"holds 3\d{4}"):  # fmt: skip
            read(cut)
    streamed = bytearray(data)
    at = streamed.index(b"data") + 4
    for unknown in (0xFFFFFFFF, 0x7FFFF000):  # a streaming writer's, SoX's into a pipe
        streamed[at : at + 4] = unknown.to_bytes(4, "little")
        (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
        np.testing.assert_allclose(load_audio(tmp_path / "streamed.wav", sample_rate=16000), x, atol=1e-4)
    if MP3:
        sf.write(tmp_path / "whole.mp3", x, 16000, format="MP3", subtype="MPEG_LAYER_III")
        data = (tmp_path / "whole.mp3").read_bytes()
        (tmp_path / "cut.mp3").write_bytes(data[: len(data) // 2])
        with pytest.raises(AudioError, match=r"cut.mp3: truncated: \d+ of the 32000 samples its header declares"):
            load_audio(tmp_path / "cut.mp3", sample_rate=16000)
        # a VBR MP3 without a Xing frame (a pipe's): its length is a guess from its first, silent frame, four times
        # too long, and no sign of a cut; it reads whole
        quiet = np.concatenate([np.zeros(8000, np.float32), x[:24000]])
        sf.write(tmp_path / "vbr.mp3", quiet, 16000, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="VARIABLE")
        data = (tmp_path / "vbr.mp3").read_bytes()
        assert b"Xing" in data[:4096] or b"Info" in data[:4096]
        rates = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)  # MPEG-2 layer III, kbps
        xing_frame = 72 * rates[data[2] >> 4] * 1000 // 16000 + ((data[2] >> 1) & 1)
        (tmp_path / "noxing.mp3").write_bytes(data[xing_frame:])
        assert sf.info(str(tmp_path / "noxing.mp3")).frames > 1.5 * len(quiet)  # the guess
        assert abs(len(load_audio(tmp_path / "noxing.mp3", sample_rate=16000)) - len(quiet)) < 4 * 1152


@pytest.mark.skipif(not MP3, reason="this libsndfile has no MP3")
def test_an_mp3_segment_is_the_whole_files_decode_of_it(tmp_path):
    """An MP3 frame decodes from the bit reservoir of the frames before it: a segment read from a seek point had
    begun with up to a quarter second of silence or garbage (Kaldi segments, noise offsets, long-audio windows)."""
    sr = 16000
    x = sine(440, sr, 4.0) + sine(1300, sr, 4.0, amp=0.2)
    path = tmp_path / "tone.mp3"
    sf.write(path, x, sr, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="VARIABLE", compression_level=0.9)
    whole = load_audio(path, sample_rate=sr)
    for start in (0.0, 0.05, 0.5, 1.234, 2.9):
        part = load_audio(path, sample_rate=sr, start=start, end=start + 0.8)
        first = int(round(start * sr))
        np.testing.assert_allclose(part, whole[first : first + len(part)], atol=1e-6, err_msg=f"start {start}")


def test_a_path_with_a_nul_character_is_an_audio_error():
    """os.stat raises a bare ValueError for it, which had reached the user as a traceback."""
    err = audio.missing_audio("a\x00b.wav")
    assert isinstance(err, AudioError) and "holds a NUL character" in err.reason and "a\\x00b.wav" in err.path
    with pytest.raises(AudioError, match="NUL character"):
        probe_duration("a\x00b.wav")
    with pytest.raises(AudioError, match="NUL character"):
        load_audio("a\x00b.wav", sample_rate=16000)
