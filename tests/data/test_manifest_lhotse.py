"""lhotse cut manifests (.jsonl / .jsonl.gz): recordings, channels, supervision spans, custom fields, bad cuts."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import soundfile as sf
from speech_fakes import cut, write_jsonl
from speech_fakes import write_tone_wav as write_wav

from llmasr.data.audio import load_audio
from llmasr.data.bad_reasons import reason_category
from llmasr.data.manifest import BadRecord, Manifest

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")


@pytest.mark.parametrize("gz", [False, True])
def test_lhotse_cuts(tmp_path, gz):
    write_wav(tmp_path / "rec.wav", 3.0)
    write_wav(tmp_path / "stereo.wav", 3.0, channels=2)
    cuts = [
        cut("c1", "rec.wav", start=0.5, duration=1.0, text="first cut"),
        cut(
            "c2",
            str(tmp_path / "stereo.wav"),
            start=1.0,
            duration=2.0,
            channel=1,
            text="right channel",
            sources=[{"type": "file", "channels": [0, 1], "source": str(tmp_path / "stereo.wav")}],
        ),
    ]
    text = "".join(json.dumps(c) + "\n" for c in cuts)
    if gz:
        path = tmp_path / "cuts.jsonl.gz"
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path = tmp_path / "cuts.jsonl"
        path.write_text(text)
    m = Manifest.open(path)
    assert len(m) == 2 and m.path == str(path)
    c1, c2 = m[0], m[1]
    assert (c1.key, c1.target, c1.lang, c1.start, c1.end, c1.duration) == ("c1", "first cut", "English", 0.5, 1.5, 1.0)
    assert c1.source == str(tmp_path / "rec.wav") and c1.channel is None and c1.line == 1
    assert c2.channel == 1 and c2.end == 3.0
    np.testing.assert_array_equal(m.durations(), np.array([1.0, 2.0], dtype=np.float32))
    y = load_audio(c2.source, sample_rate=16000, start=c2.start, end=c2.end, channel=c2.channel)
    ref, _ = sf.read(tmp_path / "stereo.wav", dtype="float32")
    np.testing.assert_array_equal(y, ref[16000:48000, 1])
    if gz:  # decompressed once into the cache (the copy, and the record of its .gz), and reused
        cached = sorted((tmp_path / "cache" / "manifests").iterdir())
        assert len([p for p in cached if not p.name.startswith(".")]) == 1
        assert [p.name for p in cached if p.name.startswith(".")] == [f".{cached[-1].name}.source"]
        Manifest.open(path)
        assert sorted((tmp_path / "cache" / "manifests").iterdir()) == cached


def test_a_lhotse_cuts_relative_recording_is_found_where_lhotse_finds_it(tmp_path, monkeypatch):
    """lhotse opens a recording's path as written, from the working directory (`lhotse prepare ... corpus/
    data/manifests` writes corpus/a.flac): it had been looked for beside the manifest only, so every line was missing
    audio. A path found beside the manifest alone still is."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "data" / "manifests").mkdir(parents=True)
    write_wav(tmp_path / "corpus" / "a.wav", 1.0)
    write_wav(tmp_path / "data" / "manifests" / "b.wav", 1.0)
    path = write_jsonl(tmp_path / "data" / "manifests" / "cuts.jsonl", [cut("a", "corpus/a.wav"), cut("b", "b.wav")])
    monkeypatch.chdir(tmp_path)
    m = Manifest.open(path)
    assert [m[0].source, m[1].source] == [
        str(tmp_path / "corpus" / "a.wav"),
        str(tmp_path / "data" / "manifests" / "b.wav"),
    ]


def test_lhotse_per_channel_files_and_bad_cuts(tmp_path):
    write_wav(tmp_path / "ch0.wav")
    write_wav(tmp_path / "ch1.wav")
    per_channel = [
        {"type": "file", "channels": [0], "source": "ch0.wav"},
        {"type": "file", "channels": [1], "source": "ch1.wav"},
    ]
    cuts = [
        cut("ok", None, channel=1, sources=per_channel),
        cut("two", "ch0.wav", sups=[{"id": "a", "text": "a"}, {"id": "b", "text": "b"}]),
        cut("url", None, sources=[{"type": "url", "channels": [0], "source": "http://x/y.wav"}]),
        cut("notext", "ch0.wav", sups=[{"id": "a", "start": 0.0, "duration": 1.0}]),
        cut("speed", "ch0.wav", recording_transforms=None),
        {
            "id": "rec",
            "sources": [{"type": "file", "channels": [0], "source": "ch0.wav"}],
            "sampling_rate": 16000,
            "num_samples": 16000,
            "duration": 1.0,
        },
        cut("mixed", "ch0.wav", type="MixedCut"),
    ]
    cuts[4]["recording"]["transforms"] = [{"name": "Speed", "kwargs": {"factor": 1.1}}]
    m = Manifest.open(write_jsonl(tmp_path / "cuts.jsonl", cuts))
    ok = m[0]
    assert ok.source == str(tmp_path / "ch1.wav") and ok.channel is None
    expected = {
        1: "has 2 supervisions; expected exactly one (CutSet.trim_to_supervisions(keep_overlapping=False) makes",
        2: "source type 'url' is not supported",
        3: "missing field 'supervisions[0].text'",
        4: "transform 'Speed' is not supported (leave the perturbed copies out and set data.augment.speed_perturb",
        5: "lhotse recordings manifest",
        # the refusal had said "only MonoCut / single-channel MultiCut", though a MultiCut on all of one file's
        # channels is read
        6: "type 'MixedCut' is not supported (only MonoCut, and MultiCut on one channel or on all the channels of",
    }
    for i, reason in expected.items():
        with pytest.raises(BadRecord) as e:
            m[i]
        assert e.value.line == i + 1 and e.value.manifest == str(m.path)
        assert reason in e.value.reason and str(e.value).startswith(f"{m.path}:{i + 1}: ")
    assert len(m.scan()) == 6
    # a MixedCut is an unsupported record, not a bad channel (its refusal names channels)
    cats = {r.line: reason_category(r.reason) for r in m.scan()}
    assert cats[7] == cats[5] == cats[3] == "unsupported lhotse record", cats


def test_lhotse_supervision_span_and_channel_sets(tmp_path):
    """A supervision that covers part of its cut trains on that part (the cut's other audio has no text); a cut
    that reads some channels of a file, not one or all, is refused rather than averaged over every channel."""
    write_wav(tmp_path / "rec.wav", 3.0)
    write_wav(tmp_path / "quad.wav", 3.0, channels=4)
    quad = [{"type": "file", "channels": [0, 1, 2, 3], "source": "quad.wav"}]
    cuts = [
        cut(
            "part", "rec.wav", start=0.5, duration=1.0, sups=[{"id": "s", "start": 0.25, "duration": 0.5, "text": "a"}]
        ),
        cut("outside", "rec.wav", duration=1.0, sups=[{"id": "s", "start": 2.0, "duration": 0.5, "text": "a"}]),
        cut("past", "rec.wav", duration=1.0, sups=[{"id": "s", "start": 0.5, "duration": 1.5, "text": "a b c"}]),
        cut(
            "before",
            "rec.wav",
            start=1.0,
            duration=1.0,
            sups=[{"id": "s", "start": -0.5, "duration": 1.0, "text": "a"}],
        ),
        cut("two", "quad.wav", channel=[0, 1], sources=quad, type="MultiCut"),
        cut("all", "quad.wav", channel=[3, 2, 1, 0], sources=quad, type="MultiCut"),
        cut("ints", "rec.wav", sources=[{"type": "file", "channels": 1, "source": "rec.wav"}]),
        cut("odd", "rec.wav"),
    ]
    cuts[-1]["recording"]["transforms"] = 5  # a shape no check foresaw: still a bad line, named
    m = Manifest.open(write_jsonl(tmp_path / "cuts.jsonl", cuts))
    assert (m[0].start, m[0].end, m[0].duration) == (0.75, 1.25, 0.5)
    with pytest.raises(BadRecord, match="lies outside its cut"):
        m[1]
    # lhotse's truncate keeps a supervision that runs past its cut: its whole text had trained on part of its audio
    for i in (2, 3):
        with pytest.raises(BadRecord, match=r"runs past its cut \(0-1 s\): its text would be paired with part"):
            m[i]
    m = Manifest.open(write_jsonl(tmp_path / "cuts2.jsonl", cuts[:2] + cuts[4:]))  # as before those two
    with pytest.raises(
        BadRecord, match=r"reads channels \[0, 1\] of a recording whose sources hold \[\[0, 1, 2, 3\]\]"
    ):
        m[2]
    assert m[3].channel is None and m[3].source == str(tmp_path / "quad.wav")  # every channel of the file
    with pytest.raises(BadRecord, match="'channels' must be a list"):
        m[4]
    with pytest.raises(BadRecord, match=r"cuts2.jsonl:6: malformed record \(TypeError: "):
        m[5]
    assert len(m.scan()) == 4  # counted, not a crash


def test_a_multicut_reads_its_supervisions_channel(tmp_path):
    """A MultiCut over channels [0, 1] whose supervision is on channel 1 holds what channel 1 says: it had been read
    as the average of both. A supervision on all the cut's channels reads their average; on a channel the cut does
    not have, the line is bad."""
    write_wav(tmp_path / "stereo.wav", 3.0, channels=2)
    stereo = [{"type": "file", "channels": [0, 1], "source": "stereo.wav"}]

    def multi(cut_id, sup_channel, channel=(0, 1), kind="MultiCut"):
        sup = {"id": "s", "start": 0.0, "duration": 1.0, "text": "words", "channel": sup_channel}
        return cut(cut_id, "stereo.wav", channel=list(channel) if kind == "MultiCut" else channel, sources=stereo,
                   sups=[sup], type=kind)  # fmt: skip

    cuts = [multi("one", 1), multi("listed", [1]), multi("both", [1, 0]), multi("none", None), multi("two", 2),
            multi("some", [0, 2]), multi("mono", 1, channel=0, kind="MonoCut"), multi("typed", "1")]  # fmt: skip
    m = Manifest.open(write_jsonl(tmp_path / "cuts.jsonl", cuts))
    assert [m[i].channel for i in range(4)] == [1, 1, None, None]
    ref, _ = sf.read(tmp_path / "stereo.wav", dtype="float32")
    np.testing.assert_array_equal(load_audio(m[0].source, sample_rate=16000, start=0, end=1, channel=1), ref[:16000, 1])
    for i, named in ((4, "2"), (5, r"\[0, 2\]"), (6, "1"), (7, "'1'")):
        with pytest.raises(BadRecord, match=rf"cuts.jsonl:{i + 1}: lhotse supervision: channel {named} is not one of"):
            m[i]


def test_a_lhotse_cut_past_its_recordings_declared_duration_is_refused(tmp_path):
    """A cut ending past its recording's declared duration (3 s) by more than lhotse's 0.025 s had been read to the
    file's end, its whole text kept; lhotse refuses to load it."""
    write_wav(tmp_path / "rec.wav", 3.0)
    cuts = [cut("near", "rec.wav", start=2.0, duration=1.02), cut("over", "rec.wav", start=2.5, duration=1.0)]
    m = Manifest.open(write_jsonl(tmp_path / "cuts.jsonl", cuts))
    assert m[0].end == pytest.approx(3.02)
    with pytest.raises(BadRecord, match=r"cuts.jsonl:2: lhotse cut \(2.5 s \+ 1 s\) ends 0.500 s past the end of its "
                       r"recording \(3 s"):  # fmt: skip
        m[1]
    del cuts[1]["recording"]["duration"]  # num_samples / sampling_rate says the same
    with pytest.raises(BadRecord, match="past the end of its recording"):
        Manifest.open(write_jsonl(tmp_path / "cuts2.jsonl", cuts))[1]


def test_a_lhotse_cuts_own_custom_fields_are_read(tmp_path):
    """lhotse keeps custom fields on the cut too (`cut.with_custom("hotwords", ...)` writes the cut's `custom`): its
    biasing list and task prompt had been dropped without a word. The supervision's own win; a value of the wrong
    kind is a bad line naming where it is."""
    write_wav(tmp_path / "rec.wav", 3.0)
    on_cut = cut("c", "rec.wav", custom={"hotwords": ["hello"], "prompt": "Transcribe:"})
    both = cut("b", "rec.wav", custom={"hotwords": ["cut"], "prompt": "cut's"})
    both["supervisions"][0]["custom"] = {"hotwords": ["sup"], "prompt": "sup's"}
    bad_prompt = cut("p", "rec.wav", custom={"prompt": 5})
    bad_list = cut("l", "rec.wav", custom={"hotwords": "hello"})
    m = Manifest.open(write_jsonl(tmp_path / "cuts.jsonl", [on_cut, both, bad_prompt, bad_list]))
    assert (m[0].hotwords, m[0].prompt) == (["hello"], "Transcribe:")
    assert (m[1].hotwords, m[1].prompt) == (["sup"], "sup's")
    with pytest.raises(BadRecord, match=r"cuts.jsonl:3: field 'custom.prompt' must be a string, got int 5"):
        m[2]
    with pytest.raises(BadRecord, match=r"cuts.jsonl:4: field 'custom.hotwords' must be a list of strings"):
        m[3]


def test_lhotse_url_memory_and_other_command_sources_are_refused_with_what_to_write_instead(tmp_path, capsys):
    """A URL, a command making audio from no file, and a memory source are told how lhotse writes the audio to
    files. Each had been a bare "(only 'file')". (A command that only decodes a file is read as that file:
    tests/data/test_lhotse_commands.py.)"""
    from llmasr.commands.data_check import main

    sf.write(tmp_path / "rec.flac", np.zeros(16000, dtype=np.float32), 16000)
    sources = {
        "pipe": {"type": "command", "channels": [0], "source": "flac -c -d -s rec.flac"},
        "url": {"type": "url", "channels": [0], "source": "https://example.com/a.wav"},
        "synth": {"type": "command", "channels": [0], "source": "sox -n -t wav - synth 1 sine 440"},
        "memory": {"type": "memory", "channels": [0], "source": "UklGRg=="},
    }
    path = write_jsonl(tmp_path / "cuts.jsonl", [cut(k, None, sources=[s]) for k, s in sources.items()])
    assert main([str(path), "--max-bad-fraction", "1"]) == 0
    out = capsys.readouterr().out
    save = "write the cuts' audio to files with lhotse: `CutSet.from_file(IN).save_audios(DIR).to_file(OUT)`"
    assert f"{path}:1 " not in out
    only = "is not supported (only 'file' and a 'command' that decodes a file)"
    assert (
        f"{path}:2 key=url: lhotse recording source type 'url' {only}: llmasr reads local "
        f"files: download 'https://example.com/a.wav' and make it a 'file' source, or {save}"
    ) in out
    assert (
        f"{path}:3 key=synth: lhotse recording source command 'sox -n -t wav - synth 1 sine 440' is not read as a file "
        "(sox option '-n' (before the input file)); its command 'sox -n -t wav - synth 1 sine 440' names no one audio "
        "file llmasr could open instead: " + save
    ) in out
    assert f"{path}:4 key=memory: lhotse recording source type 'memory' {only}: {save}" in out
