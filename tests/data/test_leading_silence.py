"""Decoding starts where the speech starts (decode.trim_leading_silence): a leading pause is cut from an utterance
as long-audio windows after a pause are cut, a long utterance's windows begin at its speech (no window of silence
alone), and the times decoding reports (word timestamps) come back to the utterance's own clock."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from speech_fakes import FakePromptBuilder

from llmasr.data.dataset import SpeechDataset
from llmasr.data.frontend import FrontendConfig
from llmasr.data.loader import open_manifests
from llmasr.data.long_audio import FRAME_S, HOP_S, LEAD_S, speech_runs, speech_start
from llmasr.data.window_plan import WindowRules, split_long
from llmasr.testing.tiny_corpus import syllable_bursts

SR = 16000


def _lead_then_speech(silence: float, speech: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    quiet = (0.002 * rng.standard_normal(int(silence * SR))).astype(np.float32)
    return np.concatenate([quiet, syllable_bursts(speech, seed=seed, sample_rate=SR, level=0.2, floor=0.002)])


def test_speech_runs_between_pauses_and_across_the_dips_inside_words():
    rng = np.random.default_rng(3)
    quiet = lambda s: (0.002 * rng.standard_normal(int(s * SR))).astype(np.float32)  # noqa: E731
    speech = lambda s, seed: syllable_bursts(s, seed=seed, sample_rate=SR, level=0.2, floor=0.002)  # noqa: E731
    wave = np.concatenate([quiet(0.5), speech(1.0, 1), quiet(0.6), speech(0.8, 2), quiet(0.4)])
    runs = speech_runs(wave, SR)
    assert runs.shape == (2, 2)  # the 40-80 ms dips between syllables do not split a stretch
    slack = FRAME_S + HOP_S
    np.testing.assert_allclose(runs[:, 0], [0.5, 2.1], atol=slack)
    assert 1.3 <= runs[0, 1] <= 1.5 + slack and 2.7 <= runs[1, 1] <= 2.9 + slack  # a burst may end before its span
    whole = speech_runs(speech(2.0, 1), SR)  # speech throughout: one stretch, the clip
    assert whole.shape == (1, 2) and whole[0, 0] <= slack and whole[0, 1] >= 2.0 - slack
    assert speech_runs(np.zeros(SR, dtype=np.float32), SR).shape == (0, 2)  # nothing tells speech from silence
    assert speech_runs(quiet(1.0), SR).shape == (0, 2)


def test_speech_starts_after_a_leading_pause_and_nowhere_else():
    wave = _lead_then_speech(0.8, 2.0)
    start = speech_start(wave, SR) / SR
    assert 0.8 - LEAD_S - FRAME_S <= start <= 0.8  # where the first speech frame starts, not later
    assert speech_start(_lead_then_speech(0.1, 2.0), SR) == 0  # shorter than a pause: a closure, not silence
    assert speech_start(syllable_bursts(2.0, seed=1, sample_rate=SR), SR) == 0  # speech from the first sample
    assert speech_start(np.zeros(SR, dtype=np.float32), SR) == 0  # all silence: nothing to start at
    assert speech_start(np.zeros(10, dtype=np.float32), SR) == 0  # shorter than a frame


@pytest.fixture
def manifest(tmp_path):
    """Line 1: 1 s of silence, then 2.5 s of speech; line 2: 1 s of silence, then 5.5 s of speech with a pause."""
    sf.write(str(tmp_path / "short.wav"), _lead_then_speech(1.0, 2.5), SR, subtype="FLOAT")
    long = _lead_then_speech(1.0, 5.5, seed=2)
    long[int(3.5 * SR) : int(3.9 * SR)] *= 0.01
    sf.write(str(tmp_path / "long.wav"), long, SR, subtype="FLOAT")
    lines = [{"key": "short", "source": "short.wav"}, {"key": "long", "source": "long.wav"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return tmp_path / "m.jsonl"


def test_the_dataset_cuts_the_pause_and_says_by_how_much(manifest):
    base, _ = open_manifests([str(manifest)], mix=False, need_target=False)
    fe = FrontendConfig(kind="fbank", sample_rate=SR)
    kept = SpeechDataset(base, fe, train=False, prompt_builder=FakePromptBuilder())[0]
    cut = SpeechDataset(base, fe, train=False, prompt_builder=FakePromptBuilder(), trim_leading_silence=True)[0]
    assert kept["lead"] == 0.0 and 1.0 - LEAD_S - FRAME_S <= cut["lead"] <= 1.0
    assert cut["duration"] == kept["duration"] == pytest.approx(3.5)  # the utterance's audio, as read
    frames = cut["lead"] / fe.frame_seconds
    assert len(kept["feats"]) - len(cut["feats"]) == pytest.approx(frames, abs=1.5)


def test_long_audio_windows_begin_at_the_speech(manifest):
    base, _ = open_manifests([str(manifest)], mix=False, need_target=False)
    whole = split_long(base, [0, 1], sample_rate=SR, rules=WindowRules(3.0, 0.5, 0.2))
    speech = split_long(base, [0, 1], sample_rate=SR, rules=WindowRules(3.0, 0.5, 0.2, from_speech=True))
    # 3.5 s with its pause: windowed; 2.5 s of speech after it: one item, the dataset cuts the pause
    assert 0 in whole.windows and 0 not in speech.windows
    first = [w.start / SR for w in speech.windows[1]]
    assert 1.0 - LEAD_S - FRAME_S <= first[0] <= 1.0  # no window of the leading silence alone
    # kept (trim_leading_silence off), the pause opens the first window, which holds speech too: no window of it alone
    assert whole.windows[1][0].start == 0 and whole.windows[1][0].end / SR > 1.0 + 1.0
    assert speech.windows[1][-1].end == whole.windows[1][-1].end  # both run to the utterance's end
