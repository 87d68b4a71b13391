"""Long audio: cut points on synthetic waveforms whose pauses are known."""

from __future__ import annotations

import numpy as np
import pytest

from llmasr.data.long_audio import (
    LEAD_S,
    TRAIL_S,
    Window,
    frame_energies,
    merge_segments,
    plan_windows,
    segment_windows,
    silence_level,
)
from llmasr.testing.tiny_corpus import syllable_bursts

SR = 16000


def check_cover(windows: list[Window], wave: np.ndarray, limit: float, overlap: float) -> None:
    """Windows cover the audio in order, each at most `limit` s and at least a pause's trail (a window shorter than
    a feature frame is a bad item, and it takes its whole utterance with it): the next one starts exactly `overlap`
    s before the previous end, or after a pause, leaving out only silence (as after the last one)."""
    assert windows[0].start == 0 and not windows[0].overlapped
    assert np.abs(wave[windows[-1].end :]).max(initial=0.0) < 0.02
    for prev, w in zip(windows, windows[1:]):
        if w.overlapped:
            assert w.start == prev.end - int(round(overlap * SR))
        else:
            assert prev.end <= w.start and np.abs(wave[prev.end : w.start]).max(initial=0.0) < 0.02
    assert all(TRAIL_S * SR <= w.end - w.start <= limit * SR for w in windows), windows


def test_cuts_land_in_the_pauses():
    gaps = [(9.0, 9.4), (17.5, 18.1), (27.0, 27.3)]
    wave = syllable_bursts(36.0, gaps)
    windows = plan_windows(wave, SR, 12.0, 1.0)
    check_cover(windows, wave, 12.0, 1.0)
    assert len(windows) == 4 and not any(w.overlapped for w in windows)  # pauses: no overlap, nothing heard twice
    for w, nxt, (a, b) in zip(windows, windows[1:], gaps):
        # TRAIL_S of the pause ends a window, the next starts LEAD_S before the speech (give or take a frame; a
        # pause shorter than both is not cut into)
        assert abs(w.end / SR - (a + TRAIL_S)) < 0.02, (w, a)
        assert abs(nxt.start / SR - max(a + TRAIL_S, b - LEAD_S)) < 0.02, (nxt, a, b)


def test_split_pause_ends_a_window_at_each_sentence_pause():
    """With split_pause, every pause at least that long (after MIN_SEGMENT_S of a window) ends the window, so
    sentences are decoded one a window even where two would fit the limit; shorter pauses do not cut."""
    gaps = [(2.0, 2.3), (4.1, 4.5), (5.0, 5.1), (7.2, 7.5)]  # the 0.1 s one is too short
    wave = syllable_bursts(9.0, gaps)
    fill = plan_windows(wave, SR, 6.0, 1.0)
    split = plan_windows(wave, SR, 6.0, 1.0, split_pause=0.2)
    check_cover(split, wave, 6.0, 1.0)
    assert len(fill) == 2 and len(split) == 4 and not any(w.overlapped for w in split)
    for w, nxt, (a, b) in zip(split, split[1:], [gaps[0], gaps[1], gaps[3]]):
        # TRAIL_S after the pause begins (a syllable dip just before it counts as pause), LEAD_S before the speech
        assert a + TRAIL_S - 0.1 < w.end / SR < a + TRAIL_S + 0.02, (w, a)
        assert b - LEAD_S - 0.02 < nxt.start / SR < b - LEAD_S + 0.1, (nxt, b)  # likewise a dip just after it
    # audio that fits one window stays whole, pauses or not
    assert plan_windows(wave[: 5 * SR], SR, 6.0, 1.0, split_pause=0.2) == [Window(0, 5 * SR)]


def test_the_longest_pause_of_the_band_wins_and_a_pause_past_the_limit_is_not_used():
    wave = syllable_bursts(18.0, [(7.5, 7.75), (8.5, 9.1), (10.2, 11.5)])  # the longest is past the 10 s limit
    windows = plan_windows(wave, SR, 10.0, 1.0)
    check_cover(windows, wave, 10.0, 1.0)
    assert len(windows) == 2 and 8.5 * SR < windows[0].end < windows[1].start < 9.1 * SR and not windows[1].overlapped


def test_no_pause_cuts_at_the_equal_share_with_an_overlap():
    """A steady tone has no pause and no quieter point: each window ends at its equal share of the audio (the
    window limit when one share fills it) and the next starts one overlap earlier."""
    t = np.arange(60 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 400 * t)).astype(np.float32)
    assert silence_level(frame_energies(tone, SR)) is None
    windows = plan_windows(tone, SR, 25.0, 1.0)
    check_cover(windows, tone, 25.0, 1.0)
    assert len(windows) == 3 and all(w.overlapped for w in windows[1:])
    share = (60 + 2 * 1.0) / 3  # three windows sharing two overlaps
    assert [w.end / SR for w in windows[:2]] == pytest.approx([share, 2 * share - 1.0], abs=0.011)  # a frame's hop
    # 49 s at a 25 s limit: two windows of 25 s, the cut exactly at the limit
    windows = plan_windows(tone[: 49 * SR], SR, 25.0, 1.0)
    assert [(w.start, w.end) for w in windows] == [(0, 25 * SR), (24 * SR, 49 * SR)]


