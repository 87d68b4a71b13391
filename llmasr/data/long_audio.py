"""Long audio: where an utterance longer than a model's training maximum is cut into windows, and how the windows'
texts are joined back. Cut points come from frame energies (25 ms frames every 10 ms), or from a VAD's speech
segments (`segment_windows`: a window a segment, a long segment cut as below).

`plan_windows` splits the audio into as few windows as fit the limit, each aiming at an equal share of what is
left (no sliver of a window at the end), and never leaving more audio than the windows still planned can hold:

- a clear pause between half a share and the limit (at least MIN_PAUSE_S of frames below the window's silence
  level, after speech in the window: a pause the window opens with ends nothing) -> the cut goes into the longest
  one, LEAD_S before the speech that ends it, and the next window starts there (a pause that runs to the end of
  the audio ends the last window: no window of silence alone): no word straddles a pause, so no word is cut in
  half and none is heard twice. The next window opens on speech, as most training utterances do, and the silence
  trails the previous one (a model trained on clips that start with speech inserts words into a leading silence it
  never saw: measured on the demo model);
- no pause -> the cut goes at the quietest point of a band around the share (most likely a gap between words, at
  worst a weak syllable) and the next window starts `overlap` seconds earlier: a word the cut splits is whole in
  one of the two windows, and `join_texts` removes the words both windows heard (the run of words the end of one
  text shares with the start of the next that its neighbours confirm most: `seam`).

With `split_pause` (decode.window_split_pause) a window also ends at the first pause at least that long after
MIN_SEGMENT_S of it, before the limit: one sentence a window, as a VAD segments (a model trained on single sentences
breaks on two speakers or two noise levels in one window).

The silence level sits between the quietest stretch and the loud frames of the window being cut (background noise
changes along a long recording); a window whose quietest stretch is within MIN_RANGE_DB of its loud frames (steady
noise, music) has no pauses.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from llmasr.scoring import NO_SPACE_RANGES, UNIT, uses_characters

FRAME_S, HOP_S = 0.025, 0.010
MIN_PAUSE_S = 0.2  # shorter silences are stop closures and breaths inside words as often as gaps between them
TRAIL_S = 0.3  # silence a window keeps after its last speech when it ends in a pause
MIN_SEGMENT_S = 0.5  # with split_pause, a window ends at the first long pause after this much audio
# Speech after the last pause that spans this long is a word (a short "yes" does), and gets a window of its own
# when the last window cannot hold it; a shorter burst is a click, and no window (LLM-ASR writes words into noise).
MIN_WORD_S = 0.2
# The next window starts where the first frame of its speech starts: a model trained on clips that begin with
# their speech breaks the first word on any silence before it (measured on the demo model).
LEAD_S = FRAME_S / 2
MIN_RANGE_DB = 10.0  # loud minus quiet frames below this: no frame counts as a pause
SILENCE_FRACTION = 0.3  # silence level: quiet frames' level + this fraction of the way to the loud frames'
BAND_S = 4.0  # a cut lands at most this far from its window's share (and never past the limit)
QUIET_DB = 1.0  # without a pause, frames within this of the band's quietest are equally good cuts
SMOOTH_FRAMES = 3  # energies averaged over 30 ms before the quietest point is sought
TOKENS_PER_SECOND = 5.0  # words an overlap may hold: how far a join looks for shared words
CHARS_PER_SECOND = 12.0  # the same in characters, for scripts written without spaces (fast Japanese, Chinese)
EDGE_TOKENS = 2  # tokens a shared run may leave at a window's edge (a cut word); farther runs are chance matches
MAX_DISAGREE = 2  # neighbours of a true one-token run that errors at both windows' edges may garble (seam)


@dataclass(frozen=True)
class Window:
    """Samples [start, end) of an utterance; `overlapped`: it starts before the previous window ended."""

    start: int
    end: int
    overlapped: bool = False


def frame_energies(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log energy (dB) of every 25 ms frame, every 10 ms."""
    frame, hop = int(FRAME_S * sample_rate), int(HOP_S * sample_rate)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.size < frame:
        wave = np.pad(wave, (0, frame - wave.size))
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame
    return 10.0 * np.log10(power + 1e-10)


def silence_level(db: np.ndarray) -> float | None:
    """The level below which a frame is silence, or None when the audio has no clear pauses: between the
    quietest MIN_PAUSE_S stretch (one pause anywhere is enough to set it) and the loud frames (90th percentile)."""
    pause = max(1, int(MIN_PAUSE_S / HOP_S))
    quiet = float(np.convolve(db, np.ones(pause) / pause, mode="valid").min()) if db.size >= pause else float(db.min())
    loud = float(np.percentile(db, 90))
    if loud - quiet < MIN_RANGE_DB:
        return None
    return quiet + SILENCE_FRACTION * (loud - quiet)


