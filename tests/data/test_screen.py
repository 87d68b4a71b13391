"""screen: the lines known bad before loading, at every index a mix gives them."""

from __future__ import annotations

import json

import pytest
from speech_fakes import write_wav

from llmasr.config_io import from_dict
from llmasr.data.config import DataConfig
from llmasr.data.manifest import Manifest
from llmasr.data.mixed_manifest import MixedManifest
from llmasr.data.screen import screen


def manifest(tmp_path, durations, name="train.jsonl"):
    lines = []
    for i, d in enumerate(durations):
        rec = {"key": f"u{i}", "source": f"u{i}.wav", "target": "words"}
        if d is not None:
            rec["duration"] = d
        lines.append(json.dumps(rec))
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def cfg(train, **batching):
    return from_dict(DataConfig, {"train": train, "batching": batching}, "data")


def test_a_manifest_listed_twice_is_screened_at_both_indices(tmp_path):
    """A missing audio file (found by probing its header) and a malformed line, in a manifest a mix lists twice: each
    copy's index is bad; the (path, line) of the two copies had kept only the second."""
    write_wav(tmp_path / "ok.wav", 1.0)
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps({"key": "ok", "source": "ok.wav", "target": "words", "duration": 1.0}) + "\n"
        + json.dumps({"key": "gone", "source": str(tmp_path / "gone.wav"), "target": "words"}) + "\n"
        + "{not json\n"
    )  # fmt: skip
    once, _ = screen(Manifest.open(str(path)))
    assert [(b.index, b.line) for b in once] == [(1, 2), (2, 3)]
    twice, _ = screen(MixedManifest([Manifest.open(str(path)), Manifest.open(str(path))], weights=[1.0, 0.5]))
    assert [(b.index, b.line) for b in twice] == [(1, 2), (2, 3), (4, 2), (5, 3)]
    assert "gone.wav" in twice[2].reason


def test_every_lines_audio_file_is_checked_and_headers_probed_on_its_channel(tmp_path):
    """A line giving its duration had passed the screen with its audio file missing (or a directory), found only
    when loaded hours in; a line without one had its header probed without its channel, a channel the file lacks
    found only when loaded."""
    write_wav(tmp_path / "a.wav", 1.0)
    (tmp_path / "folder.wav").mkdir()
    recs = [
        {"key": "ok", "source": "a.wav", "target": "x", "duration": 1.0},
        {"key": "missing", "source": "nope.wav", "target": "x", "duration": 1.0},
        {"key": "dir", "source": "folder.wav", "target": "x", "duration": 1.0},
        {"key": "badchan", "source": "a.wav", "target": "x", "channel": 3},
        {"key": "chan0", "source": "a.wav", "target": "x", "channel": 0},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = Manifest.open(str(path))
    bad, _ = screen(m)
    assert [(b.index, b.key, b.reason) for b in bad] == [
        (1, "missing", f"audio {tmp_path / 'nope.wav'}: file not found"),
        (2, "dir", f"audio {tmp_path / 'folder.wav'}: is a directory, not an audio file"),
        (3, "badchan", f"audio {tmp_path / 'a.wav'}: channel 3 requested but the file has 1 channel(s)"),
    ]
    assert [b.line for b in bad] == [2, 3, 4] and m.durations()[4] == pytest.approx(1.0)


def test_a_missing_audio_file_says_what_the_line_may_have_meant(tmp_path, monkeypatch):
    # FunASR opens `source` from the working directory; llmasr from the manifest's folder. A corpus written for
    # FunASR was refused line by line as "file not found" naming a path that is not the one written, and a path
    # ending in a space read as the right one.
    from llmasr.data.check import check_data
    from llmasr.data.frontend import FrontendConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "wav").mkdir(parents=True)
    write_wav(tmp_path / "data" / "wav" / "a.wav", 0.5)
    lines = [
        {"key": "a", "source": "data/wav/a.wav", "target": "words", "duration": 0.5},
        {"key": "b", "source": "wav/a.wav ", "target": "words", "duration": 0.5},
        {"key": "c", "source": "wav/none.wav", "target": "words", "duration": 0.5},
    ]
    path = tmp_path / "data" / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    base = tmp_path / "data"
    cwd_hint = (
        " (data/wav/a.wav is a file from the working directory, where FunASR looks; llmasr reads a relative path from "
        f"the manifest's folder, {base}: write the paths absolute, or relative to that folder)"
    )
    space_hint = " (the path as written, 'wav/a.wav ', begins or ends with white space)"
    bad, _ = screen(Manifest.open(path))
    assert [b.reason for b in bad] == [
        f"audio {base}/data/wav/a.wav: file not found{cwd_hint}",
        f"audio {base}/wav/a.wav : file not found{space_hint}",
        f"audio {base}/wav/none.wav: file not found",
    ]
    report = check_data([path], cfg([str(path)]), FrontendConfig())
    assert [b["reason"] for b in report.bad] == [b.reason for b in bad]  # as the screen words them
    assert report.bad_by_reason == {"audio file not found": 3}
