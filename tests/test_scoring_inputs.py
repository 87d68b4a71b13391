"""What `llmasr score` reads (llmasr.scoring_inputs): references from a manifest, a decode folder or a Kaldi text
file, hypotheses from a decode folder, results.jsonl, a "key text" file or key + text jsonl; keys matched as hyp.txt
writes them; a key given twice, a line that does not parse and keys with no hypothesis named, never dropped."""

from __future__ import annotations

import json
import re

import pytest

from llmasr.scoring_inputs import ScoreInputError, pair, read_hypotheses, read_references


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_references_from_a_manifest_keep_their_language_and_name_the_lines_without_a_transcript(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [
        {"key": "a 1", "source": "a.wav", "target": "one two", "lang": "en-US"},
        {"key": "b", "source": "b.wav"},  # audio to transcribe: no reference, not scored
        {"key": "c", "source": "c.wav", "target": "你好", "lang": "<|zh|>"},
    ])  # fmt: skip
    refs, unscored = read_references(path)
    assert [(r.key, r.text, r.lang, r.lang_label, r.where) for r in refs] == [
        ("a_1", "one two", "en", "en-US", f"{path}:1"), ("c", "你好", "zh", "<|zh|>", f"{path}:3"),
    ]  # fmt: skip
    assert unscored == [("b", f"{path}:2")]


def test_references_and_hypotheses_in_every_form_pair_by_key(tmp_path):
    (tmp_path / "text").write_text("u1 one two\nu2\tthree\n\nu3\n", encoding="utf-8")  # a key alone: empty
    refs, _ = read_references(tmp_path / "text")
    assert [(r.key, r.text, r.where) for r in refs] == [
        ("u1", "one two", f"{tmp_path / 'text'}:1"), ("u2", "three", f"{tmp_path / 'text'}:2"),
        ("u3", "", f"{tmp_path / 'text'}:4"),
    ]  # fmt: skip
    folder = tmp_path / "decode"
    folder.mkdir()
    write_jsonl(folder / "results.jsonl", [{"key": "u 1", "ref": "one two", "hyp": "one", "lang": "en"},
                                           {"key": "u2", "ref": None, "hyp": "three"}])  # fmt: skip
    refs, unscored = read_references(folder)
    assert [(r.key, r.text, r.lang) for r in refs] == [("u_1", "one two", "en")]
    assert unscored == [("u2", f"{folder / 'results.jsonl'}:2")]
    assert {k: t.text for k, t in read_hypotheses(folder).items()} == {"u_1": "one", "u2": "three"}
    assert {k: t.text for k, t in read_hypotheses(folder / "results.jsonl").items()} == {"u_1": "one", "u2": "three"}
    other = write_jsonl(tmp_path / "other.jsonl", [{"key": "u1", "text": "one too"}])
    assert {k: t.text for k, t in read_hypotheses(other).items()} == {"u1": "one too"}


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("hyp.txt", "u1 a\nu2 b\nu1 c\n", r"hyp.txt:3: key 'u1' again, first at .*hyp.txt:1"),
        # keys are matched as hyp.txt writes them: "u 1" is u_1 there
        ("hyp.jsonl", '{"key": "u 1", "text": "a"}\n{"key": "u_1", "text": "b"}\n', r"hyp.jsonl:2: key 'u_1' again"),
        ("hyp.txt", "u1 a\n".encode("utf-16"), r"hyp.txt:1: not UTF-8 text.*UTF-16"),
        ("hyp.jsonl", '{"key": "u1", "text": "a"}\n{"key": "u2"}\n', r"hyp.jsonl:2: a line of key, text wanted"),
        ("hyp.jsonl", '{"key": "u1", "text": "a"}\n{"key": "u2", "text": \n', r"hyp.jsonl:2: malformed JSON"),
        ("hyp.jsonl", '{"key": "u1", "text": 3}\n', r"hyp.jsonl:1: text must be text"),
        ("hyp.txt", "\n\n", r"hyp.txt: no transcripts"),
        # what Whisper writes per audio: one line (its CLI), pretty-printed (indent), and a JSON array of rows
        ("a.json", '{"text": " hi", "segments": [{"text": " hi"}], "language": "en"}\n',
         r"a.json:1: one recording's transcript .*KEY TEXT.*jq -r .text"),
        ("a.json", '{\n  "text": " hi",\n  "segments": []\n}\n', r"a.json: one JSON document.*KEY TEXT"),
        ("a.json", '[{"key": "u1", "text": "a"}]\n', r"a.json: one JSON document.*array.*jq -c"),
    ],
)  # fmt: skip
def test_a_hypothesis_file_that_cannot_be_paired_is_named_at_its_line(tmp_path, name, content, said):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ScoreInputError, match=said):
        read_hypotheses(path)


