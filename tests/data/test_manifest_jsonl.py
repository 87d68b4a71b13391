"""FunASR jsonl manifests: fields, relative paths, line numbers, segments, and lines refused as bad."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from speech_fakes import write_jsonl
from speech_fakes import write_tone_wav as write_wav

from llmasr.data.audio import load_audio
from llmasr.data.bad_reasons import reason_category
from llmasr.data.manifest import BadManifest, BadRecord, EmptyManifest, Manifest

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")


def test_funasr_jsonl_fields_and_relative_paths(tmp_path):
    (tmp_path / "wav").mkdir()
    write_wav(tmp_path / "wav" / "a.wav", 1.25)
    write_wav(tmp_path / "wav" / "b.wav", 2.0)
    m_path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"key": "a", "source": "wav/a.wav", "target": "hello world", "source_len": 125, "target_len": 2},
            {
                "key": "b",
                "source": str(tmp_path / "wav" / "b.wav"),
                "target": "你好",
                "duration": 2.0,
                "source_len": 999,
                "prompt": "Transcribe:",
                "lang": "zh",
            },
            {"key": "c", "source": "wav/a.wav", "target": "again", "task": "<ASR>", "text_language": "en"},
        ],
    )
    m = Manifest.open(m_path)
    assert len(m) == 3 and m.path == str(m_path)
    a, b, c = m[0], m[1], m[2]
    assert a.key == "a" and a.source == str(tmp_path / "wav" / "a.wav") and a.target == "hello world"
    assert a.duration == pytest.approx(1.25)  # source_len counts 10 ms frames
    assert a.target_len == 2 and a.prompt is None and a.lang is None
    assert (a.manifest, a.line, a.channel, a.start, a.end) == (str(m_path), 1, None, 0.0, None)
    assert b.duration == 2.0 and b.prompt == "Transcribe:" and b.lang == "zh" and b.target == "你好"
    assert c.prompt == "<ASR>" and c.lang == "en" and c.duration is None
    d = m.durations()
    assert d.dtype == np.float32 and d[0] == pytest.approx(1.25) and d[1] == 2.0 and np.isnan(d[2])
    assert m.fill_durations() == []
    assert m.durations()[2] == pytest.approx(1.25)
    assert m[-1].key == "c"
    with pytest.raises(IndexError):
        m[3]


SOURCES = ["a.wav", "wav/a.wav", "./a.wav", "a//b.wav", "a/./b.wav", "a/b/", "a/.", "../a.wav", "a/../b.wav", "~/a.wav",
           "/abs/a.wav", "//net/a.wav", "///x.wav", "/a/./b.wav", "/a/b/", ".hidden/a.wav", " a.wav"]  # fmt: skip


@pytest.mark.parametrize("folder", ["sub", None])  # None: a manifest at the filesystem's root (faked)
def test_audio_paths_are_written_as_pathlib_writes_them(tmp_path, folder, monkeypatch):
    """Relative sources join the manifest's folder, absolute ones stay, each as pathlib would write it (the parser
    skips pathlib for plain paths, which must not change a path's string: it is the audio's identity)."""
    import os
    from pathlib import Path

    root = tmp_path / folder if folder else tmp_path
    root.mkdir(exist_ok=True)
    m_path = write_jsonl(
        root / "m.jsonl", [{"key": f"u{i}", "source": s, "target": "x"} for i, s in enumerate(SOURCES)]
    )
    m = Manifest.open(m_path)
    if folder is None:
        monkeypatch.setattr(m, "_base", Path("/"))
    base = m._base
    for i, source in enumerate(SOURCES):
        p = Path(os.path.expanduser(source))
        assert m[i].source == str(p if p.is_absolute() else base / p), source


def test_blank_lines_keep_file_line_numbers(tmp_path):
    write_wav(tmp_path / "a.wav")
    m_path = tmp_path / "m.jsonl"
    rec = json.dumps({"key": "k1", "source": "a.wav", "target": "x"})
    m_path.write_text("\n" + rec + "\n\n   \n" + rec.replace("k1", "k2") + "\n{bad json\n" + rec.replace("k1", "k3"))
    m = Manifest.open(m_path)
    assert len(m) == 4
    assert [m[i].line for i in (0, 1, 3)] == [2, 5, 7]
    assert m[3].key == "k3"  # last line without a newline
    with pytest.raises(BadRecord) as e:
        m[2]
    assert str(e.value).startswith(f"{m_path}:6: malformed JSON")


@pytest.mark.parametrize("text", ["", "\n   \n\t\n"])
def test_a_manifest_without_a_record_is_refused_when_opened(tmp_path, text):
    m_path = tmp_path / "m.jsonl"
    m_path.write_text(text)
    for need_target in (True, False):  # training and decoding alike
        with pytest.raises(EmptyManifest, match=f"manifest {m_path}: no records"):
            Manifest.open(m_path, need_target=need_target)
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.write(text)
    with pytest.raises(ValueError, match="m.jsonl.gz: no records"):
        Manifest.open(tmp_path / "m.jsonl.gz")


def test_a_gzip_manifest_cut_short_or_not_gzip_is_named(tmp_path):
    """An interrupted copy of a cuts.jsonl.gz had failed with gzip's EOFError, naming no file among data.train's."""
    with gzip.open(tmp_path / "whole.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"key": f"k{i}", "source": "a.wav", "target": "x" * 50}) + "\n" for i in range(500)))
    data = (tmp_path / "whole.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "plain.jsonl.gz").write_text('{"key": "a"}\n')
    for name in ("cut.jsonl.gz", "plain.jsonl.gz"):
        with pytest.raises(BadManifest, match=f"manifest {tmp_path / name}: not a complete gzip file"):
            Manifest.open(tmp_path / name)
    assert len(Manifest.open(tmp_path / "whole.jsonl.gz")) == 500


def test_segment_fields(tmp_path):
    write_wav(tmp_path / "long.wav", 3.0)
    m = Manifest.open(
        write_jsonl(
            tmp_path / "m.jsonl",
            [
                {"key": "s1", "source": "long.wav", "target": "x", "start": 0.5, "end": 1.75, "channel": 0},
                {"key": "s2", "source": "long.wav", "target": "y", "start": 2.0},
            ],
        )
    )
    s1, s2 = m[0], m[1]
    assert (s1.start, s1.end, s1.channel, s1.duration) == (0.5, 1.75, 0, 1.25)
    assert np.isnan(m.durations()[1])
    assert m.fill_durations() == []
    assert m.durations()[1] == pytest.approx(1.0)
    assert len(load_audio(s1.source, sample_rate=16000, start=s1.start, end=s1.end)) == 20000
    assert s2.end is None
    # `duration` from `start` is a segment of that length (it read to the file's end: 2 s budgeted, 2.5 s loaded);
    # `source_len` counts the file's 10 ms frames, so what `start` leaves of them
    m = Manifest.open(
        write_jsonl(
            tmp_path / "n.jsonl",
            [
                {"key": "s3", "source": "long.wav", "target": "x", "start": 0.5, "duration": 2.0},
                {"key": "s4", "source": "long.wav", "target": "y", "start": 1.0, "source_len": 300},
                {"key": "s5", "source": "long.wav", "target": "y", "start": 3.5, "source_len": 300},
                {"key": "s6", "source": "long.wav", "target": "y", "duration": 10**400},
                {"key": "s7", "source": "long.wav", "target": "y", "start": 0, "duration": 1.0},
                {"key": "s8", "source": "long.wav", "target": "y", "duration": 3.0},
            ],
        )
    )
    assert (m[0].start, m[0].end, m[0].duration) == (0.5, 2.5, 2.0)
    assert (m[1].start, m[1].end, m[1].duration) == (1.0, None, 2.0)
    with pytest.raises(BadRecord, match=r"n.jsonl:3: .*'start' \(3.5\) is at or past the audio's end"):
        m[2]
    with pytest.raises(BadRecord, match=r"n.jsonl:4: "):  # a number past float range: a bad line, not a crash
        m[3]
    # a recording's first segment (start 0) is `duration` long too; without `start`, `duration` is the whole file's
    assert (m[4].start, m[4].end, m[4].duration) == (0.0, 1.0, 1.0)
    assert len(load_audio(m[4].source, sample_rate=16000, start=m[4].start, end=m[4].end)) == 16000
    assert (m[5].start, m[5].end, m[5].duration) == (0.0, None, 3.0)


def test_a_duration_that_contradicts_end_minus_start_is_a_bad_line(tmp_path):
    """`duration` 10 s beside `start` 0.2 and `end` 0.8 had been budgeted as 10 s and loaded as 0.6 s; one that
    agrees up to rounding (0.1 s, or 1 %) is taken."""
    write_wav(tmp_path / "long.wav", 3.0)
    recs = [
        {"key": "ok", "source": "long.wav", "target": "x", "start": 0.2, "end": 0.8, "duration": 0.65},
        {"key": "liar", "source": "long.wav", "target": "x", "start": 0.2, "end": 0.8, "duration": 10.0},
        {"key": "whole", "source": "long.wav", "target": "x", "end": 2.0, "duration": 2.5},
    ]
    m = Manifest.open(write_jsonl(tmp_path / "m.jsonl", recs))
    assert (m[0].start, m[0].end, m[0].duration) == (0.2, 0.8, 0.65)
    with pytest.raises(BadRecord, match=r"m.jsonl:2: 'duration' \(10 s\) contradicts 'end' - 'start' \(0.8 - 0.2 = "):
        m[1]
    with pytest.raises(BadRecord, match=r"m.jsonl:3: 'duration' \(2.5 s\) contradicts 'end' - 'start' \(2 - 0 = 2 s"):
        m[2]
    assert [b.key for b in m.scan()] == ["liar", "whole"]


def test_a_field_given_twice_is_a_bad_line(tmp_path):
    """JSON keeps the last of a repeated field without a word: a line giving `target` twice had trained on the
    second; in a cut's nested objects too."""
    write_wav(tmp_path / "a.wav", 1.0)
    sup = '{"id": "s", "start": 0, "duration": 1, "text": "one", "text": "two"}'
    rec = '{"id": "c", "type": "MonoCut", "start": 0, "duration": 1, "supervisions": [SUP], "recording": {}}'
    path = write_jsonl(
        tmp_path / "m.jsonl",
        ['{"key": "u1", "source": "a.wav", "target": "first transcript", "target": "second"}',
         '{"key": "u2", "source": "a.wav", "target": "fine"}', rec.replace("SUP", sup)],
    )  # fmt: skip
    m = Manifest.open(path)
    with pytest.raises(BadRecord, match=r"m.jsonl:1: field 'target' given twice"):
        m[0]
    assert m[1].target == "fine"
    with pytest.raises(BadRecord, match=r"m.jsonl:3: field 'text' given twice"):
        m[2]
    assert [b.line for b in m.scan()] == [1, 3]


