"""llmasr.data.kaldi: a data directory's utt2dur gives the manifest its durations, so that training opens no audio
header at start-up for them."""

import json

import numpy as np
import pytest
import soundfile as sf

from llmasr.commands.data_kaldi import main
from llmasr.data.kaldi import KaldiError, kaldi_to_jsonl
from llmasr.data.manifest import Manifest


def kaldi_dir(tmp_path, n=4):
    d = tmp_path / "kaldi"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        sf.write(tmp_path / f"u{i}.wav", (0.1 * rng.standard_normal(16000 + 1600 * i)).astype(np.float32), 16000)
    (d / "wav.scp").write_text("".join(f"u{i} {tmp_path / f'u{i}.wav'}\n" for i in range(n)))
    (d / "text").write_text("".join(f"u{i} word {i}\n" for i in range(n)))
    return d


def test_utt2dur_durations_are_written_and_a_key_it_lacks_is_counted(tmp_path, capsys):
    d = kaldi_dir(tmp_path)
    (d / "utt2dur").write_text("u0 1.0\nu1 1.1\nu2 1.2\n")  # u3 missing: probed by training, as before
    out = tmp_path / "train.jsonl"
    assert main([str(d), str(out)]) == 0
    printed = capsys.readouterr().out
    assert '"durations_from_utt2dur": 3' in printed and '"durations_unknown": 1' in printed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("duration") for r in lines] == [1.0, 1.1, 1.2, None]
    m = Manifest.open(out)
    assert np.isnan(m.durations()).tolist() == [False, False, False, True]
    assert m.fill_durations() == [] and m.durations()[3] == pytest.approx(1.3)


def test_utt2dur_counts_and_segments_keep_their_own_span(tmp_path):
    d = kaldi_dir(tmp_path, n=2)
    (d / "segments").write_text("s0 u0 0.0 0.5\ns1 u1 0.2 -1\n")
    (d / "text").write_text("s0 a\ns1 b\n")
    (d / "utt2dur").write_text("s0 9.0\ns1 0.9\n")  # s0's own end - start wins
    counts = kaldi_to_jsonl(d / "wav.scp", d / "text", tmp_path / "o.jsonl", segments=d / "segments",
                            utt2dur=d / "utt2dur")  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["key"], r["duration"]) for r in lines] == [("s0", 0.5), ("s1", 0.9)]
    assert (counts["durations_from_utt2dur"], counts["durations_unknown"]) == (1, 0)


@pytest.mark.parametrize("value", ["abc", "0", "-0.5", "nan", ""])
def test_a_utt2dur_value_that_is_no_duration_is_refused_with_its_line(tmp_path, value):
    d = kaldi_dir(tmp_path, n=2)
    (d / "utt2dur").write_text(f"u0 1.0\nu1 {value}\n")
    with pytest.raises(KaldiError, match=rf"utt2dur:2: u1: expected '<key> <seconds>' with seconds > 0, got '{value}'"):
        kaldi_to_jsonl(d / "wav.scp", d / "text", tmp_path / "o.jsonl", utt2dur=d / "utt2dur")


def test_a_key_repeated_in_utt2dur_is_reported(tmp_path):
    d = kaldi_dir(tmp_path, n=2)
    (d / "utt2dur").write_text("u0 1.0\nu1 1.1\nu0 5.0\n")
    counts = kaldi_to_jsonl(d / "wav.scp", d / "text", tmp_path / "o.jsonl", utt2dur=d / "utt2dur")
    assert counts["duplicate_keys"] == 1 and "utt2dur key 'u0' repeated" in str(counts["problems"])
    assert [json.loads(line)["duration"] for line in (tmp_path / "o.jsonl").read_text().splitlines()] == [1.0, 1.1]


def test_utt2dur_that_get_utt2dur_wrote_from_segments_ending_at_minus_one_converts(tmp_path, capsys):
    """Kaldi's utils/data/get_utt2dur.sh writes end - start from segments: -1 - start for a segment that runs to its
    recording's end. That segment is written without a duration (training probes it), the directory converts (the
    whole conversion had been refused)."""
    d = kaldi_dir(tmp_path, n=2)
    (d / "segments").write_text("s0 u0 0.0 0.5\ns1 u1 0.2 -1\n")
    (d / "text").write_text("s0 a\ns1 b\n")
    (d / "utt2dur").write_text("s0 0.5\ns1 -1.2\n")  # awk '{len=$4-$3; print $1, len;}' segments
    out = tmp_path / "o.jsonl"
    assert main([str(d), str(out)]) == 0
    assert '"durations_unknown": 1' in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["key"], r.get("duration")) for r in lines] == [("s0", 0.5), ("s1", None)]
    m = Manifest.open(out)
    assert m.fill_durations() == [] and m.durations()[1] == pytest.approx(0.9)
    (d / "utt2dur").write_text("s0 0.5\ns1 abc\n")  # not a number: still refused with its line
    with pytest.raises(KaldiError, match=r"utt2dur:2: s1: expected"):
        kaldi_to_jsonl(d / "wav.scp", d / "text", out, segments=d / "segments", utt2dur=d / "utt2dur")
