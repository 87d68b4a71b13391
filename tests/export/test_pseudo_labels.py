"""`llmasr data pseudo-label`: a real decode's transcripts as a training manifest. Each decoded line comes back from
the manifest by results.jsonl's `line` with its audio and fields, the LLM's text as its target; gated, empty, cut and
(with a threshold) unsure transcripts are left out and counted; with references the kept lines' rate is reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmasr.commands.data_check import main as data_check_main
from llmasr.commands.data_pseudo_label import main as pseudo_main
from llmasr.commands.decode import main as decode_main
from llmasr.data.manifest import Manifest
from llmasr.data.transcript_text import has_invisible
from llmasr.export.decode import DecodeOptions, decode_manifest
from llmasr.models.decoding import DecodeConfig
from llmasr.scoring import score_corpus
from llmasr.testing.run_dirs import TEXTS, write_corpus, write_joined_recording
from llmasr.testing.scripted_llm import ScriptedLLM


@pytest.fixture(scope="module")
def decoded(exported_dir, tmp_path_factory):
    """A manifest (TEXTS, plus one line for a recording of them all, decoded in windows) decoded with confidence."""
    root = tmp_path_factory.mktemp("pseudo")
    manifest = write_corpus(root, TEXTS)
    long_manifest, _ = write_joined_recording(root, TEXTS)
    lines = manifest.read_text() + "\n" + long_manifest.read_text()  # a blank line: lines and records differ
    manifest.write_text(lines, encoding="utf-8")
    out = root / "decoded"
    flags = ["--max-new-tokens", "4", "--max-window-seconds", "2", "--window-overlap", "0.5", "--confidence"]
    assert decode_main(["--model", str(exported_dir), "--data", str(manifest), "--output", str(out), *flags]) == 0
    return manifest, out


def results(out) -> list[dict]:
    return [json.loads(line) for line in open(out / "results.jsonl", encoding="utf-8")]


def edited_decode(out, rows: list[dict], tmp_path) -> Path:
    """A copy of the decode folder `out` in `tmp_path`, its results.jsonl holding `rows` (edited by a test)."""
    copy = tmp_path / "decoded"
    shutil.copytree(out, copy)
    (copy / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return copy


def kept(text: str) -> bool:
    """Whether a transcript is a training line's target: written, and free of control or invisible characters (the
    tiny LLM's byte tokens write some)."""
    return bool(text.strip()) and not has_invisible(text)


def targets(rows: list[dict]) -> list[str]:
    """The texts a pseudo-label run keeping every written transcript writes: a row's, or each of its windows'."""
    return [w["hyp"] for r in rows for w in r.get("window_texts", [r]) if kept(w["hyp"])]


def window_keys(row: dict) -> list[str]:
    """The training line keys of a row decoded in windows: KEY-START-END in centiseconds, as Kaldi keys segments."""
    return [f"{row['key']}-{round(w['start'] * 100):07d}-{round(w['end'] * 100):07d}" for w in row["window_texts"]]


