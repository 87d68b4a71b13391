"""lhotse recordings whose sources are commands that decode a file (`sph2pipe -f wav -p -c 1 F.sph`, as lhotse's
Switchboard recipe and its Kaldi import write them) read as that file: the command's channel pick and range, the
cut's own start, duration and channel placed in the file; every command the Kaldi path refuses refused, naming the
manifest line and the part at fault."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.audio import load_audio
from llmasr.data.manifest import BadRecord, Manifest

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")
SR = 8000


def _recording(rec_id, sources, seconds, rate=SR):
    """A lhotse Recording as Recording.to_dict writes it."""
    return {"id": rec_id, "sources": sources, "sampling_rate": rate, "num_samples": int(seconds * rate),
            "duration": seconds, "channel_ids": sorted(c for s in sources for c in s["channels"])}  # fmt: skip


def _cut(cut_id, recording, start, duration, channel=0, sup=None):
    """A MonoCut (a MultiCut where `channel` is a list) as CutSet.to_file writes it, its supervision the cut's span
    unless `sup` gives (start, duration) within the cut."""
    s0, d0 = sup or (0.0, duration)
    return {
        "id": cut_id, "start": start, "duration": duration, "channel": channel,
        "supervisions": [{"id": f"{cut_id}-sup", "recording_id": recording["id"], "start": s0, "duration": d0,
                          "channel": channel, "text": "hello", "language": "English", "speaker": "A"}],
        "recording": recording, "type": "MultiCut" if isinstance(channel, list) else "MonoCut",
    }  # fmt: skip


def _write(path, cuts):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        f.writelines(json.dumps(c) + "\n" for c in cuts)
    return path


def _loaded(u, rate=SR):
    return load_audio(u.source, sample_rate=rate, start=u.start, end=u.end, channel=u.channel)


def test_switchboard_command_sources_read_from_the_working_directory(tmp_path, monkeypatch, capsys):
    """lhotse's Switchboard recording: one `sph2pipe ... -c N F.sph` source a channel, F relative to the working
    directory lhotse's shell runs in. Every cut had been refused ("source type 'command' is not supported")."""
    x = (np.random.default_rng(0).standard_normal((SR * 4, 2)) * [0.1, 0.3]).astype(np.float32)
    sf.write(tmp_path / "sw02001.sph", x, SR, format="NIST", subtype="PCM_16")
    x = sf.read(tmp_path / "sw02001.sph", dtype="float32")[0]
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    sides = [{"type": "command", "channels": [c], "source": f"sph2pipe -f wav -p -c {c + 1} sw02001.sph"}
             for c in (0, 1)]  # fmt: skip
    rec = _recording("sw02001", sides, 4.0)
    cuts = [_cut("a", rec, 0.5, 1.25, channel=0), _cut("b", rec, 1.0, 2.0, channel=1, sup=(0.5, 1.0))]
    m = Manifest.open(_write(tmp_path / "data" / "cuts.jsonl.gz", cuts))
    a, b = m[0], m[1]
    assert (a.source, a.channel, a.start, a.end, a.duration) == (str(tmp_path / "sw02001.sph"), 0, 0.5, 1.75, 1.25)
    assert (b.channel, b.start, b.end, b.duration) == (1, 1.5, 2.5, 1.0)
    np.testing.assert_array_equal(_loaded(a), x[4000:14000, 0])
    np.testing.assert_array_equal(_loaded(b), x[12000:20000, 1])
    from llmasr.commands.data_check import main

    assert main([str(m.path)]) == 0  # the loader reads each cut's audio: no bad line
    out = capsys.readouterr().out
    assert "usable: 2, bad: 0 " in out and "result: OK" in out


def test_a_commands_range_and_pick_combine_with_the_cuts_times_and_channels(tmp_path):
    """A cut's start is of the command's output: after its --skip / trim start; a cut past the output's end (its
    --until, trim end) is refused; the stream's channels are the source's, mapped to the file's through the pick."""
    y = (np.sin(np.arange(48000) / 7) * 8000).astype(np.int16)
    sf.write(tmp_path / "y.flac", y, 16000)
    x = (np.random.default_rng(1).standard_normal((SR * 4, 2)) * 0.2).astype(np.float32)
    sf.write(tmp_path / "x.wav", x, SR, subtype="FLOAT")
    flac = _recording("y", [{"type": "command", "channels": [0],
                             "source": f"flac -c -d -s --skip=0:00.5 --until=+32000 {tmp_path / 'y.flac'}"}], 2.0,
                      16000)  # fmt: skip
    picked = _recording("p", [{"type": "command", "channels": [0],
                               "source": f"sox {tmp_path / 'x.wav'} -t wav - trim 1 =3.5 remix 2"}], 2.5)  # fmt: skip
    both = _recording("s", [{"type": "command", "channels": [0, 1],
                             "source": f"sox {tmp_path / 'x.wav'} -t wav - trim 1"}], 3.0)  # fmt: skip
    cuts = [
        _cut("f", flac, 0.25, 1.0), _cut("past", flac, 1.5, 0.9), _cut("p", picked, 0.5, 1.0),
        _cut("avg", both, 0.5, 1.0, channel=[0, 1]), _cut("right", both, 1.0, 2.0, channel=1),
    ]  # fmt: skip
    cuts[1]["recording"] = dict(flac, duration=2.5)  # as declared it fits; the stream is 2 s
    m = Manifest.open(_write(tmp_path / "cuts.jsonl", cuts))
    f, p, avg, right = m[0], m[2], m[3], m[4]
    assert (f.source, f.channel, f.start, f.end) == (str(tmp_path / "y.flac"), None, 0.75, 1.75)
    np.testing.assert_array_equal(_loaded(f, 16000), y[12000:28000].astype(np.float32) / 32768)
    with pytest.raises(BadRecord) as e:
        m[1]
    assert str(e.value).startswith(f"{m.path}:2: ") and (
        "lhotse cut (1.5 s + 0.9 s) ends 0.400 s past the end of its command's output (2 s of " in e.value.reason
    )  # 2.0-2.9 in the file, the output 0.5-2.5
    assert (p.channel, p.start, p.end) == (1, 1.5, 2.5)
    np.testing.assert_array_equal(_loaded(p), x[12000:20000, 1])
    assert (avg.channel, avg.start, avg.end) == (None, 1.5, 2.5)
    np.testing.assert_allclose(_loaded(avg), x[12000:20000].mean(axis=1), atol=1e-6)
    assert (right.channel, right.start, right.end) == (1, 2.0, 4.0)
    np.testing.assert_array_equal(_loaded(right), x[16000:, 1])


