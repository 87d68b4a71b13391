"""bench/train_step.py --real-depth in its --quick form: every variant runs on the same weights, the formulations
agree on the loss, CTC compression shortens what the LLM reads by the pinned token rate, and the ratios are the
ones of the measured numbers. No assertion is about speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import _real_depth as rd  # noqa: E402
import _speech_model as sm  # noqa: E402


def test_pinned_ctc_head_emits_the_text_rate():
    from llmasr.models.ctc import CTCHead
    from llmasr.models.ctc_compress import ctc_segments

    head = rd.PinnedCTCHead(CTCHead(8, 20), frame_seconds=0.06, tokens_per_second=3.0)
    lens = torch.tensor([167, 100])  # 10 s and 6 s of 60 ms frames
    log_probs = head(torch.randn(2, 167, 8), lens)
    _, _, n_seg = ctc_segments(log_probs.argmax(-1), lens, blank_id=0, drop_blank=True)
    assert n_seg.tolist() == [30, 18]  # 3 tokens a second
    assert log_probs.requires_grad  # the projection's gradient is part of the step


def test_quick_real_depth_runs_every_variant(tmp_path, capsys):
    import train_step

    assert train_step.main(["--real-depth", "--quick", "--json-out", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    rows = res["rows"]
    assert list(rows) == list(rd.VARIANTS)
    plain = [rows[n] for n in ("reference", "reference+ckpt", "llmasr", "llmasr+ckpt")]
    compressed = [rows[n] for n in ("llmasr+ctc", "llmasr+ctc+ckpt/2", "llmasr+ctc+ckpt")]
    for r in plain[1:]:
        assert r["loss"] == pytest.approx(plain[0]["loss"], rel=1e-5)  # lr 0: the weights never move
    for r in compressed[1:]:
        assert r["loss"] == pytest.approx(compressed[0]["loss"], rel=1e-5)
    assert compressed[0]["loss"] < 2 * plain[0]["loss"]  # CTC targets follow the pinned path: a small CTC term
    sb = sm.make_batch(rd.TINY, 2, 2.0)
    text = int(sb.batch.text_lens.sum())
    assert plain[0]["llm_positions"] == text + sum(sb.ref.audio_lens)  # frames // 2, FunASR's slot formula
    tokens = sum(max(1, round(int(f) * sm.FRAME_SECONDS * rd.TOKENS_PER_SECOND)) for f in sb.batch.feat_lens)
    assert all(r["llm_positions"] == text + tokens for r in compressed)
    ref = rows["reference"]
    assert ref["peak_bytes"] > 0 and ref["speedup"] == 1.0 and ref["memory_ratio"] == 1.0
    for r in rows.values():
        assert len(r["times"]) == 1 and r["step_s"] == min(r["times"]) and r["first_step_s"] > 0
        assert r["speedup"] == pytest.approx(ref["step_s"] / r["step_s"])
        assert len(r["cpu_times"]) == 1 and r["cpu_speedup"] == pytest.approx(ref["cpu_s"] / r["cpu_s"])
        assert r["memory_ratio"] == pytest.approx(r["peak_bytes"] / ref["peak_bytes"])
    out = capsys.readouterr().out
    assert "| llmasr+ctc+ckpt/2 |" in out and "Reproduce: `python bench/train_step.py --real-depth --quick`" in out


def test_the_device_line_says_the_threads_the_timed_workers_ran():
    """--threads sets the workers' threads, not this process's: the line had said this process's count."""
    line = "AMD EPYC, 2 cores, torch threads 2"
    assert rd._threads_said(line, 1) == "AMD EPYC, 2 cores, torch threads 1"
    assert rd._threads_said(line, None) == line
