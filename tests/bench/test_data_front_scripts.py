"""bench/feature_throughput.py, long_audio_plan.py, resample.py, window_joins.py and transcript_text.py in small
runs. No assertion is about speed, but one about dividing by the reads made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


def test_feature_throughput_runs_and_divides_by_the_records_it_read(capsys):
    """30 records read with a 20-read cap: every one is read (the step rounds down to 1), each taking ~2 ms."""
    import time

    import feature_throughput

    class SlowManifest:
        def __len__(self):
            return 30

        def __getitem__(self, i):
            time.sleep(0.002)

    assert 0.0019 < feature_throughput.read_seconds(SlowManifest(), max_reads=20) < 0.0027
    feature_throughput.main(["--seconds", "0.5", "--records", "50"])
    out = capsys.readouterr().out
    assert "resample 44100 -> 16000" in out and "whisper log-mel 128" in out and "record read" in out
    assert out.rstrip().splitlines()[-1].startswith("Commit: ")  # the commit it measured


def test_long_audio_plan_and_resample_print_their_tables():
    for script, args in (("long_audio_plan.py", ["--minutes", "0.5", "--repeat", "1"]),
                         ("resample.py", ["--rates", "22050", "--seconds", "0.5", "--repeat", "1"])):  # fmt: skip
        out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, check=True)
        rows = [line for line in out.stdout.splitlines() if line.startswith("| 0.5 ") or line.startswith("| 22050")]
        assert len(rows) == 1, out.stdout
        assert out.stdout.rstrip().splitlines()[-1].startswith("Commit: "), script


def test_window_joins_scores_every_case_for_every_rule(capsys):
    """Two overlaps x four texts x two cuts x three kinds of edge error: a row each, with a WER per rule and the
    oracle's."""
    import window_joins

    window_joins.main(["--trials", "3", "--overlap", "0.5", "1.0", "--rules", "module", "previous", "--oracle"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 0.5 ") or line.startswith("| 1 ")]
    assert len(rows) == 48 and all(line.count("(") == 3 for line in rows), rows
    assert out.rstrip().splitlines()[-1].startswith("Commit: ")


def test_transcript_text_finds_what_the_plain_pass_finds(tmp_path):
    """The text pass of the start-up screen (llmasr.data.transcript_text) against normalising every line: the same
    lines in each corpus, every segmented line spaced, and the screen timed with it and without."""
    import json

    import transcript_text

    out = tmp_path / "r.json"
    assert transcript_text.main(["--lines", "400", "--odd", "0.05", "--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert all(rows[k]["same"] for k in ("english", "chinese", "segmented"))
    assert rows["segmented"]["found"]["spaced CJK"] == 400 and rows["chinese"]["found"]["spaced CJK"] == 0
    assert rows["english"]["found"]["whitespace"] > 0
    # timed, not judged: 400 lines can screen in under the 10 ms the table rounds to (0.0 on a quiet machine)
    assert all(rows["screen"][k] >= 0 for k in ("with_text_pass_s", "without_s"))


def test_score_speed_and_data_check_speed_print_their_line(capsys):
    """bench/score_speed.py (llmasr score on generated English and Chinese transcripts) and data_check_speed.py
    (llmasr data check on a generated manifest) in small runs: one line of numbers each, the command's own figures
    in it."""
    import data_check_speed
    import score_speed

    for kind in ("english", "chinese"):
        score_speed.main(["--lines", "300", "--kind", kind])
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"300 {kind} lines, 2 systems: llmasr score ") and "over 300 utterances" in out[0]
        assert ("WER" if kind == "english" else "CER") in out[0] and out[-1].startswith("Commit: ")
    data_check_speed.main(["--lines", "300", "--wavs", "2"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("300 lines: llmasr data check ") and "exit 0; batches per rank: " in out[0], out
