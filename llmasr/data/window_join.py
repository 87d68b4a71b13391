"""Joining long audio's windows back into one utterance: their texts, saying once the words two overlapping windows
both heard, and their timed units (word timestamps), cut where the texts are cut and never going back at a seam.

Where a window starts `overlap` seconds before the previous one ended (llmasr.data.long_audio cut it at no pause),
the end of one text and the start of the next share the words said in the overlap: `seam` finds the run they
share that its neighbouring words confirm most (a lone shared word its neighbours contradict is a chance match),
and `join_texts` keeps it once. Windows that met at a pause are glued as they are.
"""

from __future__ import annotations

import math
import re
import unicodedata

from llmasr.text_units import NO_SPACE_CLASS, NO_SPACE_RANGES, UNIT, uses_characters

TOKENS_PER_SECOND = 5.0  # words an overlap may hold: how far a join looks for shared words
CHARS_PER_SECOND = 12.0  # the same in characters, for scripts written without spaces (fast Japanese, Chinese)
EDGE_TOKENS = 2  # tokens a shared run may leave at a window's edge (a cut word); farther runs are chance matches
MAX_DISAGREE = 2  # neighbours of a true one-token run that errors at both windows' edges may garble (seam)

# Scripts written without spaces: each character is a token (and texts join without a space). text_units.UNIT matches
# the tokens of a transcript: what windows are joined on and what word timestamps time (models.ctc_align).
# Punctuation of those scripts (CJK symbols and punctuation, full-width forms): no space before or after it either.
_NO_SPACE_PUNCT = "\u3000-\u303f\uff00-\uffef"
# Chinese and Japanese (ideographs, kana, bopomofo and their punctuation) take no space beside a Latin word or a
# number either ("我用iPhone手机", "2024年", "。2024年"), as FunASR's sentence_postprocess writes them: a seam there
# had put a space into the text that no window wrote. Thai and the other scripts above keep one there.
_CJK = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in NO_SPACE_RANGES if lo >= 0x3000) + _NO_SPACE_PUNCT
_EDGE, _CJK_EDGE = re.compile(f"[{NO_SPACE_CLASS}{_NO_SPACE_PUNCT}]"), re.compile(f"[{_CJK}]")


def _norm(token: str) -> str:
    return "".join(c for c in token.lower() if not unicodedata.category(c).startswith("P"))


def _glue(left: str, right: str) -> str:
    left, right = left.rstrip(), right.lstrip()
    if not left or not right:
        return left or right
    a, b = left[-1], right[0]
    no_space = (_EDGE.match(a) and _EDGE.match(b)) or _CJK_EDGE.match(a) or _CJK_EDGE.match(b)
    return left + ("" if no_space else " ") + right


def join_pair(left: str, right: str, max_tokens: int) -> str:
    """`left` then `right`, the tokens both heard in their overlap said once: cut where seam says, or both whole."""
    cut = seam(left, right, max_tokens)
    return _glue(left, right) if cut is None else _glue(left[: cut[0]], right[cut[1] :])


def seam(left: str, right: str, max_tokens: int) -> tuple[int, int] | None:
    """Where join_pair cuts: (characters of `left` kept, characters of `right` dropped), None to keep both whole:
    after the run of normalised tokens (punctuation looked past) common to the last `max_tokens` of `left` and the
    first of `right`, at most EDGE_TOKENS from both edges, with the most tokens plus agreeing neighbours, then the
    longest, then the nearest the seam; no lone token that more than MAX_DISAGREE neighbours contradict and none
    confirms ("the" of "to the sto" + "store and the car"); with none, a cut word's part gives way to the whole word."""
    a, b, na, nb = edge_tokens(left, right, max_tokens)
    best: tuple = ()  # (length + agreeing neighbours, length, -tokens outside the run at the seam, end in a, end in b)
    for i, j, length, after, before in shared_runs(na, nb):
        agree, disagree = _neighbours(na, nb, i, j, length)
        if length > 1 or agree or disagree <= MAX_DISAGREE:
            best = max(best, (length + agree, length, -(after + before), i, j))
    if best or not (a and b):
        return (a[best[3] - 1].end(), b[best[4] - 1].end()) if best else None
    cuts = [(a[-1].start(), m.start()) for m, w in zip(b[: EDGE_TOKENS + 1], nb) if _part(na[-1], w, True)]
    cuts += [(m.end(), b[0].end()) for m, w in zip(a[::-1][: EDGE_TOKENS + 1], na[::-1]) if _part(nb[0], w, False)]
    return cuts[0] if cuts else None


def edge_tokens(left: str, right: str, max_tokens: int) -> tuple[list, list, list[str], list[str]]:
    """(the last `max_tokens` token matches of `left`, the first of `right`, and their normalised texts): the
    tokens a seam may share, punctuation looked past."""
    a = [m for m in UNIT.finditer(left) if _norm(m.group())][-max_tokens:] if max_tokens > 0 else []
    b = [m for m in UNIT.finditer(right) if _norm(m.group())][:max_tokens] if max_tokens > 0 else []
    return a, b, [_norm(m.group()) for m in a], [_norm(m.group()) for m in b]


