"""Bad manifest records: every kind named with its file and line, pickled across processes, and a line without
a transcript (bad for training, audio to transcribe for decoding)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import soundfile as sf
from speech_fakes import cut, write_jsonl
from speech_fakes import write_tone_wav as write_wav

from llmasr.data.manifest import BadManifest, BadRecord, Manifest

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")


def test_every_bad_record_kind(tmp_path):
    write_wav(tmp_path / "good.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" + bytes(64))
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    lines = [
        {"key": "good", "source": "good.wav", "target": "fine"},  # 1
        '{"key": "broken", "source": "good.wav", "target": ',  # 2 malformed JSON
        {"key": "wrongtype", "source": 42, "target": "x"},  # 3 wrong field type
        {"key": "nosource", "target": "x"},  # 4 missing field
        {"key": "empty", "source": "good.wav", "target": "   "},  # 5 empty target
        {"key": "nontext", "source": "good.wav", "target": ["a", "b"]},  # 6 non-text target
        {"key": "missing", "source": "nope.wav", "target": "x"},  # 7 missing audio
        {"key": "corrupt", "source": "corrupt.wav", "target": "x"},  # 8 corrupt audio
        {"key": "emptyaudio", "source": "empty.wav", "target": "x"},  # 9 empty audio
        {"key": "baddur", "source": "good.wav", "target": "x", "duration": "long"},  # 10 wrong field type
        {"key": 7, "source": "good.wav", "target": "x"},  # 11 non-string key
        "[1, 2, 3]",  # 12 not an object
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    m = Manifest.open(path)
    assert len(m) == 12
    parse_errors = {
        2: "malformed JSON",
        3: "field 'source' must be an audio path (string), got int 42",
        4: "missing field 'source'",
        5: "field 'target' is empty",
        6: "field 'target' is not text: got list",
        10: "field 'duration' must be a number, got str",
        11: "field 'key' must be a non-empty string, got int",
        12: "expected a JSON object, got list",
    }
    for line, reason in parse_errors.items():
        with pytest.raises(BadRecord) as e:
            m[line - 1]
        err = e.value
        assert (err.manifest, err.line) == (str(path), line)
        assert reason in err.reason, (line, err.reason)
        assert str(err) == f"{path}:{line}: {err.reason}"
    with pytest.raises(BadRecord) as e:
        m[4]
    assert e.value.key == "empty"

    bad = m.fill_durations()
    by_line = {b.line: b for b in bad}
    assert set(by_line) == set(parse_errors) | {7, 8, 9}
    assert "file not found" in by_line[7].reason and by_line[7].key == "missing"
    assert "unreadable or corrupt" in by_line[8].reason
    assert "empty audio (0 samples)" in by_line[9].reason
    assert str(by_line[7]).startswith(f"{path}:7: audio {tmp_path / 'nope.wav'}: file not found")
    d = m.durations()
    assert d[0] == pytest.approx(1.0) and np.isnan(d[6:9]).all()


def test_bad_record_pickles():
    err = BadRecord("m.jsonl", 3, "field 'target' is empty", key="u1")
    back = pickle.loads(pickle.dumps(err))
    assert (back.manifest, back.line, back.key, back.reason, str(back)) == (
        "m.jsonl",
        3,
        "u1",
        "field 'target' is empty",
        "m.jsonl:3: field 'target' is empty",
    )


def test_a_line_without_a_transcript_is_bad_for_training_and_audio_to_transcribe_for_decoding(tmp_path):
    lines = [
        {"key": "nofield", "source": "a.wav"},
        {"key": "null", "source": "a.wav", "target": None},
        {"key": "empty", "source": "a.wav", "target": " "},
        cut("nosup", "a.wav", sups=[]),
        cut("notext", "a.wav", sups=[{"id": "s", "start": 0.0, "duration": 1.0, "language": "English"}]),
    ]
    path = write_jsonl(tmp_path / "m.jsonl", lines)
    training = Manifest.open(path)
    reasons = []
    for i in range(len(lines)):
        with pytest.raises(BadRecord) as e:
            training[i]
        reasons.append((e.value.key, e.value.reason))
    assert reasons[0] == ("nofield", "missing field 'target' (a FunASR jsonl record needs key, source, target)")
    assert reasons[1] == ("null", "field 'target' is not text: got NoneType None")
    assert "has 0 supervisions" in reasons[3][1] and "missing field 'supervisions[0].text'" in reasons[4][1]
    decoding = Manifest.open(path, need_target=False)
    assert [decoding[i].target for i in (0, 1, 3, 4)] == [None] * 4
    assert decoding[4].lang == "English" and decoding[0].source == str(tmp_path / "a.wav")
    assert decoding[2].target == ""  # an empty reference: decoded and scored (all insertions), not a bad line


def test_an_audio_path_with_a_nul_character_is_a_bad_line(tmp_path):
    """os.stat refuses a NUL in a path with a bare ValueError: `llmasr data check`, training's start-up screen and
    the decode loader had all stopped on it with a traceback that named no line."""
    write_wav(tmp_path / "good.wav")
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [{"key": "good", "source": "good.wav", "target": "x"}, {"key": "nul", "source": "a\x00b.wav", "target": "x"}],
    )
    m = Manifest.open(path)
    with pytest.raises(BadRecord, match=r"m.jsonl:2: audio path 'a\\x00b.wav' holds a NUL character") as e:
        m[1]
    assert e.value.key == "nul"
    assert [b.line for b in m.scan()] == [2]


def test_a_missing_audio_file_probed_says_what_its_path_may_have_meant(tmp_path, monkeypatch):
    # The header probes of lines without a duration (decoding's, and every loader's) named only the resolved path
    # of a file written from the working directory, as FunASR opens it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lists").mkdir()
    (tmp_path / "wav").mkdir()
    write_wav(tmp_path / "wav" / "a.wav", 0.5)
    path = write_jsonl(tmp_path / "lists" / "m.jsonl", [{"key": "a", "source": "wav/a.wav", "target": "x"}])
    base = tmp_path / "lists"
    (bad,) = Manifest.open(path).fill_durations()
    assert bad.reason == (
        f"audio {base}/wav/a.wav: file not found (wav/a.wav is a file from the working directory, where FunASR looks; "
        f"llmasr reads a relative path from the manifest's folder, {base}: write the paths absolute, or relative to "
        "that folder)"
    )


def test_a_manifest_in_a_local_code_page_is_told_how_to_convert_it(tmp_path):
    """A manifest saved as GBK (a Windows editor's default in China) made each line with a Chinese transcript bad with
    Python's codec message alone ("'utf-8' codec can't decode byte 0xc4 ..."), nothing saying what to do."""
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(
        (json.dumps({"key": "g", "source": "a.wav", "target": "你好"}, ensure_ascii=False) + "\n").encode("gbk")
    )
    with pytest.raises(BadRecord) as e:
        Manifest.open(str(path))[0]
    assert e.value.reason.startswith("not UTF-8 text (invalid continuation byte at byte ")
    assert e.value.reason.endswith("); it reads as GB18030/GBK Chinese: convert it, e.g. iconv -f GB18030 -t UTF-8 "
                                   "gbk.jsonl > gbk.jsonl.utf8")  # fmt: skip


@pytest.mark.parametrize("given", ["", "wav.scp", "text"])
def test_a_kaldi_data_folder_given_as_a_manifest_names_the_command_that_writes_one(tmp_path, given):
    """`--data data/kaldi/test` (the folder) was "a directory, not a manifest file", and `--data .../wav.scp` made
    every line a bad one ("malformed JSON"), neither naming `llmasr data kaldi`."""

    folder = tmp_path / "kaldi"
    folder.mkdir()
    (folder / "wav.scp").write_text("u1 /audio/u1.wav\n")
    (folder / "text").write_text("u1 hello\n")
    hint = f"{folder} is a Kaldi data folder: `llmasr data kaldi {folder} OUT.jsonl` writes its manifest"
    with pytest.raises((FileNotFoundError, BadManifest)) as e:
        Manifest.open(str(folder / given) if given else str(folder))
    assert str(e.value).endswith(hint)
    other = tmp_path / "text"  # a file of that name outside a Kaldi folder is read as a manifest
    other.write_text('{"key": "a", "source": "a.wav", "target": "hi"}\n')
    assert len(Manifest.open(str(other))) == 1


@pytest.mark.parametrize("shape", ["pretty", "array", "one_line"])
def test_a_json_document_given_as_a_manifest_is_told_it_is_no_json_lines(tmp_path, shape, capsys):
    """WenetSpeech.json (one document, audios[].segments[]) or a JSON array export, given to `llmasr data check`:
    every line of it was a bad line of its own ("malformed JSON: Extra data", "missing field 'key'"), nothing
    saying the file is no JSON Lines at all."""
    from llmasr.cli import main

    seg = {"sid": "S1", "begin_time": 0.0, "end_time": 1.0, "text": "hello"}
    doc = {"dataset": "WenetSpeech", "audios": [{"aid": "Y1", "path": "audio/y1.opus", "segments": [seg]}]}
    rows = [{"key": "a", "source": "a.wav", "target": "hi"}, {"key": "b", "source": "b.wav", "target": "ho"}]
    path = tmp_path / "WenetSpeech.json"
    text = {"pretty": json.dumps(doc, indent=4), "array": json.dumps(rows, indent=2), "one_line": json.dumps(doc)}
    path.write_text("\ufeff" + text[shape] + "\n", encoding="utf-8")
    # a file of many lines is refused whole (2); one line of WenetSpeech's is one bad line, too much bad data (1)
    assert main(["data", "check", str(path), "--no-probe"]) == (1 if shape == "one_line" else 2)
    said = "".join(capsys.readouterr())
    where = f"{path}: cannot open manifest" if shape != "one_line" else "WenetSpeech.json:1 key=None: "
    assert where in said and "one JSON document, not JSON Lines (one JSON object a line)" in said
    assert ("jq -c '.[]'" in said) == (shape == "array")
    assert ("audios[].segments[]" in said) == (shape != "array")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_manifest_is_refused_whole(tmp_path, encoding, capsys):
    """A manifest saved as UTF-16 (with its byte order mark, or without): json decodes bytes in UTF-16 too, so the
    lines of English text after the first had parsed (each read shifted by its line end's second byte) and a
    Chinese line had not: training went on with some lines dropped, told only of line 1."""
    from llmasr.cli import main

    rows = [{"key": f"u{i}", "source": f"u{i}.wav", "target": t} for i, t in enumerate(["hi", "你好", "ho", "ha"])]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=encoding)
    with pytest.raises(BadManifest, match=r"train.jsonl: UTF-16 text .*save it as UTF-8"):
        Manifest.open(str(path))
    assert main(["data", "check", str(path), "--no-probe"]) == 2
    assert f"{path}: cannot open manifest: manifest {path}: UTF-16 text" in "".join(capsys.readouterr())
