"""What a decode reports while it runs: a progress line every so often (llmasr.export.decode_options.Pace)."""

from __future__ import annotations

import logging

from llmasr.commands.decode import main
from llmasr.export import decode
from llmasr.testing.run_dirs import TEXTS, write_corpus


def test_a_decode_says_how_far_it_is_while_it_runs(exported_dir, tmp_path, monkeypatch, caplog):
    """A decode said nothing between loading the model and its scores: on a cluster a test set of hours was a
    silent job for as long. Now a plain line every PROGRESS_EVERY_S seconds: batches done, audio, time left."""
    monkeypatch.setattr(decode, "PROGRESS_EVERY_S", 0.0, raising=False)
    manifest = write_corpus(tmp_path / "d", TEXTS[:4], name="dev")
    args = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(tmp_path / "o"),
            "--max-new-tokens", "2", "--num-workers", "0", "--batch-seconds", "1"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="llmasr"):
        assert main(args) == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoding dev.jsonl: batch ")]
    assert said and said[0].startswith("decoding dev.jsonl: batch 1 of ")
    total = int(said[0].split(" of ")[1].split()[0])
    assert len(said) == total - 1 and " s of audio in " in said[0] and said[0].endswith(" s left")  # none at the end


def test_pace_speaks_every_so_often_and_names_rank_0_s_share(monkeypatch, caplog):
    from llmasr.export.decode_options import Pace

    now = [100.0]
    monkeypatch.setattr("llmasr.export.decode_options.time.monotonic", lambda: now[0])
    pace = Pace("test.jsonl", 30.0, 10, ranks=2)
    with caplog.at_level(logging.INFO, logger="llmasr"):
        for _ in range(9):
            now[0] += 10.0
            pace.batch(2.5)
        silent = Pace("test.jsonl", None, 10)
        silent.batch(2.5)
    name = "decoding test.jsonl (rank 0's share of 2 ranks)"
    assert [r.getMessage() for r in caplog.records] == [
        f"{name}: batch 3 of 10 (30%), 7.5 s of audio in 30 s, about 70 s left",
        f"{name}: batch 6 of 10 (60%), 15.0 s of audio in 60 s, about 40 s left",
        f"{name}: batch 9 of 10 (90%), 22.5 s of audio in 90 s, about 10 s left",
    ]


def test_llmasr_transcribe_says_on_stderr_how_far_a_long_list_is(exported_dir, tmp_path, monkeypatch, capsys):
    """`llmasr transcribe` of a long list printed nothing until every file was done; stdout keeps the texts alone."""
    from llmasr.commands.transcribe import main as transcribe
    from llmasr.export import transcribe as transcriber

    monkeypatch.setattr(transcriber, "PROGRESS_EVERY_S", 0.0, raising=False)
    manifest = write_corpus(tmp_path / "d", TEXTS[:4], name="dev")
    wavs = sorted(str(p) for p in manifest.parent.rglob("*.wav"))
    assert transcribe(["--model", str(exported_dir), "--max-new-tokens", "2", "--batch-seconds", "1", *wavs]) == 0
    out, err = capsys.readouterr()
    assert f"decoding {len(wavs)} clips: batch 1 of " in err and "decoding" not in out
    assert len(out.splitlines()) == len(wavs)


def test_llmasr_transcribe_s_stderr_shows_the_progress_alone_of_the_decode_s_info(exported_dir, tmp_path):
    """transcribe shows warnings, and the decode's progress lines at INFO: raising the decode's whole logger to INFO
    for them had also shown its other INFO lines (an export without training.longest_seconds said so on every
    transcribe). Run as a user runs it: in pytest's process a training run's handlers show INFO anyway."""
    import shutil
    import subprocess
    import sys

    model = shutil.copytree(exported_dir, tmp_path / "model")
    desc = model / "llmasr_model.yaml"
    desc.write_text("".join(line for line in desc.read_text().splitlines(True) if "longest_seconds:" not in line))
    manifest = write_corpus(tmp_path / "d", TEXTS[:2], name="dev")
    wavs = sorted(str(p) for p in manifest.parent.rglob("*.wav"))
    cmd = [sys.executable, "-m", "llmasr", "transcribe", "--model", str(model), "--max-new-tokens", "2", *wavs]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "no training.longest_seconds" not in done.stderr, done.stderr
