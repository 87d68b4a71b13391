"""Reading the audio that long-audio windows and a VAD gate need (llmasr.data.window_plan): loader workers and decode
ranks share it, and the plan is the one a single process makes; each rank reads only its share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.loader import open_manifests
from llmasr.data.window_plan import PlanShare, WindowRules, split_long
from llmasr.models.fsmn_vad import FsmnVad
from llmasr.testing.thread_ranks import run_ranks
from llmasr.testing.tiny_corpus import syllable_bursts
from llmasr.testing.tiny_vad import write_fsmn_vad_dir

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    noise = np.random.default_rng(0)
    waves = [
        syllable_bursts(12.0, [(4.0, 7.0)], seed=1),
        syllable_bursts(14.0, seed=2),
        syllable_bursts(2.0, seed=3),
        (0.003 * noise.standard_normal(8 * SR)).astype(np.float32),
        syllable_bursts(3.0, seed=4),
        (0.003 * noise.standard_normal(2 * SR)).astype(np.float32),
        syllable_bursts(9.0, [(3.0, 5.0)], seed=5),
    ]
    lines = []
    for k, wave in enumerate(waves):
        sf.write(str(root / f"{k}.wav"), wave, SR, subtype="FLOAT")
        lines.append(json.dumps({"key": f"u{k}", "source": f"{k}.wav", "target": "one"}))
    lines.append(json.dumps({"key": "gone", "source": "nope.wav", "target": "lost", "duration": 30.0}))
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    manifest, _ = open_manifests([str(root / "m.jsonl")], mix=False)
    return manifest, np.flatnonzero(~np.isnan(manifest.durations()))


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    return FsmnVad.from_dir(write_fsmn_vad_dir(tmp_path_factory.mktemp("vad") / "fsmn-vad"))


class Heard:
    """A VAD's speech segments (samples), recording which recordings it heard (by length: each differs here)."""

    def __init__(self, vad):
        self.vad, self.lengths = vad, []

    def __call__(self, wave):
        self.lengths.append(len(wave))
        return [(a * SR // 1000, b * SR // 1000) for a, b in self.vad.segments_ms(wave)]


def _plan(windowed) -> tuple:
    windows = {i: [(w.start, w.end, w.overlapped) for w in ws] for i, ws in windowed.windows.items()}
    return windows, windowed.lengths, windowed.silent, windowed.durations().tolist()


def test_loader_workers_make_the_plan_one_process_makes(corpus, vad):
    manifest, known = corpus
    rules = WindowRules(5.0, 0.5, gate=True, speech_segments=Heard(vad))
    alone = split_long(manifest, known, sample_rate=SR, rules=rules)
    workers = split_long(manifest, known, sample_rate=SR, rules=rules, share=PlanShare(workers=2))
    assert _plan(workers) == _plan(alone)
    windows, _, silent, _ = _plan(alone)
    assert silent == {3, 5} and {0, 1, 6} <= windows.keys() and len(windows[1]) == 3  # gated, segmented, cut


def _ranks(manifest, known, rules_of, size: int) -> list:
    """split_long on `size` ranks (threads) whose gather is a barrier: each rank's plan and the recordings it heard."""

    def rank(r: int, gather):
        rules = rules_of()
        windowed = split_long(manifest, known, sample_rate=SR, rules=rules, share=PlanShare(r, size, 0, gather))
        return windowed, sorted(rules.speech_segments.lengths)

    return run_ranks(size, rank)


@pytest.mark.parametrize("gate", [True, False])
def test_ranks_share_the_reading_and_each_gets_the_whole_plan(corpus, vad, gate):
    manifest, known = corpus
    solo = WindowRules(5.0, 0.5, gate=gate, speech_segments=Heard(vad))
    alone = split_long(manifest, known, sample_rate=SR, rules=solo)
    ranks = _ranks(manifest, known, lambda: WindowRules(5.0, 0.5, gate=gate, speech_segments=Heard(vad)), 2)
    heard = [lengths for _, lengths in ranks]
    assert all(_plan(windowed) == _plan(alone) for windowed, _ in ranks)
    assert sorted(heard[0] + heard[1]) == sorted(solo.speech_segments.lengths)  # each recording heard once
    # longest first, dealt in turn: shares of about the same audio
    assert abs(len(heard[0]) - len(heard[1])) <= 1 and min(map(len, heard)) > 0
    assert len(solo.speech_segments.lengths) == (7 if gate else 4)  # with the gate every readable one, else long ones


def test_nothing_to_read_means_no_gather(corpus):
    manifest, known = corpus

    def gather(obj):
        raise AssertionError("gathered with nothing to share")

    windowed = split_long(manifest, known, sample_rate=SR, rules=WindowRules(60.0), share=PlanShare(0, 2, 0, gather))
    assert windowed.windows == {} and windowed.silent == set()


def test_a_gated_recording_is_cut_by_its_audio_not_its_line(tmp_path, vad):
    """The gate reads every recording, so a line whose duration understates its audio (a hint copied from another
    file) is still cut into windows: decoded whole it would be a 12 s item in a batch planned for 3 s."""
    sf.write(str(tmp_path / "long.wav"), syllable_bursts(12.0, [(4.0, 7.0)], seed=1), SR, subtype="FLOAT")
    lines = [{"key": "hint", "source": "long.wav", "target": "x", "duration": 3.0},
             {"key": "frames", "source": "long.wav", "target": "x", "source_len": 300}]  # fmt: skip
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    manifest, _ = open_manifests([str(tmp_path / "m.jsonl")], mix=False)
    gated = WindowRules(5.0, 0.5, gate=True, speech_segments=Heard(vad))
    windowed = split_long(manifest, [0, 1], sample_rate=SR, rules=gated)
    assert windowed.windows.keys() == {0, 1} and all(len(ws) >= 2 for ws in windowed.windows.values())
    assert windowed.lengths == {0: 12 * SR, 1: 12 * SR}
    assert max(windowed.durations()) <= 5.0


@pytest.mark.parametrize("from_speech", [False, True], ids=["kept", "from_speech"])
def test_speech_then_a_long_silence_is_not_decoded_whole(tmp_path, from_speech):
    """Speech that fits one window, then silence far past the limit: the window is the speech (the pause that runs to
    the end is in none, as after a long recording's last window), not the whole recording, which the model would hear
    past the longest clip it trained on, writing words into the silence up to the length cap of its duration."""
    quiet = np.zeros(int(20.0 * SR), dtype=np.float32)
    lead = np.zeros(int(1.0 * SR), dtype=np.float32)
    speech = syllable_bursts(1.5, seed=6, level=0.2, floor=0.002)
    sf.write(str(tmp_path / "a.wav"), np.concatenate([speech, quiet]), SR, subtype="FLOAT")
    sf.write(str(tmp_path / "b.wav"), np.concatenate([lead, speech, quiet]), SR, subtype="FLOAT")
    lines = [{"key": k, "source": f"{k}.wav", "target": "x"} for k in ("a", "b")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    manifest, _ = open_manifests([str(tmp_path / "m.jsonl")], mix=False)
    windowed = split_long(manifest, [0, 1], sample_rate=SR, rules=WindowRules(3.0, 0.5, 0.2, from_speech=from_speech))
    assert windowed.windows.keys() == {0, 1} and all(len(ws) == 1 for ws in windowed.windows.values())
    assert max(windowed.durations()) <= 3.0
    for i, start in ((0, 0.0), (1, 1.0)):
        (w,) = windowed.windows[i]
        assert start + 1.5 <= w.end / SR <= start + 1.5 + 0.35  # the speech and the pause a window keeps after it
        assert w.start / SR <= (start if from_speech else 0.0) + 0.01
