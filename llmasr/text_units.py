"""How scoring reads a text: the normaliser and the units a text is cut into.

Normalisation (applied to reference and hypothesis alike): Unicode NFKC, lowercase (casefold), punctuation and
symbols removed (apostrophes inside words kept: "don't"; beside Chinese or Japanese characters, "他说‘好’吧", they are
quotation marks and go; between two digits a decimal point stays and a digit-group comma goes: "3.5" and "1,000"
are one number each, "3.5" and "1000"), a corpus's bracketed non-lexical tags ("[noise]", "<unk>") dropped whole,
whitespace collapsed. Numbers are not spelled out nor contractions expanded ("25" against "twenty five" is two
errors), unlike Whisper's English normaliser.

Units (the `metric` asked for):
- "wer": words, i.e. the normalised text split on whitespace.
- "cer": characters of the normalised text with the whitespace removed (every character, Latin letters too).
- "auto": each character of a script written without spaces (CJK ideographs, kana, bopomofo, Thai, Lao, Khmer,
  Myanmar, Tibetan; Hangul is written with spaces) is a unit, and so is each run of other characters between spaces and
  such characters (a word, a number): Chinese is scored in characters (spaces carry no information there, and
  FunASR-style references often put one between every character), English in words, and code-switched text in
  both, as the code-switching error rate counts it ("我喜欢python" against "我喜欢java" is one error in four).

The same units cut long audio's window joins, time word timestamps and split hotword phrases, so that what is
scored, joined and biased is one thing.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

METRICS = ("auto", "wer", "cer")

# Scripts written without spaces between words. Hangul is written with spaces and is scored in words.
NO_SPACE_RANGES = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    # letters and numbers of the CJK symbols block: iteration marks, ideographic zero ("二〇〇八年"), Hangzhou numerals
    (0x3005, 0x3007),
    (0x3021, 0x3029),
    (0x3031, 0x3035),
    (0x3038, 0x303C),
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana
    (0x3100, 0x312F),  # Bopomofo (zhuyin: Taiwanese Mandarin's phonetic letters, "ㄉ" for 的)
    (0x31A0, 0x31BF),  # Bopomofo extended (Hokkien, Hakka)
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width katakana
    (0x1B000, 0x1B16F),  # kana supplement, extended-A, small kana extension (hentaigana, archaic kana)
    (0x20000, 0x323AF),  # CJK extensions B-H, compatibility supplement
)


def is_no_space_char(ch: str) -> bool:
    return _NO_SPACE_CHAR.fullmatch(ch) is not None  # one regex test, not a scan of the ranges: called per character


def uses_characters(text: str) -> bool:
    """True when `text` holds characters of a script written without spaces (score it in characters)."""
    return _NO_SPACE_CHAR.search(text) is not None  # one C-level scan: called on every scored reference


# NO_SPACE_RANGES as a regex character class's body: "[{NO_SPACE_CLASS}]" matches one character of those scripts
NO_SPACE_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in NO_SPACE_RANGES)
# The punctuation and symbols of those scripts (CJK symbols and punctuation, vertical, compatibility and small forms,
# full-width forms): written with no space before or after, so they are units of their own, as their characters are
# ("。2024" had been one unit, a number's time covering the full stop)
FULL_WIDTH_PUNCT = "".join(
    re.escape(chr(c))
    for lo, hi in ((0x3000, 0x303F), (0xFE10, 0xFE1F), (0xFE30, 0xFE6F), (0xFF00, 0xFFEF))
    for c in range(lo, hi + 1)
    if unicodedata.category(chr(c))[0] in "PS" and not any(a <= c <= b for a, b in NO_SPACE_RANGES)
)
# ... but a full-width comma or full stop between two digits is part of the number, as "1,000" and "3.5" are
_IN_NUMBER = "".join(re.escape(c) for c in "\uff0c\uff0e\ufe50\ufe52")
# The units of a text: a character of a script written without spaces or its punctuation, or a run of other non-space
# characters. "auto" scoring counts these; long audio joins windows on them and word timestamps time them.
UNIT = re.compile(
    f"[{NO_SPACE_CLASS}]|(?![{_IN_NUMBER}])[{FULL_WIDTH_PUNCT}]|(?<!\\d)[{_IN_NUMBER}]|[{_IN_NUMBER}](?!\\d)"
    f"|(?:[^\\s{NO_SPACE_CLASS}{FULL_WIDTH_PUNCT}]|(?<=\\d)[{_IN_NUMBER}](?=\\d))+"
)
_NO_SPACE_CHAR = re.compile(f"[{NO_SPACE_CLASS}]")


_APOSTROPHES = "'\u2019\u02bc"
# The acute and grave accents typed for an apostrophe ("don´t", "don`t"): one between two letters is one. NFKC turns
# the acute into a space and a combining accent, so they are read before it.
_ACCENT_APOSTROPHE = re.compile("(?<=\\w)[\u00b4`](?=\\w)")
# Between two digits: a decimal point is part of the number, a digit-group separator is dropped (as WeNet's and
# Whisper's English scorers read them): split there, "3.5" and "1,000,000" had counted two and three words.
_DECIMAL_POINTS = ".\u066b"  # and the Arabic decimal separator
_GROUP_SEPARATORS = ",\u066c"  # and the Arabic thousands separator
# A corpus's non-lexical tags ("[noise]", "[laughter]", "<unk>", GigaSpeech's "<COMMA>" and "<SIL>"): no word of
# what was said, so they go whole, as Kaldi's scoring filter and Whisper's normalisers drop them; punctuation's rule
# alone had kept their letters as words ("noise", "unk"). A "<...>" tag holds no space: "x < y > z" is no tag.
_TAGS = re.compile(r"\[[^\[\]]*\]|<[^<>\s]+>")
_WORD_BREAKS = "\u200b"  # the zero-width space: an invisible word boundary (Thai, Khmer); other format characters
# (soft hyphen, zero-width joiner and non-joiner, direction marks, BOM) sit inside words and go


def _is_variation_selector(ch: str) -> bool:
    """A variation selector picks how the character before it is drawn (emoji "❤️", a kanji's variant): it is a
    combining mark, so it had stood as a unit of its own once a symbol before it went, or beside a kanji."""
    return "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef"


def normalize(text: str) -> str:
    """NFKC, casefold, NFKC again, bracketed tags ("[noise]", "<unk>") dropped, punctuation/symbols -> space
    (in-word apostrophes and decimal points kept, digit-group commas dropped), format characters, variation
    selectors, enclosing marks and combining marks on no letter dropped (a zero-width space -> space), whitespace
    collapsed."""
    # casefold turns the capital dotted I (Turkish "İ") into "i" and a combining dot: without the dot the two cases
    # meet. casefold can leave a letter decomposed ("ΐ" -> "ι" + two marks) that its other case keeps composed ("Ϊ́"
    # -> "ϊ" + a mark): NFKC again so that the two cases of a letter are one string
    if "`" in text or "\u00b4" in text:  # two substring tests, cheaper than the scan
        text = _ACCENT_APOSTROPHE.sub("'", text)
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold().replace("i\u0307", "i"))
    text = _TAGS.sub(" ", text)
    # One str.translate for the characters whose fate their neighbours do not decide, not a Python step a character
    # (scoring normalises every line); apostrophes and number separators are decided on theirs in `text`
    out = text.translate(_CHAR_RULE)
    if _CONTEXT_CHAR.search(out):
        pieces = _CONTEXT_CHAR.split(out)  # the text between them, in order, as in `text`
        decided = [_in_context(text, m.start()) for m in _CONTEXT_CHAR.finditer(text)]
        out = "".join([p for pair in zip(pieces, [*decided, ""]) for p in pair])
    if not out.isascii():  # a combining mark on no letter (NFKC's "¨" -> space + U+0308; a mark on punctuation that
        # went) goes: alone it had been a word (or a character) of its own. No mark is ASCII
        out = _lone_marks().sub("", out)
    return " ".join(out.split())  # str.split's whitespace is the regex's \s


_CONTEXT_CHAR = re.compile(f"[{re.escape(_APOSTROPHES + _DECIMAL_POINTS + _GROUP_SEPARATORS)}]")


def _alone(ch: str) -> str:
    """What normalize makes of a character whatever its neighbours: itself, a space, or nothing."""
    cat = unicodedata.category(ch)
    if cat[0] in ("P", "S") or cat == "Cc" or ch in _WORD_BREAKS:
        return " "
    if cat in ("Cf", "Me") or _is_variation_selector(ch):  # invisible, or drawn around a symbol (keycap)
        return ""
    return ch  # combining marks too: _lone_marks drops those on no letter


def _in_context(text: str, i: int) -> str:
    """What normalize makes of the apostrophe or number separator text[i], by the characters beside it."""
    ch, n = text[i], len(text)
    if ch in _APOSTROPHES:  # beside a character of a script written without spaces it is a quotation mark
        inside = 0 < i < n - 1 and all(c.isalnum() and not is_no_space_char(c) for c in text[i - 1 : i + 2 : 2])
        return "'" if inside else " "
    if 0 < i < n - 1 and text[i - 1 : i + 2 : 2].isdecimal():
        return ch if ch in _DECIMAL_POINTS else ""
    return _alone(ch)


class _CharRules(dict):
    """normalize's str.translate table, filled as characters are met: _alone's rule, _in_context's characters kept"""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        self[code] = rule = ch if _CONTEXT_CHAR.match(ch) else _alone(ch)
        return rule


_CHAR_RULE = _CharRules()


@functools.cache
def _lone_marks() -> re.Pattern:
    """Runs of combining marks at the start of a text or after a space (variation selectors and enclosing marks are
    dropped before). Built on first use: it reads the category of every code point."""
    kept = (chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M")
    marks = "".join(ch for ch in kept if _alone(ch))  # none is special in a character class
    return re.compile(f"(?:^|(?<=\\s))[{marks}]+")


def tokens(text: str, metric: str) -> list[str]:
    """Normalised text -> scoring units ("wer": words, "cer": non-space characters, "auto": UNIT's)."""
    if metric == "wer":
        return text.split()
    if metric == "cer":
        return [ch for ch in text if not ch.isspace()]
    if metric == "auto":
        return UNIT.findall(text)
    raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def choose_unit(reference: str, metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if metric != "auto":
        return metric
    return "cer" if uses_characters(reference) else "wer"
