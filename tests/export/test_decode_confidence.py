"""Per-utterance confidence (`decode.confidence`, `llmasr decode --confidence`, `llmasr transcribe --confidence`): the
LLM's log-probability of the tokens it wrote, its end token included, from its raw logits; equal to generate's own
scores in a plain greedy search, untouched by the settings that change the search (repetition penalty, hotword
boost), long audio's windows summed, absent unless asked and never in training's validation decode."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmasr.commands.decode import main as decode_main
from llmasr.commands.transcribe import main as transcribe_main
from llmasr.config_io import ConfigError
from llmasr.data.windowed import utterance_rows
from llmasr.export.decode import DecodeOptions, decode_loader, decode_manifest, transcribe_loader
from llmasr.export.transcribe import Transcriber
from llmasr.models.confidence import scored_tokens
from llmasr.models.decoding import DecodeConfig, decode_config
from llmasr.testing.run_dirs import write_corpus, write_joined_recording

OPTS = DecodeOptions(num_workers=0)
TEXTS = ["zero one two", "three four", "five six seven eight", "nine", "hello world", "the quick brown fox"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The short clips, and one 6 s recording of them back to back (decoded in windows)."""
    root = tmp_path_factory.mktemp("confidence")
    manifest = write_corpus(root, TEXTS)
    return manifest, write_joined_recording(root, TEXTS)[0]


def raw_reference(model, out) -> list[list[float]]:
    """Each row's per-token log-probabilities read from generate's own raw logits (output_logits: before any
    processor), its end token included: the model's belief in what it wrote."""
    end = model.prompt.end_id
    return [
        [torch.log_softmax(out.logits[t][b].float(), -1)[tok].item() for t, tok in enumerate(scored_tokens(row, end))]
        for b, row in enumerate(out.sequences.tolist())
    ]


def chosen(got, b: int, tokens: int) -> int:
    """How many of row b's tokens the search chose itself: all but an end a guard forced."""
    return tokens - (got.truncated[b] is not None)


def decode_with_scores(model, manifest, cfg, opts=OPTS):
    """Each batch's (keys, Transcripts, generate's output with raw logits and processed scores) through decode's
    loader."""
    real, got = model.llm.generate, []

    def spy(*args, **kwargs):
        got.append(real(*args, **{**kwargs, "output_logits": True, "output_scores": True}))
        return got[-1]

    model.llm.generate = spy
    try:
        return [(b.keys, model.transcribe(b, cfg), got[-1]) for b in decode_loader(model, manifest, cfg, opts)]
    finally:
        del model.llm.generate


def test_greedy_confidence_is_generates_own_score(model, corpus):
    manifest, _ = corpus
    cfg = DecodeConfig(max_new_tokens=6, confidence=True, max_window_seconds=0, ctc_weight=0.0)
    forced = 0
    for _, got, out in decode_with_scores(model, manifest, cfg):
        # generate's own scores (compute_transition_scores): in a plain greedy search the raw logits', but at an end
        # the length guard forced (0 there: the only choice left), which the confidence counts at the model's score
        steps = model.llm.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        for b, (conf, raw) in enumerate(zip(got.confidence, raw_reference(model, out))):
            assert math.isfinite(conf.logprob) and conf.logprob < 0 and conf.tokens == len(raw)
            assert conf.logprob == pytest.approx(sum(raw), abs=1e-4)
            free = chosen(got, b, conf.tokens)
            assert sum(steps[b, :free].tolist()) == pytest.approx(sum(raw[:free]), abs=1e-4)
            forced += free < conf.tokens
    assert forced  # forced ends are among them: the model's score of them counted, not the search's 0


def test_penalty_and_boost_change_the_search_not_the_confidence(model, corpus):
    manifest, _ = corpus
    plain = DecodeConfig(max_new_tokens=6, confidence=True, max_window_seconds=0, ctc_weight=0.0, hotword_boost=0.0)
    # pushed far enough to move every score (the hypotheses too), and a little (the same hypothesis written)
    pushed = decode_config(plain, repetition_penalty=1.5, hotword_boost=3.0)
    nudged = decode_config(plain, repetition_penalty=1.01, hotword_boost=0.01)
    opts = DecodeOptions(num_workers=0, hotwords=["zero one", "quick brown"])
    moved, texts = 0, {}
    for cfg, name in ((plain, "plain"), (pushed, "pushed"), (nudged, "nudged")):
        for keys, got, out in decode_with_scores(model, manifest, cfg, opts):
            steps = model.llm.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            for b, (conf, raw) in enumerate(zip(got.confidence, raw_reference(model, out))):
                assert conf.logprob == pytest.approx(sum(raw), abs=1e-4)  # the raw logits' score, whatever the search
                free = chosen(got, b, conf.tokens)
                moved += abs(sum(steps[b, :free].tolist()) - sum(raw[:free])) > 1e-3
                texts.setdefault((keys[b], got.llm[b]), {})[name] = conf
    assert moved  # the penalty and the boost did move generate's scores
    shared = [scores for scores in texts.values() if "plain" in scores and len(scores) > 1]
    assert len(shared) >= 3  # hypotheses written by the plain search and another: one belief in each
    for scores in shared:
        for conf in scores.values():
            assert conf.tokens == scores["plain"].tokens
            assert conf.logprob == pytest.approx(scores["plain"].logprob, abs=1e-4)


