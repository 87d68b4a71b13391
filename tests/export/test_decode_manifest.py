"""Decoding a manifest: batched == one-by-one (greedy, beam 2), outputs and WER end to end, a failing batch named by
its items, and the CTC branch's greedy transcripts (--ctc) against the head read one utterance at a time."""

from __future__ import annotations

import json

import pytest
import torch

from llmasr.data.bad_data import BadItem
from llmasr.data.collate import Collator
from llmasr.data.dataset import SpeechDataset
from llmasr.data.loader import open_manifests
from llmasr.export.decode import DecodeOptions, decode_loader, decode_manifest
from llmasr.models.decoding import AUTO_CTC_WEIGHT, DecodeConfig
from llmasr.scoring import score_corpus
from llmasr.testing.run_dirs import TEXTS, write_corpus, write_wav
from llmasr.testing.run_dirs import read_lines as _read
from llmasr.testing.tiny_recipe import OracleCTCHead


def one_by_one(model, manifest_path) -> dict:
    """key -> (reference, batch of that utterance alone) for every good line, made by the eval-mode dataset and the
    collator directly (no sampler, no decode loop)."""
    manifest, _ = open_manifests([str(manifest_path)], mix=False)
    dataset = SpeechDataset(manifest, model.frontend, train=False, prompt_builder=model.prompt)
    collate = Collator(model.prompt.pad_id)
    items = [dataset[i] for i in range(len(manifest))]
    return {it["key"]: (it["target"], collate([it])) for it in items if not isinstance(it, BadItem)}


@pytest.mark.parametrize("beam", [1, 2])
def test_batched_decoding_equals_one_by_one(model, corpus, tmp_path, beam):
    batched = DecodeConfig(num_beams=beam, batch_seconds=100.0, max_new_tokens=6)
    single = DecodeConfig(num_beams=beam, batch_seconds=0.01, max_new_tokens=6)
    opts = DecodeOptions(num_workers=0)
    assert len(decode_loader(model, corpus, batched, opts)) == 1  # all six in one padded batch
    assert len(decode_loader(model, corpus, single, opts)) == len(TEXTS)  # one each
    decode_manifest(model, corpus, tmp_path / "b", batched, opts)
    decode_manifest(model, corpus, tmp_path / "s", single, opts)
    hyp_b, hyp_s = _read(tmp_path / "b" / "hyp.txt"), _read(tmp_path / "s" / "hyp.txt")
    assert len(hyp_b) == len(TEXTS)
    assert hyp_b == hyp_s
    assert any(len(line.split(" ", 1)) > 1 for line in hyp_b)  # something was generated


