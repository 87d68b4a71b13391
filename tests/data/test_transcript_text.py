"""What is wrong with the text of the transcripts (llmasr.data.transcript_text): whitespace other than one space
between words, decomposed Unicode and spaces between Chinese characters are trained as written (a byte-level
tokenizer spells a tab, each space of a run, a combining accent) while scoring hides them. `llmasr data check` names
them with their lines and the one-line fix, in FunASR jsonl and lhotse cuts alike; the screen's ranks add up their
parts; clean transcripts, and spaces only at a transcript's ends (stripped before tokenizing), say nothing."""

import json

import pytest
from speech_fakes import cut, good_corpus, write_jsonl, write_manifest
from speech_fakes import write_tone_wav as write_tone

from llmasr.commands.data_check import main
from llmasr.data.manifest import Manifest
from llmasr.data.screen import screen
from llmasr.data.screen_share import ScreenShare
from llmasr.data.transcript_text import gather_text, has_invisible
from llmasr.testing.thread_ranks import run_ranks as ranks

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")

PLANTED = {
    1: "hello\tworld",
    2: "hello  world\r\nagain",
    3: "cafe\u0301 world",  # "café", decomposed
    4: "而 对 楼市 成交 抑制 作用",  # AISHELL's word-segmented transcript
    5: "我用 iPhone 手机",  # spaces beside a Latin word: unsegmented Chinese writes them so
    6: "  hello world \t",  # stripped ends: trained as "hello world"
    7: "hello\u00a0world",
}


def planted_corpus(tmp_path):
    path = good_corpus(tmp_path, 9)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for i, text in PLANTED.items():
        recs[i]["target"] = text
    return write_manifest(tmp_path / "m.jsonl", [json.dumps(r, ensure_ascii=False) for r in recs])


def test_data_check_names_whitespace_decomposed_text_and_spaced_chinese_with_their_lines_and_fix(tmp_path, capsys):
    path = planted_corpus(tmp_path)
    assert main([str(path)]) == 0  # warnings, not bad lines: every line trains
    out = capsys.readouterr().out
    assert "## whitespace in transcripts" in out
    assert "whitespace other than one space between words (3 lines)" in out
    assert f"tab in 1 line (first: {path}:2)" in out and f"newline in 1 line (first: {path}:3)" in out
    assert (
        f"carriage return in 1 line (first: {path}:3)" in out and f"spaces in a row in 1 line (first: {path}:3)" in out
    )
    assert f"U+00A0 NO-BREAK SPACE in 1 line (first: {path}:8)" in out
    assert "`' '.join(text.split())`" in out and "transform_text" in out
    assert "## transcripts not in Unicode NFC" in out and f"(1 line, first: {path}:4)" in out
    assert "`unicodedata.normalize('NFC', text)`" in out
    assert "## spaces between Chinese or Japanese characters" in out
    assert f"1 of the 2 transcripts holding Chinese or Japanese characters (50.0%) have spaces between two of them " \
           f"(first: {path}:5): word-segmented text, as AISHELL's transcripts are" in out  # fmt: skip
    assert "result: OK" in out


def test_references_of_a_manifest_to_decode_say_nothing(tmp_path, capsys):
    """Scoring normalises a reference (whitespace collapsed, NFKC, tags dropped): its shape trains nothing."""
    path = planted_corpus(tmp_path)
    assert main([str(path), "--decode"]) == 0
    out = capsys.readouterr().out
    for heading in ("whitespace in", "not in Unicode NFC", "spaces between Chinese"):
        assert heading not in out


def test_clean_transcripts_and_stripped_ends_say_nothing(tmp_path, capsys):
    path = good_corpus(tmp_path, 4)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[1]["target"] = " hello world\n"  # its ends are stripped before it is tokenized
    recs[2]["target"] = "我用iPhone手机，很好。"
    path = write_manifest(tmp_path / "m.jsonl", [json.dumps(r, ensure_ascii=False) for r in recs])
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    for heading in ("whitespace in", "not in Unicode NFC", "spaces between Chinese"):
        assert heading not in out


