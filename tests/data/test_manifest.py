"""Manifests: FunASR jsonl, lhotse cuts (.jsonl / .jsonl.gz), the lazy index, bad records, Kaldi conversion,
weighted mixing."""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import pickle
import time

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.audio import load_audio
from llmasr.data.kaldi import kaldi_to_jsonl
from llmasr.data.manifest import BadManifest, BadRecord, EmptyManifest, Manifest, MixedManifest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMASR_CACHE_DIR", str(tmp_path / "cache"))


def write_wav(path, seconds=1.0, sr=16000, channels=1, freq=440.0):
    t = np.arange(int(sr * seconds)) / sr
    x = np.stack([0.3 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], axis=1)
    sf.write(path, x.astype(np.float32), sr, subtype="FLOAT")
    return path


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ FunASR jsonl


def test_funasr_jsonl_fields_and_relative_paths(tmp_path):
    (tmp_path / "wav").mkdir()
    write_wav(tmp_path / "wav" / "a.wav", 1.25)
    write_wav(tmp_path / "wav" / "b.wav", 2.0)
    m_path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"key": "a", "source": "wav/a.wav", "target": "hello world", "source_len": 125, "target_len": 2},
            {
                "key": "b",
                "source": str(tmp_path / "wav" / "b.wav"),
                "target": "你好",
                "duration": 2.0,
                "source_len": 999,
                "prompt": "Transcribe:",
                "lang": "zh",
            },
            {"key": "c", "source": "wav/a.wav", "target": "again", "task": "<ASR>", "text_language": "en"},
        ],
    )
    m = Manifest.open(m_path)
    assert len(m) == 3 and m.path == str(m_path)
    a, b, c = m[0], m[1], m[2]
    assert a.key == "a" and a.source == str(tmp_path / "wav" / "a.wav") and a.target == "hello world"
    assert a.duration == pytest.approx(1.25)  # source_len counts 10 ms frames
    assert a.target_len == 2 and a.prompt is None and a.lang is None
    assert (a.manifest, a.line, a.channel, a.start, a.end) == (str(m_path), 1, None, 0.0, None)
    assert b.duration == 2.0 and b.prompt == "Transcribe:" and b.lang == "zh" and b.target == "你好"
    assert c.prompt == "<ASR>" and c.lang == "en" and c.duration is None
    d = m.durations()
    assert d.dtype == np.float32 and d[0] == pytest.approx(1.25) and d[1] == 2.0 and np.isnan(d[2])
    assert m.fill_durations() == []
    assert m.durations()[2] == pytest.approx(1.25)
    assert m[-1].key == "c"
    with pytest.raises(IndexError):
        m[3]


def test_blank_lines_keep_file_line_numbers(tmp_path):
    write_wav(tmp_path / "a.wav")
    m_path = tmp_path / "m.jsonl"
    rec = json.dumps({"key": "k1", "source": "a.wav", "target": "x"})
    m_path.write_text("\n" + rec + "\n\n   \n" + rec.replace("k1", "k2") + "\n{bad json\n" + rec.replace("k1", "k3"))
    m = Manifest.open(m_path)
    assert len(m) == 4
    assert [m[i].line for i in (0, 1, 3)] == [2, 5, 7]
    assert m[3].key == "k3"  # last line without a newline
    with pytest.raises(BadRecord) as e:
        m[2]
    assert str(e.value).startswith(f"{m_path}:6: malformed JSON")


@pytest.mark.parametrize("text", ["", "\n   \n\t\n"])
def test_a_manifest_without_a_record_is_refused_when_opened(tmp_path, text):
    m_path = tmp_path / "m.jsonl"
    m_path.write_text(text)
    for need_target in (True, False):  # training and decoding alike
        with pytest.raises(EmptyManifest, match=f"manifest {m_path}: no records"):
            Manifest.open(m_path, need_target=need_target)
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.write(text)
    with pytest.raises(ValueError, match="m.jsonl.gz: no records"):
        Manifest.open(tmp_path / "m.jsonl.gz")