def test_every_line_written_whole_becomes_a_training_line_of_its_audio(decoded, tmp_path, capsys):
    manifest, out = decoded
    rows = results(out)
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6, 8]  # the manifest's own line numbers
    target = tmp_path / "pl.jsonl"
    assert pseudo_main([str(out), "--output", str(target), "--keep-truncated"]) == 0
    report = capsys.readouterr().out
    written = Manifest.open(target)
    whole = [r for r in rows if r["windows"] == 1 and kept(r["hyp"])]
    assert all(r["hyp"].strip() for r in rows if r["windows"] == 1)
    (long,) = [r for r in rows if r["windows"] > 1]
    assert [u.target for u in written][: len(whole)] == [r["hyp"] for r in whole]
    source = Manifest.open(manifest, need_target=False)
    by_key = {u.key: u for u in source}
    for utt, row in zip(written, whole):
        assert utt.key == row["key"] and utt.source == by_key[row["key"]].source and utt.duration == row["duration"]
    # the long recording: a training line a window, its span of the recording and its own text
    windows = [w for w in long["window_texts"] if kept(w["hyp"])]
    assert len(long["window_texts"]) == long["windows"] >= 3 and len(windows) >= 3
    pieces = list(written)[len(whole) :]
    assert [u.key for u in pieces] == [k for k, w in zip(window_keys(long), long["window_texts"]) if kept(w["hyp"])]
    assert [u.target for u in pieces] == [w["hyp"] for w in windows]
    assert [(u.start, u.end) for u in pieces] == [(w["start"], w["end"]) for w in windows]
    assert all(u.source == by_key["long"].source and u.duration == pytest.approx(u.end - u.start) for u in pieces)
    # a training tool takes it: every line parses and its audio opens
    assert data_check_main([str(target)]) == 0
    offered = len(rows) - 1 + long["windows"]
    assert f"pseudo-labels: {len(whole) + len(windows)} of {offered} lines kept" in report
    assert (
        f"1 long recording of the 7 decoded lines was decoded in windows: a line a window ({long['windows']} " in report
    )
    assert "cut without a pause" not in report  # the recording's windows meet at its pauses
    scored = whole + [long] * (len(windows) == long["windows"])  # the lines kept whole
    corpus, _ = score_corpus([(r["ref"], r["hyp"]) for r in scored])
    assert f"kept {corpus.name} {100 * corpus.rate:.2f}% over {len(scored)} line" in report
    assert ("kept in part" in report) == (len(windows) < long["windows"])


def test_cut_transcripts_are_left_out_and_an_end_of_the_llms_own_is_kept(decoded, model, tmp_path, capsys):
    manifest, out = decoded
    rows = results(out)
    assert all(r["truncated"] == "max_tokens" for r in rows)  # the tiny LLM writes on to the cap
    assert pseudo_main([str(out), "--output", str(tmp_path / "cut.jsonl")]) == 2
    err = capsys.readouterr().err
    offered = sum(len(r.get("window_texts", [r])) for r in rows)  # a window of the long recording each
    assert "no line kept, nothing written" in err and f"cut by a guard (length cap, repetition stop): {offered}" in err
    assert not (tmp_path / "cut.jsonl").exists()
    # the LLM made to say "three four" and end: every line is kept, none of them cut
    tok = model.prompt.tokenizer
    said = tok.encode("three four", add_special_tokens=False)
    steps = [None, *said, model.prompt.end_id]
    cfg = DecodeConfig(max_new_tokens=16, max_window_seconds=2.0, window_overlap=0.5, ctc_weight=0.0)
    with torch.no_grad(), ScriptedLLM(model, {a: {b: 30.0} for a, b in zip(steps, steps[1:])}):
        decode_manifest(model, manifest, tmp_path / "said", cfg, DecodeOptions(num_workers=0))
    said_rows = results(tmp_path / "said")
    assert all(r["truncated"] is None and r["hyp"] for r in said_rows)
    assert pseudo_main([str(tmp_path / "said"), "--output", str(tmp_path / "said.jsonl")]) == 0
    assert f"pseudo-labels: {offered} of {offered} lines kept" in capsys.readouterr().out
    targets = [w["hyp"] for r in said_rows for w in r.get("window_texts", [r])]
    assert [u.target for u in Manifest.open(tmp_path / "said.jsonl")] == targets and set(targets) == {"three four"}


def test_unsure_transcripts_and_windows_are_left_out_below_the_threshold(decoded, tmp_path, capsys):
    manifest, out = decoded
    rows = results(out)
    # a threshold between the long recording's worst window and its own mean: that window alone is left out
    (long,) = [r for r in rows if r["windows"] > 1]
    sure = [w["avg_logprob"] for w in long["window_confidence"]]
    assert min(sure) < long["avg_logprob"]
    threshold = (min(sure) + long["avg_logprob"]) / 2
    assert pseudo_main([str(out), "--output", str(tmp_path / "sure.jsonl"), "--keep-truncated",
                        "--min-avg-logprob", f"{threshold}"]) == 0  # fmt: skip
    report = capsys.readouterr().out
    keys = [u.key for u in Manifest.open(tmp_path / "sure.jsonl")]
    whole = [r for r in rows if r["windows"] == 1 and kept(r["hyp"])]  # those left out for their text are not low
    written = [(k, avg) for k, avg, w in zip(window_keys(long), sure, long["window_texts"]) if kept(w["hyp"])]
    windows = [k for k, avg in written if avg >= threshold]
    assert keys == [r["key"] for r in whole if r["avg_logprob"] >= threshold] + windows
    assert 0 < len(windows) < len(sure)
    low = sum(r["avg_logprob"] < threshold for r in whole) + len(written) - len(windows)
    assert f"left out, avg_logprob below the threshold: {low}" in report
    # the recording kept in part is scored in neither rate: its windows have no references of their own
    assert "(1 recording kept in part, in neither: a window has no reference of its own)" in report
    assert "all decoded WER" in report and " over 7 lines" in report


