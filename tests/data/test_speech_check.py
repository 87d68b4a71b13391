"""`llmasr data check --vad DIR` (llmasr.data.speech_check): a transcript over audio without speech and a speaking
rate far from the manifest's are listed, from the VAD's segments of every line, in worker processes or not alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from llmasr.commands.data_check import main
from llmasr.data.speech_check import hear_speech
from llmasr.models.fsmn_vad import FsmnVad
from llmasr.testing.tiny_corpus import syllable_bursts
from llmasr.testing.tiny_vad import write_fsmn_vad_dir

SR = 16000
TEXT = "one two three four five six"  # 22 characters without spaces


@pytest.fixture(scope="module")
def vad_dir(tmp_path_factory):
    return write_fsmn_vad_dir(tmp_path_factory.mktemp("vad") / "fsmn-vad")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    lines = []
    for k in range(6):
        sf.write(str(root / f"s{k}.wav"), syllable_bursts(3.0 + 0.2 * k, seed=k), SR, subtype="FLOAT")
        lines.append({"key": f"s{k}", "source": f"s{k}.wav", "target": TEXT})
    silent = (0.003 * np.random.default_rng(9).standard_normal(3 * SR)).astype(np.float32)
    sf.write(str(root / "hush.wav"), silent, SR, subtype="FLOAT")
    lines.append({"key": "hush", "source": "hush.wav", "target": "hello there"})  # a label without its speech
    lines.append({"key": "long_text", "source": "s0.wav", "target": " ".join([TEXT] * 5)})  # five times too fast
    lines.append({"key": "gone", "source": "nope.wav", "target": TEXT})  # bad: the check lists it elsewhere
    lines.append({"key": "untranscribed", "source": "s1.wav"})
    lines.append({"key": "quiet", "source": "hush.wav"})  # audio to decode without speech: the VAD gate empties it
    path = root / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _segments(vad_dir):
    vad = FsmnVad.from_dir(vad_dir)
    return lambda wave: [(a * 16, b * 16) for a, b in vad.segments_ms(wave)]


def test_silence_under_a_transcript_and_an_odd_rate_are_found(manifest, vad_dir):
    found = hear_speech([str(manifest)], _segments(vad_dir), SR, vad=str(vad_dir))
    assert found.lines == 8  # the bad line and the one without a transcript are not heard
    assert [(f["line"], f["key"]) for f in found.no_speech] == [(7, "hush")]
    assert [(f["line"], f["key"]) for f in found.rate_outliers] == [(8, "long_text")]
    assert found.rate_outliers[0]["rate"] > 3 * found.median_rate
    assert 22 / 4.0 < found.median_rate < 22 / 3.0  # 22 characters over clips of 3-4 s of speech
    assert found.audio_seconds == pytest.approx(27.0) and 20.0 < found.speech_seconds < 24.0  # the silent 3 s: none
    in_workers = hear_speech([str(manifest)], _segments(vad_dir), SR, vad=str(vad_dir), workers=2)
    assert in_workers == found


def test_data_check_reports_them(manifest, vad_dir, tmp_path, capsys):
    assert main([str(manifest), "--vad", str(vad_dir), "--max-bad-fraction", "0.5", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert f"## speech (the VAD {vad_dir})" in out
    assert "transcripts over audio without speech: 1\n" in out and f"{manifest}:7 key=hush: 'hello there'" in out
    assert "speaking rates over 3x or under 1/3 of the median: 1\n" in out and f"{manifest}:8 key=long_text:" in out
    assert out.index("## speech") < out.index("result: OK")
    assert main([str(manifest), "--vad", str(tmp_path / "nowhere")]) == 2
    assert "--vad: " in capsys.readouterr().err
    assert main([str(manifest), "--vad", str(vad_dir), "--vad-max-end-silence-ms", "0"]) == 2
    assert "--vad-max-end-silence-ms: must be > 0 ms, got 0" in capsys.readouterr().err


def test_lines_without_a_transcript_are_heard_apart_and_the_silent_ones_listed(manifest, vad_dir, capsys):
    """A manifest to decode (`--decode`: no transcripts) had been heard not at all: "0 lines heard ... median rate
    nan", where the VAD finds the lines that `llmasr decode --vad` leaves empty, and its pseudo-labels leave out."""
    found = hear_speech([str(manifest)], _segments(vad_dir), SR, vad=str(vad_dir))
    assert found.untranscribed == 2 and [(f["line"], f["key"]) for f in found.silent] == [(11, "quiet")]
    assert found.untranscribed_audio_seconds == pytest.approx(3.2 + 3.0) and found.untranscribed_speech_seconds > 2
    assert main([str(manifest), "--decode", "--vad", str(vad_dir), "--max-bad-fraction", "0.5", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "8 lines with a transcript heard: " in out
    assert (
        "2 lines without a transcript heard: " in out
        and "transcribed empty by `llmasr decode --vad` (its gate): 1" in out
    )
    assert f"{manifest}:11 key=quiet" in out
    untranscribed = manifest.parent / "untranscribed.jsonl"
    untranscribed.write_text(json.dumps({"key": "quiet", "source": "hush.wav"}) + "\n")
    assert main([str(untranscribed), "--decode", "--vad", str(vad_dir), "--workers", "0"]) == 0
    assert "0 lines with a transcript heard: 0.00 h of speech in 0.00 h of audio (0.0%); median rate n/a" in (
        capsys.readouterr().out
    )