def test_a_prompt_and_a_task_that_disagree_are_a_bad_line(tmp_path):
    """`prompt` and `task` name one setting: a line giving both with different texts had been read with the first
    and the other left out without a word; the same text twice is fine. A FunASR line may spell one language two
    ways ("zh", "<|zh|>"): that never makes a line bad."""
    write_wav(tmp_path / "a.wav", 1.0)
    line = {"key": "u", "source": "a.wav", "target": "hello"}
    path = write_jsonl(tmp_path / "m.jsonl", [
        {**line, "prompt": "Transcribe:", "task": "Translate into English:"},
        {**line, "language": "zh", "text_language": "<|zh|>"},
        {**line, "prompt": "Transcribe:", "task": "Transcribe:", "lang": "en", "language": "en"},
    ])  # fmt: skip
    m = Manifest.open(path)
    with pytest.raises(BadRecord, match=r"m.jsonl:1: fields 'prompt' \('Transcribe:'\) and 'task' \('Translate"):
        m[0]
    assert m[1].lang == "zh" and (m[2].prompt, m[2].lang) == ("Transcribe:", "en")
    assert [b.line for b in m.scan()] == [1]


def test_two_languages_for_one_line_are_a_bad_line_naming_both_fields(tmp_path):
    """`"lang": "en"` beside `"language": "zh"` had been read as "en" without a word, and decode's results grouped
    the line under whichever field was read first. Spellings of one language agree, a region tag included; a line of
    a ChatML manifest is held to the same rule."""
    write_wav(tmp_path / "a.wav", 1.0)
    line = {"key": "u", "source": "a.wav", "target": "hello"}
    chat = {"messages": [{"role": "user", "content": "<|startofspeech|>!a.wav<|endofspeech|>"},
                         {"role": "assistant", "content": "hello"}]}  # fmt: skip
    path = write_jsonl(tmp_path / "m.jsonl", [
        {**line, "lang": "en", "language": "zh"},
        {**line, "lang": "Chinese", "language": "zh-CN", "text_language": "<|zh|>"},
        {**line, "lang": "zh", "text_language": "<|ja|>"},
        {**chat, "language": "<|ko|>", "text_language": "<|ko|>"},
        {**chat, "lang": "ko", "text_language": "<|en|>"},
        {**line, "lang": " ", "language": "zh"},  # a blank one names none: it had hidden the other
    ])  # fmt: skip
    m = Manifest.open(path)
    with pytest.raises(BadRecord, match=r"m.jsonl:1: fields 'lang' \('en'\) and 'language' \('zh'\) name two lang"):
        m[0]
    with pytest.raises(BadRecord, match=r"m.jsonl:3: fields 'lang' \('zh'\) and 'text_language' \('<\|ja\|>'\)"):
        m[2]
    with pytest.raises(BadRecord, match=r"m.jsonl:5: fields 'lang' \('ko'\) and 'text_language' \('<\|en\|>'\)"):
        m[4]
    assert (m[1].lang, m[3].lang, m[5].lang) == ("Chinese", "<|ko|>", "zh")
    bad = m.scan()
    assert [b.line for b in bad] == [1, 3, 5]
    assert {reason_category(b.reason) for b in bad} == {"two languages for one line"}  # by_reason's key