def test_end_to_end_outputs_and_wer(model, tmp_path):
    """The real generate on the tiny model: its text is random, so what must hold is checked against the same
    model transcribing the same batches, and the scores against the scorer run on the written rows."""
    bad_lines = ['{"key": "gone", "source": "wav/nope.wav", "target": "lost"}', "{not json"]
    bad_lines.append('{"key": "vad", "source": "wav/vad.wav", "target": "cut"}')  # 10 ms: no feature frame
    manifest = write_corpus(tmp_path / "data", TEXTS, extra_lines=bad_lines)
    write_wav(tmp_path / "data" / "wav" / "vad.wav", 0.01, seed=0)
    cfg = DecodeConfig(num_beams=2, batch_seconds=1.5, repetition_penalty=1.1, tokens_per_second=3.0)
    opts = DecodeOptions(max_bad_fraction=0.5, num_workers=0)
    summary = decode_manifest(model, manifest, tmp_path / "out", cfg, opts)
    out = tmp_path / "out"
    for name in ("hyp.txt", "ref.txt", "results.jsonl", "wer.txt", "wer.json", "bad.jsonl"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    alone = one_by_one(model, manifest)
    assert [r["key"] for r in rows] == [f"test{i:03d}" for i in range(len(TEXTS))] == list(alone)  # manifest order
    assert [r["ref"] for r in rows] == TEXTS
    # The same model transcribing decode's own batches directly (batched == alone is the test above, on short
    # outputs: over these long random strings a padding-sized float difference may flip a near-tie).
    want, stops = {}, {}
    for batch in decode_loader(model, manifest, cfg, opts):
        if batch.size:
            got = model.transcribe(batch, cfg)
            want.update(zip(batch.keys, got.llm))
            stops.update(zip(batch.keys, got.truncated))
    assert [r["hyp"] for r in rows] == [want[r["key"]] for r in rows]
    # Every guard stop is listed per utterance and counted (the untrained model rarely ends: caps are reached).
    assert [r["truncated"] for r in rows] == [stops[r["key"]] for r in rows]
    by_guard = {g: sum(r["truncated"] == g for r in rows) for g in ("max_tokens", "repetition")}
    assert summary["truncated_by_guard"] == by_guard and summary["truncated"] == sum(by_guard.values()) > 0
    assert any(r["hyp"].strip() for r in rows)  # the comparison is not of empty strings
    assert _read(out / "hyp.txt") == [f"{r['key']} {' '.join(r['hyp'].split())}" for r in rows]
    assert _read(out / "ref.txt") == [f"{r['key']} {r['ref']}" for r in rows]
    corpus, scores = score_corpus([(r["ref"], r["hyp"]) for r in rows], "auto")
    assert [r["errors"] for r in rows] == [s.errors for s in scores] and corpus.errors > 0
    assert summary["errors"] == corpus.errors and summary["rate"] == pytest.approx(corpus.rate, abs=1e-12)
    assert summary["utterances"] == len(TEXTS) and summary["skipped"] == 3 and summary["metric"] == "WER"
    assert summary["num_beams"] == 2 and summary["audio_seconds"] > 0 and summary["rtf"] > 0
    assert summary["first_batch_seconds"] > 0 and summary["rtf_after_first_batch"] > 0  # several batches
    assert json.loads((out / "wer.json").read_text())["rate"] == pytest.approx(corpus.rate, abs=1e-12)
    assert all(r["duration"] > 0 for r in rows)
    bad = [json.loads(line) for line in open(out / "bad.jsonl")]
    assert len(bad) == 3 and [b["line"] for b in bad] == [len(TEXTS) + 1, len(TEXTS) + 2, len(TEXTS) + 3]
    short = next(b for b in bad if b["key"] == "vad")
    assert short["reason"].startswith("audio too short for one feature frame (160 samples")
    text = (out / "wer.txt").read_text().splitlines()
    assert text[0].startswith(f"test.jsonl: {corpus.summary()}; 95% CI ") and f"WER {100 * corpus.rate:.2f}%" in text[0]
    low, high = json.loads((out / "wer.json").read_text())["rate_ci95"]
    assert low <= corpus.rate <= high and f"CI {100 * low:.2f}-{100 * high:.2f}% (1000 utterance resamples)" in text[0]
    assert "skipped (bad data): 3" in text[1]
    guards = f"length cap {by_guard['max_tokens']}, repetition {by_guard['repetition']}"
    assert text[2] == f"truncated: {summary['truncated']} ({guards})"
    assert text[3].startswith(f"mode {summary['mode']}: ") and "real-time factor" in text[3]
    assert "utterances/s" in text[3]
    assert summary["mode"] == f"beam 2 + CTC prefix scoring (ctc_weight {AUTO_CTC_WEIGHT:g})"  # a CTC head's default
    assert summary["utts_per_second"] > 0


def test_each_language_of_the_manifest_is_rated_apart(model, corpus, tmp_path):
    """Lines naming their language (`lang`, FunASR's `text_language` "<|zh|>") are rated per language in wer.txt and
    wer.json, and results.jsonl names each row's; the groups' counts add up to the whole."""
    langs = ["en", "<|zh|>", "en", None, "zh", "en"]
    lines = []
    for line, lang in zip(corpus.read_text(encoding="utf-8").splitlines(), langs):
        rec = json.loads(line)
        rec["source"] = str(corpus.parent / rec["source"])
        if lang is not None:
            rec["text_language" if lang.startswith("<|") else "lang"] = lang
        lines.append(json.dumps(rec))
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = DecodeConfig(max_new_tokens=4, batch_seconds=100.0)
    summary = decode_manifest(model, manifest, tmp_path / "out", cfg, DecodeOptions(num_workers=0))
    rows = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl", encoding="utf-8")]
    assert [r.get("lang") for r in rows] == ["en", "zh", "en", None, "zh", "en"]
    groups = summary["by_language"]
    assert list(groups) == ["en", "zh", "(none)"] and [g["utterances"] for g in groups.values()] == [3, 2, 1]
    for lang, group in groups.items():
        mine = [(r["ref"], r["hyp"]) for r in rows if (r.get("lang") or "(none)") == lang]
        assert group == score_corpus(mine, "auto")[0].to_dict()
    assert sum(g["errors"] for g in groups.values()) == summary["errors"]
    text = (tmp_path / "out" / "wer.txt").read_text(encoding="utf-8")
    assert "by language (the lines' `lang`):\n  en: WER " in text and "\n  zh: " in text and "\n  (none): " in text


def test_a_batch_the_model_fails_on_is_named_by_its_items(model, corpus, tmp_path, monkeypatch):
    real = model.transcribe

    def out_of_memory_on_test003(batch, cfg):
        if "test003" in batch.keys:
            raise RuntimeError("CUDA out of memory")
        return real(batch, cfg)

    monkeypatch.setattr(model, "transcribe", out_of_memory_on_test003)
    cfg = DecodeConfig(batch_seconds=0.01, max_new_tokens=2)  # a batch each
    with pytest.raises(RuntimeError, match="CUDA out of memory") as raised:
        decode_manifest(model, corpus, tmp_path, cfg, DecodeOptions(num_workers=0))
    assert raised.value.__notes__ == [f"while decoding the batch of {corpus}:4 (key test003)"]


def test_a_decode_stopped_part_way_leaves_no_earlier_decode_s_files(model, corpus, tmp_path, monkeypatch, caplog):
    """The library's decode_manifest (the demo's) removed an earlier decode's files only just before writing its own:
    one stopped while decoding (Ctrl-C, a preempted job, a crash) left the earlier hyp.txt, wer.json ... complete,
    read as its results. It removes them once the model's checks pass, as `llmasr decode` does, and says so; the
    user's own files stay."""
    cfg, opts = DecodeConfig(max_new_tokens=2), DecodeOptions(num_workers=0)
    out = tmp_path / "o"
    decode_manifest(model, corpus, out, cfg, opts)
    (out / "notes.txt").write_text("mine")

    def stopped(batch, cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "transcribe", stopped)
    with caplog.at_level("INFO", logger="llmasr"), pytest.raises(KeyboardInterrupt):
        decode_manifest(model, corpus, out, cfg, opts)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (
        f"removed an earlier decode's bad.jsonl, hyp.txt, ref.txt, results.jsonl, wer.json, wer.txt from {out}: this "
        "decode writes its own, and one stopped before it ends leaves none" in caplog.text
    )


def _independent_ctc(model, corpus) -> dict:
    """key -> (reference, CTC greedy transcript, encoder length), one utterance per batch: encoder -> head ->
    ctc_greedy."""
    from llmasr.models.ctc import ctc_greedy

    out = {}
    with torch.no_grad():
        for key, (ref, batch) in one_by_one(model, corpus).items():
            enc, lens = model.encoder(batch.feats, batch.feat_lens)
            (ids,) = ctc_greedy(model.ctc_head(enc, lens), lens, model.ctc_tokenizer.blank_id)
            out[key] = (ref, model.ctc_tokenizer.decode(ids), int(lens[0]))
    return out


def test_ctc_branch_batched_equals_one_by_one_and_the_llm_output_is_unchanged(model, corpus, tmp_path):
    # Unguided (ctc_weight 0), so that the LLM's hypotheses are its own and differ from the CTC branch's.
    big = DecodeConfig(batch_seconds=100.0, max_new_tokens=4, ctc_weight=0.0)
    small = DecodeConfig(batch_seconds=0.01, max_new_tokens=4, ctc_weight=0.0)
    plain, ctc = DecodeOptions(num_workers=0), DecodeOptions(num_workers=0, ctc=True)
    decode_manifest(model, corpus, tmp_path / "plain", big, plain)
    batched = decode_manifest(model, corpus, tmp_path / "b", big, ctc)
    decode_manifest(model, corpus, tmp_path / "s", small, ctc)
    assert not (tmp_path / "plain" / "ctc").exists()
    for name in ("hyp.txt", "ref.txt", "results.jsonl", "bad.jsonl"):  # the LLM's outputs do not change
        assert _read(tmp_path / "b" / name) == _read(tmp_path / "plain" / name), name
    plain = json.loads((tmp_path / "plain" / "wer.json").read_text())
    with_ctc = json.loads((tmp_path / "b" / "wer.json").read_text())
    timing = (
        "decode_seconds",
        "rtf",
        "utts_per_second",
        "first_batch_seconds",
        "rtf_after_first_batch",
        "window_plan_seconds",
    )
    assert {k: v for k, v in with_ctc.items() if k not in timing} == {k: v for k, v in plain.items() if k not in timing}
    for name in ("hyp.txt", "results.jsonl", "wer.txt", "wer.json"):
        assert (tmp_path / "b" / "ctc" / name).is_file(), name
    hyp_b, hyp_s = _read(tmp_path / "b" / "ctc" / "hyp.txt"), _read(tmp_path / "s" / "ctc" / "hyp.txt")
    assert len(hyp_b) == len(TEXTS) and hyp_b == hyp_s  # padding-invariant
    # ... and equal to the head read one utterance at a time outside decode_manifest
    want = _independent_ctc(model, corpus)
    assert hyp_b == [f"{k} {' '.join(want[k][1].split())}" for k in sorted(want)]
    assert any(want[k][1].strip() for k in want)  # the random head emits something
    rate = score_corpus([want[k][:2] for k in sorted(want)], "auto")[0].rate
    assert batched["ctc"]["rate"] == pytest.approx(rate, abs=1e-12)
    assert json.loads((tmp_path / "b" / "ctc" / "wer.json").read_text())["rate"] == pytest.approx(rate, abs=1e-12)
    assert batched["ctc"]["rate"] != batched["rate"]


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """TEXTS as 1.5-2.0 s utterances: enough encoder frames for the longest text's CTC tokens."""
    from llmasr.testing.run_dirs import write_wav

    root = tmp_path_factory.mktemp("long")
    (root / "wav").mkdir()
    lines = []
    for i, text in enumerate(TEXTS):
        write_wav(root / "wav" / f"l{i}.wav", 1.5 + 0.1 * i, seed=i)
        lines.append(json.dumps({"key": f"long{i:03d}", "source": f"wav/l{i}.wav", "target": text}))
    (root / "long.jsonl").write_text("\n".join(lines) + "\n")
    return root / "long.jsonl"


@pytest.mark.parametrize("wrong", [False, True], ids=["perfect", "drops_first_word"])
def test_ctc_wer_follows_the_ctc_head(model, long_corpus, tmp_path, monkeypatch, wrong):
    corpus = long_corpus
    truth = _independent_ctc(model, corpus)
    assert len({n for _, _, n in truth.values()}) == len(TEXTS)  # lengths tell the utterances apart
    by_len = {n: " ".join(ref.split()[int(wrong) :]) for ref, _, n in truth.values()}
    # The submodule table, not setattr: pytest >= 9.2 restores an instance attribute from the instance __dict__,
    # where nn.Module keeps no submodule, so undoing a setattr would delete the module-scoped model's head.
    monkeypatch.setitem(model._modules, "ctc_head", OracleCTCHead(model.ctc_tokenizer, by_len))
    cfg = DecodeConfig(batch_seconds=100.0, max_new_tokens=2)
    summary = decode_manifest(model, corpus, tmp_path / "o", cfg, DecodeOptions(num_workers=0, ctc=True))
    words = sum(len(t.split()) for t in TEXTS)
    assert summary["ctc"]["rate"] == pytest.approx(len(TEXTS) / words if wrong else 0.0, abs=1e-12)
    rows = [json.loads(line) for line in open(tmp_path / "o" / "ctc" / "results.jsonl")]
    assert [r["hyp"] for r in rows] == [" ".join(t.split()[int(wrong) :]) for t in TEXTS]
    assert [r["errors"] for r in rows] == [int(wrong)] * len(TEXTS)
    assert "(CTC branch, greedy): WER" in (tmp_path / "o" / "ctc" / "wer.txt").read_text()


def test_bad_jsonl_holds_each_bad_line_in_manifest_order_with_the_fields_the_readme_names(model, tmp_path):
    """A line found bad while loading (a clip too short) came after those the start-up screen found (a missing
    file), whatever their lines, and each row carried the loader's internal `index` (-1 for the screened ones)."""
    bad_lines = ['{"key": "vad", "source": "wav/vad.wav", "target": "cut"}']  # 10 ms: no feature frame, at load
    bad_lines.append('{"key": "gone", "source": "wav/nope.wav", "target": "lost"}')  # screened before decoding
    manifest = write_corpus(tmp_path / "data", TEXTS[:2], extra_lines=bad_lines)
    write_wav(tmp_path / "data" / "wav" / "vad.wav", 0.01, seed=0)
    cfg = DecodeConfig(max_new_tokens=2)
    decode_manifest(model, manifest, tmp_path / "out", cfg, DecodeOptions(max_bad_fraction=1.0, num_workers=0))
    bad = [json.loads(line) for line in open(tmp_path / "out" / "bad.jsonl")]
    assert [(b["line"], b["key"]) for b in bad] == [(3, "vad"), (4, "gone")]
    assert all(list(b) == ["manifest", "line", "key", "reason"] for b in bad)
