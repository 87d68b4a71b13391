"""Kaldi data directories (wav.scp, text, segments) converted to jsonl manifests, every skipped key reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from speech_fakes import write_tone_wav as write_wav

from llmasr.data.kaldi import kaldi_to_jsonl
from llmasr.data.manifest import BadRecord, Manifest

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")


def test_kaldi_to_jsonl_reports_mismatches(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for k in ("u1", "u2", "u3"):
        write_wav(d / f"{k}.wav")
    (d / "wav.scp").write_text(
        f"u1 {d / 'u1.wav'}\nu2 data/u2.wav\nu3 sox data/u3.wav -t wav - gain -3 |\nu4 {d / 'u4.wav'}\n"
        "u6 raw.ark:1234\nu7 -\n"
    )
    (d / "text").write_text("u1 HELLO WORLD\nu2 second one\nu3 piped\nu5 no audio here\nu6 ark\nu2 again\nu7 in\n")
    out = tmp_path / "out" / "train.jsonl"
    counts = kaldi_to_jsonl(d / "wav.scp", d / "text", out, base_dir=tmp_path)
    assert counts["written"] == 2
    assert (counts["missing_text"], counts["missing_text_keys"]) == (1, ["u4"])
    assert (counts["missing_audio"], counts["missing_audio_keys"]) == (1, ["u5"])
    assert (counts["unsupported"], counts["unsupported_keys"]) == (3, ["u3", "u6", "u7"])  # u7: standard input
    assert counts["duplicate_keys"] == 1
    reasons = [str(p) for p in counts["problems"]]
    assert any(r.startswith(f"{d / 'wav.scp'}:3: unsupported: u3: pipe command") for r in reasons)
    assert any(r.startswith(f"{d / 'text'}:4: missing_audio: u5") for r in reasons)
    # an ark offset is named with what to do instead: the audio written out one file an utterance
    ark = next(r for r in reasons if r.startswith(f"{d / 'wav.scp'}:5: unsupported: u6"))
    assert "ark offsets are not supported" in ark and "kaldiio.load_scp('wav.scp')" in ark
    m = Manifest.open(out)
    assert [m[i].key for i in range(len(m))] == ["u1", "u2"]
    assert m[0].target == "HELLO WORLD" and m[1].source == str(d / "u2.wav")
    assert m.fill_durations() == []


def test_kaldi_to_jsonl_segments(tmp_path):
    write_wav(tmp_path / "rec1.wav", 4.0)
    write_wav(tmp_path / "rec2.wav", 1.0)  # no segment names it: counted, with its line
    (tmp_path / "wav.scp").write_text(f"rec1 {tmp_path / 'rec1.wav'}\nrec2 {tmp_path / 'rec2.wav'}\n")
    (tmp_path / "segments").write_text("s1 rec1 0.00 1.50\ns2 rec1 1.50 -1\ns3 rec9 0 1\ns4 rec1 2 1\ns5 rec1 0 1\n")
    (tmp_path / "text").write_text("s1 one\ns2 two\ns3 three\ns4 four\ns6 six\n")
    counts = kaldi_to_jsonl(
        tmp_path / "wav.scp", tmp_path / "text", tmp_path / "seg.jsonl", segments=tmp_path / "segments"
    )
    assert counts["written"] == 2
    assert counts["missing_audio_keys"] == ["s3", "s6"]
    assert counts["bad_segments_keys"] == ["s4"]
    assert counts["missing_text_keys"] == ["s5"] and counts["no_segments_keys"] == ["rec2"]
    assert any(str(p).startswith(f"{tmp_path / 'wav.scp'}:2: no_segments: rec2") for p in counts["problems"])
    m = Manifest.open(tmp_path / "seg.jsonl")
    s1, s2 = m[0], m[1]
    assert (s1.start, s1.end, s1.duration) == (0.0, 1.5, 1.5)
    assert (s2.start, s2.end) == (1.5, None)
    assert m.fill_durations() == [] and m.durations()[1] == pytest.approx(2.5)


def test_kaldi_segments_of_a_channel_and_text_with_runs_of_blanks(tmp_path):
    """extract-segments reads `<seg> <rec> <start> <end> [channel]`: the channel column had made every line of a
    stereo corpus a bad segment. Kaldi splits a transcript on any run of blanks: tabs had gone into the target."""
    write_wav(tmp_path / "call.wav", 2.0, channels=2)
    (tmp_path / "wav.scp").write_text(f"call {tmp_path / 'call.wav'}\n")
    (tmp_path / "segments").write_text("a call 0.0 1.0 0\nb call 0.5 1.5 1\nc call 0 1 -1\n")
    (tmp_path / "text").write_text("a HELLO\tWORLD\nb GOOD  \t MORNING\nc X\n")
    counts = kaldi_to_jsonl(
        tmp_path / "wav.scp", tmp_path / "text", tmp_path / "m.jsonl", segments=tmp_path / "segments"
    )
    assert counts["written"] == 2 and counts["bad_segments_keys"] == ["c"]
    m = Manifest.open(tmp_path / "m.jsonl")
    assert [(u.channel, u.target) for u in (m[0], m[1])] == [(0, "HELLO WORLD"), (1, "GOOD MORNING")]


def test_kaldi_files_saved_with_a_bom_keep_their_first_key(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0)
    write_wav(tmp_path / "b.wav", 1.0)
    bom = "\ufeff"
    (tmp_path / "wav.scp").write_text(f"{bom}a {tmp_path / 'a.wav'}\r\nb {tmp_path / 'b.wav'}\r\n", encoding="utf-8")
    (tmp_path / "text").write_text(f"{bom}a one two\r\nb three\r\n", encoding="utf-8")
    counts = kaldi_to_jsonl(tmp_path / "wav.scp", tmp_path / "text", tmp_path / "k.jsonl")
    assert counts["written"] == 2 and not counts["missing_text_keys"] and not counts["missing_audio_keys"]
    m = Manifest.open(tmp_path / "k.jsonl")
    assert [(u.key, u.target) for u in m] == [("a", "one two"), ("b", "three")]


def test_kaldi_segments_are_counted_once_and_non_finite_times_are_bad(tmp_path):
    """Every segment is written or skipped once: the three segments of a piped recording are 3 unsupported keys
    (the recording itself had been counted too: 4 for 3), each saying why; nan and inf times are bad lines (they had
    been written as JSON no reader takes)."""
    write_wav(tmp_path / "a.wav", 3.0)
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\nb sox b.flac -t wav - |\n")
    (tmp_path / "segments").write_text("a1 a 0 1\na2 a nan 2\na3 a 1 inf\nb1 b 0 1\nb2 b 1 2\nb3 b 2 3\n")
    (tmp_path / "text").write_text("a1 x\na2 x\na3 x\nb1 x\nb2 x\nb3 x\n")
    counts = kaldi_to_jsonl(
        tmp_path / "wav.scp", tmp_path / "text", tmp_path / "o.jsonl", segments=tmp_path / "segments"
    )
    assert counts["written"] == 1 and counts["bad_segments_keys"] == ["a2", "a3"]
    assert counts["unsupported_keys"] == ["b1", "b2", "b3"] and counts["no_segments"] == 0
    assert sum(counts[r] for r in ("written", "bad_segments", "unsupported")) == 6
    assert any("b1: recording 'b': pipe command" in str(p) for p in counts["problems"])


def test_kaldi_files_that_are_not_utf8_are_named_with_their_line(tmp_path, capsys):
    from llmasr.commands.data_kaldi import main

    write_wav(tmp_path / "a.wav", 1.0)
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\n")
    (tmp_path / "text").write_bytes("a 你好\n".encode("gbk"))
    assert main([str(tmp_path), str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'text'}:1: not UTF-8" in err and "iconv -f GB18030 -t UTF-8 text > text.utf8" in err
    (tmp_path / "text").write_bytes("a hello\n".encode("utf-16"))  # Notepad's "Unicode": told so, not GBK's advice
    assert main([str(tmp_path), str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'text'}:1: not UTF-8" in err and "it is UTF-16" in err and "GB" not in err


@pytest.mark.parametrize("with_segments", [False, True])
def test_kaldi_to_jsonl_without_a_text_file_writes_audio_to_transcribe(tmp_path, with_segments):
    write_wav(tmp_path / "rec1.wav", 3.0)
    (tmp_path / "wav.scp").write_text(f"rec1 {tmp_path / 'rec1.wav'}\nrec2 cat x.wav |\n")
    segments = None
    if with_segments:
        segments = tmp_path / "segments"
        segments.write_text("s1 rec1 0.0 1.5\ns2 rec1 1.5 -1\ns3 rec1 2 1\n")
    counts = kaldi_to_jsonl(tmp_path / "wav.scp", None, tmp_path / "d.jsonl", segments=segments)
    keys = ["s1", "s2"] if with_segments else ["rec1"]
    assert counts["written"] == len(keys) and counts["missing_text"] == 0
    # with segments a recording counts by its segments: rec2 has none (its pipe command is moot)
    assert counts["unsupported_keys"] == ([] if with_segments else ["rec2"])
    assert counts["no_segments_keys"] == (["rec2"] if with_segments else [])
    assert counts["bad_segments_keys"] == (["s3"] if with_segments else [])
    assert all("target" not in json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines())
    m = Manifest.open(tmp_path / "d.jsonl", need_target=False)
    assert [(u.key, u.target) for u in m] == [(k, None) for k in keys]
    with pytest.raises(BadRecord, match="missing field 'target'"):  # not a training manifest
        Manifest.open(tmp_path / "d.jsonl")[0]


def test_kaldi_wav_scp_entries_kaldi_would_not_read_as_a_file(tmp_path):
    """Kaldi's ClassifyRxfilename reads FILE:OFFSET as an offset into FILE whatever FILE is called, and refuses a '|'
    anywhere but at the end: both had been written to the manifest as paths that name no file."""
    write_wav(tmp_path / "u1.wav")
    (tmp_path / "wav.scp").write_text(
        f"u1 {tmp_path / 'u1.wav'}\nu2 {tmp_path / 'audio.flac'}:5120\nu3 cat {tmp_path / 'u1.wav'} | sox - -t wav -\n"
    )
    (tmp_path / "text").write_text("u1 one\nu2 two\nu3 three\n")
    counts = kaldi_to_jsonl(tmp_path / "wav.scp", tmp_path / "text", tmp_path / "m.jsonl")
    assert counts["written"] == 1 and counts["unsupported_keys"] == ["u2", "u3"]
    reasons = [str(p) for p in counts["problems"]]
    assert reasons[0].startswith(f"{tmp_path / 'wav.scp'}:2: unsupported: u2: ") and "offsets" in reasons[0]
    assert reasons[1].startswith(f"{tmp_path / 'wav.scp'}:3: unsupported: u3: ") and "ends with '|'" in reasons[1]


def test_kaldi_command_refuses_an_out_it_would_destroy_or_cannot_write(tmp_path, capsys):
    """OUT naming one of the data directory's own files would overwrite it with the jsonl; a folder, or a path under
    a file, fails only at the write: all are refused first, as bad input (2)."""
    from llmasr.commands.data_kaldi import main

    write_wav(tmp_path / "a.wav", 1.0)
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\n")
    (tmp_path / "text").write_text("a hello\n")
    (tmp_path / "afile").write_text("x")
    for out, why in [
        (tmp_path / "text", "one of the inputs"),
        (tmp_path / "wav.scp", "one of the inputs"),
        (tmp_path, "a folder, not a file"),
        (tmp_path / "afile" / "o.jsonl", "afile: a file, not a folder"),
    ]:
        assert main([str(tmp_path), str(out)]) == 2
        assert f"llmasr data kaldi: error: {out}: " in (err := capsys.readouterr().err) and why in err
    assert (tmp_path / "text").read_text() == "a hello\n" and (tmp_path / "wav.scp").read_text().startswith("a ")


def test_kaldi_to_jsonl_gz_is_gzipped(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0)
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\n")
    (tmp_path / "text").write_text("a one\n")
    out = tmp_path / "o.jsonl.gz"  # every manifest reader opens a .gz name as gzip
    assert kaldi_to_jsonl(tmp_path / "wav.scp", tmp_path / "text", out)["written"] == 1
    assert [u.target for u in Manifest.open(out)] == ["one"]


def test_kaldi_to_jsonl_cut_short_leaves_the_old_manifest(tmp_path, monkeypatch):
    """A write that fails half-way leaves the manifest there before, not the first lines of a new one (which would
    read as a smaller corpus)."""
    import llmasr.data.kaldi as kaldi

    for k in ("a", "b"):
        write_wav(tmp_path / f"{k}.wav", 1.0)
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\nb {tmp_path / 'b.wav'}\n")
    (tmp_path / "text").write_text("a one\nb two\n")
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")

    class CutJson:
        calls = 0

        @classmethod
        def dumps(cls, *a, **kw):
            cls.calls += 1
            if cls.calls == 2:
                raise KeyboardInterrupt
            return json.dumps(*a, **kw)

    monkeypatch.setattr(kaldi, "json", CutJson)
    with pytest.raises(KeyboardInterrupt):
        kaldi_to_jsonl(tmp_path / "wav.scp", tmp_path / "text", out)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.glob("*o.jsonl*")) == ["o.jsonl"]


def test_a_pipe_command_is_refused_with_what_to_do(tmp_path):
    # "convert the audio to files first" left a LibriSpeech- or Switchboard-style folder (every line a pipe) with
    # nothing written and no way named: the refusal names the file a decoding command reads, which llmasr opens itself.
    # (`flac -c -d -s F |` alone is now read as F: the refused line here has an option llmasr does not read.)
    d = tmp_path / "data"
    d.mkdir()
    sf.write(d / "a.flac", np.zeros(1600, dtype=np.int16), 16000)
    (d / "wav.scp").write_text("a flac -c -d -s -F data/a.flac |\nb sph2pipe -f wav -p -c 1 gone.sph |\n")
    (d / "text").write_text("a one\nb two\n")
    counts = kaldi_to_jsonl(d / "wav.scp", d / "text", tmp_path / "out.jsonl", base_dir=tmp_path)
    assert counts["written"] == 0 and counts["unsupported_keys"] == ["a", "b"]
    into = "run each command into a file (its closing '|' replaced by '> KEY.wav') and write those paths in wav.scp"
    assert [p.reason for p in counts["problems"]] == [
        "unsupported: a: pipe command 'flac -c -d -s -F data/a.flac |' is not supported (flac option '-F'); it reads "
        "data/a.flac, which llmasr opens itself (and resamples): where the command only decodes it (no channel pick, "
        f"no effect), write that path in wav.scp instead; else {into}",
        "unsupported: b: pipe command 'sph2pipe -f wav -p -c 1 gone.sph |' is not supported (it reads gone.sph, which "
        f"is not there (file not found): relative paths are read from {tmp_path} (--base-dir)); {into}",
    ]


def test_kaldi_files_joined_by_cat_keep_the_key_after_a_bom_mid_file(tmp_path, capsys):
    # `cat a/text b/text > text` of two files saved with a BOM put one at the start of b's first line: that key read
    # as "\ufeffb", and its utterance was skipped as in text but not in wav.scp (jsonl manifests read it as a key).
    from llmasr.commands.data_kaldi import main

    d = tmp_path / "data"
    d.mkdir()
    for k in ("a", "b"):
        write_wav(d / f"{k}.wav", 1.0)
    bom = "\ufeff"
    (d / "wav.scp").write_text(f"{bom}a {d / 'a.wav'}\n{bom}b {d / 'b.wav'}\n", encoding="utf-8")
    (d / "text").write_text(f"{bom}a one two\n{bom}b three\n", encoding="utf-8")
    assert main([str(d), str(tmp_path / "k.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 2
    assert [(u.key, u.target) for u in Manifest.open(tmp_path / "k.jsonl")] == [("a", "one two"), ("b", "three")]


def test_kaldi_audio_not_there_is_named_with_its_wav_scp_line(tmp_path, monkeypatch, capsys, caplog):
    # wav.scp's relative paths are read from the working directory (Kaldi's recipe folder): run from another folder,
    # every line was written as a path to no file, exit status 0, without a word until the manifest was read.
    from llmasr.commands.data_kaldi import main

    d = tmp_path / "recipe" / "data" / "train"
    d.mkdir(parents=True)
    write_wav(tmp_path / "recipe" / "a.wav", 1.0)
    write_wav(tmp_path / "recipe" / "b.wav", 1.0)
    (d / "wav.scp").write_text("a a.wav\nb b.wav\n")
    (d / "text").write_text("a one\nb two\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "k.jsonl"
    assert main([str(d), str(out)]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["written"] == 2  # written all the same: training names each line's missing file too
    assert (counts["audio_not_found"], counts["audio_not_found_keys"]) == (2, ["a", "b"])
    first = str(counts["problems"][0])
    assert first.startswith(f"{d / 'wav.scp'}:1: audio_not_found: a: {tmp_path / 'a.wav'} is not there")
    assert f"relative wav.scp paths are read from {tmp_path}" in first and "--base-dir" in first
    assert "2 recording(s) whose audio file is not there, written all the same" in caplog.text
    # from the recipe folder (or with --base-dir) they are found
    assert main([str(d), str(out), "--base-dir", str(tmp_path / "recipe")]) == 0
    assert json.loads(capsys.readouterr().out)["audio_not_found"] == 0