def test_results_carry_it_only_when_asked_and_windows_add_up(model, corpus, tmp_path):
    manifest, long = corpus
    decode_manifest(model, manifest, tmp_path / "off", DecodeConfig(max_new_tokens=6), OPTS)
    assert not any("avg_logprob" in json.loads(line) for line in open(tmp_path / "off" / "results.jsonl"))
    cfg = DecodeConfig(max_new_tokens=6, confidence=True, max_window_seconds=2.0, window_overlap=0.5)
    summary = decode_manifest(model, manifest, tmp_path / "on", cfg, OPTS)
    rows = [json.loads(line) for line in open(tmp_path / "on" / "results.jsonl")]
    assert all(math.isfinite(r["avg_logprob"]) and r["logprob"] <= r["avg_logprob"] < 0 for r in rows)
    assert summary["confidence"]["utterances"] == len(TEXTS)
    assert "confidence (avg_logprob per token, results.jsonl): median" in (tmp_path / "on" / "wer.txt").read_text()
    # long audio: the windows' own scores, summed into the utterance's, the mean weighted by their tokens
    loader = decode_loader(model, long, cfg, OPTS)
    items, _ = transcribe_loader(model, loader, cfg, "cpu")
    assert len(items) >= 3
    (joined,) = utterance_rows(items, loader.dataset.manifest, cfg.window_overlap)
    assert joined["logprob"] == pytest.approx(sum(i["logprob"] for i in items.values()))
    assert joined["logprob_tokens"] == sum(i["logprob_tokens"] for i in items.values())
    decode_manifest(model, long, tmp_path / "long", cfg, OPTS)
    (row,) = [json.loads(line) for line in open(tmp_path / "long" / "results.jsonl")]
    assert row["windows"] == len(items)
    assert row["avg_logprob"] == round(joined["logprob"] / joined["logprob_tokens"], 4)
    assert row["logprob"] == round(joined["logprob"], 4)
    # and each window's own, in the utterance's time: one unsure window is not lost in a long recording's mean
    rate = loader.dataset.manifest.sample_rate
    own = [(round(w.start / rate, 3), round(w.end / rate, 3)) for w in loader.dataset.manifest.windows[0]]
    assert [(w["start"], w["end"]) for w in row["window_confidence"]] == own and own[-1][1] == round(row["duration"], 3)
    avg = [round(items[j]["logprob"] / items[j]["logprob_tokens"], 4) for j in sorted(items)]
    assert [w["avg_logprob"] for w in row["window_confidence"]] == avg
    short = [json.loads(line) for line in open(tmp_path / "on" / "results.jsonl")]
    assert not any("window_confidence" in r for r in short)  # one window: its avg_logprob is the utterance's


def test_validation_decodes_without_it_and_the_key_is_checked():
    assert DecodeConfig(confidence=True).greedy().confidence is False
    with pytest.raises(ConfigError, match="decode.confidence: expected true/false"):
        decode_config(DecodeConfig(), confidence="yes")


def test_the_commands_write_and_print_it(exported_dir, corpus, tmp_path, capsys):
    manifest, _ = corpus
    args = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(tmp_path / "o")]
    assert decode_main([*args, "--confidence", "--max-new-tokens", "4"]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "o" / "results.jsonl")]
    assert all(math.isfinite(r["avg_logprob"]) for r in rows)
    capsys.readouterr()
    clip = str(manifest.parent / "wav" / "test0.wav")
    assert transcribe_main(["--model", str(exported_dir), "--confidence", "--max-window-seconds", "0", clip]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"audio", "text", "truncated", "avg_logprob", "logprob"} and printed["avg_logprob"] < 0
    (row,) = Transcriber.load(exported_dir, confidence=True).transcripts([clip])
    assert (row["avg_logprob"], row["logprob"]) == (printed["avg_logprob"], printed["logprob"])
    # a long file decoded in windows: each window's own confidence as well, as results.jsonl has it
    recording = str(manifest.parent / "long.wav")
    window = ["--max-window-seconds", "2", "--window-overlap", "0.5", "--max-new-tokens", "4"]
    assert transcribe_main(["--model", str(exported_dir), "--confidence", *window, recording]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["window_confidence"]) >= 3 and printed["window_confidence"][0]["start"] == 0.0
    assert all(w["avg_logprob"] < 0 and w["end"] > w["start"] for w in printed["window_confidence"])
    args = ["--data", str(manifest.parent / "long.jsonl"), "--output", str(tmp_path / "long"), *window]
    assert decode_main(["--model", str(exported_dir), "--confidence", *args]) == 0
    (row,) = [json.loads(line) for line in open(tmp_path / "long" / "results.jsonl")]
    assert row["window_confidence"] == printed["window_confidence"]