def shared_runs(na: list[str], nb: list[str]):
    """(i, j, length, after, before) of each run of equal tokens ending at token i of `na` and j of `nb` (1-based)
    at most EDGE_TOKENS from both edges: `after` tokens of `na` follow it, `before` of `nb` precede it."""
    run = [[0] * (len(nb) + 1) for _ in range(len(na) + 1)]
    for i in range(1, len(na) + 1):
        for j in range(1, len(nb) + 1):
            if not (na[i - 1] and na[i - 1] == nb[j - 1]):
                continue
            run[i][j] = length = run[i - 1][j - 1] + 1
            after, before = len(na) - i, j - length
            if max(after, before) <= EDGE_TOKENS:
                yield i, j, length, after, before


def _part(part: str, word: str, head: bool) -> bool:
    """`part` (two letters or more) is the start (`head`) or the end of `word` and shorter: a cut word's part."""
    return len(word) > len(part) > 1 and (word.startswith(part) if head else word.endswith(part))


def _neighbours(na: list[str], nb: list[str], i: int, j: int, length: int) -> tuple[int, int]:
    """(agreeing, disagreeing) token pairs after and before the run ending at token i of `na` and j of `nb`, in both."""
    same = [x == y or (i + k == len(na) - 1 and _part(x, y, True)) for k, (x, y) in enumerate(zip(na[i:], nb[j:]))]
    i, j = i - length, j - length  # the tokens before the run, nearest first
    same += [x == y or (k == j - 1 and _part(y, x, False)) for k, (x, y) in enumerate(zip(na[:i][::-1], nb[:j][::-1]))]
    return sum(same), len(same) - sum(same)


def join_texts(texts: list[str], overlapped: list[bool], overlap: float) -> str:
    """One utterance's text from its windows' texts in order; `overlapped[k]`: window k starts inside window k-1
    (its shared words are said once, see join_pair); `overlap`: the seconds such windows share."""
    if len(texts) != len(overlapped) or not texts:
        raise ValueError(f"join_texts: {len(texts)} texts and {len(overlapped)} overlap flags")
    return _join(texts, overlapped, overlap)[0]


def last_ms(seconds: float) -> float:
    """The last millisecond within audio of `seconds` as rows state its length (4 decimals): a time rounded to the
    millisecond may not pass it (0.9375 s rounded is 0.938)."""
    return math.floor(round(float(seconds), 4) * 1000 + 1e-6) / 1000


def shift_times(words: list | None, seconds: float, within: float | None = None) -> list | None:
    """Timed units (unit, start s, end s) `seconds` later, in milliseconds, and none past `within` seconds (the
    audio's length: the last feature frame can reach past it); None stays None."""
    if words is None:
        return None
    cap = float("inf") if within is None else last_ms(within)
    return [(u, min(round(a + seconds, 3), cap), min(round(b + seconds, 3), cap)) for u, a, b in words]


def join_words(
    texts: list[str], words: list[list | None], starts: list[float], overlapped: list[bool], overlap: float,
    within: float | None = None,
) -> list | None:  # fmt: skip
    """The timed units (unit, start s, end s; llmasr.models.ctc_align) of join_texts' text: each window's `words`
    (one per token of its text, in window time) moved by its `starts` seconds into the utterance, cut where
    join_texts cuts the texts (two edge units the seam glues into one unit of the text are one timed unit), none
    past `within` (the utterance's seconds). None when a window has none."""
    if any(w is None or len(w) != len(UNIT.findall(t)) for t, w in zip(texts, words)):
        return None
    return shift_times(
        _join(texts, overlapped, overlap, [shift_times(w, s) for w, s in zip(words, starts)])[1], 0.0, within
    )


def _join(texts: list[str], overlapped: list[bool], overlap: float, words: list[list] | None = None):
    """(join_texts' text, and with `words` (one timed unit per UNIT of each text) the units that text keeps): one
    loop for both, so the times are cut exactly where the texts are."""
    out, timed = texts[0], None if words is None else list(words[0])
    for k in range(1, len(texts)):
        text = texts[k]
        rate = CHARS_PER_SECOND if uses_characters(text) else TOKENS_PER_SECOND
        cut = seam(out, text, math.ceil(rate * overlap) + 1) if overlapped[k] else None
        left, right = (out, text) if cut is None else (out[: cut[0]], text[cut[1] :])
        glued = _glue(left, right)
        if timed is not None:
            kept, dropped = len(UNIT.findall(left)), 0 if cut is None else len(UNIT.findall(text[: cut[1]]))
            timed, after = timed[:kept], list(words[k][dropped:])
            if timed and after and len(UNIT.findall(glued)) < len(timed) + len(after):
                # glued without a space ("。" + "「"), the edge units are one unit of the text: one timed unit too
                (u, start, _), (v, _, end) = timed[-1], after.pop(0)
                timed[-1] = (u + v, start, end)
            timed = _meet(timed, after)
        out = glued
    return out, timed


def _meet(timed: list, after: list) -> list:
    """`timed` (one window's units) then `after` (the next window's), with no unit starting before the one before it
    ends: where the two windows timed the seam differently (each hears the overlap with its own context), the two
    edge units meet at the middle of the time both claim (no earlier than the first one's start), and a later unit
    of `after` starts no earlier."""
    if not timed or not after:
        return timed + after
    (u, s0, e0), (v, s1, e1) = timed[-1], after[0]
    if s1 < e0:  # the seam's units overlap in time
        meet = round(max(s0, (max(s0, s1) + min(e0, e1)) / 2), 3)
        timed, after = timed[:-1] + [(u, s0, meet)], [(v, meet, max(e1, meet))] + after[1:]
    joined, end = list(timed), timed[-1][2]
    for unit, start, stop in after:
        start = max(start, end)
        end = max(stop, start)
        joined.append((unit, start, end))
    return joined
