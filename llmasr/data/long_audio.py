"""Long audio: where an utterance longer than a model's training maximum is cut into windows (their texts and times
are joined back by llmasr.data.window_join). Cut points come from frame energies (25 ms frames every 10 ms), or
from a VAD's speech segments (`segment_windows`: a window a segment, a long segment cut as below).

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
  one of the two windows, and llmasr.data.window_join removes the words both windows heard when their texts are joined.

With `split_pause` (decode.window_split_pause) a window also ends at the first pause at least that long after
MIN_SEGMENT_S of it, before the limit: one sentence a window, as a VAD segments (a model trained on single sentences
breaks on two speakers or two noise levels in one window).

The silence level sits between the quietest stretch and the loud frames of the window being cut (background noise
changes along a long recording); a window whose quietest stretch is within MIN_RANGE_DB of its loud frames (steady
noise, music) has no pauses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