def test_lhotse_cut_texts_are_checked_as_jsonl_transcripts_are(tmp_path, capsys):
    write_tone(tmp_path / "rec.wav", 3.0)
    cuts = [cut("a", "rec.wav", text="hello world"), cut("b", "rec.wav", text="hello\tworld"),
            cut("c", "rec.wav", text="nai\u0308ve")]  # fmt: skip
    path = write_jsonl(tmp_path / "cuts.jsonl", cuts)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"tab in 1 line (first: {path}:2)" in out and f"(1 line, first: {path}:3)" in out


def test_the_screen_s_ranks_add_up_their_parts_and_rank_0_says_it(tmp_path):
    path = planted_corpus(tmp_path)
    whole: dict = {}
    screen(Manifest.open(str(path)), text=whole)
    assert whole["whitespace"] == [3, 1] and whole["tab"] == [1, 1] and whole["not NFC"] == [1, 3]
    assert whole["CJK"] == [2, 4] and whole["spaced CJK"] == [1, 4]

    def rank(r, gather):
        mine: dict = {}
        screen(Manifest.open(str(path)), None, None, ScreenShare(r, 3, gather, "node"), text=mine)
        return mine

    assert ranks(3, rank) == [whole] * 3


def test_the_fixes_the_warnings_give_leave_nothing_to_warn_of(tmp_path, capsys):
    import re
    import unicodedata

    from llmasr.data.transcript_text import CJK_FIX

    path = planted_corpus(tmp_path)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    fixes = ["unicodedata.normalize('NFC', text)", "' '.join(text.split())", CJK_FIX]
    assert all(f"`{fix}`" in out for fix in fixes)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        for fix in fixes:
            r["target"] = eval(fix, {"re": re, "unicodedata": unicodedata, "text": r["target"]})
    assert recs[4]["target"] == "而对楼市成交抑制作用" and recs[5]["target"] == "我用 iPhone 手机"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    for heading in ("whitespace in", "not in Unicode NFC", "spaces between Chinese"):
        assert heading not in out


def test_invisible_format_characters_are_named_with_their_lines_and_the_fix_removes_them(tmp_path, capsys):
    """Zero-width space, word joiner, soft hyphen, a byte-order mark inside a transcript and the bidirectional
    controls had trained unseen and unsaid (scoring drops them): named by code point with the first line of each, and
    the fix given removes them. The joiners U+200C (Persian) and U+200D (emoji, Indic scripts) are left alone."""
    import re

    hidden = {
        1: "hello\u200bworld",
        2: "hel\u00adlo world",
        3: "\u202bhello world\u202c and \u2067x\u2069",
        4: "hello\ufeffworld \u200eok\u200f",
        5: "a\u2060b hello\u200bagain",
        6: "می\u200cخواهم",  # ZWNJ: Persian is written with it
        7: "👩\u200d💻 hello",  # ZWJ: one emoji
        8: "\u061chello",
    }
    path = good_corpus(tmp_path, 9)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for i, text in hidden.items():
        recs[i]["target"] = text
    path = write_manifest(tmp_path / "m.jsonl", [json.dumps(r, ensure_ascii=False) for r in recs])
    assert main([str(path)]) == 0  # warnings: every line trains
    out = capsys.readouterr().out
    assert "## invisible characters in transcripts" in out
    assert "transcripts hold invisible format characters (6 lines): U+200B ZERO WIDTH SPACE in 2 lines (first: " \
           f"{path}:2); U+00AD SOFT HYPHEN in 1 line (first: {path}:3); " in out  # fmt: skip
    for name, line in (("U+202B RIGHT-TO-LEFT EMBEDDING", 4), ("U+202C POP DIRECTIONAL FORMATTING", 4),
                       ("U+2067 RIGHT-TO-LEFT ISOLATE", 4), ("U+2069 POP DIRECTIONAL ISOLATE", 4),
                       ("U+FEFF ZERO WIDTH NO-BREAK SPACE", 5), ("U+200E LEFT-TO-RIGHT MARK", 5),
                       ("U+200F RIGHT-TO-LEFT MARK", 5), ("U+2060 WORD JOINER", 6),
                       ("U+061C ARABIC LETTER MARK", 9)):  # fmt: skip
        assert f"{name} in 1 line (first: {path}:{line})" in out, name
    assert "U+200C" not in out.replace("U+200C and U+200D", "") and "ZERO WIDTH JOINER" not in out
    assert "whitespace in" not in out  # not whitespace: a heading of their own
    from llmasr.data.transcript_text import INVISIBLE_FIX

    assert f"`{INVISIBLE_FIX}`" in out
    whole: dict = {}  # the start-up screen finds the same
    screen(Manifest.open(str(path)), text=whole)
    assert whole["invisible"] == [6, 1] and whole["invisible U+200B ZERO WIDTH SPACE"] == [2, 1]
    for r in recs:
        r["target"] = eval(INVISIBLE_FIX, {"re": re, "text": r["target"]})
    assert recs[1]["target"] == "helloworld" and recs[6]["target"] == "می\u200cخواهم"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    assert main([str(path)]) == 0
    assert "## invisible characters" not in capsys.readouterr().out


