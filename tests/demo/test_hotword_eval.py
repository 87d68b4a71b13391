"""The demo's hotword report: scores read from each decoding run's wer.json, printed side by side."""

from __future__ import annotations

import json

import pytest

from llmasr.demo.hotword_eval import hotword_scores, report_lines
from llmasr.export.decode_results import llm_summary
from llmasr.models.decoding import DecodeConfig

FOUND = {"manifest": "hotword.jsonl", "lines": 2, "skipped": 0, "skipped_by_reason": {}}
TIMING = {"audio_seconds": 2.0, "decode_seconds": 0.1, "device": "cpu", "mode": "greedy"}


def write_run(out, hyps, lists):
    rows = [
        {"key": f"u{i}", "ref": ref, "hyp": hyp, "duration": 1.0, "truncated": None, "hotwords": hw,
         "hotwords_dropped": 0}
        for i, ((ref, hyp), hw) in enumerate(zip(hyps, lists))
    ]  # fmt: skip
    llm_summary(out, rows, dict(FOUND), DecodeConfig(), dict(TIMING))
    return out


def test_scores_and_lines_of_a_biased_and_an_unbiased_run(tmp_path):
    lists = [["zandor", "keltrix"], ["velmont", "brevik"]]
    pairs_on = [("zandor stop", "zandor stop"), ("go home", "go brevik")]  # a hit, and a leak in place of a U word
    pairs_off = [("zandor stop", "sand or stop"), ("go home", "go home")]
    on = hotword_scores(write_run(tmp_path / "on", pairs_on, lists))
    off = hotword_scores(write_run(tmp_path / "off", pairs_off, lists))
    assert on["b_wer"] == 0.0 and off["b_wer"] == 1.0  # 1 biased word; "or" is inserted outside any phrase
    assert on["u_wer"] == pytest.approx(1 / 3) and off["u_wer"] == pytest.approx(1 / 3)
    assert on["leaked"] == 1 and on["distractors"] == 3 and on["leak_rate"] == pytest.approx(1 / 3)
    assert on["recall"] == 1.0 and off["recall"] == 0.0
    lines = report_lines({"hotword": on, "hotword_prompt_only": off, "hotword_unprompted": off})
    assert "0.00% with lists, 100.00% without" in lines[0] and "prompt only: 100.00%" in lines[0]
    assert "1 of 3 distractor names (33.33%)" in lines[2]


def test_a_run_without_lists_is_an_error_naming_its_file(tmp_path):
    out = write_run(tmp_path / "plain", [("go", "go")], [[]])
    assert "hotwords" not in json.loads((out / "wer.json").read_text())
    with pytest.raises(RuntimeError, match="wer.json: no hotword scores"):
        hotword_scores(out)