def test_what_cannot_give_pseudo_labels_is_refused_naming_it(decoded, exported_dir, tmp_path, capsys):
    manifest, out = decoded
    assert pseudo_main([str(tmp_path), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert f"{tmp_path}: no results.jsonl: not the output folder of `llmasr decode`" in capsys.readouterr().err
    assert pseudo_main([str(out), "--output", str(manifest), "--manifest", str(manifest)]) == 2
    assert "one of the inputs" in capsys.readouterr().err
    # decoded without --confidence: a threshold has nothing to read
    plain = tmp_path / "plain"
    assert decode_main(["--model", str(exported_dir), "--data", str(manifest), "--output", str(plain),
                        "--max-new-tokens", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    assert pseudo_main([str(plain), "--output", str(tmp_path / "y.jsonl"), "--min-avg-logprob", "-1"]) == 2
    assert "no avg_logprob: decode with --confidence" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pseudo_main([str(out), "--output", str(tmp_path / "z.jsonl"), "--min-avg-logprob", "0.5"])
    assert "a log-probability is a finite number <= 0, got 0.5" in capsys.readouterr().err
    # the manifest edited since the decode: its lines no longer the ones decoded
    moved = tmp_path / "moved.jsonl"
    shutil.copy(manifest, moved)
    lines = moved.read_text().splitlines()
    moved.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    assert pseudo_main([str(out), "--output", str(tmp_path / "w.jsonl"), "--manifest", str(moved)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'results.jsonl'}:1: key 'test000' was decoded from line 1 of {moved}, which now holds key" in err
    assert not (tmp_path / "w.jsonl").exists()


def test_a_decode_is_read_from_any_folder_and_its_folders_named(exported_dir, tmp_path, monkeypatch, capsys):
    # decoded with relative paths, as a recipe folder's commands are run: wer.json names the manifest whole
    root = tmp_path / "recipe"
    write_corpus(root / "data", TEXTS[:2], name="dev")
    write_corpus(root / "data", TEXTS[2:4], name="eval")
    monkeypatch.chdir(root)
    flags = ["--max-new-tokens", "2", "--confidence", "--ctc"]
    assert decode_main(["--model", str(exported_dir), "--data", "data/dev.jsonl", "--data", "data/eval.jsonl",
                        "--output", "out", *flags]) == 0  # fmt: skip
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert pseudo_main(["recipe/out/dev", "--output", "dev.jsonl", "--keep-truncated"]) == 0
    written = [r["key"] for r in results(tmp_path / "recipe/out/dev") if r["hyp"].strip()]
    assert [u.key for u in Manifest.open(tmp_path / "dev.jsonl")] == written and written
    assert "kept WER" in capsys.readouterr().out
    # the decode of both: its folders named
    assert pseudo_main(["recipe/out", "--output", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "recipe/out: a decode of several manifests" in err and "recipe/out/dev, recipe/out/eval" in err
    # the CTC branch's transcripts have no confidence of their own: not a decode to rerun
    assert pseudo_main(["recipe/out/dev/ctc", "--output", "y.jsonl", "--min-avg-logprob", "-1"]) == 2
    assert "no avg_logprob: the CTC branch's transcripts have none" in capsys.readouterr().err
    assert pseudo_main(["recipe/out/dev/ctc", "--output", "ctc.jsonl"]) == 0
    assert not any(tmp_path.glob("[xy].jsonl"))


def test_the_manifest_wer_json_names_is_an_input_and_must_be_there(decoded, tmp_path, capsys):
    manifest, out = decoded
    before = manifest.read_bytes()
    assert pseudo_main([str(out), "--output", str(manifest), "--keep-truncated"]) == 2  # the one wer.json names
    assert f"--output {manifest}: one of the inputs" in capsys.readouterr().err
    assert manifest.read_bytes() == before
    # moved since the decode: wer.json named, and the way out
    copy = tmp_path / "decoded"
    shutil.copytree(out, copy)
    summary = json.loads((copy / "wer.json").read_text())
    summary["manifest"] = str(tmp_path / "gone.jsonl")
    (copy / "wer.json").write_text(json.dumps(summary))
    assert pseudo_main([str(copy), "--output", str(tmp_path / "pl.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{copy / 'wer.json'}: the decoded manifest it names, {tmp_path / 'gone.jsonl'}, is not there" in err
    assert "give it with --manifest" in err and not (tmp_path / "pl.jsonl").exists()


def test_kept_lines_without_references_are_said_so(decoded, tmp_path, capsys):
    manifest, out = decoded
    # the one line kept (sure of itself) has no reference; the others are scored and left out
    edited = [{**r, "ref": None, "avg_logprob": -0.5} if n == 0 else {**r, "avg_logprob": -100.0}
              for n, r in enumerate(results(out))]  # fmt: skip
    copy = edited_decode(out, edited, tmp_path)
    assert pseudo_main([str(copy), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated", "--min-avg-logprob",
                        "-1"]) == 0  # fmt: skip
    assert "against the references: kept no line with a reference; all decoded" in capsys.readouterr().out


def test_an_output_folder_not_made_yet_is_made(decoded, tmp_path, capsys):
    manifest, out = decoded
    target = tmp_path / "pl" / "new" / "pl.jsonl"  # as a decode's --output is made
    assert pseudo_main([str(out), "--output", str(target), "--keep-truncated"]) == 0
    assert [u.target for u in Manifest.open(target)] == targets(results(out))


@pytest.mark.parametrize(
    "edit, said",
    [
        ({"line": "2"}, "field 'line' must be a line number, got '2'"),
        ({"key": None}, "field 'key' must be a non-empty string, got None"),
        ({"hyp": ["three"]}, "field 'hyp' must be a string or null, got ['three']"),
        ({"duration": "0.5"}, "field 'duration' must be a number of seconds, got '0.5'"),
        ({"avg_logprob": "low"}, "field 'avg_logprob' must be a number or null, got 'low'"),
        ({"windows": None}, "field 'windows' must be a count of windows, got None"),
        ({"window_confidence": [{"start": 0.0}]}, "field 'window_confidence' must be a list of {start, end, avg"),
        ({"window_texts": [{"start": 1.0, "end": 0.5, "hyp": "x"}]}, "field 'window_texts' must be a list of {start"),
        ({"window_texts": [], "windows": 2}, "field 'window_texts' must be a list of {start, end, hyp}, got []"),
        ({"windows": 3}, "decoded in 3 windows, with no `window_texts` (a decode by an older llmasr): decode again"),
    ],
)
def test_an_edited_results_row_is_refused_naming_its_field(decoded, tmp_path, capsys, edit, said):
    manifest, out = decoded
    rows = results(out)
    rows[1].update(edit)
    copy = edited_decode(out, rows, tmp_path)
    assert pseudo_main([str(copy), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated",
                        "--min-avg-logprob", "-100"]) == 2  # fmt: skip
    assert f"{copy / 'results.jsonl'}:2: {said}" in capsys.readouterr().err
    assert not (tmp_path / "pl.jsonl").exists()


def test_transcripts_holding_control_or_invisible_characters_are_left_out_and_counted(decoded, tmp_path, capsys):
    """An untrained LLM's byte token wrote U+0013 into a transcript: pseudo-label kept it, and `llmasr check` and
    `llmasr train` then warned of the manifest it wrote. Such a line (a window too) is left out and counted."""
    manifest, out = decoded
    rows = results(out)
    rows[1]["hyp"] = "three\x13 four"
    (long,) = [r for r in rows if r["windows"] > 1]
    long["window_texts"][0]["hyp"] = "zero\u200b one"  # a zero-width space: format, not control
    copy = edited_decode(out, rows, tmp_path)
    target = tmp_path / "pl.jsonl"
    assert pseudo_main([str(copy), "--output", str(target), "--keep-truncated"]) == 0
    report = capsys.readouterr().out
    hidden = sum(has_invisible(w["hyp"]) for r in rows for w in r.get("window_texts", [r]))  # 2, and the LLM's own
    assert f"left out, invisible or control characters (training's transcript check warns of them): {hidden}" in report
    written = [u.target for u in Manifest.open(target)]
    assert "three\x13 four" not in written and "zero\u200b one" not in written and written == targets(rows)
    assert data_check_main([str(target)]) == 0
    assert "invisible characters in transcripts" not in capsys.readouterr().out


def test_whitespace_the_llm_wrote_is_written_one_space_between_words_and_counted(decoded, tmp_path, capsys):
    """A newline or a run of spaces the LLM wrote went into the training line's target as it stood: `llmasr check`
    and `llmasr train` then warned of whitespace in the manifest pseudo-label wrote, and training taught it."""
    manifest, out = decoded
    rows = results(out)
    rows[0]["hyp"], rows[2]["hyp"] = "zero one\ntwo", "five  six\tseven"
    copy = edited_decode(out, rows, tmp_path)
    target = tmp_path / "pl.jsonl"
    assert pseudo_main([str(copy), "--output", str(target), "--keep-truncated"]) == 0
    report = capsys.readouterr().out
    assert (
        "2 kept transcripts written with the whitespace the LLM wrote (newlines, tabs, spaces in a row) as one "
        in report
    )
    written = {u.key: u.target for u in Manifest.open(target)}
    assert (written["test000"], written["test002"]) == ("zero one two", "five six seven")
    assert data_check_main([str(target)]) == 0
    assert "whitespace in transcripts" not in capsys.readouterr().out


def test_a_line_decoded_twice_in_one_results_file_is_refused(decoded, tmp_path, capsys):
    manifest, out = decoded
    copy = tmp_path / "decoded"
    shutil.copytree(out, copy)
    text = (copy / "results.jsonl").read_text()
    (copy / "results.jsonl").write_text(text + text)  # two runs' rows appended: each line would train twice
    n = len(text.splitlines())
    assert pseudo_main([str(copy), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 2
    err = capsys.readouterr().err
    assert f"{copy / 'results.jsonl'}:{n + 1}: manifest line 1 (key 'test000') again, first at line 1" in err
    assert not (tmp_path / "pl.jsonl").exists()


def test_lines_whose_audio_is_not_where_this_reads_it_are_refused(decoded, tmp_path, capsys):
    manifest, out = decoded
    away = tmp_path / "copy.jsonl"  # the decoded lines, copied away from the audio their relative paths name
    shutil.copy(manifest, away)
    assert pseudo_main([str(out), "--output", str(tmp_path / "pl.jsonl"), "--manifest", str(away),
                        "--keep-truncated"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    more = sum(any(kept(w["hyp"]) for w in r.get("window_texts", [r])) for r in results(out)) - 1  # lines with any kept
    assert (
        f"{away}:1 (key 'test000'): audio {tmp_path / 'wav/test0.wav'} is not there, nor that of {more} more lines"
        in err
    )
    assert "give the decoded manifest itself with --manifest" in err and not (tmp_path / "pl.jsonl").exists()


def test_a_gz_output_is_written_gzipped(decoded, tmp_path, capsys):
    manifest, out = decoded
    target = tmp_path / "pl.jsonl.gz"  # as lhotse's cut sets are kept: every manifest reader takes it as gzip
    assert pseudo_main([str(out), "--output", str(target), "--keep-truncated"]) == 0
    assert [u.target for u in Manifest.open(target)] == targets(results(out))
    assert data_check_main([str(target)]) == 0


def test_a_window_of_a_segment_is_keyed_by_its_span_of_the_recording(decoded, exported_dir, tmp_path):
    """A line for 1-6 s of a recording decoded in windows: each window's key gives the span its training line states
    (start and end in the recording, as Kaldi keys segments), not its span from the segment's start (seg-0000000-...
    for a line at 1.0 s of the file)."""
    manifest, _ = decoded
    segment = tmp_path / "segment.jsonl"
    segment.write_text(json.dumps({"key": "seg", "source": str(manifest.parent / "long.wav"), "start": 1.0,
                                   "end": 6.0}) + "\n")  # fmt: skip
    flags = ["--max-new-tokens", "4", "--max-window-seconds", "2", "--window-overlap", "0.5"]
    assert decode_main(["--model", str(exported_dir), "--data", str(segment), "--output", str(tmp_path / "d"),
                        *flags]) == 0  # fmt: skip
    assert results(tmp_path / "d")[0]["windows"] >= 3
    assert pseudo_main([str(tmp_path / "d"), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 0
    lines = [json.loads(t) for t in (tmp_path / "pl.jsonl").read_text().splitlines()]
    assert lines and lines[0]["start"] >= 1.0
    assert [x["key"] for x in lines] == [
        f"seg-{round(x['start'] * 100):07d}-{round(x['end'] * 100):07d}" for x in lines
    ]  # fmt: skip


def test_a_span_past_its_files_end_is_written_as_decoded_and_an_edited_one_refused(decoded, exported_dir, tmp_path,
                                                                                   capsys):  # fmt: skip
    manifest, out = decoded
    clip = manifest.parent / "wav" / "test5.wav"  # 1 s
    spans = tmp_path / "spans.jsonl"  # 0.3 s past the end: the loader trims it, and training takes the line
    spans.write_text(json.dumps({"key": "tail", "source": str(clip), "start": 0.5, "end": 1.3}) + "\n")
    assert decode_main(["--model", str(exported_dir), "--data", str(spans), "--output", str(tmp_path / "d"),
                        "--max-new-tokens", "2"]) == 0  # fmt: skip
    assert pseudo_main([str(tmp_path / "d"), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 0
    (line,) = [json.loads(t) for t in (tmp_path / "pl.jsonl").read_text().splitlines()]
    assert (line["start"], line["end"], line["duration"]) == (0.5, 1.0, 0.5)  # the audio decoded, one span
    capsys.readouterr()
    assert data_check_main([str(tmp_path / "pl.jsonl")]) == 0
    # a span edited since the decode: the transcript is of other audio
    edited = manifest.parent / "edited.jsonl"
    lines = manifest.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "start": 0.0, "end": 0.3})
    edited.write_text("\n".join(lines) + "\n")
    assert pseudo_main([str(out), "--output", str(tmp_path / "e.jsonl"), "--manifest", str(edited)]) == 2
    err = capsys.readouterr().err
    assert (
        f"results.jsonl:1: key 'test000' (line 1 of {edited}) now spans 0-0.3 s (0.3 s), where the decode read " in err
    )
    assert "the manifest changed since the decode" in err and not (tmp_path / "e.jsonl").exists()


def test_a_decode_wide_hotword_list_is_said_not_to_be_carried(exported_dir, tmp_path, capsys):
    """--hotwords FILE biased the lines without a list of their own; their training lines do not carry it: said."""
    manifest = write_corpus(tmp_path / "data", TEXTS[:3])
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    lines[0]["hotwords"] = ["zero"]  # a list of its own: the file's is not its
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "hot.txt").write_text("quick brown\n")
    out = tmp_path / "decoded"
    assert decode_main(["--model", str(exported_dir), "--data", str(manifest), "--output", str(out),
                        "--max-new-tokens", "2", "--hotwords", str(tmp_path / "hot.txt")]) == 0  # fmt: skip
    capsys.readouterr()
    assert pseudo_main([str(out), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 0
    report = capsys.readouterr().out
    assert (
        f"note: 2 kept lines were decoded with --hotwords {tmp_path / 'hot.txt'}'s list (none of their own)" in report
    )
    assert [u.hotwords for u in Manifest.open(tmp_path / "pl.jsonl")] == [["zero"], None, None]
    # a list only scored against (--hotwords-unprompted) biased no transcript: the note had said it did
    assert decode_main(["--model", str(exported_dir), "--data", str(manifest), "--output", str(tmp_path / "unp"),
                        "--max-new-tokens", "2", "--hotwords", str(tmp_path / "hot.txt"),
                        "--hotwords-unprompted"]) == 0  # fmt: skip
    capsys.readouterr()
    assert pseudo_main([str(tmp_path / "unp"), "--output", str(tmp_path / "unp.jsonl"), "--keep-truncated"]) == 0
    assert "--hotwords" not in capsys.readouterr().out


def test_manifest_lines_the_decode_never_read_are_not_called_bad_at_decoding(exported_dir, tmp_path, capsys):
    """The lines results.jsonl lacks are those bad.jsonl lists and, apart from them, lines added to the manifest since
    the decode (or rows taken out of results.jsonl): all of them had been said to be "bad at decoding, see
    bad.jsonl", where bad.jsonl did not list them."""
    gone = json.dumps({"key": "gone", "source": "wav/nowhere.wav"})
    manifest = write_corpus(tmp_path / "data", TEXTS[:2], extra_lines=[gone])
    out = tmp_path / "decoded"
    assert decode_main(["--model", str(exported_dir), "--data", str(manifest), "--output", str(out),
                        "--max-new-tokens", "2", "--max-bad-fraction", "1"]) == 0  # fmt: skip
    assert [json.loads(r)["line"] for r in open(out / "bad.jsonl", encoding="utf-8")] == [3]
    added = [json.dumps({"key": f"new{i}", "source": "wav/test0.wav"}) for i in range(2)]
    with open(manifest, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in added))
    capsys.readouterr()
    assert pseudo_main([str(out), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 0
    report = capsys.readouterr().out
    assert "manifest lines not in results.jsonl (bad at decoding, see bad.jsonl): 1\n" in report
    assert f"manifest lines in neither results.jsonl nor bad.jsonl, not written: 2 (first: {manifest}:4)" in report
    assert [u.key for u in Manifest.open(tmp_path / "pl.jsonl")] == [r["key"] for r in results(out) if r["hyp"]]


def test_the_note_of_a_decode_wide_list_counts_training_lines_a_window_each(exported_dir, tmp_path, capsys):
    """A long recording decoded with --hotwords FILE gives a training line a window, none carrying the list: the note
    had counted the recording once (2 "kept lines" where 2 + its windows were written without it)."""
    manifest = write_corpus(tmp_path, TEXTS[:2])
    long_manifest, _ = write_joined_recording(tmp_path, TEXTS[:2])
    manifest.write_text(manifest.read_text() + long_manifest.read_text(), encoding="utf-8")
    (tmp_path / "hot.txt").write_text("quick brown\n")
    out = tmp_path / "decoded"
    flags = ["--max-new-tokens", "2", "--max-window-seconds", "2", "--window-overlap", "0.5"]
    assert decode_main(["--model", str(exported_dir), "--data", str(manifest), "--output", str(out), *flags,
                        "--hotwords", str(tmp_path / "hot.txt")]) == 0  # fmt: skip
    assert max(r["windows"] for r in results(out)) > 1
    capsys.readouterr()
    assert pseudo_main([str(out), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 0
    written = list(Manifest.open(tmp_path / "pl.jsonl"))
    assert len(written) > 3 and all(u.hotwords is None for u in written)
    assert f"note: {len(written)} kept lines were decoded with --hotwords" in capsys.readouterr().out


def test_windows_cut_inside_speech_are_named_and_window_keys_must_be_free(exported_dir, tmp_path, capsys):
    manifest = write_corpus(tmp_path, TEXTS)
    long_manifest, _ = write_joined_recording(tmp_path, TEXTS, gap_s=0.0)  # no pause: windows overlap at their cuts
    out = tmp_path / "decoded"
    flags = ["--max-new-tokens", "4", "--max-window-seconds", "2", "--window-overlap", "0.5"]
    assert decode_main(["--model", str(exported_dir), "--data", str(long_manifest), "--output", str(out), *flags,
                        "--ctc"]) == 0  # fmt: skip
    (row,) = results(out)
    cut = [w["cut_in_speech"] for w in row["window_texts"]]
    assert any(cut), cut
    # the CTC branch's folder: its own texts a window, which no guard ends
    (ctc,) = results(out / "ctc")
    assert [(w["start"], w["end"], w["cut_in_speech"]) for w in ctc["window_texts"]] == [
        (w["start"], w["end"], w["cut_in_speech"]) for w in row["window_texts"]
    ]
    assert all(set(w) == {"start", "end", "hyp", "cut_in_speech"} for w in ctc["window_texts"])
    assert "".join(w["hyp"] for w in ctc["window_texts"]).replace(" ", "") != ""
    assert pseudo_main([str(out), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 0
    kept = sum(c for c, w in zip(cut, row["window_texts"]) if w["hyp"].strip())
    said = f"note: {kept} kept window{'s' if kept > 1 else ''} {'were' if kept > 1 else 'was'} cut without a pause"
    assert said in capsys.readouterr().out
    # a window's key that a line of the manifest holds: two training lines of one key, refused naming both
    first = window_keys(row)[0]
    lines = [json.loads(text) for text in manifest.read_text().splitlines()] + [json.loads(long_manifest.read_text())]
    lines[0]["key"] = first
    both = tmp_path / "both.jsonl"
    both.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out2 = tmp_path / "decoded2"
    assert decode_main(["--model", str(exported_dir), "--data", str(both), "--output", str(out2), *flags]) == 0
    capsys.readouterr()
    assert pseudo_main([str(out2), "--output", str(tmp_path / "pl2.jsonl"), "--keep-truncated"]) == 2
    err = capsys.readouterr().err
    assert f"{out2 / 'results.jsonl'}:{len(lines)}: training line key {first!r} is {out2 / 'results.jsonl'}:1's" in err
    assert not (tmp_path / "pl2.jsonl").exists()


def test_a_chatml_lines_own_system_message_is_carried(model, tmp_path, capsys):
    write_corpus(tmp_path, TEXTS[:2])
    turn = [{"role": "user", "content": "Transcribe:<|startofspeech|>!wav/test0.wav<|endofspeech|>"}]
    lines = [
        {"messages": [{"role": "system", "content": "You transcribe court hearings."}, *turn]},
        {"messages": [{"role": "user", "content": "<|startofspeech|>!wav/test1.wav<|endofspeech|>"}]},
    ]
    nano = tmp_path / "nano.jsonl"
    nano.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "decoded"
    said = model.prompt.tokenizer.encode("three four", add_special_tokens=False)  # the LLM made to say it, and end
    steps = [None, *said, model.prompt.end_id]
    with torch.no_grad(), ScriptedLLM(model, {a: {b: 30.0} for a, b in zip(steps, steps[1:])}):
        decode_manifest(model, nano, out, DecodeConfig(max_new_tokens=8, ctc_weight=0.0), DecodeOptions(num_workers=0))
    assert pseudo_main([str(out), "--output", str(tmp_path / "pl.jsonl")]) == 0
    assert "system message" not in capsys.readouterr().out
    written = [json.loads(text) for text in open(tmp_path / "pl.jsonl", encoding="utf-8")]
    assert [w.get("system") for w in written] == ["You transcribe court hearings.", None]
    assert [w.get("prompt") for w in written] == ["Transcribe:", None]
    read = Manifest.open(tmp_path / "pl.jsonl")  # training renders the line's own, as the ChatML line had it
    assert [u.system for u in read] == ["You transcribe court hearings.", None]
    # and `llmasr data check` does not call it a field llmasr leaves unread (it had: "system: 1 line")
    assert data_check_main([str(tmp_path / "pl.jsonl")]) == 0
    assert "fields llmasr does not read" not in capsys.readouterr().out
