"""wav.scp pipe commands that only decode a file llmasr reads (sph2pipe, flac, sox) written as that file, with the
channel and time range the command would have produced; every other command refused naming the part at fault."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from speech_fakes import write_shorten_sph

from llmasr.data.audio import load_audio
from llmasr.data.kaldi import kaldi_to_jsonl

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")
SR = 8000


def _two_channel_sph(path, seconds=4.0, subtype="ULAW"):
    """A Switchboard-like conversation side by side: two channels of different noise, 8 kHz NIST SPHERE."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((int(SR * seconds), 2)) * [0.1, 0.3]).astype(np.float32)
    sf.write(path, x, SR, format="NIST", subtype=subtype)
    return sf.read(path, dtype="float32", always_2d=True)[0]  # as stored (u-law quantised)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _loaded(rec):
    return load_audio(rec["source"], sample_rate=SR, start=rec.get("start", 0.0), end=rec.get("end"),
                      channel=rec.get("channel"))  # fmt: skip


def _kaldi(d, wav_scp, text, segments=None, base=None):
    (d / "wav.scp").write_text(wav_scp)
    (d / "text").write_text(text)
    if segments is not None:
        (d / "segments").write_text(segments)
    return kaldi_to_jsonl(d / "wav.scp", d / "text", d / "out.jsonl", base_dir=base,
                          segments=d / "segments" if segments is not None else None)  # fmt: skip


def test_switchboard_channels_with_segments_read_as_the_sph_file(tmp_path):
    """Switchboard's wav.scp (one key per side: `sph2pipe -f wav -p -c 1|2 F.sph |`, the tool's full path) had every
    line refused: each segment is now read from the .sph, channel 0 or 1, the samples sph2pipe would have given."""
    x = _two_channel_sph(tmp_path / "sw02001.sph")
    tool = "/opt/kaldi/tools/sph2pipe_v2.5/sph2pipe"
    counts = _kaldi(
        tmp_path,
        f"sw02001-A {tool} -f wav -p -c 1 {tmp_path / 'sw02001.sph'} |\nsw02001-B {tool} -f wav -p -c 2 "
        f"{tmp_path / 'sw02001.sph'} |\n",
        "sw02001-A_000050-000175 uh-huh\nsw02001-B_000100-000300 yeah right\nsw02001-B_000300-end okay\n",
        "sw02001-A_000050-000175 sw02001-A 0.50 1.75\nsw02001-B_000100-000300 sw02001-B 1.00 3.00\n"
        "sw02001-B_000300-end sw02001-B 3.00 -1\n",
    )
    assert counts["written"] == 3 and counts["unsupported"] == 0
    assert (counts["piped_read_as_files"], counts["piped_read_as_files_by_tool"]) == (2, {"sph2pipe": 2})
    recs = _lines(tmp_path / "out.jsonl")
    assert [(r["channel"], r["start"], r.get("end"), r["duration"]) for r in recs] == [
        (0, 0.5, 1.75, 1.25), (1, 1.0, 3.0, 2.0), (1, 3.0, None, 1.0),
    ]  # fmt: skip
    assert all(r["source"] == str(tmp_path / "sw02001.sph") for r in recs)
    np.testing.assert_array_equal(_loaded(recs[0]), x[4000:14000, 0])
    np.testing.assert_array_equal(_loaded(recs[1]), x[8000:24000, 1])
    np.testing.assert_array_equal(_loaded(recs[2]), x[24000:, 1])


def test_sph2pipe_time_range_adds_to_the_segments_times(tmp_path):
    """`-t b:e` (seconds) and `-s b:e` (samples) cut the stream: a segment's times are of that stream, so they add to
    its start; an end past the range by less than extract-segments' overshoot is trimmed, more is a bad segment;
    a segment's channel column reads the stream's channels (one, after -c)."""
    x = _two_channel_sph(tmp_path / "c.sph", subtype="PCM_16")
    f = tmp_path / "c.sph"
    counts = _kaldi(
        tmp_path,
        f"r sph2pipe -f wav -t 1.0:2.5 -c 2 {f} |\nq sph2pipe -s 800:16000 {f} -f wav |\n",
        "a x\nb x\nc x\nd x\ne x\ng x\n",
        "a r 0.2 1.0\nb r 0.5 -1\nc r 0.5 1.8\nd r 0.5 2.0\ne r 0 1 1\ng q 0.1 0.4 1\n",
    )
    assert counts["written"] == 4 and counts["bad_segments_keys"] == ["d", "e"]
    reasons = [str(p) for p in counts["problems"]]
    assert any(r.startswith(f"{tmp_path / 'segments'}:4: bad_segments: d: recording 'r': ends at 2s of the piped "
                            "stream, which is 1.5s long") for r in reasons)  # fmt: skip
    assert any("e: recording 'r': channel 1 of a piped stream of one channel" in r for r in reasons)
    a, b, c, g = _lines(tmp_path / "out.jsonl")
    assert (a["start"], a["end"], a["channel"]) == (1.2, 2.0, 1)
    assert (b["start"], b["end"], c["end"], g["start"], g["end"], g["channel"]) == (1.5, 2.5, 2.5, 0.2, 0.5, 1)
    np.testing.assert_array_equal(_loaded(a), x[9600:16000, 1])
    np.testing.assert_array_equal(_loaded(g), x[1600:4000, 1])  # -s 800: the stream starts at 0.1 s