def loud_frames(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per frame of `wave` (frame_energies'), whether it is at or above its silence level; all False when the audio
    has no silence level (silence_level: too little range to tell speech from silence)."""
    db = frame_energies(wave, sample_rate)
    quiet = silence_level(db)
    return db >= quiet if quiet is not None else np.zeros(db.shape, dtype=bool)


def speech_start(wave: np.ndarray, sample_rate: int) -> int:
    """The sample decoding starts `wave` at: after a leading pause (MIN_PAUSE_S or more below the silence level),
    LEAD_S before the first speech frame, as a window after a pause starts (a model trained on clips that start with
    their speech inserts words into silence before it: measured on the demo model); else 0. A trailing pause stays:
    cutting it (to TRAIL_S, as windows end) cost the demo model final words."""
    loud = np.flatnonzero(loud_frames(wave, sample_rate))
    if loud.size == 0 or loud[0] < MIN_PAUSE_S / HOP_S:
        return 0
    return int(min(len(wave) - 1, max(0, _at(loud[0], sample_rate) - LEAD_S * sample_rate)))


def speech_runs(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """[K, 2] (start, end) seconds of the stretches of speech in `wave`: frames at or above its silence level, dips
    shorter than MIN_PAUSE_S bridged (closures inside words, gaps between them); none when the audio's loudness
    varies too little to tell speech from silence by (silence_level)."""
    runs: list[list[int]] = []
    for a, b in _runs(loud_frames(wave, sample_rate)):
        if runs and (a - runs[-1][1]) * HOP_S < MIN_PAUSE_S:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return np.asarray([(a * HOP_S, (b - 1) * HOP_S + FRAME_S) for a, b in runs], dtype=np.float64).reshape(-1, 2)


def plan_windows(
    wave: np.ndarray, sample_rate: int, max_seconds: float, overlap: float, split_pause: float = 0.0
) -> list[Window]:
    """The windows `wave` is decoded in (one when it fits `max_seconds`); see the module docstring. `split_pause` >
    0: a pause at least that long ends a window even before the limit (one sentence a window, as a VAD segments;
    a model trained on single sentences breaks on two speakers or two noise levels in one window)."""
    n, limit, ov = int(len(wave)), int(max_seconds * sample_rate), int(round(overlap * sample_rate))
    if limit <= 2 * ov:
        raise ValueError(f"plan_windows: a window of {max_seconds} s must be longer than twice the overlap {overlap} s")
    if n <= limit:
        return [Window(0, n)]
    db = frame_energies(wave, sample_rate)
    windows, start, overlapped = [], 0, False
    while True:  # with split_pause, also the last `limit` seconds are cut at their sentence pauses
        # the window's own levels: background noise changes along long recordings
        quiet = silence_level(_band(db, start, start + limit, sample_rate)[1])
        early = _first_pause(db, quiet, start, n, limit, split_pause, sample_rate) if split_pause > 0 else None
        if early is None and n - start <= limit:
            break
        end, after, pause = early or _cut(db, quiet, start, n, limit, ov, sample_rate)
        windows.append(Window(start, end, overlapped))
        if pause and _speech_after(db, quiet, after, n, sample_rate) < MIN_WORD_S:
            return windows  # the pause runs to the end (or to a click too short for a window of its own)
        start, overlapped = after, not pause and ov > 0  # windows that only touch share no words to say once
    windows.append(Window(start, n, overlapped))
    return windows


def segment_windows(
    wave: np.ndarray, sample_rate: int, segments, max_seconds: float, overlap: float, split_pause: float = 0.0,
    merge_seconds: float = 0.0,
) -> list[Window]:  # fmt: skip
    """The windows of `wave` from a VAD's speech segments ((start, end) samples, in order): a window per segment,
    or with `merge_seconds` per run of consecutive segments that spans at most that (and `max_seconds`), the pauses
    inside it included; a segment longer than `max_seconds` cut by plan_windows; the audio between windows is in
    none."""
    spans = [(max(0, int(a)), min(len(wave), int(b))) for a, b in segments]
    # segments that touch are one stretch of speech a VAD cut at its longest segment: planned as one, the cut falls
    # at a quiet point, with overlap, instead of inside a word
    spans = merge_segments([s for s in spans if s[1] > s[0]], 0.0, touching=MIN_PAUSE_S * sample_rate)
    windows: list[Window] = []
    for a, b in merge_segments(spans, min(merge_seconds, max_seconds) * sample_rate):
        windows += [Window(a + w.start, a + w.end, w.overlapped) for w in plan_windows(
            wave[a:b], sample_rate, max_seconds, overlap, split_pause)]  # fmt: skip
    return windows


def merge_segments(spans: list[tuple[int, int]], limit: float, touching: float = -1.0) -> list[tuple[int, int]]:
    """Consecutive (start, end) spans joined while the joined span is at most `limit` long (0: none joined), or
    whatever its length when the gap between them is under `touching` samples. FunASR's merge_vad also tiles the
    audio before the first segment and between the joined runs; here what lies between runs stays out of every
    window (a window of silence is where LLM-ASR writes words)."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and (b - out[-1][0] <= limit or a - out[-1][1] < touching):
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _cut(db, quiet, start: int, n: int, limit: int, ov: int, sr: int) -> tuple[int, int, bool]:
    """(the sample the window from `start` ends at, the sample the next one starts at, whether a pause is between);
    `quiet`: the window's silence level (None: no pauses)."""
    left = n - start
    k = math.ceil((left - ov) / (limit - ov))  # windows still needed, each overlapping the next at most `ov`
    target = start + (left + (k - 1) * ov) / k  # an equal share; <= start + limit
    half = min(BAND_S * sr, (target - start) / 4, target - start - ov - HOP_S * sr)  # the next window must advance
    fits = n - (k - 1) * (limit - ov)  # an earlier cut would leave more than k - 1 overlapping windows can hold
    if quiet is not None:  # any pause from half a share on will do: a cut at a pause needs no overlap
        lo_s = start + (target - start) / 2  # (a pause may cost a window more than planned, never a cut word)
        lo, band = _band(db, lo_s, start + limit, sr)
        first = _band(db, start, start + limit, sr)[0]
        runs = [(b - a, a, b) for a, b in _runs(band < quiet) if b - a >= MIN_PAUSE_S / HOP_S]
        runs = [r for r in runs if _pause_start(db, lo + r[1], quiet) > first]  # after speech in the window
        if runs:
            longest = max(r[0] for r in runs)
            a, b = min(
                ((lo + a, lo + b) for size, a, b in runs if size == longest),
                key=lambda r: abs(_at(sum(r) / 2, sr) - target),
            )
            a = _pause_start(db, a, quiet)  # the whole pause, also where it runs past the band
            end, after = _pause_cut(db, a, b, quiet, start + limit, sr, earliest=lo_s)
            return end, min(after, n - 1), True
    lo, band = _band(db, max(target - half, fits), min(target + half, start + limit), sr)
    if band.size == 0:  # a band narrower than a frame
        return int(target), int(target) - ov, False
    smooth = np.convolve(band, np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES, mode="same")
    end = _nearest(lo + np.flatnonzero(smooth <= smooth.min() + QUIET_DB), target, sr)
    return end, end - ov, False


def _speech_after(db, quiet: float, after: int, n: int, sr: int) -> float:
    """Seconds from the start of the first to the end of the last frame at or above `quiet` in samples [after, n)."""
    loud = np.flatnonzero(_band(db, after, n, sr)[1] >= quiet)
    return 0.0 if loud.size == 0 else float((loud[-1] - loud[0]) * HOP_S + FRAME_S)


def _first_pause(
    db, quiet, start: int, n: int, limit: int, split_pause: float, sr: int
) -> tuple[int, int, bool] | None:
    """The cut at the first pause of at least `split_pause` s after MIN_SEGMENT_S of the window, if any."""
    if quiet is None:
        return None
    first = _band(db, start, start + limit, sr)[0]
    lo, band = _band(db, start + MIN_SEGMENT_S * sr, start + limit, sr)
    for a, b in _runs(band < quiet):
        if b - a < max(split_pause, MIN_PAUSE_S) / HOP_S or _pause_start(db, lo + a, quiet) <= first:
            continue
        end, after = _pause_cut(db, lo + a, lo + b, quiet, start + limit, sr)
        if n - after >= MIN_SEGMENT_S * sr:  # a click or breath after the last pause is no sentence of its own
            return end, after, True
    return None


def _pause_start(db, a: int, quiet: float) -> int:
    """The first frame of the pause that frame `a` is in. A pause that reaches back to its window's first frame ends
    no speech: cut there, the window holds silence alone (a leading pause kept, decode.trim_leading_silence off)."""
    while a > 0 and db[a - 1] < quiet:
        a -= 1
    return a


def _pause_cut(db, a: int, b: int, quiet: float, last_end: float, sr: int, earliest: float = 0.0) -> tuple[int, int]:
    """(window end, next window start) for the pause of frames [a, b): the pause runs on while frames stay quiet
    (also past the band it was found in); the window keeps TRAIL_S of it, or all of it up to where the next starts
    (between `earliest` and `last_end`), the next starts LEAD_S before the speech that ends it (a shorter pause had
    ended the window TRAIL_S on, inside the next word, and the next window started there: the word cut in two)."""
    while b < len(db) and db[b] < quiet:
        b += 1
    resume = _at(b, sr) - LEAD_S * sr
    end = int(min(last_end, max(earliest, min(_at(a, sr) + TRAIL_S * sr, resume))))
    return end, int(max(end, resume))


def _at(frame: float, sr: int) -> float:
    """The centre sample of frame `frame`."""
    return frame * HOP_S * sr + FRAME_S * sr / 2


def _band(db: np.ndarray, lo: float, hi: float, sr: int) -> tuple[int, np.ndarray]:
    """(first frame, energies) of the frames whose centres lie in samples [lo, hi]."""
    hop, frame = HOP_S * sr, FRAME_S * sr
    first = max(0, math.ceil((lo - frame / 2) / hop))
    last = min(len(db) - 1, math.floor((hi - frame / 2) / hop))
    return first, db[first : last + 1]


def _nearest(frames, target: float, sr: int) -> int:
    """The centre sample of the frame among `frames` nearest `target`."""
    centres = np.asarray(frames) * HOP_S * sr + FRAME_S * sr / 2
    return int(centres[np.argmin(np.abs(centres - target))])


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) index ranges where `mask` is True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


# -- joining the windows' texts ----------------------------------------------------------------------------------
# Scripts written without spaces: each character is a token (and texts join without a space). scoring.UNIT matches
# the tokens of a transcript: what windows are joined on and what word timestamps time (models.ctc_align).
_NO_SPACE = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in NO_SPACE_RANGES)  # the scripts scoring counts in characters
# Punctuation of those scripts (CJK symbols and punctuation, full-width forms): no space before or after it either.
_NO_SPACE_PUNCT = "\u3000-\u303f\uff00-\uffef"