def test_speech_without_pauses_cuts_at_a_dip_between_bursts():
    wave = syllable_bursts(30.0)
    windows = plan_windows(wave, SR, 20.0, 1.0)
    check_cover(windows, wave, 20.0, 1.0)
    assert len(windows) == 2 and windows[1].overlapped
    cut = windows[0].end
    assert np.abs(wave[cut - 160 : cut + 160]).max() < 0.05  # well inside a dip, not in a burst


def test_short_audio_is_one_window_and_bad_settings_are_refused():
    wave = syllable_bursts(5.0)
    assert plan_windows(wave, SR, 5.0, 1.0) == [Window(0, wave.size)]
    with pytest.raises(ValueError, match="longer than twice the overlap"):
        plan_windows(wave, SR, 2.0, 1.0)


def test_energies_are_25ms_frames_every_10ms():
    db = frame_energies(np.ones(SR, dtype=np.float32), SR)
    assert db.shape == (1 + (SR - 400) // 160,) and np.allclose(db, 0.0, atol=1e-5)


def test_windows_that_only_touch_share_no_words():
    """With window_overlap 0 the windows meet at a cut: a word said on both sides of it is two words, not an
    overlap to say once ("no no more")."""
    wave = syllable_bursts(30.0, seed=3)
    windows = plan_windows(wave, SR, 15.0, 0.0)
    assert len(windows) > 1 and not any(w.overlapped for w in windows)


def test_touching_vad_segments_are_cut_as_one_stretch_of_speech():
    """A VAD ends a segment at its longest and starts the next on the following frame, mid-speech: the two are
    planned as one, so the cut between them falls at a quiet point with an overlap (it had been a hard seam)."""
    wave = syllable_bursts(75.0, seed=1)
    windows = segment_windows(wave, SR, [(0, 60 * SR), (60 * SR, 75 * SR)], 20.0, 1.0)
    check_cover(windows, wave, 20.0, 1.0)
    assert all(w.overlapped for w in windows[1:])
    assert merge_segments([(0, 5), (5, 9), (12, 14)], 0, touching=1) == [(0, 9), (12, 14)]


@pytest.mark.parametrize("split_pause", [0.0, 0.2])
@pytest.mark.parametrize("pause", [0.22, 0.26])
def test_a_window_after_a_short_pause_starts_before_its_speech(pause, split_pause):
    """Pauses shorter than TRAIL_S + LEAD_S: the window before one ends where the next starts, LEAD_S before the
    speech after it (it had ended TRAIL_S into the pause, inside the next word, and the next window started there:
    up to 0.1 s of the word's start was heard only at the end of the window before)."""
    gaps = [(t, t + pause) for t in np.arange(3.0, 39.0, 3.0 + pause)]
    wave = syllable_bursts(40.0, gaps, seed=3)
    windows = plan_windows(wave, SR, 10.0, 1.0, split_pause)
    check_cover(windows, wave, 10.0, 1.0)
    seams = [w for w in windows[1:] if not w.overlapped]
    assert seams
    for w in seams:
        _, b = min(gaps, key=lambda g: abs(g[1] * SR - w.start))
        onset = int(b * SR) + int(np.flatnonzero(np.abs(wave[int(b * SR) :]) > 0.05)[0])
        assert w.start <= onset, (w, onset)


@pytest.mark.parametrize("split_pause", [0.0, 0.2])
@pytest.mark.parametrize("lead", [1.0, 12.0])
def test_a_leading_pause_is_no_window_of_its_own(lead, split_pause):
    """Audio planned from its first sample (decode.trim_leading_silence off) that opens with a pause: the pause is no
    cut point, as it ends no speech of the window (a window of the pause alone had been decoded, where LLM-ASR
    writes words: [0, 0.8 s) after a 1 s pause with split_pause, [0, 7 s) after a 12 s one without)."""
    wave = syllable_bursts(lead + 28.0, [(0.0, lead), (lead + 11.0, lead + 11.6)], seed=2)
    windows = plan_windows(wave, SR, 20.0, 1.0, split_pause)
    check_cover(windows, wave, 20.0, 1.0)
    assert all(np.abs(wave[w.start : w.end]).max() > 0.1 for w in windows), windows


def test_split_pause_leaves_no_sliver_after_the_last_pause():
    """A pause followed by a mere click at the end is not a sentence boundary: the last window keeps it (a
    15 ms window has no feature frame to decode)."""
    wave = syllable_bursts(5.0, [(1.5, 1.9), (4.3, 4.985)])
    wave[int(4.985 * SR) :] = 0.3  # the click: 15 ms loud
    windows = plan_windows(wave, SR, 4.0, 1.0, split_pause=0.2)
    check_cover(windows, wave, 4.0, 1.0)
    assert len(windows) == 2 and windows[-1].end - windows[-1].start > 2 * SR


def test_a_click_after_the_last_long_pause_is_no_window():
    """Speech, a long pause, then a 20-150 ms click at the very end, more audio than one window holds: the click is
    not a window of its own (one of 40 ms had been decoded, where LLM-ASR writes words)."""
    rng = np.random.default_rng(0)
    for click in (0.02, 0.15):
        for split_pause in (0.0, 0.2):
            wave = (rng.standard_normal(25 * SR) * 1e-3).astype(np.float32)
            wave[: int(19.5 * SR)] += (rng.standard_normal(int(19.5 * SR)) * 0.2).astype(np.float32)
            wave[-int(click * SR) :] += (rng.standard_normal(int(click * SR)) * 0.3).astype(np.float32)
            windows = plan_windows(wave, SR, 20.0, 1.0, split_pause)
            assert all(w.end - w.start > 0.5 * SR for w in windows), (click, split_pause, windows)


def test_a_short_word_after_the_last_pause_gets_a_window():
    """Speech, a pause, then a short last word ("yes", 0.25-0.4 s) that the last window cannot hold: the word is
    decoded in a window of its own (it had been dropped as if it were a click)."""
    rng = np.random.default_rng(1)
    for word, trail in ((0.25, 0.0), (0.35, 0.0), (0.3, 0.1)):
        for split_pause in (0.0, 0.2):
            parts = [rng.normal(0, 0.3, 8 * SR), rng.normal(0, 1e-3, SR), rng.normal(0, 0.3, int(word * SR))]
            wave = np.concatenate([*parts, rng.normal(0, 1e-3, int(trail * SR))]).astype(np.float32)
            windows = plan_windows(wave, SR, 9.0, 1.0, split_pause)
            covered = np.zeros(len(wave), dtype=bool)
            for w in windows:
                covered[w.start : w.end] = True
            assert covered[9 * SR : int((9 + word) * SR)].all(), (word, trail, split_pause, windows)
            assert all(w.end - w.start <= 9 * SR for w in windows)


def test_merged_segments_share_a_window_up_to_the_limit():
    spans = [(0, 2), (3, 5), (5, 6), (9, 10), (10, 17), (18, 19)]
    assert merge_segments(spans, 0) == spans
    assert merge_segments(spans, 6) == [(0, 6), (9, 10), (10, 17), (18, 19)]  # 9-17 spans 8: too long to join
    assert merge_segments(spans, 10) == [(0, 10), (10, 19)]  # a run closes when the next would pass the limit
    wave = syllable_bursts(12.0, [(2.0, 2.6), (5.0, 5.6), (9.0, 10.0)], seed=3)
    segments = [(0, 2 * SR), (int(2.6 * SR), 5 * SR), (int(5.6 * SR), 9 * SR), (10 * SR, 12 * SR)]
    one_each = segment_windows(wave, SR, segments, 6.0, 0.5)
    assert [(w.start, w.end) for w in one_each] == segments
    merged = segment_windows(wave, SR, segments, 6.0, 0.5, merge_seconds=8.0)  # the window limit caps the merge
    assert [(w.start, w.end) for w in merged] == [(0, 5 * SR), (int(5.6 * SR), 9 * SR), (10 * SR, 12 * SR)]
    long_run = segment_windows(wave, SR, [(0, 12 * SR)], 6.0, 0.5, merge_seconds=6.0)  # a long segment is still cut
    assert len(long_run) >= 2 and all(w.end - w.start <= 6 * SR for w in long_run)


@pytest.mark.parametrize("split_pause", [0.0, 0.5])
def test_a_pause_to_the_end_of_the_audio_ends_the_last_window(split_pause):
    """Speech, then silence to the end, longer than the limit in all: the cut goes into that pause, and the silence
    after it is no window of its own (it was a 20 ms sliver, shorter than a feature frame: its utterance was lost)."""
    wave = syllable_bursts(25.0, [(15.0, 25.0)], seed=3)
    windows = plan_windows(wave, SR, 20.0, 1.0, split_pause=split_pause)
    check_cover(windows, wave, 20.0, 1.0)
    assert len(windows) == 1 and abs(windows[0].end / SR - (15.0 + TRAIL_S)) < 0.02, windows
    # a VAD segment a little over the limit that ends in its end-silence, as fsmn-vad's segments do
    wave = syllable_bursts(12.0, [(9.5, 12.0)], seed=4)
    windows = segment_windows(wave, SR, [(0, int(10.5 * SR))], 10.0, 1.0)
    check_cover(windows, wave[: int(10.5 * SR)], 10.0, 1.0)
    assert [(w.start, w.end) for w in windows] == [(0, windows[0].end)] and windows[0].end < 10 * SR
