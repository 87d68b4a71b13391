"""Word timestamps through the decode path (`decode.timestamps`, `llmasr decode --timestamps`, `llmasr transcribe
--timestamps`): every row's words are its transcript's units in order with times inside its audio, long audio's
windows put theirs in utterance time, and a model without a CTC head is refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from llmasr.commands.decode import main as decode_main
from llmasr.commands.transcribe import main as transcribe_main
from llmasr.config_io import ConfigError
from llmasr.export.decode import DecodeOptions, decode_manifest, search_boost
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.run_dirs import write_corpus, write_joined_recording
from llmasr.text_units import UNIT

TEXTS = ["zero one two", "three four", "five six seven eight", "nine"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("timestamps")
    manifest = write_corpus(root, TEXTS)
    long, seconds = write_joined_recording(root, TEXTS)  # about 5 s: windows of at most 2 s
    return manifest, long, seconds


def _check_words(row: dict, duration: float) -> None:
    """Units and times of a row, where it has them (None: its text could not be spelled or fit in the CTC frames:
    the tiny model writes byte-level noise, some of it more labels than the frames can hold)."""
    words = row["timestamps"]
    if words is None:
        return
    assert [w[0] for w in words] == UNIT.findall(row["hyp"])
    starts = [w[1] for w in words]
    assert starts == sorted(starts) and all(0 <= a < b <= duration for _, a, b in words), words


def test_rows_carry_their_words_times_and_only_when_asked(model, corpus, tmp_path):
    manifest, _, _ = corpus
    cfg = DecodeConfig(max_new_tokens=4, timestamps=True)
    decode_manifest(model, manifest, tmp_path / "on", cfg, DecodeOptions(num_workers=0))
    rows = [json.loads(line) for line in open(tmp_path / "on" / "results.jsonl")]
    assert sum(bool(r["timestamps"]) for r in rows) >= 2  # not only empty or unalignable transcripts
    for r in rows:
        _check_words(r, r["duration"])
    decode_manifest(model, manifest, tmp_path / "off", DecodeConfig(max_new_tokens=4), DecodeOptions(num_workers=0))
    off = [json.loads(line) for line in open(tmp_path / "off" / "results.jsonl")]
    assert all("timestamps" not in r for r in off) and [r["words"] for r in off] == [r["words"] for r in rows]
    assert [r["hyp"] for r in off] == [r["hyp"] for r in rows]


def test_windows_put_their_words_in_utterance_time(model, corpus, tmp_path):
    _, long, seconds = corpus
    cfg = DecodeConfig(max_new_tokens=4, timestamps=True, max_window_seconds=2.0, window_overlap=0.5)
    decode_manifest(model, long, tmp_path / "o", cfg, DecodeOptions(num_workers=0))
    (row,) = [json.loads(line) for line in open(tmp_path / "o" / "results.jsonl")]
    assert row["windows"] >= 3
    _check_words(row, seconds)
    assert row["timestamps"] and row["timestamps"][-1][1] > 2.0  # a later window's words are not in its own time


def test_the_commands_write_and_print_words(exported_dir, corpus, tmp_path, capsys):
    manifest, _, _ = corpus
    args = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(tmp_path / "o")]
    assert decode_main([*args, "--timestamps", "--max-new-tokens", "4"]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "o" / "results.jsonl")]
    assert all("timestamps" in r for r in rows) and any(r["timestamps"] for r in rows)
    capsys.readouterr()
    clip = str(manifest.parent / "wav" / "test0.wav")
    assert transcribe_main(["--model", str(exported_dir), "--timestamps", clip]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["audio"] == clip and set(printed) == {"audio", "text", "truncated", "timestamps"}
    _check_words({"hyp": printed["text"], "timestamps": printed["timestamps"]}, sf.info(clip).duration)


def test_a_model_without_a_ctc_head_is_refused():
    headless = SimpleNamespace(ctc_head=None, ctc_tokenizer=None, frontend=SimpleNamespace(kind="fbank"))
    with pytest.raises(ConfigError, match="decode.timestamps: word times come from the CTC head's frames"):
        search_boost(headless, DecodeConfig(timestamps=True), DecodeOptions())
    assert search_boost(headless, DecodeConfig(), DecodeOptions()) == 0.0


def test_times_count_the_leading_silence_decoding_cut(model, corpus, tmp_path):
    """A clip after a second of silence is decoded from its speech (decode.trim_leading_silence); its words' times
    are on the clip's own clock, the second included."""
    manifest, _, _ = corpus
    rng = np.random.default_rng(0)
    lines = []
    for i in range(len(TEXTS)):
        wave = sf.read(manifest.parent / "wav" / f"test{i}.wav", dtype="float32")[0]
        quiet = (1e-4 * rng.standard_normal(16000)).astype(np.float32)
        sf.write(tmp_path / f"late{i}.wav", np.concatenate([quiet, wave]), 16000, subtype="FLOAT")
        lines.append(json.dumps({"key": f"late{i}", "source": f"late{i}.wav", "target": TEXTS[i]}))
    late = tmp_path / "late.jsonl"
    late.write_text("\n".join(lines) + "\n")
    cfg = DecodeConfig(max_new_tokens=4, timestamps=True, max_window_seconds=0)
    decode_manifest(model, late, tmp_path / "o", cfg, DecodeOptions(num_workers=0))
    rows = [json.loads(line) for line in open(tmp_path / "o" / "results.jsonl")]
    timed = [r for r in rows if r["timestamps"]]
    assert timed and all(r["timestamps"][0][1] >= 0.95 for r in timed), [r["timestamps"] for r in rows]
    for r in rows:
        _check_words(r, r["duration"])


