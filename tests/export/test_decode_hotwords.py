"""The decode summary with biasing lists: rows with `hotwords` -> B/U rates, recall, precision and leaks in wer.txt,
wer.json and results.jsonl, for the LLM and the CTC branch; rows without lists -> the same files as before."""

from __future__ import annotations

import json

import pytest

from llmasr.export.decode_results import ctc_summary, llm_summary
from llmasr.models.decoding import DecodeConfig

FOUND = dict(manifest="data/test.jsonl", lines=2, skipped=0, skipped_by_reason={})
TIMING = dict(audio_seconds=4.0, decode_seconds=1.0, device="cpu", mode="greedy")
EXAMPLE = [  # the README's worked example
    ("Anna Karenina moved the cluster to Kubernetes.", "anna karina moved cluster to kubernetes zanzibar"),
    ("Tolstoy wrote it.", "tolstoy wrote it all"),
]
LISTS = [["Anna Karenina", "Kubernetes", "Zanzibar"], ["Tolstoy", "Kubernetes"]]


def rows(lists=None, with_key=True) -> list[dict]:
    out = []
    for k, (ref, hyp) in enumerate(EXAMPLE):
        row = dict(key=f"u{k}", ref=ref, hyp=hyp, ctc_hyp=ref, duration=2.0, truncated=None)
        if with_key:
            row["hotwords"] = None if lists is None else lists[k]
        out.append(row)
    return out


def summarise(tmp_path, name, rows_):
    out = tmp_path / name
    summary = llm_summary(out, rows_, dict(FOUND), DecodeConfig(), dict(TIMING))
    return out, summary


def test_rows_with_lists_get_the_hotword_scores(tmp_path):
    out, summary = summarise(tmp_path, "hot", rows(LISTS))
    text = (out / "wer.txt").read_text()
    assert "B-WER 50.00% [ 2 / 4 biased words, 1 sub, 0 del, 1 ins ]" in text
    assert "U-WER 33.33% [ 2 / 6 other words, 0 sub, 1 del, 1 ins ]" in text
    assert "recall 66.67% (2/3 in the references)" in text and "leaks 1 of 2 distractors (50.00%" in text
    hot = json.loads((out / "wer.json").read_text())["hotwords"]
    assert hot == summary["hotwords"]
    assert hot["biased"] == dict(
        metric="B-WER", rate=0.5, errors=2, ref_units=4, substitutions=1, deletions=0, insertions=1
    )
    assert hot["unbiased"]["errors"] + hot["biased"]["errors"] == summary["errors"] == 4
    assert (hot["recall"], hot["precision"], hot["leak_rate"]) == pytest.approx((2 / 3, 2 / 3, 0.5))
    assert (hot["distractors"], hot["leaked"], hot["utterances_with_list"]) == (2, 1, 2)
    results = [json.loads(line) for line in open(out / "results.jsonl")]
    first = results[0]["hotword_scores"]
    assert (first["b_errors"], first["b_units"], first["u_errors"], first["u_units"]) == (2, 3, 1, 4)
    assert first["missed"] == ["anna karenina"] and first["leaked"] == ["zanzibar"]


def test_ctc_branch_is_scored_against_the_same_lists(tmp_path):
    summary = ctc_summary(tmp_path / "ctc", rows(LISTS), dict(FOUND), DecodeConfig(), dict(TIMING))
    hot = summary["hotwords"]  # ctc_hyp is the reference: every phrase recalled, nothing leaked
    assert hot["biased"]["errors"] == 0 and hot["recall"] == 1.0 and hot["leaked"] == 0
    assert "B-WER 0.00% [ 0 / 4 biased words" in (tmp_path / "ctc" / "wer.txt").read_text()


def test_one_row_with_a_list_scores_the_others_as_unbiased(tmp_path):
    _, summary = summarise(tmp_path, "one", rows([LISTS[0], []]))
    hot = summary["hotwords"]
    assert hot["utterances_with_list"] == 1 and hot["biased"]["ref_units"] == 3
    assert hot["unbiased"]["ref_units"] == 7 and hot["unbiased"]["errors"] + hot["biased"]["errors"] == 4
    results = [json.loads(line) for line in open(tmp_path / "one" / "results.jsonl")]
    assert "hotword_scores" in results[0] and "hotword_scores" not in results[1]


@pytest.mark.parametrize("lists", [None, [[], []]])
def test_no_lists_leave_the_outputs_unchanged(tmp_path, lists):
    plain_dir, plain = summarise(tmp_path, "plain", rows(with_key=False))
    dir_, summary = summarise(tmp_path, "empty", rows(lists))
    assert "hotwords" not in summary and "hotwords" not in plain
    for name in ("wer.txt", "wer.json", "results.jsonl", "hyp.txt", "ref.txt"):
        assert (dir_ / name).read_text() == (plain_dir / name).read_text(), name
    assert "B-WER" not in (dir_ / "wer.txt").read_text() and len(plain["text"].splitlines()) == 4


def test_a_bad_hotwords_value_names_the_utterance(tmp_path):
    bad = rows(LISTS)
    bad[1]["hotwords"] = "Tolstoy"
    with pytest.raises(ValueError, match=r"utterance 'u1': hotwords must be a list of strings"):
        summarise(tmp_path, "bad", bad)
