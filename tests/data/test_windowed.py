"""WindowedManifest: long utterances stand as their windows (records, durations, lines), and decoded items go back
to utterances: texts joined, an utterance with a bad window dropped and counted once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from speech_fakes import FakePromptBuilder

from llmasr.data.bad_data import BadDataTracker
from llmasr.data.loader import build_decode_loader, open_manifests
from llmasr.data.window_plan import WindowRules, split_long
from llmasr.data.windowed import WindowedManifest, utterance_rows, utterance_tracker

SR = 16000


@pytest.fixture
def manifest(tmp_path):
    """Line 1: 0.8 s; line 2: 9 s read from 1 s into a 10.5 s file, pauses at 3.0-3.4 and 6.0-6.4 s of the
    utterance; line 3: a missing file said to last 12 s."""
    rng = np.random.default_rng(0)
    sf.write(str(tmp_path / "short.wav"), 0.2 * rng.standard_normal(int(0.8 * SR)).astype(np.float32), SR)
    wave = (0.2 * rng.standard_normal(int(10.5 * SR))).astype(np.float32)
    for a, b in [(4.0, 4.4), (7.0, 7.4)]:  # file time: the utterance starts at 1 s
        wave[int(a * SR) : int(b * SR)] *= 0.001
    sf.write(str(tmp_path / "long.wav"), wave, SR, subtype="FLOAT")
    lines = [
        {"key": "s", "source": "short.wav", "target": "short one"},
        {"key": "l", "source": "long.wav", "target": "a long one", "start": 1.0, "end": 10.0},
        {"key": "gone", "source": "nope.wav", "target": "lost", "duration": 12.0},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_long_utterances_stand_as_their_windows(manifest):
    base, bad = open_manifests([str(manifest)], mix=False)
    assert not bad
    windowed = split_long(base, [0, 1, 2], sample_rate=SR, rules=WindowRules(4.0, 0.5))
    assert isinstance(windowed, WindowedManifest) and list(windowed.windows) == [1]  # `gone` stays whole
    assert len(windowed) == 5 and windowed.origin.tolist() == [0, 1, 1, 1, 2]
    cuts = [(w.start / SR, w.end / SR, w.overlapped) for w in windowed.windows[1]]
    assert len(cuts) == 3 and not any(o for _, _, o in cuts)
    assert 3.0 < cuts[0][1] <= cuts[1][0] < 3.4 and 6.0 < cuts[1][1] <= cuts[2][0] < 6.4  # the pauses are left out
    records = [windowed[j] for j in range(1, 4)]
    assert [r.key for r in records] == ["l"] * 3 and all(r.target == "a long one" for r in records)
    bounds = [t for r in records for t in (r.start, r.end)]  # flat: pytest.approx takes no nested sequences
    assert bounds == pytest.approx([1.0 + t for a, b, _ in cuts for t in (a, b)])
    assert windowed.durations()[1:4] == pytest.approx([b - a for a, b, _ in cuts])
    assert windowed.durations()[[0, 4]] == pytest.approx([0.8, 12.0])
    assert [windowed.lineno(j) for j in range(5)] == [1, 2, 2, 2, 3]
    assert windowed.items_of([1, 2]).tolist() == [1, 2, 3, 4]


def test_the_decode_loader_batches_windows_as_items(manifest):
    from llmasr.data.frontend import FrontendConfig

    loader = build_decode_loader(
        manifest, FrontendConfig(), prompt_builder=FakePromptBuilder(), batch_seconds=100.0, num_workers=0,
        max_bad_fraction=1.0, name="decode", windows=WindowRules(4.0, 0.5),
    )  # fmt: skip
    batches = [b for b in loader if b.size]
    assert sum(b.size for b in batches) == 4  # the short line and three windows; `gone` is bad
    rows = sorted(i for b in batches for i in b.indices)
    assert rows == [0, 1, 2, 3]
    durations = {i: float(d) for b in batches for i, d in zip(b.indices, b.durations)}
    windows = loader.dataset.manifest.windows[1]
    assert [durations[j] for j in (1, 2, 3)] == pytest.approx([(w.end - w.start) / SR for w in windows], abs=1e-4)
    tracker = utterance_tracker(loader.bad_data, loader.dataset.manifest, 2)
    assert tracker.bad == 1 and tracker.examples[0]["key"] == "gone" and tracker.examples[0]["index"] == 2


def test_items_go_back_to_utterances(manifest):
    base, _ = open_manifests([str(manifest)], mix=False)
    windowed = split_long(base, [0, 1], sample_rate=SR, rules=WindowRules(4.0, 0.5))

    def item(key, hyp, truncated=None, duration=1.0):
        return {
            "key": key,
            "ref": "r",
            "hyp": hyp,
            "ctc_hyp": hyp.upper(),
            "truncated": truncated,
            "duration": duration,
        }

    items = {0: item("s", "short one", duration=0.8), 1: item("l", "a"), 2: item("l", "long", "repetition"),
             3: item("l", "one", "max_tokens"), 4: item("gone", "lost", duration=12.0)}  # fmt: skip
    rows = utterance_rows(items, windowed, 0.5)
    assert [(r["key"], r["hyp"], r["ctc_hyp"], r["windows"], r["truncated"]) for r in rows] == [
        ("s", "short one", "SHORT ONE", 1, None),
        ("l", "a long one", "A LONG ONE", 3, "repetition"),  # the first guard that ended a window
        ("gone", "lost", "LOST", 1, None),
    ]
    assert rows[1]["duration"] == pytest.approx(9.0)  # the utterance, not the sum of its windows
    # A window that was bad data: its utterance has no row, and counts once as bad, under its own index
    del items[2]
    assert [r["key"] for r in utterance_rows(items, windowed, 0.5)] == ["s", "gone"]
    tracker = BadDataTracker(0.1, name="decode", keep_examples=10, enforce=False)
    tracker.add_static([{"manifest": "m", "line": 9, "key": "x", "reason": "malformed JSON", "index": -1}], quiet=True)
    for j in (2, 3):
        tracker.add_bad({"manifest": "m", "line": 2, "key": "l", "reason": "audio: corrupt", "index": j})
    counted = utterance_tracker(tracker, windowed, 2)
    assert counted.bad == 2 and counted.good == 2 and counted.exceeded
    assert [e["index"] for e in counted.examples] == [-1, 1]
    assert dict(counted.by_reason) == {"malformed line": 1, "unreadable or corrupt audio": 1}


def test_window_spans_are_milliseconds_inside_the_audio(tmp_path):
    """A file of 5.0008125 s: its last window ends at 5.0 s, the last millisecond in it, not 5.001 (0.2 ms past
    the file's end, which a pseudo-labelled line's `end` would repeat)."""
    rng = np.random.default_rng(1)
    wave = (0.2 * rng.standard_normal(5 * SR + 13)).astype(np.float32)
    wave[int(2.5 * SR) : int(2.9 * SR)] *= 0.001
    sf.write(str(tmp_path / "odd.wav"), wave, SR, subtype="FLOAT")
    (tmp_path / "m.jsonl").write_text(json.dumps({"key": "odd", "source": "odd.wav", "target": "t"}) + "\n")
    base, _ = open_manifests([str(tmp_path / "m.jsonl")], mix=False)
    windowed = split_long(base, [0], sample_rate=SR, rules=WindowRules(4.0, 0.5))
    assert windowed.windows[0][-1].end == len(wave)  # the last window reads to the file's end
    items = {
        j: {"key": "odd", "ref": None, "hyp": f"w{j}", "ctc_hyp": None, "truncated": None, "duration": 1.0}
        for j in range(len(windowed))
    }
    (row,) = utterance_rows(items, windowed, 0.5)
    assert row["duration"] == pytest.approx(5.0008125)
    spans = [(p["start"], p["end"]) for p in row["window_parts"]]
    assert spans[-1][1] == 5.0 and all(t == round(t, 3) for span in spans for t in span)
