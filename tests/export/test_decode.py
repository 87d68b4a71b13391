"""Decoding: batched == one-by-one (greedy, beam 2), outputs and WER end to end, bad lines, checkpoint decoding."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from llmasr.commands.decode import DECODE_FLAGS, main
from llmasr.config_io import ConfigError
from llmasr.data.bad_data import BadItem
from llmasr.data.collate import Collator
from llmasr.data.dataset import SpeechDataset
from llmasr.data.loader import open_manifests
from llmasr.export import decode_results
from llmasr.export.decode import DecodeError, DecodeOptions, decode_loader, decode_manifest, load_decode_model
from llmasr.export.export import export_model
from llmasr.export.exported import load_exported
from llmasr.models.decoding import AUTO_CTC_WEIGHT, DecodeConfig, decode_config
from llmasr.models.llm import base_lm
from llmasr.scoring import score_corpus
from llmasr.testing.run_dirs import write_corpus, write_wav
from llmasr.testing.tiny_recipe import OracleCTCHead

TEXTS = ["zero one two", "three four", "five six seven eight", "nine", "hello world", "the quick brown fox"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), TEXTS)


def _read(path):
    return [line.rstrip("\n") for line in open(path)]


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


def test_cli_with_exported_model_and_checkpoint_agree(runs, exported_dir, corpus, tmp_path, capsys):
    common = ["--data", str(corpus), "--max-new-tokens", "5", "--num-workers", "0", "--batch-seconds", "3"]
    assert main(["--model", str(exported_dir), "--output", str(tmp_path / "m"), *common]) == 0
    assert "WER" in capsys.readouterr().out
    assert main(["--checkpoint", str(runs[2]), "--output", str(tmp_path / "c"), *common]) == 0
    assert _read(tmp_path / "m" / "hyp.txt") == _read(tmp_path / "c" / "hyp.txt")


def test_too_much_bad_data_fails_after_writing(exported_dir, tmp_path, capsys):
    manifest = write_corpus(tmp_path / "d", TEXTS[:2], extra_lines=["{bad", "{worse"])
    rc = main(
        [
            "--model",
            str(exported_dir),
            "--data",
            str(manifest),
            "--output",
            str(tmp_path / "o"),
            "--max-new-tokens",
            "2",
            "--num-workers",
            "0",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "too much bad data: 2 of 4" in err and "above --max-bad-fraction = " in err  # decode's own flag
    assert "or raise --max-bad-fraction." in err and "data.max_bad_fraction" not in err and "epoch" not in err
    assert len(_read(tmp_path / "o" / "hyp.txt")) == 2


def test_several_manifests_get_their_own_directories(exported_dir, tmp_path):
    a = write_corpus(tmp_path / "a", TEXTS[:2], name="dev")
    b = write_corpus(tmp_path / "b", TEXTS[2:4], name="test")
    rc = main(
        [
            "--model",
            str(exported_dir),
            "--data",
            str(a),
            "--data",
            str(b),
            "--output",
            str(tmp_path / "o"),
            "--max-new-tokens",
            "2",
            "--num-workers",
            "0",
        ]
    )
    assert rc == 0
    assert len(_read(tmp_path / "o" / "dev" / "hyp.txt")) == 2 and len(_read(tmp_path / "o" / "test" / "hyp.txt")) == 2
    assert len(_read(tmp_path / "o" / "wer.txt")) == 2 * 5  # five summary lines each


def test_a_second_decode_into_the_same_folder_leaves_nothing_stale(exported_dir, tmp_path, capsys):
    """One manifest decoded into OUT, then two: OUT's own hyp.txt, results.jsonl and wer.json from the first run are
    gone (they had stayed beside the new combined wer.txt); a missing manifest is an input error (exit 2), and so
    is --tag beside --model (it had been ignored)."""
    a = write_corpus(tmp_path / "a", TEXTS[:2], name="dev")
    b = write_corpus(tmp_path / "b", TEXTS[2:4], name="test")
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "2", "--num-workers", "0"]
    assert main([*common, "--data", str(a), "--ctc"]) == 0 and (out / "ctc" / "hyp.txt").is_file()
    assert main([*common, "--data", str(a)]) == 0
    assert (out / "hyp.txt").is_file() and (out / "wer.json").is_file()
    assert not (out / "ctc").exists()  # its files had gone, the empty folder had stayed, as if --ctc had run
    assert main([*common, "--data", str(a), "--data", str(b)]) == 0
    assert not any((out / name).exists() for name in ("hyp.txt", "ref.txt", "results.jsonl", "wer.json", "bad.jsonl"))
    assert (out / "wer.txt").is_file() and (out / "dev" / "hyp.txt").is_file()
    assert main([*common, "--data", str(tmp_path / "nope.jsonl")]) == 2
    (tmp_path / "afile").write_text("x")  # an output folder that cannot be made: named as such, not as the manifest's
    bad_out = ["--model", str(exported_dir), "--data", str(a), "--output", str(tmp_path / "afile" / "o")]
    assert (
        main(bad_out) == 2
        and f"--output {tmp_path / 'afile' / 'o'}: cannot create the folder" in capsys.readouterr().err
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main([*common, "--data", str(a), "--tag", "update_00000002"])
    assert err.value.code == 2 and "--tag picks a checkpoint of --checkpoint RUN_DIR" in capsys.readouterr().err


def test_subfolders_of_an_earlier_decode_of_several_manifests_are_removed(exported_dir, tmp_path):
    """Three manifests decoded into OUT, then two, then one: the subfolder of a manifest no longer decoded loses the
    earlier decode's files (it had stayed, read as this decode's results), files of the user's own stay with their
    folder, and manifests.json says which manifest each subfolder holds."""
    a, b, c = (write_corpus(tmp_path / n, TEXTS[i : i + 1], name=n) for i, n in enumerate(("dev", "test", "other")))
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "2", "--num-workers", "0"]
    assert main([*common, "--data", str(a), "--data", str(b), "--data", str(c)]) == 0
    assert json.loads((out / "manifests.json").read_text()) == {"dev": str(a), "test": str(b), "other": str(c)}
    (out / "test" / "notes.txt").write_text("mine")
    assert main([*common, "--data", str(a), "--data", str(c)]) == 0
    assert not (out / "test" / "hyp.txt").exists() and (out / "test" / "notes.txt").read_text() == "mine"
    assert (out / "other" / "hyp.txt").is_file()
    assert json.loads((out / "manifests.json").read_text()) == {"dev": str(a), "other": str(c)}
    assert main([*common, "--data", str(a)]) == 0
    assert not (out / "dev").exists() and not (out / "other").exists() and not (out / "manifests.json").exists()
    assert (out / "hyp.txt").is_file() and (out / "test" / "notes.txt").is_file()


def test_a_decode_that_fails_while_writing_leaves_no_cut_short_file(exported_dir, tmp_path, monkeypatch):
    """A write that dies part-way (a full disk, a kill) leaves the earlier file or none, never a cut-short hyp.txt
    that a scorer would read as the whole decode."""
    a = write_corpus(tmp_path / "a", TEXTS[:4], name="dev")
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "2", "--num-workers", "0"]
    real_one_line, calls = decode_results._one_line, []

    def dies_on_the_third_line(text):
        calls.append(text)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_one_line(text)

    monkeypatch.setattr(decode_results, "_one_line", dies_on_the_third_line)
    with pytest.raises(OSError, match="No space left"):
        main([*common, "--data", str(a)])
    assert not (out / "hyp.txt").exists() and [p.name for p in out.iterdir() if "hyp" in p.name] == []


def test_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text("{}\n")  # a manifest file is there: the model directory is at fault
    rc = main(["--model", str(tmp_path), "--data", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o")])
    assert rc == 2 and "not a directory written by `llmasr export`" in capsys.readouterr().err


@pytest.mark.slow
def test_export_and_decode_a_checkpoint_the_trainer_wrote(base_dirs, tmp_path):
    """The real trainer's run directory (ZeRO-2, LoRA, CTC head) exports and decodes to a WER."""
    pytest.importorskip("llmasr.train.trainer")
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train.trainer import train

    llm, enc = base_dirs
    data = write_tiny_corpus(tmp_path / "corpus", n=8)
    run = tmp_path / "run"
    recipe = load_recipe(
        data=tiny_recipe_dict(llm, train=[data], valid=[data], output_dir=run, encoder_dir=enc, ctc_weight=0.3)
    )
    train(recipe, "zero2")
    latest = (run / "checkpoints" / "latest").read_text().strip()
    out = export_model(run, tmp_path / "model", dtype="fp32")

    assert yaml.safe_load((out / "llmasr_model.yaml").read_text())["source"]["tags"] == [latest]
    rc = main(["--model", str(out), "--data", str(data), "--output", str(tmp_path / "hyp"), "--num-workers", "0"])
    assert rc == 0
    summary = json.loads((tmp_path / "hyp" / "wer.json").read_text())
    assert summary["utterances"] == 8 and summary["metric"] == "WER" and summary["rate"] >= 0
    # Decoding the checkpoint directly gives the same hypotheses as the merged export.
    assert (
        main(["--checkpoint", str(run), "--data", str(data), "--output", str(tmp_path / "hc"), "--num-workers", "0"])
        == 0
    )
    assert _read(tmp_path / "hyp" / "hyp.txt") == _read(tmp_path / "hc" / "hyp.txt")