REFUSED = [
    ("sph2pipe -f wav -c 1 {f}", [0, 1], "the source lists channels [0, 1] and the command outputs 1 of {f}"),
    ("sox {f} -t wav - gain -3", [0], "sox effect 'gain -3'"),
    ("sox {f} -t wav - remix 3", [0], "sox picks channel 3 of {f}, which has 2"),
    ("sox {f} -t wav - trim 0 1 2", [0], "sox effect 'trim 0 1 2' (3 positions"),
    ("sox {f} -t wav - trim 5", [0], "it starts at 5s, past the end of {f} (4s)"),
    ("flac -c -d -s {f}", [0], "flac decodes FLAC files, and {f} is NIST (the command fails)"),
    ("sph2pipe -f wav gone.sph", [0], "it reads gone.sph, which is not there (file not found): relative paths are"),
    ("sph2pipe -f wav {f} |", [0], "a second command in the pipeline ('|')"),
    ("sph2pipe {f} > out.wav", [0], "a redirection '>'"),
]


@pytest.mark.parametrize("command, channels, part", REFUSED, ids=[p for _, _, p in REFUSED])
def test_commands_the_kaldi_path_refuses_are_refused_naming_the_line_and_part(tmp_path, command, channels, part):
    f = tmp_path / "a.sph"
    sf.write(f, np.zeros((SR * 4, 2), dtype=np.float32), SR, format="NIST", subtype="PCM_16")
    command, part = command.format(f=f), part.format(f=f)
    rec = _recording("r", [{"type": "command", "channels": channels, "source": command}], 4.0)
    m = Manifest.open(_write(tmp_path / "cuts.jsonl", [_cut("ok", rec, 0.0, 1.0), _cut("k", rec, 0.0, 1.0)]))
    with pytest.raises(BadRecord) as e:
        m[1]
    assert e.value.line == 2 and e.value.key == "k"
    assert e.value.reason.startswith(f"lhotse recording source command {command[:60]!r} is not read as a file (")
    assert part in e.value.reason


def test_a_command_reads_its_file_as_it_is_now_not_as_first_opened(tmp_path, monkeypatch):
    """The file a command decodes is opened once for the cuts that share it, but not kept past a change: a manifest
    opened again after the audio is written (it was missing) or rewritten (longer) had been answered from the first
    opening for the rest of the process."""
    monkeypatch.chdir(tmp_path)
    rec = _recording("r", [{"type": "command", "channels": [0], "source": "sox a.wav -t wav -"}], 2.0)
    path = _write(tmp_path / "cuts.jsonl", [_cut("k", rec, 0.0, 1.5)])
    with pytest.raises(BadRecord, match="it reads a.wav, which is not there"):
        Manifest.open(path)[0]
    sf.write(tmp_path / "a.wav", np.zeros(SR // 2, dtype=np.float32), SR)  # 0.5 s: the cut runs past it
    with pytest.raises(BadRecord, match="ends 1.000 s past the end of its command's output"):
        Manifest.open(path)[0]
    sf.write(tmp_path / "a.wav", np.zeros(SR * 2, dtype=np.float32), SR)  # rewritten whole
    u = Manifest.open(path)[0]
    assert (u.source, u.start, u.end) == (str(tmp_path / "a.wav"), 0.0, 1.5)


def test_a_cut_starting_at_or_past_its_commands_output_end_is_a_bad_line(tmp_path):
    """A cut past the output's end by less than lhotse's tolerance is clipped to it; one that starts there or after
    it had been read as an utterance of negative duration (3.005 s to 3.0 s of the file)."""
    sf.write(tmp_path / "a.wav", np.zeros(SR * 4, dtype=np.float32), SR)
    trim = {"type": "command", "channels": [0], "source": f"sox {tmp_path / 'a.wav'} -t wav - trim 1 2"}
    rec = _recording("r", [trim], 2.5)
    m = Manifest.open(_write(tmp_path / "cuts.jsonl", [_cut("past", rec, 2.005, 0.01), _cut("end", rec, 1.99, 0.02)]))
    with pytest.raises(BadRecord) as e:
        m[0]
    assert e.value.line == 1 and (
        "lhotse cut (2.005 s + 0.01 s) starts at or past the end of its command's output (2 s of " in e.value.reason
    )
    u = m[1]
    assert (u.start, u.end) == (2.99, 3.0) and u.duration == pytest.approx(0.01)
