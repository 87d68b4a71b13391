"""Decoding audio without transcripts: a manifest line with no target (or a null one) is transcribed like any other
and left out of the score, which says how many it left out; a manifest with none is transcribed, not scored."""

from __future__ import annotations

import json

from llmasr.commands.decode import main
from llmasr.export.decode import DecodeOptions, decode_manifest
from llmasr.models.decoding import DecodeConfig
from llmasr.scoring import score_corpus
from llmasr.testing.run_dirs import write_corpus

TEXTS = ["zero one two", "three four", "five six seven eight", "nine", "hello world", "the quick brown fox"]
CFG = DecodeConfig(batch_seconds=0.01, max_new_tokens=4)  # one utterance a batch: the same hypotheses either way


def _read(path):
    return [line.rstrip("\n") for line in open(path)]


def without_targets(manifest, keep) -> object:
    """A copy of `manifest` where line i keeps its target only if keep(i) (the first one loses it to a null)."""
    lines = []
    for i, line in enumerate(manifest.read_text().splitlines()):
        rec = json.loads(line)
        if not keep(i):
            rec.pop("target")
            if not lines:
                rec["target"] = None
        lines.append(json.dumps(rec))
    path = manifest.with_name(f"{manifest.stem}_{sum(map(keep, range(len(lines))))}.jsonl")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_lines_without_a_transcript_are_transcribed_and_not_scored(model, tmp_path):
    corpus = write_corpus(tmp_path / "data", TEXTS)
    opts = DecodeOptions(num_workers=0, ctc=True)
    full = decode_manifest(model, corpus, tmp_path / "full", CFG, opts)
    mixed = decode_manifest(model, without_targets(corpus, lambda i: i % 2), tmp_path / "mixed", CFG, opts)
    for branch in ("", "ctc/"):
        assert _read(tmp_path / "mixed" / f"{branch}hyp.txt") == _read(tmp_path / "full" / f"{branch}hyp.txt")
    rows = [json.loads(line) for line in open(tmp_path / "full" / "results.jsonl")]
    got = [json.loads(line) for line in open(tmp_path / "mixed" / "results.jsonl")]
    assert [r["ref"] for r in got] == [None if i % 2 == 0 else t for i, t in enumerate(TEXTS)]
    assert all(r["errors"] is None and r["wer"] is None for r in got[::2])
    assert got[1::2] == rows[1::2]
    want = score_corpus([(r["ref"], r["hyp"]) for r in rows[1::2]], "auto")[0]
    assert mixed["rate"] == want.rate and mixed["errors"] == want.errors > 0
    assert (mixed["utterances"], mixed["transcribed"], mixed["unscored"], mixed["skipped"]) == (3, 6, 3, 0)
    assert (full["transcribed"], full["unscored"]) == (6, 0)
    assert _read(tmp_path / "mixed" / "ref.txt") == [f"test{i:03d} {TEXTS[i]}" for i in (1, 3, 5)]
    text = (tmp_path / "mixed" / "wer.txt").read_text().splitlines()
    assert text[0].startswith(f"test_3.jsonl: {want.summary()}")
    assert text[0].endswith("; 3 more transcribed without a reference, not scored")
    assert text[1] == "utterances decoded: 6 of 6 lines; skipped (bad data): 0"
    assert mixed["ctc"]["unscored"] == 3 and mixed["ctc"]["utterances"] == 3


def test_a_manifest_without_transcripts_is_transcribed(exported_dir, tmp_path, capsys):
    corpus = without_targets(write_corpus(tmp_path / "data", TEXTS), lambda i: False)
    out = tmp_path / "out"
    assert main(["--model", str(exported_dir), "--data", str(corpus), "--output", str(out), "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "test_0.jsonl: 6 utterances transcribed (hyp.txt); none has a reference transcript: not scored"
    assert [line.split(" ", 1)[0] for line in _read(out / "hyp.txt")] == [f"test{i:03d}" for i in range(6)]
    assert _read(out / "ref.txt") == []
    summary = json.loads((out / "wer.json").read_text())
    assert summary["rate"] is None and (summary["utterances"], summary["transcribed"], summary["unscored"]) == (0, 6, 6)


def test_an_empty_reference_is_scored_its_insertions_counted(model, tmp_path):
    """A clip whose reference is empty (noise, silence, or a transcript normalised away) is decoded and scored:
    every decoded unit an insertion. It had been a bad line, left out of the WER with its hallucinations."""
    corpus = write_corpus(tmp_path / "data", TEXTS[:3])
    lines = [json.loads(line) for line in corpus.read_text().splitlines()]
    lines[1]["target"] = " "
    corpus.write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = decode_manifest(model, corpus, tmp_path / "out", CFG, DecodeOptions(num_workers=0))
    rows = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert [r["ref"] for r in rows] == [TEXTS[0], "", TEXTS[2]]
    assert rows[1]["ref_units"] == 0 and rows[1]["ins"] == len(rows[1]["hyp"].split()) == rows[1]["errors"]
    assert (summary["utterances"], summary["unscored"], summary["skipped"]) == (3, 0, 0)
    want = score_corpus([(r["ref"], r["hyp"]) for r in rows], "auto")[0]
    assert summary["errors"] == want.errors and summary["rate"] == want.rate


def test_transcripts_under_another_toolkit_s_name_are_named_where_nothing_was_scored(exported_dir, tmp_path, capsys):
    """A NeMo or WeNet test set (`text` or `txt` for the transcript) decoded with exit 0 and "none has a reference
    transcript: not scored", nothing saying that every line held its transcript under a name llmasr does not read."""
    corpus = write_corpus(tmp_path / "data", TEXTS)
    lines = [json.loads(line) for line in corpus.read_text().splitlines()]
    for i, rec in enumerate(lines):
        if i % 2 == 0:
            rec["text"] = rec.pop("target")
    corpus.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out"
    assert main(["--model", str(exported_dir), "--data", str(corpus), "--output", str(out), "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    hint = "; their lines give 'text', which llmasr does not read: rename it 'target' to score them"
    assert printed[0].endswith(f"; 3 more transcribed without a reference, not scored{hint}"), printed[0]
    assert json.loads((out / "wer.json").read_text())["target_stand_in"] == "text"
    for rec in lines[1::2]:
        rec["text"] = rec.pop("target")
    corpus.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["--model", str(exported_dir), "--data", str(corpus), "--output", str(out), "--num-workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"none has a reference transcript: not scored{hint}")
    corpus.write_text("".join(json.dumps({**r, "target": None}) + "\n" for r in lines))  # `text` beside a target
    assert main(["--model", str(exported_dir), "--data", str(corpus), "--output", str(out), "--num-workers", "0"]) == 0
    assert "rename it" not in capsys.readouterr().out