def test_a_lone_surrogate_is_a_bad_line_naming_its_field(tmp_path):
    """JSON's \\ud800 escape without its pair decodes to a str no UTF-8 file holds: `llmasr data check` had called
    the line fine, the tokenizer then refused it at loading (a TypeError), and decoding failed writing ref.txt after
    every batch. An escaped pair is one character, and fine."""
    write_wav(tmp_path / "a.wav", 1.0)
    path = write_jsonl(
        tmp_path / "m.jsonl",
        ['{"key": "u1", "source": "a.wav", "target": "a\\ud800b"}',
         '{"key": "u2", "source": "a.wav", "target": "smile \\ud83d\\ude00"}',
         '{"messages": [{"role": "user", "content": "<|startofspeech|>!a.wav<|endofspeech|>"}, '
         '{"role": "assistant", "content": "x\\udc00"}]}'],
    )  # fmt: skip
    m = Manifest.open(path)
    with pytest.raises(BadRecord, match=r"m.jsonl:1: field 'target' holds a lone surrogate") as e:
        m[0]
    assert e.value.key == "u1"
    assert m[1].target == "smile \U0001f600"
    with pytest.raises(BadRecord, match=r"m.jsonl:3: field 'messages'\[1\]\['content'\] holds a lone surrogate"):
        m[2]
    assert [b.line for b in Manifest.open(path, need_target=False).scan()] == [1, 3]