# -- --ctc: the CTC branch's greedy transcripts ----------------------------------------------------------------------
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


def test_cli_ctc_prints_both_lines(runs, exported_dir, corpus, tmp_path, capsys):
    common = ["--data", str(corpus), "--max-new-tokens", "3", "--num-workers", "0", "--ctc"]
    assert main(["--model", str(exported_dir), "--output", str(tmp_path / "m"), *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("test.jsonl: WER ") and lines[5].startswith("test.jsonl (CTC branch, greedy): WER ")
    assert json.loads((tmp_path / "m" / "ctc" / "wer.json").read_text())["branch"] == "ctc"
    assert main(["--checkpoint", str(runs[2]), "--output", str(tmp_path / "c"), *common]) == 0
    assert _read(tmp_path / "m" / "ctc" / "hyp.txt") == _read(tmp_path / "c" / "ctc" / "hyp.txt")


def test_ctc_on_a_model_without_a_ctc_head_is_a_clear_error(base_dirs, train_corpus, corpus, tmp_path, capsys):
    from llmasr.testing.run_dirs import model_section, train_run

    run = train_run(tmp_path / "run", model_section(*base_dirs, ctc=False), train_corpus).run_dir
    exported = export_model(run, tmp_path / "model")
    rc = main(["--model", str(exported), "--data", str(corpus), "--output", str(tmp_path / "o"), "--ctc"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--ctc: the model directory {exported} has no CTC head" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(DecodeError, match="no CTC head"):
        decode_manifest(load_exported(exported), corpus, tmp_path / "o2", DecodeConfig(), DecodeOptions(ctc=True))
    # CTC-guided decoding is refused the same way, before anything is decoded; by default it is simply off
    args = ["--model", str(exported), "--data", str(corpus), "--output", str(tmp_path / "o3"), "--ctc-weight", "0.5"]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "decode.ctc_weight 0.5: CTC-guided decoding needs a CTC head, and this model has none" in err
    assert not (tmp_path / "o3").exists()
    with pytest.raises(DecodeError, match="needs a CTC head"):
        decode_manifest(load_exported(exported), corpus, tmp_path / "o4", DecodeConfig(ctc_weight=0.5))
    summary = decode_manifest(load_exported(exported), corpus, tmp_path / "o5", DecodeConfig(max_new_tokens=2))
    assert summary["mode"] == "greedy"


def test_decode_config_given_then_saved_then_defaults():
    saved = DecodeConfig(num_beams=3, metric="cer", tokens_per_second=5.0)
    cfg = decode_config(saved, num_beams=2, metric=None, max_new_tokens=None)
    assert (cfg.num_beams, cfg.metric, cfg.tokens_per_second, cfg.batch_seconds, cfg.max_new_tokens) == (
        2, "cer", 5.0, 120.0, None,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"decode.num_beams: must be >= 1, got 0"):
        decode_config(saved, num_beams=0)
    with pytest.raises(TypeError, match="beam"):
        decode_config(saved, beam=2)
    # every decode setting has its flag
    assert sorted(DECODE_FLAGS) == sorted(f.name for f in dataclasses.fields(DecodeConfig))


def test_cli_flags_override_the_exported_decode_settings(exported_dir, corpus, tmp_path, capsys):
    import shutil

    model_dir = shutil.copytree(exported_dir, tmp_path / "model")
    desc = yaml.safe_load((model_dir / "llmasr_model.yaml").read_text())
    desc["decode"].update(max_new_tokens=2, batch_seconds=0.01, num_beams=2)
    (model_dir / "llmasr_model.yaml").write_text(yaml.safe_dump(desc))
    _, saved, opts = load_decode_model(model_dir)
    assert (saved.max_new_tokens, saved.num_beams, opts.max_bad_fraction, opts.num_workers) == (2, 2, 0.01, 2)
    common = ["--model", str(model_dir), "--data", str(corpus), "--num-workers", "0"]
    assert main([*common, "--output", str(tmp_path / "saved")]) == 0
    assert main([*common, "--output", str(tmp_path / "given"), "--max-new-tokens", "3", "--beam", "1"]) == 0
    got = {k: json.loads((tmp_path / k / "wer.json").read_text()) for k in ("saved", "given")}
    assert (got["saved"]["max_new_tokens"], got["saved"]["num_beams"], got["saved"]["batch_seconds"]) == (2, 2, 0.01)
    assert (got["given"]["max_new_tokens"], got["given"]["num_beams"], got["given"]["batch_seconds"]) == (3, 1, 0.01)
    capsys.readouterr()
    assert main([*common, "--output", str(tmp_path / "zero"), "--beam", "0"]) == 2
    assert "llmasr decode: error: decode.num_beams: must be >= 1, got 0" in capsys.readouterr().err
    desc["decode"]["metric"] = "bleu"
    (model_dir / "llmasr_model.yaml").write_text(yaml.safe_dump(desc))
    assert main([*common, "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert f"{model_dir / 'llmasr_model.yaml'}: decode.metric: one of auto, wer, cer; got 'bleu'" in err


def test_checkpoint_decoding_takes_the_runs_bad_data_tolerance(runs):
    from llmasr.recipe import load_recipe

    recipe = load_recipe(runs[2] / "recipe.yaml")
    _, saved, opts = load_decode_model(checkpoint=runs[2])
    assert saved == recipe.decode and opts.max_bad_fraction == recipe.data.max_bad_fraction
    model, _, _ = load_decode_model(checkpoint=runs[2], dtype="bf16")  # --dtype holds for a checkpoint too
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}


def test_a_checkpoint_decodes_in_its_recipes_llm_dtype_as_its_default_export(runs, copy_run, tmp_path):
    """No --dtype: a checkpoint's LLM is in the run's model.llm.dtype, as `llmasr export` writes it by default (it
    had always been float32, so a checkpoint and its export decoded differently)."""
    run = copy_run(runs[2], tmp_path / "bf16_run")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"]["llm"]["dtype"] = "bfloat16"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    model, _, _ = load_decode_model(checkpoint=run)
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.encoder.parameters()} == {torch.float32}
    # The buffers as the export loads them (and training kept them): the rotary frequencies had been rounded to
    # bfloat16 with the weights, moving every position's angle.
    exported, _, _ = load_decode_model(export_model(run, tmp_path / "export"))
    buffers = {n: b.dtype for n, b in base_lm(model.llm).named_buffers()}
    assert buffers == {n: b.dtype for n, b in exported.llm.named_buffers()}
    assert buffers["model.rotary_emb.inv_freq"] == torch.float32
    model, _, _ = load_decode_model(checkpoint=run, dtype="fp32")
    assert {p.dtype for p in model.llm.parameters()} == {torch.float32}
