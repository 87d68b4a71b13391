"""The decode summary's files for rows whose keys repeat: every line is scored, and wer.txt / wer.json name the keys
that a scorer pairing hyp.txt and ref.txt by key would mismatch."""

from __future__ import annotations

import json

from llmasr.export.decode_results import llm_summary
from llmasr.models.decoding import DecodeConfig

FOUND = dict(manifest="data/test.jsonl", lines=3, skipped=0, skipped_by_reason={})
TIMING = dict(audio_seconds=6.0, decode_seconds=1.0, device="cpu", mode="greedy")


def row(key: str, ref: str, hyp: str) -> dict:
    return dict(key=key, ref=ref, hyp=hyp, duration=2.0, truncated=None, hotwords=None)


def test_repeated_keys_are_scored_line_by_line_and_named(tmp_path):
    # one clip transcribed twice (a ChatML manifest asking for it in two languages): both lines keep the clip's key
    rows = [row("clip", "one two", "one two"), row("clip", "uno dos", "uno"), row("other", "three", "three")]
    summary = llm_summary(tmp_path, rows, dict(FOUND), DecodeConfig(), dict(TIMING))
    assert summary["errors"] == 1 and summary["ref_units"] == 5
    assert summary["repeated_keys"] == ["clip"]
    assert json.loads((tmp_path / "wer.json").read_text())["repeated_keys"] == ["clip"]
    assert "keys on more than one line: 1 (e.g. 'clip')" in (tmp_path / "wer.txt").read_text()
    assert (tmp_path / "hyp.txt").read_text().splitlines() == ["clip one two", "clip uno", "other three"]
    unique = llm_summary(tmp_path / "unique", rows[1:], dict(FOUND), DecodeConfig(), dict(TIMING))
    assert unique["repeated_keys"] == []
    assert "keys on more than one line" not in (tmp_path / "unique" / "wer.txt").read_text()