def test_a_folder_not_of_decode_and_a_bad_manifest_line_are_refused(tmp_path):
    with pytest.raises(ScoreInputError, match="no results.jsonl: not the output folder of"):  # pseudo-label's words
        read_hypotheses(tmp_path)
    path = tmp_path / "test.jsonl"
    path.write_text('{"key": "a", "source": "a.wav", "target": "x"}\n{"key": "b", "target": "y"}\n')
    with pytest.raises(ScoreInputError, match=r"test.jsonl:2"):
        read_references(path)


def test_missing_hypotheses_are_refused_counted_deleted_or_skipped_for_every_system(tmp_path):
    refs, _ = read_references(write_jsonl(tmp_path / "ref.jsonl", [
        {"key": k, "source": f"{k}.wav", "target": "w"} for k in ("u1", "u2", "u3")]))  # fmt: skip
    (tmp_path / "a.txt").write_text("u1 w\nu2 w\nu3 w\nzz w\n")
    (tmp_path / "b.txt").write_text("u1 w\nu3 x\n")
    hyps = {name: read_hypotheses(tmp_path / name) for name in ("a.txt", "b.txt")}
    with pytest.raises(ScoreInputError, match=r"b.txt: 1 of the 3 reference keys have no hypothesis \(u2\): --missing"):
        pair(refs, hyps, "refuse")
    kept, texts, left = pair(refs, hyps, "empty")
    assert [r.key for r in kept] == ["u1", "u2", "u3"] and texts["b.txt"] == ["w", "", "x"]
    assert left == {"missing": {"a.txt": [], "b.txt": ["u2"]}, "extra": {"a.txt": ["zz"], "b.txt": []}, "skipped": []}
    kept, texts, left = pair(refs, hyps, "skip")
    assert [r.key for r in kept] == ["u1", "u3"] and texts == {"a.txt": ["w", "w"], "b.txt": ["w", "x"]}
    assert left["skipped"] == ["u2"]
    (tmp_path / "c.txt").write_text("x1 w\n")
    with pytest.raises(ScoreInputError, match=r"none of its 1 keys is a reference key .*'x1'.*'u1'"):
        pair(refs, {"c.txt": read_hypotheses(tmp_path / "c.txt")}, "empty")


def test_hypotheses_of_lines_without_a_reference_transcript_are_not_of_keys_no_reference_has(tmp_path):
    refs, unscored = read_references(write_jsonl(tmp_path / "ref.jsonl", [
        {"key": "u1", "source": "u1.wav", "target": "w"}, {"key": "u 2", "source": "u2.wav"}]))  # fmt: skip
    (tmp_path / "hyp.txt").write_text("u1 w\nu_2 x\nzz y\n")  # as decode writes them, and one of another set
    hyps = {"hyp.txt": read_hypotheses(tmp_path / "hyp.txt")}
    kept, texts, left = pair(refs, hyps, "refuse", tuple(key for key, _ in unscored))
    assert texts == {"hyp.txt": ["w"]} and left["extra"] == {"hyp.txt": ["zz"]}
    (tmp_path / "only.txt").write_text("u_2 x\n")  # the transcribed line alone: nothing of it can be scored
    with pytest.raises(ScoreInputError, match="none of its 1 keys is a reference key"):
        pair(refs, {"only.txt": read_hypotheses(tmp_path / "only.txt")}, "refuse", ("u_2",))


@pytest.mark.parametrize("key", [["u1"], None, "  ", True, {"id": "u1"}])
def test_a_key_that_is_not_text_is_refused_at_its_line(tmp_path, key):
    path = write_jsonl(tmp_path / "hyp.jsonl", [{"key": "u0", "text": "w"}, {"key": key, "text": "w"}])
    with pytest.raises(ScoreInputError, match=rf"hyp.jsonl:2: the key must be text, got {re.escape(repr(key))}"):
        read_hypotheses(path)


def test_a_funasr_output_folder_is_refused_naming_its_transcripts_file(tmp_path):
    (tmp_path / "funasr_out" / "1best_recog").mkdir(parents=True)
    (tmp_path / "funasr_out" / "1best_recog" / "text").write_text("u1 w\n", encoding="utf-8")
    with pytest.raises(ScoreInputError, match=r"give its transcripts file \(.*funasr_out/1best_recog/text\)"):
        read_hypotheses(tmp_path / "funasr_out")


def test_a_decode_of_several_manifests_is_refused_naming_their_folders(tmp_path):
    """`llmasr decode --data a.jsonl --data b.jsonl` writes a folder a manifest: given its parent, score names them
    (as pseudo-label does), where it had said the parent was no decode's output at all."""
    for name in ("dev", "eval"):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "results.jsonl", [{"key": "u1", "ref": "a", "hyp": "a"}])
    (tmp_path / "manifests.json").write_text(json.dumps({"dev": "data/dev.jsonl", "eval": "data/eval.jsonl"}))
    with pytest.raises(ScoreInputError, match=r"a decode of several manifests.*give one of .*dev, .*eval"):
        read_hypotheses(tmp_path)