def test_sph2pipe_whole_range_and_a_mono_file(tmp_path):
    """A line with no segments gets the stream's range and duration; `-c 2` of a one-channel file outputs that
    channel (sph2pipe ignores -c there); an end past the file is the file's end, as sph2pipe stops there."""
    x = _two_channel_sph(tmp_path / "s.sph", subtype="PCM_16")
    sf.write(tmp_path / "m.sph", x[:, 0], SR, format="NIST", subtype="PCM_16")
    counts = _kaldi(tmp_path, f"s sph2pipe -t 2: {tmp_path / 's.sph'} |\nm sph2pipe -c 2 -t 0.5:9 m.sph |\n",
                    "s x\nm x\n", base=tmp_path)  # fmt: skip
    assert counts["written"] == 2 and counts["piped_read_as_files"] == 2
    s, m = _lines(tmp_path / "out.jsonl")
    assert (s["start"], s["duration"], "channel" in s, "end" in s) == (2.0, 2.0, False, False)
    assert (m["source"], m["start"], m["duration"], "channel" in m) == (str(tmp_path / "m.sph"), 0.5, 3.5, False)
    np.testing.assert_allclose(_loaded(s), x[16000:].mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(_loaded(m), np.asarray(x[4000:, 0], dtype=np.float32))


def test_librispeech_flac_lines_read_as_the_flac_file(tmp_path):
    d = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    d.mkdir(parents=True)
    y = (np.sin(np.arange(16000) / 7) * 8000).astype(np.int16)
    for k in ("0000", "0001", "0002"):
        sf.write(d / f"84-121123-{k}.flac", y, 16000)
    rel = d.relative_to(tmp_path)
    counts = _kaldi(
        tmp_path,
        f"84-121123-0000 flac -c -d -s {d}/84-121123-0000.flac |\n84-121123-0001 flac -dcs {rel}/84-121123-0001.flac"
        f" |\n84-121123-0002 flac --decode --stdout --silent '{d}/84-121123-0002.flac' |\n",
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n84-121123-0002 X\n",
        base=tmp_path,
    )
    assert counts["written"] == 3 and counts["piped_read_as_files_by_tool"] == {"flac": 3}
    recs = _lines(tmp_path / "out.jsonl")
    assert [r["source"] for r in recs] == [str(d / f"84-121123-{k}.flac") for k in ("0000", "0001", "0002")]
    assert all(set(r) == {"key", "source", "target", "duration"} and r["duration"] == 1.0 for r in recs)
    got = load_audio(recs[1]["source"], sample_rate=16000)
    np.testing.assert_array_equal(got, y.astype(np.float32) / 32768)


def test_sox_lines_pick_average_or_pass_the_channels(tmp_path):
    x = _two_channel_sph(tmp_path / "a.sph", subtype="PCM_16")
    sf.write(tmp_path / "a.wav", x, SR, subtype="PCM_16")
    f = tmp_path / "a.wav"
    counts = _kaldi(
        tmp_path,
        f"p sox {f} -t wav - |\nr sox {f} -t wav -r 16000 -b 16 - remix 2 |\nc sox -q {f} -c 1 -t wav - rate -h 16k |\n"
        f"e sox -V1 {f} --type=wavpcm -e signed-integer - channels 1 remix 1 |\n",
        "p x\nr x\nc x\ne x\n",
    )
    assert counts["written"] == 4 and counts["piped_read_as_files_by_tool"] == {"sox": 4}
    p, r, c, e = _lines(tmp_path / "out.jsonl")
    assert ("channel" in p, r["channel"], "channel" in c, "channel" in e) == (False, 1, False, False)
    np.testing.assert_array_equal(_loaded(r), x[:, 1])
    np.testing.assert_allclose(_loaded(c), x.mean(axis=1), atol=1e-6)


def test_sox_input_options_of_real_recipes_read_where_the_header_agrees(tmp_path):
    """AMI's recipes (Kaldi egs/ami, ESPnet) write `sox -c 1 -t wavpcm -e signed-integer F -t wavpcm - |` (older
    ones `-s`), others `sox -t flac F ...`: options before the file say what it is, and sox reads it so over its
    header. Where the header agrees, the line is the file; where not, refused (see REFUSED)."""
    y = (np.sin(np.arange(SR) / 5) * 0.3).astype(np.float32)
    sf.write(tmp_path / "ES2002a.Headset-0.wav", y, SR, subtype="PCM_16")
    sf.write(tmp_path / "f.flac", y, SR)
    w = tmp_path / "ES2002a.Headset-0.wav"
    counts = _kaldi(
        tmp_path,
        f"a sox -c 1 -t wavpcm -e signed-integer {w} -t wavpcm - |\nb sox -c 1 -t wavpcm -s {w} -t wavpcm - |\n"
        f"c sox -t flac {tmp_path / 'f.flac'} -t wav -r 16k -b 16 --channels 1 - |\n"
        f"d sox -q --rate 8k -b 16 {w} -t wav - |\n",
        "a x\nb x\nc x\nd x\n",
    )
    assert (counts["written"], counts["unsupported"], counts["piped_read_as_files_by_tool"]) == (4, 0, {"sox": 4})
    a, b, c, d = _lines(tmp_path / "out.jsonl")
    assert [r["source"] for r in (a, b, c, d)] == [str(w), str(w), str(tmp_path / "f.flac"), str(w)]
    assert all(r["duration"] == 1.0 and "channel" not in r for r in (a, b, c, d))


def test_sox_encodings_abbreviated_as_recipes_write_them(tmp_path):
    """sox reads any unambiguous start of an encoding's name, case aside (`-e signed`, as Kaldi recipes write: `sox F
    -b 16 -e signed -c 1 -t wav - |`, `sox -r 22050 -e signed -b 16 F -r 16000 -t wav - |`), and u-law as mu-law."""
    y = (np.sin(np.arange(22050) / 5) * 0.3).astype(np.float32)
    sf.write(tmp_path / "a.flac", y, 22050)
    sf.write(tmp_path / "b.wav", y, 22050, subtype="PCM_16")
    sf.write(tmp_path / "u.wav", y, 22050, subtype="ULAW")
    counts = _kaldi(
        tmp_path,
        f"a sox {tmp_path / 'a.flac'} -b 16 -e signed -c 1 -t wav - |\n"
        f"b sox -r 22050 -e Signed -b 16 {tmp_path / 'b.wav'} -r 16000 -t wav - |\n"
        f"u sox -e u-law {tmp_path / 'u.wav'} -t wav - |\n",
        "a x\nb x\nu x\n",
    )
    assert (counts["written"], counts["unsupported"], counts["piped_read_as_files"]) == (3, 0, 3)
    assert [r["source"] for r in _lines(tmp_path / "out.jsonl")] == [
        str(tmp_path / f) for f in ("a.flac", "b.wav", "u.wav")
    ]


REFUSED = [
    ("sox {f} -t wav - gain -3 |", "sox effect 'gain -3'"),
    ("sox {f} {f} -t wav - |", "a second input file"),
    ("sox {f} -t mp3 - |", "sox output type 'mp3'"),
    ("sox {f} -t wav - remix 3 |", "sox picks channel 3 of {f}, which has 2"),
    ("sox {f} -t wav - remix 1,2 |", "sox effect 'remix 1,2'"),
    (
        "sox {f} -t wav - remix 1 trim 0 1 2 |",
        "sox effect 'trim 0 1 2' (3 positions; read: trim START [LEN|=END|-FROM_END], one",
    ),
    ("sph2pipe -f wav {f} out.wav |", "an output file (the audio goes there, not into the pipe): 'out.wav'"),
    ("sph2pipe -h hdr {f} |", "sph2pipe -h 'hdr'"),
    ("sph2pipe -c 3 {f} |", "sph2pipe -c '3'"),
    ("sph2pipe -x {f} |", "sph2pipe option '-x'"),
    ("sph2pipe -t 5:6 {f} |", "it starts at 5s, past the end of {f} (4s)"),
    ("sph2pipe -t 2:1 {f} |", "sph2pipe -t '2:1': its start is not before its end"),
    ("sph2pipe {f} 2>/dev/null |", "a redirection '2>/dev/null'"),
    ("sph2pipe {f}; rm -f x |", "a second command (';')"),
    ("sph2pipe {f} && echo |", "a second command or background job ('&')"),
    ("cat {f} | sph2pipe |", "a second command in the pipeline ('|')"),
    ("LC_ALL=C sph2pipe {f} |", "an environment assignment 'LC_ALL=C'"),
    ("sph2pipe $D/a.sph |", "shell syntax '$' in '$D/a.sph'"),
    ("ffmpeg -i {f} -f wav - |", "command 'ffmpeg': llmasr reads the decoding of sph2pipe, flac, sox only"),
    ("flac -d {f} |", "flac without -c (--stdout): it decodes into a file, not into the pipe"),
    ("flac -c {f} |", "flac without -d (--decode): it encodes"),
    ("flac -c -d -s --sample-rate=8000 {f} |", "flac option '--sample-rate=8000'"),
    ("sph2pipe -f wav gone.sph |", "it reads gone.sph, which is not there (file not found)"),
    ("sph2pipe -f wav {w} |", "it reads {w}, which llmasr cannot open: NIST SPHERE audio compressed with shorten"),
    ("sph2pipe -f wav {v} |", "sph2pipe reads NIST SPHERE files, and {v} is WAV (the command fails)"),
    ("flac -c -d -s {f} |", "flac decodes FLAC files, and {f} is NIST (the command fails)"),
    ("sox -c 1 {f} -t wav - |", "sox's input option '-c 1' says {f} has 1 channel(s), and its header 2 (sox reads"),
    ("sox -r 16k {v} -t wav - |", "sox's input option '-r 16k' says {v} has 16000 Hz, and its header 8000 Hz"),
    ("sox -t wav {f} -t wav - |", "sox's input option '-t wav' says {f} is WAV, and its header NIST"),
    (
        "sox -e floating-point {v} -t wav - |",
        "input option '-e floating-point' says {v} is floating-point, and its header signed-integer",
    ),
    ("sox -b 8 {v} -t wav - |", "sox's input option '-b 8' says {v} has 8 bits, and its header 16"),
    ("sox -t mp3 {v} -t wav - |", "sox input type 'mp3'"),
    ("sox -G {v} -t wav - |", "sox option '-G' (before the input file)"),
    ("sox {v} -e u -t wav - |", "sox -e 'u' (mu-law or unsigned-integer?)"),
    ("sox -e UNSIG {v} -t wav - |", "input option '-e unsigned-integer' says {v} is unsigned-integer, and its header"),
    (
        "sox -e float {v} -t wav - |",
        "sox's input option '-e floating-point' says {v} is floating-point, and its header",
    ),
]


@pytest.mark.parametrize("command, part", REFUSED, ids=[p for _, p in REFUSED])
def test_pipe_commands_not_read_as_a_file_are_refused_naming_the_part(tmp_path, command, part):
    _two_channel_sph(tmp_path / "a.sph")
    f, w, v = tmp_path / "a.sph", tmp_path / "w.wv1", tmp_path / "v.wav"
    write_shorten_sph(w)
    sf.write(v, np.zeros(800), SR)
    command, part = command.format(f=f, w=w, v=v), part.format(f=f, w=w, v=v)
    counts = _kaldi(tmp_path, f"k {command}\n", "k x\n", base=tmp_path)
    assert counts["written"] == 0 and counts["unsupported_keys"] == ["k"] and counts["piped_read_as_files"] == 0
    (why,) = [str(p) for p in counts["problems"]]
    assert why.startswith(f"{tmp_path / 'wav.scp'}:1: unsupported: k: pipe command {command[:60]!r} is not supported (")
    assert part in why and why.endswith("write those paths in wav.scp")


def test_kaldi_command_summary_counts_the_pipes_and_help_says_so(tmp_path, capsys):
    from llmasr.commands.data_kaldi import main

    _two_channel_sph(tmp_path / "a.sph")
    (tmp_path / "wav.scp").write_text(f"a sph2pipe -f wav -p -c 1 {tmp_path / 'a.sph'} |\nb sox b.wav -t wav - |\n")
    (tmp_path / "text").write_text("a one\nb two\n")
    assert main([str(tmp_path), str(tmp_path / "o.jsonl")]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["written"], counts["piped_read_as_files"], counts["unsupported_keys"]) == (1, 1, ["b"])
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "sph2pipe" in (out := " ".join(capsys.readouterr().out.split())) and "piped_read_as_files" in out