def test_a_line_with_cr_only_line_ends_is_named_as_such(tmp_path):
    """A file saved with CR-only line ends is one line of several records: its error says why."""
    write_wav(tmp_path / "a.wav", 1.0)
    recs = [json.dumps({"key": f"u{i}", "source": "a.wav", "target": "x"}) for i in range(3)]
    path = tmp_path / "m.jsonl"
    path.write_bytes("\r".join(recs).encode() + b"\r")
    m = Manifest.open(path)
    assert len(m) == 1
    with pytest.raises(BadRecord, match=r"m.jsonl:1: malformed JSON: .*a file with CR-only line ends reads as one"):
        m[0]
    path.write_bytes("\r\n".join(recs).encode() + b"\r\n")  # CRLF: three records, no complaint
    assert [u.key for u in Manifest.open(path)] == ["u0", "u1", "u2"]


def test_a_gbk_line_says_how_to_convert_the_manifest(tmp_path):
    """A manifest saved in GBK (a Chinese Windows tool's default) had each line refused with Python's own words
    ("'utf-8' codec can't decode byte 0xbe in position 14"), naming neither the encoding nor the way out."""
    write_wav(tmp_path / "a.wav", 1.0)
    path = tmp_path / "训练.jsonl"
    line = json.dumps({"key": "句子1", "source": "a.wav", "target": "今天天气很好"}, ensure_ascii=False)
    path.write_bytes((line + "\n").encode("gbk"))
    with pytest.raises(BadRecord, match="训练.jsonl:1: not UTF-8 text") as e:
        Manifest.open(path)[0]
    assert str(e.value).endswith("it reads as GB18030/GBK Chinese: convert it, e.g. iconv -f GB18030 -t UTF-8 "
                                 "训练.jsonl > 训练.jsonl.utf8")  # fmt: skip


