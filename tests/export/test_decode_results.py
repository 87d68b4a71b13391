"""The decode summary's files for rows whose keys repeat: every line is scored, and wer.txt / wer.json name the keys
that a scorer pairing hyp.txt and ref.txt by key would mismatch."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from llmasr.data.records import language_of
from llmasr.export.decode_results import llm_summary
from llmasr.models.decoding import DecodeConfig
from llmasr.scoring import score_corpus

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


def test_keys_that_meet_once_written_are_named_as_repeated(tmp_path):
    # distinct in the manifest, one key in hyp.txt and ref.txt once the whitespace is written as '_'
    rows = [row("utt 1", "one", "one"), row("utt_1", "two", "two"), row("other", "three", "three")]
    summary = llm_summary(tmp_path, rows, dict(FOUND), DecodeConfig(), dict(TIMING))
    assert [line.split()[0] for line in (tmp_path / "ref.txt").read_text().splitlines()] == ["utt_1", "utt_1", "other"]
    assert summary["repeated_keys"] == ["utt_1"] and "keys on more than one line: 1 (e.g. 'utt_1')" in summary["text"]


def test_a_manifest_of_bad_lines_only_has_no_rate():
    """Every line bad: nothing was decoded, so there is no WER to report (it said 0.00%)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        found = dict(FOUND, skipped=3, skipped_by_reason={"audio: file not found": 3})
        summary = llm_summary(Path(tmp), [], found, DecodeConfig(), dict(TIMING, audio_seconds=0.0))
        assert summary["rate"] is None
        assert "no utterance was transcribed (every line was bad: see bad.jsonl): not scored" in summary["text"]
        # no audio, no rate: wer.json stays JSON that jq and strict readers take (Python had written NaN there)
        strict = json.loads((Path(tmp) / "wer.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} written"))
        assert strict["rtf"] is None and "nan" not in summary["text"]
        assert "real-time factor n/a (no audio decoded)" in summary["text"]


def test_ranks_bad_lines_are_all_kept_whichever_rank_found_them():
    """Rank 1 found three bad items, rank 0 none: all three are kept for bad.jsonl (the kept examples were sized by
    rank 0's own count, so two were lost and a windowed decode counted 1 skipped)."""
    from llmasr.data.bad_data import BadDataTracker
    from llmasr.export.decode_world import DecodeWorld

    found = [[], [{"manifest": "m.jsonl", "line": k, "index": k, "reason": "audio: file not found"} for k in (2, 5, 7)]]

    class TwoRanks(DecodeWorld):
        def gather(self, obj):
            return [({0: {"key": "a"}}, found[0]), ({1: {"key": "b"}}, found[1])]

    merged, tracker, shares = TwoRanks(rank=0, size=2).merge({0: {"key": "a"}}, BadDataTracker(0.5, name="test"))
    assert [rec["line"] for rec in tracker.examples] == [2, 5, 7] and tracker.bad == 3 and shares == [1, 1]


