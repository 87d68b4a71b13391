"""Decoding: batched == one-by-one (greedy, beam 2), outputs and WER end to end, bad lines, checkpoint decoding."""

from __future__ import annotations

import json

import pytest

from llmasr.export.decode import DecodeOptions, decode_manifest, main, make_loader
from llmasr.export.export import export_model
from llmasr.export.exported import load_exported
from llmasr.testing.run_dirs import write_corpus

TEXTS = ["zero one two", "three four", "five six seven eight", "nine", "hello world", "the quick brown fox"]


@pytest.fixture(scope="module")
def exported_dir(runs, tmp_path_factory):
    return export_model(runs[2], tmp_path_factory.mktemp("dec") / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), TEXTS)


@pytest.fixture(scope="module")
def model(exported_dir):
    return load_exported(exported_dir)


def _read(path):
    return [line.rstrip("\n") for line in open(path)]


@pytest.mark.parametrize("beam", [1, 2])
def test_batched_decoding_equals_one_by_one(model, corpus, tmp_path, beam):
    from llmasr.data.loader import open_manifests

    batched = DecodeOptions(num_beams=beam, batch_seconds=100.0, max_new_tokens=6, num_workers=0)
    single = DecodeOptions(num_beams=beam, batch_seconds=0.01, max_new_tokens=6, num_workers=0)
    manifest, _ = open_manifests([str(corpus)], mix=False)
    assert len(make_loader(model, manifest, batched)) == 1  # all six in one padded batch
    assert len(make_loader(model, manifest, single)) == len(TEXTS)  # one each
    decode_manifest(model, corpus, tmp_path / "b", batched)
    decode_manifest(model, corpus, tmp_path / "s", single)
    hyp_b, hyp_s = _read(tmp_path / "b" / "hyp.txt"), _read(tmp_path / "s" / "hyp.txt")
    assert len(hyp_b) == len(TEXTS)
    assert hyp_b == hyp_s
    assert any(len(line.split(" ", 1)) > 1 for line in hyp_b)  # something was generated


def test_end_to_end_outputs_and_wer(model, tmp_path, monkeypatch):
    bad_lines = ['{"key": "gone", "source": "wav/nope.wav", "target": "lost"}', "{not json"]
    manifest = write_corpus(tmp_path / "data", TEXTS, extra_lines=bad_lines)
    # Known hypotheses: drop the first word of every reference -> WER = #utts / #ref words.
    seen = []

    def fake_generate(batch, **kwargs):
        seen.append(kwargs)
        return [" ".join(t.split()[1:]) for t in batch["targets"]]

    monkeypatch.setattr(model, "generate", fake_generate)
    opts = DecodeOptions(num_beams=2, batch_seconds=1.5, max_bad_fraction=0.5, num_workers=0, repetition_penalty=1.1)
    summary = decode_manifest(model, manifest, tmp_path / "out", opts)
    out = tmp_path / "out"
    for name in ("hyp.txt", "ref.txt", "results.jsonl", "wer.txt", "wer.json", "bad.jsonl"):
        assert (out / name).is_file(), name
    assert seen and all(k["num_beams"] == 2 and k["repetition_penalty"] == 1.1 for k in seen)
    words = sum(len(t.split()) for t in TEXTS)
    assert summary["utterances"] == len(TEXTS) and summary["skipped"] == 2
    assert summary["errors"] == len(TEXTS) and summary["deletions"] == len(TEXTS)
    assert summary["rate"] == pytest.approx(len(TEXTS) / words)
    assert summary["metric"] == "WER" and summary["audio_seconds"] > 0 and summary["rtf"] > 0
    refs = _read(out / "ref.txt")
    assert refs[0] == "test000 zero one two" and len(refs) == len(TEXTS)
    assert _read(out / "hyp.txt")[0] == "test000 one two"
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    assert rows[0]["errors"] == 1 and rows[0]["words"] == 3 and rows[0]["wer"] == pytest.approx(1 / 3)
    assert rows[3] == {**rows[3], "key": "test003", "hyp": "", "errors": 1, "wer": 1.0}
    assert all(r["duration"] > 0 for r in rows)
    bad = [json.loads(line) for line in open(out / "bad.jsonl")]
    assert len(bad) == 2 and {b["line"] for b in bad} == {len(TEXTS) + 1, len(TEXTS) + 2}
    text = (out / "wer.txt").read_text()
    assert f"WER {100 * len(TEXTS) / words:.2f}%" in text and "skipped (bad data): 2" in text
    assert "real-time factor" in text


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
    assert "too much bad data: 2 of 4" in capsys.readouterr().err
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
    assert len(_read(tmp_path / "o" / "wer.txt")) == 2 * 3


def test_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    rc = main(["--model", str(tmp_path), "--data", "x.jsonl", "--output", str(tmp_path / "o")])
    assert rc == 1 and "not a directory written by `llmasr export`" in capsys.readouterr().err


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
    import yaml

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
