"""Audio reading: header probes, ranged reads, channels, resampling to the model's rate, and every failure kind."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf
from speech_fakes import write_shorten_sph

from llmasr.data import audio
from llmasr.data.audio import AudioError, load_audio, probe_duration
from llmasr.data.bad_reasons import reason_category


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


def test_a_range_at_an_exact_half_sample_rounds_up_as_kaldi_and_lhotse_do(tmp_path):
    """Kaldi's extract-segments and lhotse (compute_num_samples) round a time half a sample past a sample up to the
    next; Python's round() had taken it to the even one, so a segment at 2.5 and 6.5 samples began a sample early."""
    sr = 16000
    path = tmp_path / "ramp.wav"
    sf.write(path, np.arange(100, dtype=np.int16), sr, subtype="PCM_16")
    scale = 1 / 32768

    def ramp_read(**kw):
        return np.rint(load_audio(path, sample_rate=sr, **kw) / scale).astype(int).tolist()

    assert ramp_read(start=2.5 / sr, end=6.5 / sr) == [3, 4, 5, 6]
    assert ramp_read(start=3.5 / sr, end=7.5 / sr) == [4, 5, 6, 7]
    assert ramp_read(start=0.5 / sr, limit=2.5 / sr) == [1, 2, 3]
    # float error alone does not move a time that lands on a sample: 0.3 s * 16000 is 4800.000000000001
    assert ramp_read(start=0.003, end=0.0035) == list(range(48, 56))
    assert [audio.sample_index(t, sr) for t in (0.0, 2.4999 / sr, 2.5 / sr, 0.3)] == [0, 2, 3, 4800]


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


def test_channels_that_cancel_when_averaged_are_refused_naming_the_fix(tmp_path):
    # one channel stored inverted (a phone line wired in anti-phase): the average is silence however loud each is
    sr = 16000
    voice = sine(300, sr, 1.0)
    path = tmp_path / "antiphase.wav"
    sf.write(path, np.stack([voice, -voice * 0.9], axis=1), sr, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"2 channels cancel when averaged .*-2\d dB.*`channel`") as err:
        load_audio(path, sample_rate=sr)
    assert str(path) in str(err.value)
    assert reason_category(str(err.value)) == "channels that cancel (anti-phase)"
    np.testing.assert_array_equal(load_audio(path, sample_rate=sr, channel=0), voice)  # the fix it names works
    # two independent talkers (a call's two sides), one side silent, or a silent file: averaged as before
    for name, right in (("talkers", sine(1200, sr, 1.0, amp=0.25)), ("one_side", np.zeros(sr, np.float32))):
        sf.write(tmp_path / f"{name}.wav", np.stack([voice, right], axis=1), sr, subtype="FLOAT")
        np.testing.assert_allclose(load_audio(tmp_path / f"{name}.wav", sample_rate=sr), (voice + right) / 2, atol=1e-7)
    sf.write(tmp_path / "silent.wav", np.zeros((sr, 2), np.float32), sr, subtype="FLOAT")
    assert not load_audio(tmp_path / "silent.wav", sample_rate=sr).any()


def test_channels_whose_offsets_differ_are_no_cancelling(tmp_path):
    # a sound card's DC offset, opposite on its two inputs, dominates a quiet stretch (a pause a segment holds): the
    # average drops it, which is no voice cancelled; only what varies about each channel's offset can cancel
    sr = 16000
    rng = np.random.default_rng(0)
    hiss = rng.standard_normal((sr, 2)).astype(np.float32) * 0.001
    path = tmp_path / "offsets.wav"
    sf.write(path, hiss + np.array([0.01, -0.01], np.float32), sr, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, sample_rate=sr), hiss.mean(axis=1), atol=1e-6)
    voice = sine(300, sr, 1.0)  # inverted on top of those offsets: still refused
    sf.write(path, np.stack([voice + 0.01, -voice - 0.01], axis=1), sr, subtype="FLOAT")
    with pytest.raises(AudioError, match="2 channels cancel when averaged"):
        load_audio(path, sample_rate=sr)


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


def test_a_shorten_compressed_sphere_file_says_so(tmp_path):
    # WSJ's .wv1 files are NIST SPHERE with shorten-compressed samples: libsndfile's "unimplemented format" named
    # neither the compression nor the way out.
    path = write_shorten_sph(tmp_path / "011c0201.wv1")
    for read in (probe_duration, lambda p: load_audio(p, sample_rate=16000)):
        with pytest.raises(AudioError) as e:
            read(path)
        assert e.value.reason == (
            "NIST SPHERE audio compressed with shorten (sample_coding 'pcm,embedded-shorten-v2.00'), which libsndfile "
            "does not decode: decompress it (`sph2pipe -f wav F > F.wav`)"
        )


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
