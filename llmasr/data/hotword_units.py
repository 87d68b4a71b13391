"""The units of a transcript as hotword lists count them (words, characters, or both by script), the n-gram spans
of a run of units, and units joined back into a phrase: shared by the list sampler (llmasr.data.hotwords) and the
start-up pass over the training texts (llmasr.data.corpus_stats)."""

from __future__ import annotations

import functools
import unicodedata

from llmasr.text_units import UNIT, is_no_space_char


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def _has_text(unit: str) -> bool:
    """Whether `unit` holds a letter, mark or digit: the characters scoring keeps (a unit of punctuation or symbols
    only, "+" or "❤", is a phrase scoring cannot count, and its rarity would favour it)."""
    return any(unicodedata.category(c)[0] in "LMN" for c in unit)


def _strip_punct(token: str) -> str:
    i, j = 0, len(token)
    while i < j and _is_punct(token[i]):
        i += 1
    while j > i and _is_punct(token[j - 1]):
        j -= 1
    return token[i:j]


def units(text: str, unit: str) -> list[str]:
    """The units of `text` as written: words with punctuation at their edges cut, the letters and digits, or (auto)
    each character of a script written without spaces and every word between; a unit with no letter or digit
    (punctuation or symbols only) is left out."""
    if unit == "char":
        return [c for c in text if _char_has_text(c)]
    return [u for token in text.split() for u in _token_units(token, unit)[0]]


def glued_units(text: str, unit: str) -> tuple[list[str], list[bool]]:
    """units(text, unit), and for each whether the text writes it straight after the unit before, nothing between
    ("iPhone" after "了" in "我买了iPhone手机"): join_units writes those together, as the text does."""
    if unit == "char":
        parts = units(text, unit)
        return parts, [True] * len(parts)
    parts: list[str] = []
    glued: list[bool] = []
    for token in text.split():
        found, joined = _token_units(token, unit)
        parts += found
        glued += joined
    return parts, glued


# A corpus repeats its words: each distinct token (and character) is looked at once, not at every line of the
# start-up pass over the training texts (CorpusStats) and every drawn list.
@functools.lru_cache(maxsize=1 << 20)
def _token_units(token: str, unit: str) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The units of one token, and for each whether it follows the one before with nothing between."""
    word = _strip_punct(token)
    if not _has_text(word):
        return (), ()
    if unit == "word":
        return (word,), (False,)
    found, glued, end = [], [], None
    for m in UNIT.finditer(word):
        if _has_text(m.group()):
            found.append(m.group())
            glued.append(m.start() == end)
            end = m.end()
    return tuple(found), tuple(glued)


@functools.lru_cache(maxsize=1 << 16)
def _char_has_text(ch: str) -> bool:
    return _has_text(ch)


def join_units(parts, unit: str, glued=None) -> str:
    """Units back into text: spaced words; characters (and, with auto, two neighbours of a script written without
    spaces, or units `glued` says the text writes together: glued_units) side by side. Without `glued` a word beside
    a character had been spaced off it ("了 iPhone" from "买了iPhone手机"), a phrase the transcript does not write."""
    parts = list(parts)
    if unit != "auto":
        return ("" if unit == "char" else " ").join(parts)
    glued = list(glued) if glued is not None else [False] * len(parts)
    out = parts[:1]
    for prev, part, close in zip(parts, parts[1:], glued[1:]):
        out.append(part if close or (is_no_space_char(prev[-1]) and is_no_space_char(part[0])) else " " + part)
    return "".join(out)


def holds(seq: tuple, run: tuple) -> bool:
    """Whether `run` stands in `seq` as consecutive items."""
    n = len(run)
    return n > 0 and any(seq[i : i + n] == run for i in range(len(seq) - n + 1))


def ngrams(parts: list[str], lo: int, hi: int) -> list[tuple[int, int]]:
    """(start, end) spans of every n-gram of `parts` with lo <= n <= hi."""
    return [(i, i + n) for n in range(lo, hi + 1) for i in range(len(parts) - n + 1)]


def ngram_count(length: int, lo: int, hi: int) -> int:
    """len(ngrams(parts, lo, hi)) for `length` parts."""
    return sum(max(length - n + 1, 0) for n in range(lo, hi + 1))


def ngram_span(length: int, s: int, lo: int) -> tuple[int, int]:
    """ngrams(parts, lo, hi)[s] for `length` parts, without listing them."""
    n = lo
    while s > length - n:
        s -= length - n + 1
        n += 1
    return s, s + n