def _norm(token: str) -> str:
    return "".join(c for c in token.lower() if not unicodedata.category(c).startswith("P"))


def _glue(left: str, right: str) -> str:
    left, right = left.rstrip(), right.lstrip()
    if not left or not right:
        return left or right
    edge = f"[{_NO_SPACE}{_NO_SPACE_PUNCT}]"
    no_space = re.match(edge, left[-1]) and re.match(edge, right[0])
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
    a = [m for m in UNIT.finditer(left) if _norm(m.group())][-max_tokens:] if max_tokens > 0 else []
    b = [m for m in UNIT.finditer(right) if _norm(m.group())][:max_tokens] if max_tokens > 0 else []
    na, nb = [_norm(m.group()) for m in a], [_norm(m.group()) for m in b]
    best: tuple = ()  # (length + agreeing neighbours, length, -tokens outside the run at the seam, end in a, end in b)
    run = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if not (na[i - 1] and na[i - 1] == nb[j - 1]):
                continue
            run[i][j] = length = run[i - 1][j - 1] + 1
            after, before = len(a) - i, j - length
            if max(after, before) <= EDGE_TOKENS:
                agree, disagree = _neighbours(na, nb, i, j, length)
                if length > 1 or agree or disagree <= MAX_DISAGREE:
                    best = max(best, (length + agree, length, -(after + before), i, j))
    if best or not (a and b):
        return (a[best[3] - 1].end(), b[best[4] - 1].end()) if best else None
    cuts = [(a[-1].start(), m.start()) for m, w in zip(b[: EDGE_TOKENS + 1], nb) if _part(na[-1], w, True)]
    cuts += [(m.end(), b[0].end()) for m, w in zip(a[::-1][: EDGE_TOKENS + 1], na[::-1]) if _part(nb[0], w, False)]
    return cuts[0] if cuts else None


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


def shift_times(words: list | None, seconds: float, within: float | None = None) -> list | None:
    """Timed units (unit, start s, end s) `seconds` later, in milliseconds, and none past `within` seconds (the
    audio's length: the last feature frame can reach past it); None stays None."""
    if words is None:
        return None
    # the last millisecond within the audio as rows state its length (4 decimals): 0.9375 s rounded had been 0.938
    cap = float("inf") if within is None else math.floor(round(float(within), 4) * 1000 + 1e-6) / 1000
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