def test_keys_holding_whitespace_keep_hyp_and_ref_lines_of_key_and_text(tmp_path):
    rows = [row("utt 1", "hello world", "hello world"), row("utt\n3", "x", "x"), row("plain", "y", "y")]
    summary = llm_summary(tmp_path, rows, dict(FOUND), DecodeConfig(), dict(TIMING))
    assert (tmp_path / "hyp.txt").read_text().splitlines() == ["utt_1 hello world", "utt_3 x", "plain y"]
    assert (tmp_path / "ref.txt").read_text().splitlines() == ["utt_1 hello world", "utt_3 x", "plain y"]
    assert summary["spaced_keys"] == ["utt 1", "utt\n3"] and "keys holding whitespace: 2" in summary["text"]
    keys = [json.loads(line)["key"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert keys == ["utt 1", "utt\n3", "plain"]


def test_the_real_time_factor_is_also_given_without_the_first_batch(tmp_path):
    """A GPU's first batch holds the device's warm-up and the loader's start, which can outweigh a small test set:
    the real-time factor of the batches after it is reported beside the whole run's."""
    rows = [row("a", "one", "one"), row("b", "two", "two"), row("c", "three", "three")]
    timing = dict(TIMING, first_batch=0.6, first_batch_share=0.25)  # a quarter of the audio, 0.6 of the 1.0 s
    summary = llm_summary(tmp_path / "warm", rows, dict(FOUND), DecodeConfig(), timing)
    assert summary["rtf"] == 1.0 / 6.0 and summary["first_batch_seconds"] == 0.6
    assert abs(summary["rtf_after_first_batch"] - 0.4 / 4.5) < 1e-12
    text = (tmp_path / "warm" / "wer.txt").read_text()
    assert "real-time factor 0.1667 (0.0889 after the first batch, which took 0.6 s)" in text
    one_batch = dict(TIMING, first_batch=1.0, first_batch_share=1.0)
    one = llm_summary(tmp_path / "one", rows, dict(FOUND), DecodeConfig(), one_batch)
    assert one["rtf_after_first_batch"] is None
    assert "after the first batch" not in (tmp_path / "one" / "wer.txt").read_text()


def test_each_row_holds_the_texts_as_they_were_scored(tmp_path):
    """A user comparing the WER with another toolkit's needs the texts llmasr scored, after its normalisation; a row
    without a reference has none."""
    rows = [row("a", "It costs 3.5 Dollars.", "it costs 35 dollars"), row("b", None, "untranscribed")]
    llm_summary(tmp_path, rows, dict(FOUND), DecodeConfig(), dict(TIMING))
    scored, unscored = (json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines())
    assert (scored["ref_norm"], scored["hyp_norm"]) == ("it costs 3.5 dollars", "it costs 35 dollars")
    assert scored["errors"] == 1 and scored["hyp"] == "it costs 35 dollars"
    assert unscored["ref_norm"] is None and unscored["hyp_norm"] is None


def test_each_language_the_lines_name_is_rated_apart(tmp_path):
    """A mixed test set had one rate: a language far worse than the rest was hidden in it. FunASR's "<|zh|>" and a
    plain "zh" are one language; lines without `lang` are a group of their own; one language alone adds nothing."""
    rows = [row("a", "one two", "one two"), row("b", "three four", "three"), row("c", "五六七", "五六"),
            row("d", "八九", "八九"), row("e", "ten", "ten"), row("f", "eleven", None)]  # fmt: skip
    rows[-1]["ref"], rows[-1]["hyp"] = None, "eleven"  # transcribed, not scored: in no group
    for r, lang in zip(rows, ["en", "EN", "<|zh|>", "zh", None, "fr"]):
        r["lang"] = language_of(SimpleNamespace(lang=lang))
    summary = llm_summary(tmp_path, rows, dict(FOUND), DecodeConfig(), dict(TIMING))
    groups = summary["by_language"]
    assert list(groups) == ["en", "zh", "(none)"]  # most utterances first
    en, _ = score_corpus([("one two", "one two"), ("three four", "three")], "auto")
    zh, _ = score_corpus([("五六七", "五六"), ("八九", "八九")], "auto")
    assert groups["en"] == en.to_dict() and groups["en"]["rate"] == 0.25 and groups["zh"]["rate"] == 0.2
    assert groups["zh"]["metric"] == "CER" and groups["(none)"]["errors"] == 0
    lines = summary["text"].splitlines()
    at = lines.index("by language (the lines' `lang`):")
    none, _ = score_corpus([("ten", "ten")], "auto")
    assert lines[at + 1 : at + 4] == [f"  en: {en.summary()}", f"  zh: {zh.summary()}", f"  (none): {none.summary()}"]
    assert json.loads((tmp_path / "wer.json").read_text())["by_language"]["zh"] == zh.to_dict()
    written = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r.get("lang") for r in written] == ["en", "en", "zh", "zh", None, "fr"]
    one = [dict(r, lang="en") for r in rows[:2]]
    assert "by_language" not in llm_summary(tmp_path / "one", one, dict(FOUND), DecodeConfig(), dict(TIMING))


def test_counts_of_one_are_written_in_the_singular(tmp_path):
    """wer.txt read "over 1 utterances" and "1 of 1 lines" for a one-clip decode; a count of one is singular."""
    summary = llm_summary(tmp_path, [row("a", "one two", "one")], dict(FOUND, lines=1), DecodeConfig(), dict(TIMING))
    assert (
        re.search(r"ins \] over 1 utterance$", summary["text"], re.M)
        and "utterances decoded: 1 of 1 line;" in (summary["text"])
    )
    assert not re.search(r"\b1 (utterances|lines)\b", (tmp_path / "wer.txt").read_text())
    two = [row("a", "x", "x"), row("b", "y", "y")]
    many = llm_summary(tmp_path / "many", two, dict(FOUND), DecodeConfig(), dict(TIMING))["text"]
    assert "ins ] over 2 utterances" in many and "utterances decoded: 2 of 3 lines;" in many
