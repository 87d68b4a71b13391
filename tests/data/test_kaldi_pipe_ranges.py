"""The ranges wav.scp pipe commands cut, read as the file's range: sox's `trim START [END]` (`+`, `=`, `-` positions,
seconds or samples) and flac's `--skip=`/`--until=` (samples or mm:ss.ss; `+`/`-` untils); the forms not mapped, and
ranges outside the file, refused naming the part."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from test_kaldi_pipes import SR, _kaldi, _lines, _loaded, _two_channel_sph

from llmasr.data.audio import load_audio

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")


def test_sox_trim_is_the_files_range(tmp_path):
    """`trim START [END]` had been refused ("sox effect 'trim 0 10'"): each form is now the range sox keeps, an end
    past the file the file's end (sox stops there), combined with a remix pick and a segment's times."""
    x = _two_channel_sph(tmp_path / "a.sph", subtype="PCM_16")
    f = tmp_path / "a.wav"
    sf.write(f, x, SR, subtype="PCM_16")
    lines = {
        "t1": "trim 0.5 1.25 remix 2",  # START then a duration
        "t2": "trim 1 =3",  # an absolute end
        "t3": "remix 1 trim 800s -0.5",  # samples; an end half a second before the file's
        "t4": "trim -1",  # the last second
        "t5": "trim 0:01.5 +0:00.5",  # mm:ss
        "t6": "trim 2 5",  # past the file: to its end
    }
    counts = _kaldi(tmp_path, "".join(f"{k} sox {f} -t wav - {e} |\n" for k, e in lines.items()),
                    "".join(f"{k} x\n" for k in lines))  # fmt: skip
    assert (counts["written"], counts["unsupported"], counts["piped_read_as_files"]) == (6, 0, 6)
    recs = {r["key"]: r for r in _lines(tmp_path / "out.jsonl")}
    got = {k: (r["start"], r.get("end"), r.get("channel"), r["duration"]) for k, r in recs.items()}
    assert got == {
        "t1": (0.5, 1.75, 1, 1.25), "t2": (1.0, 3.0, None, 2.0), "t3": (0.1, 3.5, 0, 3.4),
        "t4": (3.0, None, None, 1.0), "t5": (1.5, 2.0, None, 0.5), "t6": (2.0, None, None, 2.0),
    }  # fmt: skip
    np.testing.assert_array_equal(_loaded(recs["t1"]), x[4000:14000, 1])
    np.testing.assert_array_equal(_loaded(recs["t3"]), x[800:28000, 0])
    np.testing.assert_allclose(_loaded(recs["t4"]), x[24000:].mean(axis=1), atol=1e-6)


def test_a_segment_of_a_trimmed_sox_stream(tmp_path):
    x = _two_channel_sph(tmp_path / "a.sph", subtype="PCM_16")
    counts = _kaldi(tmp_path, f"r sox {tmp_path / 'a.sph'} -t wav - trim 1 2 remix 2 |\n", "a x\nb x\n",
                    "a r 0.5 1.5\nb r 0.5 2.5\n")  # fmt: skip
    assert counts["written"] == 1 and counts["bad_segments_keys"] == ["b"]
    (a,) = _lines(tmp_path / "out.jsonl")
    assert (a["start"], a["end"], a["channel"]) == (1.5, 2.5, 1)
    np.testing.assert_array_equal(_loaded(a), x[12000:20000, 1])


def test_flac_skip_and_until_are_the_files_range(tmp_path):
    """`--skip=`/`--until=` had been refused ("flac option '--until=2'"): samples, mm:ss.ss, an until counted from
    the skip (`+`) or back from the end (`-`), `--skip N` as a separate word."""
    y = (np.sin(np.arange(32000) / 7) * 8000).astype(np.int16)
    f = tmp_path / "s.flac"
    sf.write(f, y, 16000)
    lines = {
        "f1": "flac -c -d -s --skip=1600 --until=8000",
        "f2": "flac -dcs --skip=0:00.5 --until=+0:00.25",
        "f3": "flac -c -d --until=-0:01.5 -s",
        "f4": "flac -cds --skip 16000",
        "f5": "flac -cds --skip=0:01 --until=+8000",
        "f6": "flac -cds --until=32000",  # the file's last sample: to its end
    }
    counts = _kaldi(tmp_path, "".join(f"{k} {c} {f} |\n" for k, c in lines.items()), "".join(f"{k} x\n" for k in lines))
    assert (counts["written"], counts["piped_read_as_files_by_tool"]) == (6, {"flac": 6})
    recs = {r["key"]: r for r in _lines(tmp_path / "out.jsonl")}
    got = {k: (r.get("start"), r.get("end"), r["duration"]) for k, r in recs.items()}
    assert got == {
        "f1": (0.1, 0.5, 0.4), "f2": (0.5, 0.75, 0.25), "f3": (0.0, 0.5, 0.5), "f4": (1.0, None, 1.0),
        "f5": (1.0, 1.5, 0.5), "f6": (None, None, 2.0),
    }  # fmt: skip
    for k, (a, b) in {"f1": (1600, 8000), "f2": (8000, 12000), "f5": (16000, 24000)}.items():
        r = recs[k]
        got = load_audio(r["source"], sample_rate=16000, start=r["start"], end=r.get("end"))
        np.testing.assert_array_equal(got, y[a:b].astype(np.float32) / 32768)


REFUSED = [
    ("sox {f} -t wav - trim 1 trim 0.5 |", "a second sox effect 'trim 0.5'"),
    ("sox {f} -t wav - rate 16k trim 800s |", "sox effect 'trim 800s' in samples after a rate effect"),
    ("sox {f} -t wav - trim |", "sox effect 'trim' (no position; read: trim START [LEN|=END|-FROM_END], one range)"),
    ("sox {f} -t wav - trim 1x |", "sox trim position '1x'"),
    ("sox {f} -t wav - trim 5 |", "it starts at 5s, past the end of {f} (4s)"),
    ("sox {f} -t wav - trim 2 =1 |", "its range ends at 1s, not after its start at 2s"),
    ("flac -c -d -s --until=9000 {fl} |", "its --until ends at 1.125s, past the end of {fl} (1s) (flac refuses it)"),
    ("flac -c -d -s --skip=2:00 {fl} |", "it starts at 120s, past the end of {fl} (1s)"),
    ("flac -c -d -s --skip=100 --until=50 {fl} |", "its range ends at 0.00625s, not after its start at 0.0125s"),
    ("flac -c -d -s --skip=-5 {fl} |", "flac --skip='-5' (expected a sample number or mm:ss.ss)"),
    ("flac -c -d -s --until=1.5 {fl} |", "flac --until='1.5' (expected a sample number or mm:ss.ss)"),
    ("flac -c -d -s {fl} --until |", "flac option '--until' without its value"),
    # an empty value fails in flac ("argument to --skip must be a non-negative sample count or time")
    ("flac -c -d -s --skip= {fl} |", "flac --skip='' (expected a sample number or mm:ss.ss)"),
    ("flac -c -d -s --until= {fl} |", "flac --until='' (expected [+|-] and a sample number or mm:ss.ss)"),
    # sph2pipe keeps the first -t's start where a second leaves its start out (it reads 1-3 s): not one range
    ("sph2pipe -f wav -t 1:2 -t :3 {f} |", "a second sph2pipe -t ':3' (a range is given once)"),
]


@pytest.mark.parametrize("command, part", REFUSED, ids=[p for _, p in REFUSED])
def test_ranges_not_mapped_or_outside_the_file_are_refused_naming_the_part(tmp_path, command, part):
    _two_channel_sph(tmp_path / "a.sph")
    f, fl = tmp_path / "a.sph", tmp_path / "l.flac"
    sf.write(fl, np.zeros(SR), SR)
    command, part = command.format(f=f, fl=fl), part.format(f=f, fl=fl)
    counts = _kaldi(tmp_path, f"k {command}\n", "k x\n", base=tmp_path)
    assert counts["written"] == 0 and counts["unsupported_keys"] == ["k"]
    (why,) = [str(p) for p in counts["problems"]]
    assert f"unsupported: k: pipe command {command[:60]!r} is not supported (" in why and part in why


def test_times_are_cut_at_the_samples_each_tool_cuts(tmp_path):
    """sph2pipe and flac cut a time down to a sample (C's `(int)(t * rate)`: 2.01 s at 8 kHz is 16079.99..., sample
    16079), sox rounds each position to the nearest sample and adds a relative one in samples; the seconds had been
    rounded whole by the loader, a sample after or before what the tool gives."""
    x = _two_channel_sph(tmp_path / "a.sph", subtype="PCM_16")
    y = (np.sin(np.arange(48000) / 7) * 8000).astype(np.int16)
    sf.write(tmp_path / "y.flac", y, 16000)
    lines = {
        "s": f"sph2pipe -f wav -t 2.01:3.5 -c 1 {tmp_path / 'a.sph'} |",
        "f": f"flac -c -d -s --skip=0:02.01 --until=+0:00.5 {tmp_path / 'y.flac'} |",
        "x": f"sox {tmp_path / 'a.sph'} -t wav - trim 0.10006 0.10006 remix 2 |",  # 800.48 samples each: 800 + 800
    }
    counts = _kaldi(tmp_path, "".join(f"{k} {c}\n" for k, c in lines.items()), "".join(f"{k} x\n" for k in lines))
    assert counts["written"] == 3
    recs = {r["key"]: r for r in _lines(tmp_path / "out.jsonl")}
    np.testing.assert_array_equal(_loaded(recs["s"]), x[16079:28000, 0])
    f = recs["f"]
    got = load_audio(f["source"], sample_rate=16000, start=f["start"], end=f["end"])
    np.testing.assert_array_equal(got, y[32159:40159].astype(np.float32) / 32768)
    np.testing.assert_array_equal(_loaded(recs["x"]), x[800:1600, 1])


def test_a_flac_until_at_the_files_end_reads_to_its_end(tmp_path):
    """A file of 16001 samples at 16 kHz is 1.0000625 s: `--until=16001` (its last sample) had been refused as past
    its end ("its --until ends at 1.00006s, past the end of y.flac (1.00006s)"), as had `--until=-0`; `+0`, which
    flac also reads as the end of the stream, had been refused as ending at its start."""
    y = (np.sin(np.arange(16001) / 7) * 8000).astype(np.int16)
    f = tmp_path / "y.flac"
    sf.write(f, y, 16000)
    lines = {"n": "--until=16001", "m": "--until=-0", "p": "--skip=5 --until=+0", "q": "--skip=5 --until=+15996"}
    counts = _kaldi(tmp_path, "".join(f"{k} flac -c -d -s {u} {f} |\n" for k, u in lines.items()),
                    "".join(f"{k} x\n" for k in lines))  # fmt: skip
    assert counts["written"] == 4, counts["problems"]
    recs = {r["key"]: r for r in _lines(tmp_path / "out.jsonl")}
    assert {k: (r.get("start"), r.get("end"), r["duration"]) for k, r in recs.items()} == {
        "n": (None, None, 1.000063), "m": (None, None, 1.000063), "p": (0.000313, None, 0.99975),
        "q": (0.000313, None, 0.99975),
    }  # fmt: skip
    got = load_audio(str(f), sample_rate=16000, start=recs["p"]["start"])
    np.testing.assert_array_equal(got, y[5:].astype(np.float32) / 32768)


def test_a_sox_count_back_past_the_start_stops_at_it(tmp_path):
    """sox counts a `-` position back from the end and stops at the start (its subtraction floors at 0), and a `+`
    length counts on from where the position before landed: `trim -5` of a 4 s file is the whole file, `trim -5 1`
    its first second. Both had been refused ("it starts 1s before the beginning")."""
    x = _two_channel_sph(tmp_path / "a.sph", subtype="PCM_16")
    f = tmp_path / "a.sph"
    lines = {"all": "trim -5", "first": "trim -5 1", "tail": "trim -2 =3.5"}
    counts = _kaldi(tmp_path, "".join(f"{k} sox {f} -t wav - {e} remix 1 |\n" for k, e in lines.items()),
                    "".join(f"{k} x\n" for k in lines))  # fmt: skip
    assert counts["written"] == 3, counts["problems"]
    recs = {r["key"]: r for r in _lines(tmp_path / "out.jsonl")}
    assert {k: (r.get("start"), r.get("end")) for k, r in recs.items()} == {
        "all": (None, None), "first": (0.0, 1.0), "tail": (2.0, 3.5),
    }  # fmt: skip
    np.testing.assert_array_equal(_loaded(recs["first"]), x[:8000, 0])
