"""Subtitles from word timestamps (llmasr.export.subtitles, `llmasr transcribe --subtitles srt|vtt`): cues end at
sentence ends, pauses, the duration cap and two lines; their text is the transcript's own; the files are valid SRT and
WebVTT; the command writes one a file, refuses names that would collide and a model without word times."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest
import soundfile as sf

from llmasr.commands.transcribe import main as transcribe_main
from llmasr.export.subtitles import (
    CueRules,
    Untimed,
    _wrap,
    columns,
    cues,
    decode_subtitles,
    subtitle_paths,
    subtitles,
)
from llmasr.testing.run_dirs import write_corpus, write_joined_recording
from llmasr.text_units import UNIT

TEXTS = ["zero one two", "three four", "five six seven eight", "nine"]
SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"


def timed(text: str, step=0.3, pause_after: dict | None = None) -> dict:
    """A row whose units follow each other `step` apart, with a longer pause after the units named."""
    words, t = [], 0.5
    for m in UNIT.finditer(text):
        words.append([m.group(), round(t, 3), round(t + step * 0.8, 3)])
        t += step + (pause_after or {}).get(m.group(), 0.0)
    return {"hyp": text, "timestamps": words, "duration": t + 1}


def test_cues_end_at_sentence_ends_and_pauses_and_keep_the_transcripts_own_text():
    row = timed("Hello there, how are you? I'm fine thanks.", pause_after={"fine": 1.0})
    got = cues(row)
    assert [c.text for c in got] == ["Hello there, how are you?", "I'm fine", "thanks."]
    assert got[0].start == 0.5 and got[0].end == row["timestamps"][4][2]
    assert all(a.end <= b.start for a, b in zip(got, got[1:]))


def test_a_long_cue_is_cut_at_seven_seconds_or_two_lines_and_wrapped_at_the_middle():
    words = " ".join(f"word{i}" for i in range(40))
    got = cues(timed(words, step=0.3))
    assert len(got) > 2 and all(c.end - c.start <= 7.0 for c in got)
    for c in got:
        lines = c.text.split("\n")
        assert len(lines) <= 2 and all(columns(line) <= 42 for line in lines), c.text
    assert " ".join(" ".join(c.text.split("\n")) for c in got) == words  # every word, once, in order
    # three lines where the rules allow three: they had been wrapped into two, each past the width
    three = cues(timed(words, step=0.1), CueRules(line_columns=30, max_lines=3, max_seconds=60))
    assert len(three) > 1 and all(len(c.text.split("\n")) <= 3 for c in three)
    assert all(columns(line) <= 30 for c in three for line in c.text.split("\n")), [c.text for c in three]
    assert " ".join(" ".join(c.text.split("\n")) for c in three) == words
    slow = cues(timed("a b c d e f g h i j k l", step=1.0), CueRules(max_seconds=3.0))
    assert [c.text for c in slow] == ["a b c", "d e f", "g h i", "j k l"]  # 2.8 s each: a fourth word passes 3 s


def test_chinese_counts_two_columns_a_character_and_breaks_after_its_punctuation():
    text = "今天天气很好。我们一起去公园散步吧，然后再去吃饭，好不好？"
    got = cues(timed(text, step=0.2))
    assert [c.text for c in got] == ["今天天气很好。", "我们一起去公园散步吧，\n然后再去吃饭，好不好？"]
    assert columns("今天") == 4


def test_a_closing_quote_stays_with_its_sentence_and_a_line_never_starts_with_what_cannot_begin_one():
    # Japanese and Chinese close a quotation after its full stop, in a unit of its own: it had opened the next cue
    said = cues(timed("彼は「こんにちは。」と言った。それから「さようなら。」と言って帰った。"))
    assert [c.text for c in said] == [
        "彼は「こんにちは。」",
        "と言った。",
        "それから「さようなら。」",
        "と言って帰った。",
    ]
    assert [c.text for c in cues(timed("他说：“我们走吧。”然后就走了。"))] == ["他说：“我们走吧。”", "然后就走了。"]
    # a line breaks after a closing bracket, never after an opening one (it had: "美しい「" and "桜の花」を...")
    assert (
        _wrap("私は昨日とても美しい「桜の花」を見に公園へ行きました", 42)
        == "私は昨日とても美しい「桜の花」\nを見に公園へ行きました"
    )
    assert _wrap("今日はとても楽しかったですねースーパーに行きました", 42).split("\n")[1][0] != "ー"


def test_thai_keeps_a_vowel_or_tone_mark_on_its_letter_and_breaks_lines_at_its_spaces():
    text = "สวัสดีครับ วันนี้อากาศดีมาก เราจะไปเที่ยวที่ทะเลกันนะครับ แล้วก็จะไปกินข้าวที่ร้านอาหารริมทะเลด้วยกันครับ"
    marks = {ch for ch in text if unicodedata.category(ch) == "Mn"}
    for rules in (CueRules(), CueRules(line_columns=20)):
        got = cues(timed(text, step=0.1), rules)
        assert "".join(c.text.replace("\n", " ") for c in got).replace(" ", "") == text.replace(" ", "")
        for c in got:
            assert all(line[0] not in marks for line in c.text.split("\n")), c.text  # a mark had begun a line
    assert columns("ที่") == 1  # the marks above and below a letter take no column
    two = "สวัสดีครับ วันนี้อากาศดีมาก เราจะไปเที่ยวที่ทะเลกันนะครับ"
    assert _wrap(two, 42) == "สวัสดีครับ วันนี้อากาศดีมาก\nเราจะไปเที่ยวที่ทะเลกันนะครับ"  # at a space, not mid-word


def test_a_cue_that_would_take_no_time_joins_the_next():
    # at a long-audio seam a unit can take no time, the next starting where it stands: its cue had been shown for a
    # millisecond, under the next one from its start
    row = {"hyp": "Well. Yes. No more.", "timestamps": [["Well.", 0.5, 1.0], ["Yes.", 1.0, 1.0], ["No", 1.0, 1.3],
                                                        ["more.", 1.3, 1.6]]}  # fmt: skip
    assert [(c.start, c.end, c.text) for c in cues(row)] == [(0.5, 1.0, "Well."), (1.0, 1.6, "Yes. No more.")]


def test_rows_without_text_or_without_times():
    assert cues({"hyp": "  ", "timestamps": None}) == []
    with pytest.raises(Untimed):
        cues({"hyp": "words", "timestamps": None})
    whole = cues({"hyp": "words  here", "timestamps": None, "duration": 3.2}, untimed_whole=True)
    assert [(c.start, c.end, c.text) for c in whole] == [(0.0, 3.2, "words here")]


def test_srt_and_vtt_text():
    row = timed("One <b> & two. Three", pause_after={})
    srt = subtitles(row, "srt")
    assert srt.startswith("1\n00:00:00,500 --> 00:00:01,") and "\n\n2\n00:00:01," in srt and "One <b> & two." in srt
    vtt = subtitles(row, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.500 --> ") and "One &lt;b&gt; &amp; two." in vtt
    assert subtitles({"hyp": "", "timestamps": []}, "srt") == "" and subtitles({"hyp": ""}, "vtt") == "WEBVTT\n\n"
    hour = {"hyp": "late", "timestamps": [["late", 3725.5, 3726.25]]}
    assert "01:02:05,500 --> 01:02:06,250" in subtitles(hour, "srt")
    with pytest.raises(ValueError, match="one of srt, vtt"):
        subtitles(row, "ass")


def test_two_files_that_would_write_one_subtitle_file_are_refused(tmp_path):
    assert subtitle_paths(["a/x.wav", "b/y.flac"], "srt", tmp_path) == [tmp_path / "x.srt", tmp_path / "y.srt"]
    with pytest.raises(ValueError, match=r"a/x.wav and b/x.flac would both write .*x.srt"):
        subtitle_paths(["a/x.wav", "b/x.flac"], "srt", tmp_path)
    # one file named twice (a list that repeats it) is no collision: it had been refused, "give
    # them different names"
    (tmp_path / "x.wav").touch()
    twice = [str(tmp_path / "x.wav"), str(tmp_path / "." / "x.wav")]
    assert subtitle_paths(twice, "vtt", tmp_path / "out") == [tmp_path / "out" / "x.vtt"] * 2


def srt_cues(text: str) -> list[tuple[float, float, str]]:
    out = []
    for block in filter(None, text.split("\n\n")):
        lines = block.split("\n")
        a, b = (sum(int(g) * k for g, k in zip(m, (3600, 60, 1, 0.001))) for m in re.findall(SRT_TIME, lines[1]))
        out.append((a, b, " ".join(lines[2:])))
        assert lines[0] == str(len(out))
    return out


def test_transcribe_writes_each_files_subtitles_beside_its_printed_text(exported_dir, tmp_path, capsys):
    manifest = write_corpus(tmp_path / "c", TEXTS)
    long, seconds = write_joined_recording(tmp_path / "c", TEXTS)  # decoded in windows
    clips = [str(manifest.parent / "wav" / "test0.wav"), str(long.parent / "long.wav")]
    out = tmp_path / "subs"
    args = [
        "--model",
        str(exported_dir),
        "--max-new-tokens",
        "4",
        "--max-window-seconds",
        "2",
        "--window-overlap",
        "0.5",
    ]
    assert transcribe_main([*args, "--subtitles", "srt", "--subtitles-dir", str(out), *clips]) == 0
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())  # stdout's lines as before
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.rsplit('/', 1)[1][:-4]}.srt" for p in clips)
    for clip in clips:
        got = srt_cues((out / f"{clip.rsplit('/', 1)[1][:-4]}.srt").read_text(encoding="utf-8"))
        assert " ".join(t for *_, t in got).split() == printed[clip].split()  # the transcript, all of it
        assert all(0 <= a < b <= sf.info(clip).duration for a, b, _ in got)
        assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(got, got[1:]))
    assert transcribe_main([*args, "--subtitles", "vtt", "--subtitles-dir", str(out), "--timestamps", clips[0]]) == 0
    vtt = (out / "test0.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n") and vtt == subtitles(json.loads(capsys.readouterr().out), "vtt")


def test_transcribe_refuses_before_loading_what_subtitles_cannot_write(exported_dir, tmp_path, capsys, monkeypatch):
    manifest = write_corpus(tmp_path / "c", TEXTS[:1])
    clip = manifest.parent / "wav" / "test0.wav"
    twin = tmp_path / "other" / "test0.flac"
    twin.parent.mkdir()
    sf.write(twin, sf.read(clip)[0], 16000)
    assert transcribe_main(["--model", str(exported_dir), "--subtitles", "srt", str(clip), str(twin)]) == 2
    assert f"--subtitles: {clip} and {twin} would both write test0.srt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        transcribe_main(["--model", str(exported_dir), "--subtitles-dir", str(tmp_path), str(clip)])
    assert "--subtitles-dir goes with --subtitles srt|vtt" in capsys.readouterr().err
    import llmasr.export.decode as decode_module

    monkeypatch.setattr(decode_module, "_ctc_head", lambda model: (False, False))  # a model trained without one
    assert transcribe_main(["--model", str(exported_dir), "--subtitles", "srt", str(clip)]) == 2
    err = capsys.readouterr().err
    assert "llmasr transcribe: error: --subtitles: decode.timestamps: word times come from the CTC head" in err
    assert transcribe_main(["--model", str(exported_dir), "--timestamps", "--subtitles", "srt", str(clip)]) == 2
    assert "llmasr transcribe: error: --subtitles: decode.timestamps: word times" in capsys.readouterr().err


def test_subtitles_that_cannot_be_written_are_named_and_the_other_files_still_decoded(exported_dir, tmp_path, capsys):
    manifest = write_corpus(tmp_path / "c", TEXTS[:2])
    clips = [str(manifest.parent / "wav" / f"test{i}.wav") for i in range(2)]
    out = tmp_path / "subs"
    (out / "test0.srt").mkdir(parents=True)  # as a full disk or a lost mount would fail its write
    args = ["--model", str(exported_dir), "--max-new-tokens", "4", "--subtitles", "srt", "--subtitles-dir", str(out)]
    assert transcribe_main([*args, *clips]) == 1  # had raised out of the command: no line for it, no later file
    got = capsys.readouterr()
    assert [line.split("\t")[0] for line in got.out.splitlines()] == clips  # each file's transcript still printed
    assert f"llmasr transcribe: error: {clips[0]}: --subtitles: " in got.err and "test0.srt" in got.err
    assert "the subtitles of 1 of 2 files could not be written" in got.err and (out / "test1.srt").is_file()
    # a folder nothing can be written in (sysfs: not even root's files) is refused before the model loads
    assert transcribe_main(["--model", str(tmp_path / "no-model"), "--subtitles", "vtt", "--subtitles-dir", "/sys",
                            clips[0]]) == 2  # fmt: skip
    assert "llmasr transcribe: error: --subtitles: /sys: cannot write subtitles there (" in capsys.readouterr().err


def test_a_decodes_results_become_one_file_a_key(tmp_path):
    results = tmp_path / "results.jsonl"
    rows = [{"key": "spk1/utt1", **timed("one two. three")}, {"key": "utt2", "hyp": "", "timestamps": []}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert decode_subtitles(str(results), str(tmp_path / "subs"), "vtt") == 2  # paths as the README writes them
    assert sorted(p.name for p in (tmp_path / "subs").iterdir()) == ["spk1_utt1.vtt", "utt2.vtt"]
    assert (tmp_path / "subs" / "spk1_utt1.vtt").read_text(encoding="utf-8") == subtitles(rows[0], "vtt")
    rows.append({"key": "spk1_utt1", **timed("four")})  # the same file as the first key's
    results.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"results.jsonl:3: key 'spk1_utt1' would write .* as line 1 did"):
        decode_subtitles(results, tmp_path / "subs2", "srt")


def test_a_row_whose_word_times_were_never_asked_for_says_how_to_ask():
    # a Transcriber loaded without timestamps=True gives rows with no "timestamps" key: the error had said only "no
    # word times for its text", as for a transcript the head could not align, and not what to change
    with pytest.raises(Untimed, match=r"no \"timestamps\".*Transcriber.load\(DIR, timestamps=True\).*--timestamps"):
        subtitles({"audio": "a.wav", "hyp": "words"}, "srt")
    with pytest.raises(Untimed, match="could not align"):  # asked for, not aligned: the head's failing, said so
        subtitles({"hyp": "words", "timestamps": None}, "srt")


def test_a_decode_without_word_times_is_refused_not_written_as_one_cue_a_file(tmp_path):
    # results.jsonl of `llmasr decode` without --timestamps had become one cue over each whole file, silently, where
    # `llmasr decode --subtitles` refuses such a decode
    results = tmp_path / "results.jsonl"
    rows = [{"key": "utt1", "hyp": "", "duration": 1.0}, {"key": "utt2", "hyp": "one two", "duration": 2.0}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"results.jsonl:2: key 'utt2': no \"timestamps\".*llmasr decode --timestamps"):
        decode_subtitles(results, tmp_path / "subs", "srt")
    assert not (tmp_path / "subs").exists() or not any((tmp_path / "subs").iterdir())
