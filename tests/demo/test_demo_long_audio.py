"""The demo's long-audio check: clips joined into long utterances (audio and references), the parts' WER, and the
issue's acceptance test against a trained demo workdir (LLMASR_DEMO_WORKDIR, e.g. exp/demo after `llmasr demo`)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from llmasr.data.audio import load_audio
from llmasr.demo.long_audio import PAUSE_S, join_clips, parts_wer, score_long_audio
from llmasr.testing.tiny_corpus import write_tiny_corpus


def test_clips_are_joined_with_short_pauses(tmp_path):
    manifest = write_tiny_corpus(tmp_path / "corpus", n=30)
    clips = [json.loads(line) for line in manifest.read_text().splitlines()]
    joined = join_clips(manifest, tmp_path / "long", seconds=5.0, count=2)
    rows = [json.loads(line) for line in joined.read_text().splitlines()]
    assert [r["key"] for r in rows] == ["long_0", "long_1"]
    first = rows[0]["parts"]
    assert first == [c["key"] for c in clips[: len(first)]] and rows[1]["parts"][0] == clips[len(first)]["key"]
    assert rows[0]["target"] == " ".join(c["target"] for c in clips[: len(first)])
    wave = load_audio(joined.parent / rows[0]["source"], sample_rate=16000)
    assert wave.size / 16000 == pytest.approx(rows[0]["duration"], abs=1e-3) and rows[0]["duration"] >= 5.0
    parts = [load_audio(manifest.parent / c["source"], sample_rate=16000) for c in clips[: len(first)]]
    gaps = wave.size - sum(p.size for p in parts)
    assert PAUSE_S[0] * (len(parts) - 1) <= gaps / 16000 <= PAUSE_S[1] * (len(parts) - 1)
    assert np.allclose(wave[: parts[0].size], parts[0], atol=1e-4)  # the first clip as it is
    with pytest.raises(ValueError, match="less than 500 s in all"):
        join_clips(manifest, tmp_path / "none", seconds=500.0)


def test_parts_wer_reads_the_clips_rows(tmp_path):
    joined = tmp_path / "long.jsonl"
    joined.write_text(json.dumps({"key": "long_0", "parts": ["a", "b"]}) + "\n")
    results = tmp_path / "results.jsonl"
    rows = [{"key": "a", "errors": 1, "ref_units": 4}, {"key": "b", "errors": 0, "ref_units": 6}, {"key": "c"}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert parts_wer(joined, results) == (0.1, 1, 10)
    results.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(KeyError, match="no row for clip b"):
        parts_wer(joined, results)


DEMO = os.environ.get("LLMASR_DEMO_WORKDIR")


@pytest.mark.skipif(
    not DEMO or not (Path(DEMO) / "model").is_dir() or not (Path(DEMO) / "decode_test" / "results.jsonl").is_file(),
    reason="needs a trained demo workdir: run `llmasr demo` and set LLMASR_DEMO_WORKDIR to its workdir",
)
def test_a_minute_of_joined_demo_clips_decodes_within_two_points_of_its_parts(tmp_path):
    """Issue 14: a 60 s utterance joined from held-out demo clips decodes to the joined reference within the WER
    of its parts plus 2 points (the parts' WER from the demo's own decode of the test split)."""
    from llmasr.export.decode import load_decode_model

    workdir = Path(DEMO)
    joined = join_clips(workdir / "corpus" / "test.jsonl", tmp_path, seconds=60.0, count=3)
    model, cfg, opts = load_decode_model(workdir / "model")
    opts = dataclasses.replace(opts, num_workers=0)
    got = score_long_audio(model, joined, workdir / "decode_test" / "results.jsonl", tmp_path / "out", cfg, opts)
    assert got["windows"] > got["utterances"]  # decoded in windows, not whole
    assert got["wer"] <= got["parts_wer"] + 0.02, got["text"]