def test_a_gzip_manifest_cut_short_or_not_gzip_is_named(tmp_path):
    """An interrupted copy of a cuts.jsonl.gz had failed with gzip's EOFError, naming no file among data.train's."""
    with gzip.open(tmp_path / "whole.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"key": f"k{i}", "source": "a.wav", "target": "x" * 50}) + "\n" for i in range(500)))
    data = (tmp_path / "whole.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "plain.jsonl.gz").write_text('{"key": "a"}\n')
    for name in ("cut.jsonl.gz", "plain.jsonl.gz"):
        with pytest.raises(BadManifest, match=f"manifest {tmp_path / name}: not a complete gzip file"):
            Manifest.open(tmp_path / name)
    assert len(Manifest.open(tmp_path / "whole.jsonl.gz")) == 500


def test_segment_fields(tmp_path):
    write_wav(tmp_path / "long.wav", 3.0)
    m = Manifest.open(
        write_jsonl(
            tmp_path / "m.jsonl",
            [
                {"key": "s1", "source": "long.wav", "target": "x", "start": 0.5, "end": 1.75, "channel": 0},
                {"key": "s2", "source": "long.wav", "target": "y", "start": 2.0},
            ],
        )
    )
    s1, s2 = m[0], m[1]
    assert (s1.start, s1.end, s1.channel, s1.duration) == (0.5, 1.75, 0, 1.25)
    assert np.isnan(m.durations()[1])
    assert m.fill_durations() == []
    assert m.durations()[1] == pytest.approx(1.0)
    assert len(load_audio(s1.source, sample_rate=16000, start=s1.start, end=s1.end)) == 20000
    assert s2.end is None
    # `duration` from `start` is a segment of that length (it read to the file's end: 2 s budgeted, 2.5 s loaded);
    # `source_len` counts the file's 10 ms frames, so what `start` leaves of them
    m = Manifest.open(
        write_jsonl(
            tmp_path / "n.jsonl",
            [
                {"key": "s3", "source": "long.wav", "target": "x", "start": 0.5, "duration": 2.0},
                {"key": "s4", "source": "long.wav", "target": "y", "start": 1.0, "source_len": 300},
                {"key": "s5", "source": "long.wav", "target": "y", "start": 3.5, "source_len": 300},
                {"key": "s6", "source": "long.wav", "target": "y", "duration": 10**400},
                {"key": "s7", "source": "long.wav", "target": "y", "start": 0, "duration": 1.0},
                {"key": "s8", "source": "long.wav", "target": "y", "duration": 3.0},
            ],
        )
    )
    assert (m[0].start, m[0].end, m[0].duration) == (0.5, 2.5, 2.0)
    assert (m[1].start, m[1].end, m[1].duration) == (1.0, None, 2.0)
    with pytest.raises(BadRecord, match=r"n.jsonl:3: .*'start' \(3.5\) is at or past the audio's end"):
        m[2]
    with pytest.raises(BadRecord, match=r"n.jsonl:4: "):  # a number past float range: a bad line, not a crash
        m[3]
    # a recording's first segment (start 0) is `duration` long too; without `start`, `duration` is the whole file's
    assert (m[4].start, m[4].end, m[4].duration) == (0.0, 1.0, 1.0)
    assert len(load_audio(m[4].source, sample_rate=16000, start=m[4].start, end=m[4].end)) == 16000
    assert (m[5].start, m[5].end, m[5].duration) == (0.0, None, 3.0)


def test_a_duration_that_contradicts_end_minus_start_is_a_bad_line(tmp_path):
    """`duration` 10 s beside `start` 0.2 and `end` 0.8 had been budgeted as 10 s and loaded as 0.6 s; one that
    agrees up to rounding (0.1 s, or 1 %) is taken."""
    write_wav(tmp_path / "long.wav", 3.0)
    recs = [
        {"key": "ok", "source": "long.wav", "target": "x", "start": 0.2, "end": 0.8, "duration": 0.65},
        {"key": "liar", "source": "long.wav", "target": "x", "start": 0.2, "end": 0.8, "duration": 10.0},
        {"key": "whole", "source": "long.wav", "target": "x", "end": 2.0, "duration": 2.5},
    ]
    m = Manifest.open(write_jsonl(tmp_path / "m.jsonl", recs))
    assert (m[0].start, m[0].end, m[0].duration) == (0.2, 0.8, 0.65)
    with pytest.raises(BadRecord, match=r"m.jsonl:2: 'duration' \(10 s\) contradicts 'end' - 'start' \(0.8 - 0.2 = "):
        m[1]
    with pytest.raises(BadRecord, match=r"m.jsonl:3: 'duration' \(2.5 s\) contradicts 'end' - 'start' \(2 - 0 = 2 s"):
        m[2]
    assert [b.key for b in m.scan()] == ["liar", "whole"]


def test_a_field_given_twice_is_a_bad_line(tmp_path):
    """JSON keeps the last of a repeated field without a word: a line giving `target` twice had trained on the
    second; in a cut's nested objects too."""
    write_wav(tmp_path / "a.wav", 1.0)
    sup = '{"id": "s", "start": 0, "duration": 1, "text": "one", "text": "two"}'
    rec = '{"id": "c", "type": "MonoCut", "start": 0, "duration": 1, "supervisions": [SUP], "recording": {}}'
    path = write_jsonl(
        tmp_path / "m.jsonl",
        ['{"key": "u1", "source": "a.wav", "target": "first transcript", "target": "second"}',
         '{"key": "u2", "source": "a.wav", "target": "fine"}', rec.replace("SUP", sup)],
    )  # fmt: skip
    m = Manifest.open(path)
    with pytest.raises(BadRecord, match=r"m.jsonl:1: field 'target' given twice"):
        m[0]
    assert m[1].target == "fine"
    with pytest.raises(BadRecord, match=r"m.jsonl:3: field 'text' given twice"):
        m[2]
    assert [b.line for b in m.scan()] == [1, 3]


# ---------------------------------------------------------------------------------------------------- lhotse


def cut(cut_id, path, *, start=0.0, duration=1.0, channel=0, text="hello", sources=None, sups=None, **extra):
    rec = {
        "id": cut_id,
        "start": start,
        "duration": duration,
        "channel": channel,
        "supervisions": sups
        if sups is not None
        else [
            {
                "id": f"{cut_id}-sup",
                "recording_id": "rec",
                "start": 0.0,
                "duration": duration,
                "channel": channel,
                "text": text,
                "language": "English",
                "speaker": "spk1",
            }
        ],
        "recording": {
            "id": "rec",
            "sources": sources if sources is not None else [{"type": "file", "channels": [0], "source": path}],
            "sampling_rate": 16000,
            "num_samples": 48000,
            "duration": 3.0,
            "channel_ids": [0],
        },
        "type": "MonoCut",
    }
    rec.update(extra)
    return rec


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
    if gz:  # decompressed once into the cache, and reused
        cached = list((tmp_path / "cache" / "manifests").iterdir())
        assert len(cached) == 1
        Manifest.open(path)
        assert list((tmp_path / "cache" / "manifests").iterdir()) == cached


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
        1: "has 2 supervisions; expected exactly one",
        2: "source type 'url' is not supported",
        3: "missing field 'supervisions[0].text'",
        4: "transform 'Speed' is not supported",
        5: "lhotse recordings manifest",
        6: "type 'MixedCut' is not supported",
    }
    for i, reason in expected.items():
        with pytest.raises(BadRecord) as e:
            m[i]
        assert e.value.line == i + 1 and e.value.manifest == str(m.path)
        assert reason in e.value.reason and str(e.value).startswith(f"{m.path}:{i + 1}: ")
    assert len(m.scan()) == 6


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


# ---------------------------------------------------------------------------------------------- bad records


def test_every_bad_record_kind(tmp_path):
    write_wav(tmp_path / "good.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" + bytes(64))
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    lines = [
        {"key": "good", "source": "good.wav", "target": "fine"},  # 1
        '{"key": "broken", "source": "good.wav", "target": ',  # 2 malformed JSON
        {"key": "wrongtype", "source": 42, "target": "x"},  # 3 wrong field type
        {"key": "nosource", "target": "x"},  # 4 missing field
        {"key": "empty", "source": "good.wav", "target": "   "},  # 5 empty target
        {"key": "nontext", "source": "good.wav", "target": ["a", "b"]},  # 6 non-text target
        {"key": "missing", "source": "nope.wav", "target": "x"},  # 7 missing audio
        {"key": "corrupt", "source": "corrupt.wav", "target": "x"},  # 8 corrupt audio
        {"key": "emptyaudio", "source": "empty.wav", "target": "x"},  # 9 empty audio
        {"key": "baddur", "source": "good.wav", "target": "x", "duration": "long"},  # 10 wrong field type
        {"key": 7, "source": "good.wav", "target": "x"},  # 11 non-string key
        "[1, 2, 3]",  # 12 not an object
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    m = Manifest.open(path)
    assert len(m) == 12
    parse_errors = {
        2: "malformed JSON",
        3: "field 'source' must be an audio path (string), got int 42",
        4: "missing field 'source'",
        5: "field 'target' is empty",
        6: "field 'target' is not text: got list",
        10: "field 'duration' must be a number, got str",
        11: "field 'key' must be a non-empty string, got int",
        12: "expected a JSON object, got list",
    }
    for line, reason in parse_errors.items():
        with pytest.raises(BadRecord) as e:
            m[line - 1]
        err = e.value
        assert (err.manifest, err.line) == (str(path), line)
        assert reason in err.reason, (line, err.reason)
        assert str(err) == f"{path}:{line}: {err.reason}"
    with pytest.raises(BadRecord) as e:
        m[4]
    assert e.value.key == "empty"

    bad = m.fill_durations()
    by_line = {b.line: b for b in bad}
    assert set(by_line) == set(parse_errors) | {7, 8, 9}
    assert "file not found" in by_line[7].reason and by_line[7].key == "missing"
    assert "unreadable or corrupt" in by_line[8].reason
    assert "empty audio (0 samples)" in by_line[9].reason
    assert str(by_line[7]).startswith(f"{path}:7: audio {tmp_path / 'nope.wav'}: file not found")
    d = m.durations()
    assert d[0] == pytest.approx(1.0) and np.isnan(d[6:9]).all()


def test_bad_record_pickles():
    err = BadRecord("m.jsonl", 3, "field 'target' is empty", key="u1")
    back = pickle.loads(pickle.dumps(err))
    assert (back.manifest, back.line, back.key, back.reason, str(back)) == (
        "m.jsonl",
        3,
        "u1",
        "field 'target' is empty",
        "m.jsonl:3: field 'target' is empty",
    )


# ------------------------------------------------------------------------------------------------ lazy index


def test_lazy_index_100k(tmp_path):
    n = 100_000
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            dur = {"duration": 1.0 + (i % 7)} if i % 2 == 0 else {}
            f.write(json.dumps({"key": f"utt{i:06d}", "source": f"wav/{i}.wav", "target": f"words {i}", **dur}) + "\n")
    m = Manifest.open(path)
    assert len(m) == n
    # The only per-record state: the int64 offset index (N+1) and the float32 durations (N).
    assert m._offsets.dtype == np.int64 and len(m._offsets) == n + 1
    assert m._linenos is None
    d = m.durations()
    assert d.dtype == np.float32 and d.shape == (n,)
    per_record = [
        k
        for k, v in vars(m).items()
        if isinstance(v, (list, dict, tuple)) or (isinstance(v, np.ndarray) and v.size >= n)
    ]
    assert sorted(per_record) == ["_durations", "_offsets"]
    assert m._offsets.nbytes + d.nbytes == (n + 1) * 8 + n * 4
    assert d[0] == 1.0 and np.isnan(d[1]) and d[12] == 1.0 + 12 % 7
    last = m[n - 1]
    assert last.key == f"utt{n - 1:06d}" and last.line == n and last.source == str(tmp_path / f"wav/{n - 1}.wav")
    assert m[50_000].target == "words 50000"


def _read_keys(args):
    m, idxs = args
    return [m[i].key for i in idxs]


def test_pickle_and_worker_processes(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl", [{"key": f"k{i}", "source": "a.wav", "target": f"t{i}"} for i in range(50)]
    )
    m = Manifest.open(path)
    assert m[3].key == "k3"  # opens the file handle in this process
    back = pickle.loads(pickle.dumps(m))
    assert back._fd is None and back[49].key == "k49" and len(back) == 50
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        chunks = pool.map(_read_keys, [(m, range(0, 25)), (m, range(25, 50))])
    assert chunks[0] + chunks[1] == [f"k{i}" for i in range(50)]
    assert m[10].key == "k10"  # the parent's handle is unaffected (pread never moves a shared offset)


# ------------------------------------------------------------------------------------------------------ Kaldi


def test_kaldi_to_jsonl_reports_mismatches(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for k in ("u1", "u2", "u3"):
        write_wav(d / f"{k}.wav")
    (d / "wav.scp").write_text(
        f"u1 {d / 'u1.wav'}\nu2 data/u2.wav\nu3 sox data/u3.wav -t wav - |\nu4 {d / 'u4.wav'}\nu6 raw.ark:1234\nu7 -\n"
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
    assert f"{tmp_path / 'text'}:1: not UTF-8" in err and "iconv -f GBK -t UTF-8 text" in err


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


# ----------------------------------------------------------------------------------------------------- mixing


def test_mixed_manifest_weights(tmp_path):
    a = Manifest.open(
        write_jsonl(
            tmp_path / "a.jsonl",
            [{"key": f"a{i}", "source": "x.wav", "target": "t", "duration": 1.0} for i in range(40)],
        )
    )
    b = Manifest.open(
        write_jsonl(tmp_path / "b.jsonl", [{"key": f"b{i}", "source": "x.wav", "target": "t"} for i in range(10)])
    )
    mix = MixedManifest([a, b], [1.0, 3.5])
    assert len(mix) == 50
    assert mix[39].key == "a39" and mix[40].key == "b0" and mix[49].key == "b9"
    d = mix.durations()
    assert d.shape == (50,) and (d[:40] == 1.0).all() and np.isnan(d[40:]).all()
    counts = np.zeros(50)
    epochs = 200
    for epoch in range(epochs):
        idx = mix.epoch_indices(epoch, seed=7)
        assert len(idx) == 40 + 35  # 1 pass over a, 3.5 passes over b
        counts += np.bincount(idx, minlength=50)
    assert (counts[:40] == epochs).all()
    np.testing.assert_allclose(counts[40:] / epochs, 3.5, atol=0.15)  # every b record ~3.5 times per epoch
    # deterministic for (seed, epoch), different across epochs and seeds
    np.testing.assert_array_equal(mix.epoch_indices(3, seed=7), mix.epoch_indices(3, seed=7))
    assert not np.array_equal(mix.epoch_indices(3, seed=7), mix.epoch_indices(4, seed=7))
    assert not np.array_equal(mix.epoch_indices(3, seed=7), mix.epoch_indices(3, seed=8))
    # a fraction of a line is a coin, not rounded away: weight 0.5 on one line visits it in about half the epochs,
    # and on three lines 1.5 of them an epoch
    one = Manifest.open(write_jsonl(tmp_path / "one.jsonl", [{"key": "o", "source": "x.wav", "target": "t"}]))
    half = MixedManifest([one, b], [0.5, 1.0])
    visits = [int((half.epoch_indices(e, seed=7) == 0).sum()) for e in range(400)]
    assert set(visits) == {0, 1} and 150 < sum(visits) < 250
    three = MixedManifest([Manifest.open(write_jsonl(tmp_path / "three.jsonl", [
        {"key": f"t{i}", "source": "x.wav", "target": "t"} for i in range(3)])), b], [0.5, 1.0])  # fmt: skip
    drawn = [int((three.epoch_indices(e, seed=7) < 3).sum()) for e in range(400)]
    assert set(drawn) == {1, 2} and abs(np.mean(drawn) - 1.5) < 0.1
    # subsampling: weight 0.25 visits a quarter of the records, each at most once
    sub = MixedManifest([a, b], [0.25, 1.0])
    idx = sub.epoch_indices(0, seed=1)
    assert (idx < 40).sum() == 10 and len(np.unique(idx[idx < 40])) == 10 and (idx >= 40).sum() == 10
    back = pickle.loads(pickle.dumps(mix))
    np.testing.assert_array_equal(back.epoch_indices(5, 7), mix.epoch_indices(5, 7))
    with pytest.raises(ValueError):
        MixedManifest([a, b], [1.0])
    with pytest.raises(ValueError):
        MixedManifest([a, b], [1.0, -1.0])
    np.testing.assert_array_equal(a.epoch_indices(0, 0), np.arange(40))


def test_duration_hints_match_full_parse(tmp_path):
    from llmasr.data.manifest import _line_duration, _record_duration

    records = [
        {"key": "a", "source": "x", "target": "t", "duration": 1.5},
        {"key": "a", "source": "x", "target": "t", "start": 1, "end": 2.5},
        {"key": "a", "source": "x", "target": "t", "source_len": 250},
        {"key": "a", "source": "x", "target": 'he said "duration": 5'},
        {"key": "a", "source": "x", "target": "t", "duration": "long"},
        {"key": "a", "source": "x", "target": "t", "duration": -1, "source_len": 100},
        {"key": "a", "source": "x", "target": "t", "start": 3, "end": 2},
        {"key": "a", "source": "x", "target": "t", "duration": None, "source_len": 100},
        {"key": "a", "source": "x", "target": "t", "meta": {"duration": 9}},
        cut("c", "x.wav", duration=2.25),
        {"key": "a", "source": "x", "target": "t", "start": 0.5, "source_len": 250},  # what start leaves
        cut("p", "x.wav", duration=2.0, sups=[{"id": "s", "start": 0.5, "duration": 1.0, "text": "a"}]),
    ]
    expected = [1.5, 1.5, 2.5, np.nan, np.nan, 1.0, np.nan, 1.0, np.nan, 2.25, 2.0, 1.0]
    for rec, want in zip(records, expected):
        raw = json.dumps(rec).encode()
        np.testing.assert_equal([_line_duration(raw), _record_duration(rec)], [want, want])
    m = Manifest.open(write_jsonl(tmp_path / "m.jsonl", records))
    np.testing.assert_array_equal(m.durations(), np.array(expected, dtype=np.float32))


def test_a_line_without_a_transcript_is_bad_for_training_and_audio_to_transcribe_for_decoding(tmp_path):
    lines = [
        {"key": "nofield", "source": "a.wav"},
        {"key": "null", "source": "a.wav", "target": None},
        {"key": "empty", "source": "a.wav", "target": " "},
        cut("nosup", "a.wav", sups=[]),
        cut("notext", "a.wav", sups=[{"id": "s", "start": 0.0, "duration": 1.0, "language": "English"}]),
    ]
    path = write_jsonl(tmp_path / "m.jsonl", lines)
    training = Manifest.open(path)
    reasons = []
    for i in range(len(lines)):
        with pytest.raises(BadRecord) as e:
            training[i]
        reasons.append((e.value.key, e.value.reason))
    assert reasons[0] == ("nofield", "missing field 'target' (a FunASR jsonl record needs key, source, target)")
    assert reasons[1] == ("null", "field 'target' is not text: got NoneType None")
    assert "has 0 supervisions" in reasons[3][1] and "missing field 'supervisions[0].text'" in reasons[4][1]
    decoding = Manifest.open(path, need_target=False)
    assert [decoding[i].target for i in (0, 1, 3, 4)] == [None] * 4
    assert decoding[4].lang == "English" and decoding[0].source == str(tmp_path / "a.wav")
    assert decoding[2].target == ""  # an empty reference: decoded and scored (all insertions), not a bad line


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


def test_ranks_opening_a_gzip_manifest_at_once_decompress_it_once(tmp_path, monkeypatch):
    """The ranks of a node open a cuts.jsonl.gz together: one writes the decompressed copy, the others wait for it
    and read it (each wrote a copy of its own: a node's ranks times the manifest, on the disk of the cache)."""
    import threading

    import llmasr.data.manifest as manifest_module

    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"key": f"u{i}", "source": "a.wav", "target": "x", "duration": 1.0}) + "\n"
                     for i in range(200))  # fmt: skip
    ranks, opened = 4, []
    together = threading.Barrier(ranks)
    real_open = manifest_module.gzip.open

    def slow_open(*args, **kw):  # every rank gets to the cache before the first copy is in place
        opened.append(args[0])
        time.sleep(0.3)
        return real_open(*args, **kw)

    monkeypatch.setattr(manifest_module.gzip, "open", slow_open)
    lengths = []

    def rank():
        together.wait()
        lengths.append(len(Manifest.open(tmp_path / "m.jsonl.gz")))

    threads = [threading.Thread(target=rank) for _ in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lengths == [200] * ranks and len(opened) == 1
    left = sorted(p.name for p in (tmp_path / "cache" / "manifests").iterdir())
    assert len([n for n in left if not n.startswith(".")]) == 1 and not [n for n in left if n.startswith(".tmp-")]
