"""decode.max_llm_tokens (llmasr.train.decode_rows): the batches decode forms hold at most that many LLM positions
(measured at the LLM's generate: B x beams x (padded input + new tokens)), an utterance past it alone is decoded in a
batch of its own and named, the transcripts are those decoded without the budget, and the ranks share one plan."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import llmasr
from llmasr.export.decode import DecodeOptions, decode_loader, decode_manifest
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.run_dirs import read_lines, write_wav
from llmasr.testing.thread_ranks import run_ranks, thread_world
from llmasr.testing.tiny_recipe import tiny_model_section

OPTS = DecodeOptions(num_workers=0)


@pytest.fixture(scope="module")
def model(tiny_llm_dir):
    torch.manual_seed(0)
    return llmasr.build_model(tiny_model_section(tiny_llm_dir)).eval()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """10 short clips, some with a biasing list of their own (prompts of other lengths), and one 10 s clip."""
    root = tmp_path_factory.mktemp("budget_corpus")
    (root / "wav").mkdir()
    lines = []
    for i in range(10):
        write_wav(root / "wav" / f"u{i}.wav", 0.4 + 0.05 * i, seed=i)
        rec = {"key": f"u{i}", "source": f"wav/u{i}.wav", "target": f"word {i}"}
        if i % 3 == 1:  # the longest prompt sits beside shorter audio: the batch pads both to their longest
            rec["hotwords"] = ["alpha beta gamma", "delta"] * (1 + i % 2)
        lines.append(json.dumps(rec))
    write_wav(root / "wav" / "long.wav", 10.0, seed=11)
    lines.append(json.dumps({"key": "long", "source": "wav/long.wav", "target": "a long one"}))
    (root / "short.jsonl").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    path = root / "test.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def decode_measured(model, manifest, out, cfg, monkeypatch) -> tuple[dict, list[tuple[int, int]]]:
    """decode_manifest's summary, and (rows, LLM positions) of every batch as the LLM's generate is given it."""
    seen = []
    real = model.llm.generate

    def spy(*args, **kwargs):
        emb = kwargs["inputs_embeds"]
        beams = kwargs.get("num_beams", 1)
        seen.append((emb.shape[0], emb.shape[0] * beams * (emb.shape[1] + kwargs["max_new_tokens"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(model.llm, "generate", spy)
    summary = decode_manifest(model, manifest, out, cfg, OPTS)
    monkeypatch.undo()
    return summary, seen


@pytest.mark.parametrize("beams", [1, 2])
def test_batches_keep_within_the_budget_and_decode_the_same(model, manifest, tmp_path, monkeypatch, beams):
    # caps by duration (max_new_tokens unset): the longest prompt (a biasing list) and the largest cap are not one
    # clip's, and the batch holds both
    short = manifest.with_name("short.jsonl")
    settings = dict(num_beams=beams, batch_seconds=1000.0, tokens_per_second=30.0, max_window_seconds=0)
    _, unbounded = decode_measured(model, short, tmp_path / "free", DecodeConfig(**settings), monkeypatch)
    assert len(unbounded) == 1  # batch_seconds alone puts all 10 in one batch
    budget = unbounded[0][1] // 4
    bounded = DecodeConfig(**settings, max_llm_tokens=budget)
    summary, seen = decode_measured(model, short, tmp_path / "budget", bounded, monkeypatch)
    assert len(seen) >= 4 and sum(n for n, _ in seen) == 10
    assert max(n for n, _ in seen) > 1  # batches, not one item each
    assert all(positions <= budget for _, positions in seen), (budget, seen)
    assert summary["max_llm_tokens"] == budget and summary["over_llm_budget"] == []
    assert f"within decode.max_llm_tokens {budget}" in (tmp_path / "budget" / "wer.txt").read_text()
    assert read_lines(tmp_path / "budget" / "hyp.txt") == read_lines(tmp_path / "free" / "hyp.txt")


def test_an_utterance_over_the_budget_alone_is_decoded_alone_and_named(model, manifest, tmp_path, monkeypatch, caplog):
    cfg = DecodeConfig(batch_seconds=1000.0, max_new_tokens=6, max_window_seconds=0)
    _, free = decode_measured(model, manifest, tmp_path / "free", cfg, monkeypatch)
    counts = decode_loader(model, manifest, cfg, OPTS).llm_rows  # without a budget: not counted
    assert counts is None
    cfg.max_llm_tokens = 10**6
    inputs, new = decode_loader(model, manifest, cfg, OPTS).llm_rows
    cfg.max_llm_tokens = int((inputs + new)[:10].max())  # each short clip fits, the 10 s one only alone
    with caplog.at_level(logging.WARNING, logger="llmasr.export.decode"):
        summary, seen = decode_measured(model, manifest, tmp_path / "budget", cfg, monkeypatch)
    over = summary["over_llm_budget"]
    assert [(o["key"], o["line"]) for o in over] == [("long", 11)]
    assert over[0]["positions"] > cfg.max_llm_tokens
    assert over[0]["positions"] == over[0]["input"] + over[0]["new_tokens"]
    assert sum(n for n, _ in seen) == 11 and seen[-1][0] == 1  # the longest, last, alone
    assert all(p <= cfg.max_llm_tokens for _, p in seen[:-1]) and seen[-1][1] > cfg.max_llm_tokens
    assert seen[-1][1] <= over[0]["positions"]  # its count bounds what it holds
    assert "line 11 (key long)" in caplog.text and "decoded in a batch of its own" in caplog.text
    rows = [json.loads(x) for x in read_lines(tmp_path / "budget" / "results.jsonl")]
    assert [r["key"] for r in rows][-1] == "long" and len(rows) == 11
    assert "1 item(s) past it alone" in (tmp_path / "budget" / "wer.txt").read_text()
    assert read_lines(tmp_path / "budget" / "hyp.txt") == read_lines(tmp_path / "free" / "hyp.txt")


def test_ranks_share_the_batches_of_the_budgeted_plan(model, manifest):
    cfg = DecodeConfig(batch_seconds=1000.0, max_new_tokens=6, max_window_seconds=0, max_llm_tokens=90)
    plan = [sorted(b) for b in decode_loader(model, manifest, cfg, OPTS).batch_sampler]
    assert 2 < len(plan) < 11
    shares = run_ranks(2, lambda r, gather: list(
        decode_loader(model, manifest, cfg, OPTS, world=thread_world(r, 2, gather)).batch_sampler
    ))  # fmt: skip
    assert {tuple(sorted(b)) for b in shares[0] + shares[1]} == {tuple(b) for b in plan}