def test_full_width_letters_and_digits_are_named_and_the_fix_leaves_full_width_punctuation(tmp_path, capsys):
    """A Chinese corpus writing "２０２４年" mixed with one writing "2024年": nothing had said that the LLM learns two
    spellings of one number (scoring's NFKC reads them alike). Full-width punctuation is how Chinese is written and
    says nothing; neither do a Korean line and kana."""
    import re

    from llmasr.data.transcript_text import WIDE_FIX

    path = good_corpus(tmp_path, 6)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    texts = [
        "２０２４年，ＡＩ很好！",
        "2024年，AI很好！",
        "今日はいい天気ですね。",
        "안녕하세요 반갑습니다",
        "ｈｅｌｌｏ world",
    ]
    for r, text in zip(recs[1:], texts):
        r["target"] = text
    path = write_manifest(tmp_path / "m.jsonl", [json.dumps(r, ensure_ascii=False) for r in recs])
    assert main([str(path)]) == 0  # a warning, not a bad line
    out = capsys.readouterr().out
    assert "## full-width letters and digits\n2 lines hold full-width Latin letters or digits ('２０２４', 'ＡＩ'; " \
           f"first: {path}:2)" in out and f"`{WIDE_FIX}`" in out  # fmt: skip
    fixed = [eval(WIDE_FIX, {"re": re, "text": r["target"]}) for r in recs]
    assert fixed[1:] == ["2024年，AI很好！", "2024年，AI很好！", texts[2], texts[3], "hello world"]
    for r, text in zip(recs, fixed):
        r["target"] = text
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    assert main([str(path)]) == 0 and "full-width" not in capsys.readouterr().out
    one = write_manifest(tmp_path / "one.jsonl", [json.dumps(dict(recs[0], target=texts[0]), ensure_ascii=False)])
    assert main([str(one)]) == 0 and "\n1 line holds full-width Latin letters" in capsys.readouterr().out


def test_control_characters_are_named_with_their_lines_and_the_fix_removes_them(tmp_path, capsys):
    """A control character that is not whitespace (an LLM's byte token wrote U+0002 into a pseudo-label's target) is
    invisible and trains as written: `llmasr data check` had said OK, an ASCII line not being searched for them."""
    import re

    from llmasr.data.transcript_text import INVISIBLE_FIX

    path = good_corpus(tmp_path, 4)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[1]["target"], recs[2]["target"] = "lve\x02nve", "caf\u00e9\x7f au lait"
    path = write_manifest(tmp_path / "m.jsonl", [json.dumps(r, ensure_ascii=False) for r in recs])
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "## invisible characters in transcripts" in out and "whitespace in" not in out
    assert f"U+0002 control character in 1 line (first: {path}:2)" in out
    assert f"U+007F control character in 1 line (first: {path}:3)" in out
    for r in recs:
        r["target"] = eval(INVISIBLE_FIX, {"re": re, "text": r["target"]})
    assert recs[1]["target"] == "lvenve" and recs[2]["target"] == "caf\u00e9 au lait"


@pytest.mark.parametrize("text", ["three\x13 four", "zero\u200b one", "\ufeffnine", "a\u202eb"])
def test_has_invisible_is_true_of_what_the_check_names_invisible(text):
    """pseudo-label leaves out what training's check would warn of as invisible: one definition for both."""
    found = {}
    gather_text(found, text, 0)
    assert has_invisible(text) and "invisible" in found


@pytest.mark.parametrize("text", ["three four", "a\tb", "line\nbreak", "می\u200cخواهم", "👨\u200d👩", "语音"])
def test_has_invisible_is_false_of_whitespace_joiners_and_plain_text(text):
    found = {}
    gather_text(found, text, 0)
    assert not has_invisible(text) and "invisible" not in found