def test_a_malformed_line_is_placed_in_its_own_line_not_in_json_s_count_of_lines(tmp_path):
    """json counts the lines of the text it parsed, the record and its line end: a record cut short at file line 2
    had read "m.jsonl:2: malformed JSON: Expecting value: line 2 column 1", another line than the file's."""
    write_wav(tmp_path / "a.wav")
    rec = json.dumps({"key": "k1", "source": "a.wav", "target": "x"})
    path = tmp_path / "m.jsonl"
    path.write_text(f'{rec}\n{{"key": "k2", "source": \n{{"key": "k3", "source": "a.wav", "target": x}}\n{rec}\n')
    m = Manifest.open(path)
    reasons = []
    for i in (1, 2):
        with pytest.raises(BadRecord) as e:
            m[i]
        reasons.append(str(e.value))
    assert reasons == [
        f"{path}:2: malformed JSON: Expecting value at the end of the line",
        f"{path}:3: malformed JSON: Expecting value at column 44 of the line",
    ]


def test_a_gzip_manifest_says_where_its_copy_is_once(tmp_path, caplog):
    """The decompressed copy of a .gz manifest (a lhotse cuts.jsonl.gz of thousands of hours: GBs) lands in the
    user's cache folder, and one for each version of the file: the first read says where, and how to move it."""
    import logging

    path = tmp_path / "m.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"key": "a", "source": "a.wav", "target": "one"}) + "\n")
    caplog.set_level(logging.INFO, logger="llmasr.data.gz_copies")
    assert len(Manifest.open(path)) == len(Manifest.open(path)) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "llmasr.data.gz_copies"]
    copy = tmp_path / "cache" / "manifests"  # where the manifest_cache_dir fixture points LLMASR_CACHE_DIR
    assert len(said) == 1 and said[0].startswith(f"{path}: decompressed to {copy}/m.jsonl."), said
    assert "LLMASR_CACHE_DIR" in said[0] and "earlier versions stay" in said[0]


def test_a_gzip_manifest_whose_copy_another_rank_made_still_says_where_it_is(tmp_path, caplog):
    """The ranks of a run open a .gz manifest at once and one of them makes the copy: where rank 1 made it, rank 0
    (the one rank whose INFO lines show) found it made and said nothing, and the run never told where the GBs went."""
    import logging
    import os
    import subprocess
    import sys

    path = tmp_path / "m.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"key": "a", "source": "a.wav", "target": "one"}) + "\n")
    other_rank = "import sys; from llmasr.data.manifest import Manifest; Manifest.open(sys.argv[1])"
    subprocess.run([sys.executable, "-c", other_rank, str(path)], check=True, env=os.environ.copy())
    copies = [p for p in (tmp_path / "cache" / "manifests").iterdir() if not p.name.startswith(".")]
    assert len(copies) == 1  # the other process made it
    caplog.set_level(logging.INFO, logger="llmasr.data.gz_copies")
    assert len(Manifest.open(path)) == len(Manifest.open(path)) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "llmasr.data.gz_copies"]
    assert len(said) == 1 and said[0].startswith(f"{path}: decompressed to {copies[0]} ("), said
