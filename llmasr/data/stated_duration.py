"""A manifest line's stated duration: the units its fields give it in (FunASR's `source_len`, Fun-ASR-Nano's
`speech_length`), and how far the audio loaded may run from it and still pass as right; past that, batching would
budget the line wrongly, and it is a bad line."""

from __future__ import annotations

import numpy as np

FUNASR_FRAMES_PER_SECOND = 100.0  # source_len unit: 10 ms frames
DURATION_SLACK_S, DURATION_SLACK_FRACTION = 0.1, 0.01  # a stated duration off by more than both is wrong


def duration_slack(stated):
    """How far a line's audio may run from its `stated` duration and pass as right: max(0.1 s, 1 % of it); a float,
    or an array of them (what the LLM-position counts add to a stated duration, llmasr.train.line_positions)."""
    if isinstance(stated, (int, float)):  # a line's, as every line is parsed: numpy's call costs as much as the parse
        return max(DURATION_SLACK_S, DURATION_SLACK_FRACTION * stated)
    return np.maximum(DURATION_SLACK_S, DURATION_SLACK_FRACTION * np.asarray(stated, dtype=np.float64))


def durations_disagree(stated: float, actual: float) -> bool:
    """Whether a line's `stated` duration is off `actual` seconds by more than duration_slack: past rounding,
    a duration batching would budget wrongly (a line saying 0.5 s whose audio holds 3 s passes max_duration)."""
    return bool(abs(stated - actual) > duration_slack(stated))


def wrong_duration(stated: float, actual: float, cap: float | None = None) -> str | None:
    """Why a line stating `stated` seconds, whose audio holds `actual`, is a bad line, or None. `cap`: training's
    truncation (data.batching.truncate_to_max), which budgets and reads at most that much of either."""
    if cap is not None:
        stated, actual = min(stated, cap), min(actual, cap)
    if not durations_disagree(stated, actual):
        return None
    return (
        f"manifest duration {stated:.3f} s, but its audio holds {actual:.3f} s (batching budgets the manifest's: fix "
        "the line's duration, or its audio)"
    )


def nano_speech_seconds(speech_length: float) -> float:
    """Fun-ASR-Nano's `speech_length` (fbank frames of 25 ms every 10 ms) -> seconds."""
    return (speech_length - 1) / FUNASR_FRAMES_PER_SECOND + 0.025