def test_words_end_where_the_sound_ends_not_where_the_head_last_fires(model, corpus, tmp_path, monkeypatch):
    """Each clip between a second of silence before and after it; the head (made to) end its one word 0.1 s into
    the speech it hears: the row's word ends where the clip's speech ends, on the clip's own clock (the trimmed
    lead back), within a frame."""
    from llmasr.data.long_audio import FRAME_S, speech_runs
    from llmasr.models.decoding import Transcripts

    manifest, _, _ = corpus
    rng = np.random.default_rng(1)
    lines, clips = [], {}
    for i in range(len(TEXTS)):
        wave = sf.read(manifest.parent / "wav" / f"test{i}.wav", dtype="float32")[0]
        quiet = lambda: (1e-4 * rng.standard_normal(16000)).astype(np.float32)  # noqa: E731
        clips[f"mid{i}"] = np.concatenate([quiet(), wave, quiet()])
        sf.write(tmp_path / f"mid{i}.wav", clips[f"mid{i}"], 16000, subtype="FLOAT")
        lines.append(json.dumps({"key": f"mid{i}", "source": f"mid{i}.wav", "target": TEXTS[i]}))
    (tmp_path / "mid.jsonl").write_text("\n".join(lines) + "\n")
    real = type(model).transcribe

    def early_head(self, batch, cfg):
        got = real(self, batch, cfg)
        return Transcripts(**{**vars(got), "timestamps": [[("word", 0.02, 0.1)] for _ in got.llm]})

    monkeypatch.setattr(type(model), "transcribe", early_head)
    cfg = DecodeConfig(max_new_tokens=4, timestamps=True, max_window_seconds=0)
    decode_manifest(model, tmp_path / "mid.jsonl", tmp_path / "o", cfg, DecodeOptions(num_workers=0))
    for row in map(json.loads, open(tmp_path / "o" / "results.jsonl")):
        [(_, start, end)] = row["timestamps"]
        sound = speech_runs(clips[row["key"]], 16000)
        assert start == pytest.approx(sound[0, 0], abs=FRAME_S), row  # after the trimmed lead
        assert end == pytest.approx(sound[-1, 1], abs=FRAME_S) and end - start > 0.3, row


def test_no_word_ends_past_its_audio_where_the_length_falls_on_half_a_millisecond(
    exported_dir, corpus, tmp_path, monkeypatch
):
    """Times are rounded to the millisecond, and a last word reaching the end of its audio had been rounded up past
    it: a clip of 0.9375 s (15000 samples) ended its word at 0.938, 0.9365 s at 0.937, long audio's windows joined
    (3.7505 s) at 3.751. Every time now lies within the audio as its row states it, the Transcriber's durations
    those of results.jsonl (0.9365, where float32's 0.9365000128746033 had been given)."""
    from llmasr.export.transcribe import Transcriber
    from llmasr.models.decoding import Transcripts
    from llmasr.testing.run_dirs import write_wav

    wave = sf.read(write_wav(tmp_path / "tone.wav", 4.0, seed=2), dtype="float32")[0]  # no pause: windows overlap
    lengths = (15000, 14984, 60008)
    clips = [str(tmp_path / f"c{n}.wav") for n in lengths]
    for n, clip in zip(lengths, clips):
        sf.write(clip, wave[:n], 16000, subtype="FLOAT")
    asr = Transcriber.load(exported_dir, timestamps=True, max_window_seconds=2.0, window_overlap=0.5)
    real = type(asr.model).transcribe

    def to_the_end(self, batch, cfg):  # each window one word of its own, heard up to its last frame and past it
        got = real(self, batch, cfg)
        words = [f"word{int(i)}" for i in batch.indices]
        return Transcripts(**{**vars(got), "llm": words, "timestamps": [[(w, 0.0, 99.0)] for w in words]})

    monkeypatch.setattr(type(asr.model), "transcribe", to_the_end)
    rows = asr.transcripts(clips)
    assert [r["windows"] for r in rows] == [1, 1, 3]
    for n, row in zip(lengths, rows):
        assert row["duration"] == round(n / 16000, 4), row
        assert row["timestamps"] and all(0 <= a <= b <= n / 16000 for _, a, b in row["timestamps"]), row
        assert row["timestamps"][-1][2] > n / 16000 - 0.001, row  # still to the end, the millisecond below it
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"key": f"c{n}", "source": c}) + "\n" for n, c in zip(lengths, clips))
    )
    decode_manifest(asr.model, tmp_path / "m.jsonl", tmp_path / "o", asr.cfg, DecodeOptions(num_workers=0))
    for row in map(json.loads, open(tmp_path / "o" / "results.jsonl")):
        assert all(b <= row["duration"] for _, _, b in row["timestamps"]), row
