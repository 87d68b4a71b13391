import inspect
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from speech_fakes import FakeCTCTokenizer, FakePromptBuilder, write_manifest, write_wav

from llmasr.data.bad_data import BadDataTracker, BadItem, TooMuchBadData
from llmasr.data.bad_reasons import reason_category
from llmasr.data.collate import Collator
from llmasr.data.dataset import PromptEncoder, SpeechDataset
from llmasr.data.frontend import FrontendConfig
from llmasr.data.manifest import BadRecord, Manifest
from llmasr.models.prompt import PromptBuilder

FRONTEND = FrontendConfig(lfr_m=7, lfr_n=6)


@pytest.fixture
def corpus(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0)
    write_wav(tmp_path / "b.wav", 0.5, seed=1)
    write_wav(tmp_path / "empty.wav", 0.0)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    write_wav(tmp_path / "tiny.wav", 0.001)
    write_wav(tmp_path / "vad.wav", 0.01)  # 160 samples, as VAD segmenters cut; an 80-bin frame needs 257
    recs = [
        {"key": "a", "source": "a.wav", "target": "hello world", "duration": 1.0},  # 0 good
        {"key": "b", "source": "b.wav", "target": "speech", "prompt": "Repeat."},  # 1 good, task prompt
        {"key": "missing", "source": "nope.wav", "target": "x"},  # 2 missing audio
        {"key": "corrupt", "source": "corrupt.wav", "target": "x"},  # 3 corrupt audio
        {"key": "empty", "source": "empty.wav", "target": "x"},  # 4 empty audio
        {"key": "notext", "source": "a.wav", "target": ""},  # 5 empty target
        '{"key": "broken", "source": ',  # 6 malformed line
        {"key": "typed", "source": "a.wav", "target": 12},  # 7 non-text target
        {"key": "digits", "source": "a.wav", "target": "call 911"},  # 8 outside the CTC vocabulary
        {"key": "seg", "source": "a.wav", "target": "seg", "start": 0.2, "end": 0.7},  # 9 good segment
        {"key": "late", "source": "a.wav", "target": "late", "start": 5.0, "end": 6.0},  # 10 segment past the end
        {"key": "tiny", "source": "tiny.wav", "target": "tiny"},  # 11 too short for a frame
        {"key": "vad", "source": "vad.wav", "target": "vad", "duration": 0.01},  # 12 too short for a frame
        {"key": "vadseg", "source": "a.wav", "target": "cut", "start": 0.5, "end": 0.51},  # 13 too short a segment
    ]
    return Manifest.open(write_manifest(tmp_path / "m.jsonl", recs))


def dataset(m, **kw):
    kw.setdefault("train", False)
    return SpeechDataset(m, FRONTEND, prompt_builder=FakePromptBuilder(), ctc_tokenizer=FakeCTCTokenizer(), **kw)


def test_good_items(corpus):
    ds = dataset(corpus)
    a = ds[0]
    assert a["key"] == "a" and a["target"] == "hello world"
    assert a["feats"].dtype == np.float32 and a["feats"].shape[1] == 560
    # 1 s: 98 fbank frames -> ceil(98 / 6) LFR frames
    assert a["feats"].shape[0] == 17
    assert a["text_ids"].dtype == np.int64 and a["text_ids"][:4].tolist() == [1, 2, 3, 4]
    assert a["audio_pos"] == 3 and a["target_start"] == 4 and a["text_ids"][-1] == 9
    assert a["ctc_ids"].tolist()[:5] == [7, 4, 11, 11, 14]
    assert a["duration"] == pytest.approx(1.0)
    b = ds[1]
    assert b["audio_pos"] == 4  # per-utterance task prompt reached the prompt builder
    seg = ds[9]
    assert seg["duration"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "index, category",
    [
        (2, "audio file not found"),
        (3, "unreadable or corrupt audio"),
        (4, "empty audio"),
        (5, "empty target"),
        (6, "malformed line"),
        (7, "non-text target"),
        (8, "target outside the CTC vocabulary"),
        (10, "segment outside the audio"),
        (11, "audio too short"),
        (12, "audio too short"),
        (13, "audio too short"),
    ],
)
def test_bad_items_are_markers_with_location(corpus, index, category):
    item = dataset(corpus)[index]
    assert isinstance(item, BadItem), item
    assert item.manifest == corpus.path and item.line == index + 1 and item.index == index
    assert reason_category(item.reason) == category, item.reason
    assert isinstance(item.record, BadRecord)
    assert pickle.loads(pickle.dumps(item)) == item


@pytest.mark.parametrize("train", [False, True])
def test_too_short_clip_names_its_sample_count(corpus, train):
    item = dataset(corpus, train=train)[12]
    assert isinstance(item, BadItem) and item.where() == f"{corpus.path}:13"
    assert "160 samples = 0.010 s; the frontend needs at least 257" in item.reason


def test_a_clip_speed_perturbation_makes_too_short_says_so(tmp_path):
    """A line long enough for the encoder, sped up past its fewest frames in some epochs, is a bad item then: the
    reason names the speed factor and the line's own length (it had read as the line's audio being too short)."""
    from llmasr.config_io import from_dict
    from llmasr.data.augment import AugmentConfig
    from llmasr.data.clip_lengths import draw_clip_lengths

    fe = FrontendConfig(lfr_m=1, lfr_n=1, min_frames=7)  # a Conformer conv2d's fewest frames: 0.085 s
    recs = [{"key": f"k{i}", "source": str(write_wav(tmp_path / f"u{i}.wav", 0.086, seed=i)), "target": "hi"}
            for i in range(8)]  # fmt: skip
    manifest = Manifest.open(str(write_manifest(tmp_path / "m.jsonl", recs)))
    aug = from_dict(AugmentConfig, {"speed_perturb": {"enable": True, "factors": [1.0, 1.1]}}, "augment")
    ds = SpeechDataset(manifest, fe, train=True, augment=aug, prompt_builder=FakePromptBuilder())
    factors = draw_clip_lengths(aug, 0, 0, np.arange(8)).factor
    assert set(factors.tolist()) == {1.0, 1.1}
    for i, f in enumerate(factors.tolist()):
        item = ds[i]
        assert isinstance(item, BadItem) == (f == 1.1)
        if f == 1.1:
            assert "6 feature frames = 0.078 s, sped up by data.augment.speed_perturb's factor 1.1 from 0.086 s;" in (
                item.reason
            )


def test_without_ctc_tokenizer_digits_are_fine(corpus):
    ds = SpeechDataset(corpus, FRONTEND, train=False, prompt_builder=FakePromptBuilder())
    item = ds[8]
    assert not isinstance(item, BadItem) and item["ctc_ids"] is None


def test_rng_per_seed_epoch_index(corpus):
    ds = dataset(corpus, train=True, seed=1)  # train: dither on
    a1, a2 = ds[0]["feats"], ds[0]["feats"]
    np.testing.assert_array_equal(a1, a2)  # same (seed, epoch, index): same features, whichever worker
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[0]["feats"], a1)
    ds.set_epoch(1)
    assert not np.array_equal(ds[0]["feats"], a1)
    ev = dataset(corpus, train=False)
    np.testing.assert_array_equal(ev[0]["feats"], dataset(corpus, train=False, seed=5)[0]["feats"])  # by the audio


def test_truncation(corpus):
    item = dataset(corpus, max_duration_truncate=0.4)[0]
    assert item["duration"] == pytest.approx(0.4)
    assert item["target"] == "hello world"
    assert dataset(corpus, max_duration_truncate=5.0)[0]["duration"] == pytest.approx(1.0)  # a cap, not a segment end


def test_a_line_whose_duration_its_audio_does_not_bear_out_is_a_bad_item(tmp_path):
    """A line saying 0.5 s whose file holds 3 s had been budgeted as 0.5 s (past max_duration and the batch budget)
    and trained on 3 s. Rounding, durations llmasr probed itself, segments, windows for long audio, truncation and
    augmentation (after loading) are no mismatch."""
    from llmasr.config_io import from_dict
    from llmasr.data.augment import AugmentConfig
    from llmasr.data.long_audio import Window
    from llmasr.data.windowed import WindowedManifest

    write_wav(tmp_path / "three.wav", 3.0)
    recs = [
        {"key": "lies", "source": "three.wav", "target": "short", "duration": 0.5},  # 0
        {"key": "over", "source": "three.wav", "target": "long", "duration": 9.0},  # 1
        {"key": "round", "source": "three.wav", "target": "x", "duration": 3.05},  # 2 within 0.1 s
        {"key": "probed", "source": "three.wav", "target": "x"},  # 3 llmasr probes it from the same audio
        {"key": "seg", "source": "three.wav", "target": "x", "start": 2.0, "end": 3.3},  # 4 a segment, trimmed
        {"key": "frames", "source": "three.wav", "target": "x", "start": 1.0, "source_len": 300},  # 5 2 s from start
    ]
    m = Manifest.open(write_manifest(tmp_path / "m.jsonl", recs))
    ds = dataset(m)
    for i, stated in ((0, "0.500"), (1, "9.000")):
        item = ds[i]
        assert isinstance(item, BadItem) and item.where() == f"{m.path}:{i + 1}" and item.key == recs[i]["key"]
        assert item.reason.startswith(f"manifest duration {stated} s, but its audio holds 3.000 s")
        assert reason_category(item.reason) == "manifest duration wrong"
    assert [ds[i]["duration"] for i in range(2, 6)] == pytest.approx([3.0, 3.0, 1.0, 2.0])
    assert ds.__class__(m, FRONTEND, train=False, prompt_builder=FakePromptBuilder(), max_duration_truncate=0.4)[0][
        "duration"
    ] == pytest.approx(0.4)  # cut to 0.4 s, the line's 0.5 s and its 3 s are both 0.4 s
    slow = from_dict(AugmentConfig, {"speed_perturb": {"enable": True, "factors": [0.9]}}, "augment")
    assert not isinstance(dataset(m, train=True, augment=slow)[2], BadItem)  # 3.3 s after the slow-down
    windowed = WindowedManifest(m, {2: [Window(0, 20000), Window(16000, 48000, True)]}, 16000)
    assert [dataset(windowed)[j]["duration"] for j in (2, 3)] == pytest.approx([1.25, 2.0])


def test_audio_longer_than_a_whisper_window_is_a_bad_item(tmp_path):
    """The Whisper encoder hears one window: a clip past it (a line under-stating its duration, or decoding without
    windows) is a bad item naming both lengths, not cut to the window; truncation to the window keeps it."""
    write_wav(tmp_path / "three.wav", 3.0)
    write_wav(tmp_path / "two.wav", 2.0)
    recs = [{"key": "long", "source": "three.wav", "target": "x"}, {"key": "fits", "source": "two.wav", "target": "y"}]
    m = Manifest.open(write_manifest(tmp_path / "m.jsonl", recs))
    whisper = FrontendConfig(kind="whisper", n_mels=80, chunk_seconds=2.0)
    ds = SpeechDataset(m, whisper, train=False, prompt_builder=FakePromptBuilder())
    item = ds[0]
    assert isinstance(item, BadItem) and item.where() == f"{m.path}:1"
    assert item.reason.startswith("audio of 3.000 s is longer than the Whisper window (2 s)")
    assert ds[1]["feats"].shape == (200, 80)
    cut = SpeechDataset(m, whisper, train=True, prompt_builder=FakePromptBuilder(), max_duration_truncate=2.0)
    assert cut[0]["feats"].shape == (200, 80)


def collated(n_good: int, bad_items: list):
    """A collated batch of `n_good` one-frame items and `bad_items`; all bad: a fallback stand-in (empty)."""

    def item(i):
        return dict(
            key=f"k{i}",
            index=i,
            feats=np.zeros((1, 2), np.float32),
            target="t",
            text_ids=np.ones(2, np.int64),
            audio_pos=0,
            target_start=1,
            ctc_ids=None,
            duration=0.01,
        )

    return Collator(0, fallback=item(-1))([item(i) for i in range(n_good)] + bad_items)


def bad(i):
    return BadItem(manifest="m.jsonl", line=i, key=f"k{i}", reason="audio: file not found (/x/y.wav)", index=i)


def test_tracker_below_threshold_counts_and_continues():
    t = BadDataTracker(0.05, min_items=100, log_first=2)
    for step in range(10):
        t.update(collated(20, [bad(step)] if step % 2 == 0 else []))
    assert t.bad == 5 and t.good == 200 and t.fraction == pytest.approx(5 / 205)
    assert t.by_reason == {"audio file not found": 5}
    t.end_epoch()
    assert "5 bad of 205" in t.summary()


def test_tracker_names_each_bad_line_once_over_its_epochs_and_passes(caplog):
    """A validation pass meets the same bad lines every time: each pass had named them again."""
    t = BadDataTracker(1.0, name="valid", min_items=1)
    for _ in range(3):  # three passes
        t.new_epoch()
        t.update(collated(4, [bad(1), bad(2)]))
        t.end_epoch()
        assert t.bad == 2
    named = [r.getMessage() for r in caplog.records if "skipping bad item" in r.getMessage()]
    assert named == [
        f"valid: skipping bad item m.jsonl:{i} (key k{i}): audio: file not found (/x/y.wav)" for i in (1, 2)
    ]


def test_tracker_above_threshold_raises_with_counts_and_examples():
    t = BadDataTracker(0.01, min_items=50, keep_examples=3)
    with pytest.raises(TooMuchBadData) as err:
        for step in range(20):
            t.update(collated(5, [bad(step)]))
    msg = str(err.value)
    assert "above data.max_bad_fraction = 0.01" in msg
    assert "audio file not found: 9" in msg  # 9 bad of 54 when the first check runs (>= 50 seen)
    assert msg.count("m.jsonl:") == 3


def test_tracker_checks_at_epoch_end_even_below_min_items():
    t = BadDataTracker(0.01, min_items=1000)
    t.update(collated(10, [bad(1)]))
    with pytest.raises(TooMuchBadData, match="at epoch end"):
        t.end_epoch()


def test_tracker_empty_batch_counts_no_good_items_and_static_repeat_per_epoch():
    t = BadDataTracker(1.0, min_items=1)
    t.add_static([BadRecord("m.jsonl", 3, "audio x.wav: file not found", "k3")])
    t.update(collated(0, [bad(1)]))
    assert t.good == 0 and t.bad == 2
    t.new_epoch()  # the static line counts again, in step with the epoch's progress
    assert t.bad == 0 and t.good == 0
    t.advance(0.5)
    assert t.bad == 0
    t.advance(1.0)
    assert t.bad == 1 and t.good == 0 and t.by_reason == {"audio file not found": 1}
    state = t.state_dict()
    t2 = BadDataTracker(1.0)  # a resumed rank: its own static lines, screened again, then the saved counts
    t2.add_static([BadRecord("m.jsonl", 5, "audio y.wav: file not found", "k5")], quiet=True)
    t2.new_epoch()
    t2.load_state_dict(state)
    assert t2.bad == 1 and t2.static[0]["line"] == 5
    t2.end_epoch()
    assert t2.bad == 1  # the static visit the saved state counted is not counted twice


def test_hotword_lists_reach_the_prompt_and_batch(tmp_path):
    from llmasr.config_io import from_dict
    from llmasr.data.hotwords import HotwordSampler, HotwordsConfig

    write_wav(tmp_path / "a.wav", 0.5)
    recs = [
        {"key": "given", "source": "a.wav", "target": "hello world", "hotwords": ["Qwen", "world"]},
        {"key": "none", "source": "a.wav", "target": "hello big world"},
        {"key": "empty", "source": "a.wav", "target": "hello", "hotwords": []},
    ]
    m = Manifest.open(write_manifest(tmp_path / "m.jsonl", recs))
    # Validation and decoding: the line's list, else the default (decode --hotwords), an explicit [] included.
    ev = dataset(m, default_hotwords=["Paraformer"])
    assert [ev[i]["hotwords"] for i in range(3)] == [["Qwen", "world"], ["Paraformer"], []]
    assert ev[0]["audio_pos"] == 5 and ev[2]["audio_pos"] == 3  # the list is rendered before the audio
    cfg = from_dict(HotwordsConfig, {"enable": True, "empty_prob": 0.0, "list_size": [2, 2]}, "h")
    tr = dataset(m, train=True, hotword_sampler=HotwordSampler.build(cfg, m, seed=0))
    assert tr[0]["hotwords"] == ["Qwen", "world"]  # manifest_or_sample: the manifest's list where given
    drawn = tr[1]["hotwords"]
    assert len(drawn) == 2 and any(f" {p} " in " hello big world " for p in drawn)
    assert tr[1]["hotwords"] == drawn  # same item, same epoch: the same list
    batch = Collator(0, with_ctc=True)([tr[0], tr[1], tr[2]])
    assert batch.hotwords == [["Qwen", "world"], drawn, []] and batch.hotwords_dropped == [0, 0, 0]
    sel = batch.select([2, 0])
    assert sel.hotwords == [[], ["Qwen", "world"]] and sel.hotwords_dropped == [0, 0]


def test_prompt_builder_and_its_stand_ins_take_what_the_dataset_passes():
    """The dataset calls `encode(target, task=..., hotwords=..., system=...)`: PromptBuilder and every stand-in for
    it (tests, the data-pipeline benchmark) take the parameters PromptEncoder names, so adding one to the builder
    fails here rather than in whichever stand-in a run reaches first."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from data_pipeline import BenchPromptBuilder

    want = list(inspect.signature(PromptEncoder.encode).parameters)
    for stand_in in (PromptBuilder, FakePromptBuilder, BenchPromptBuilder):
        assert list(inspect.signature(stand_in.encode).parameters) == want, stand_in.__name__


def test_a_missing_audio_file_loaded_says_what_its_path_may_have_meant(tmp_path, monkeypatch):
    # Decoding and transcribing screen no line before loading it: a FunASR corpus (paths from the working directory)
    # was refused line by line as "file not found" naming a path that was not the one written, where the training
    # screen and `llmasr data check` say why.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lists").mkdir()
    (tmp_path / "wav").mkdir()
    write_wav(tmp_path / "wav" / "a.wav", 0.5)
    recs = [
        {"key": "a", "source": "wav/a.wav", "target": "x", "duration": 0.5},
        {"key": "b", "source": "a.wav ", "target": "x", "duration": 0.5},
    ]
    m = Manifest.open(write_manifest(tmp_path / "lists" / "m.jsonl", recs), need_target=False)
    base = tmp_path / "lists"
    got = [dataset(m)[i] for i in range(2)]
    assert [g.reason for g in got] == [
        f"audio {base}/wav/a.wav: file not found (wav/a.wav is a file from the working directory, where FunASR "
        f"looks; llmasr reads a relative path from the manifest's folder, {base}: write the paths absolute, or "
        "relative to that folder)",
        f"audio {base}/a.wav : file not found (the path as written, 'a.wav ', begins or ends with white space)",
    ]
    assert {reason_category(g.reason) for g in got} == {"audio file not found"}


def test_text_a_sensevoice_vocabulary_spells_as_its_blank_is_named(tmp_path):
    """SenseVoiceSmall's head has <unk> (id 0) as its blank: a character its sentencepiece model lacks is spelled
    with the blank, and the bad line names that text, not the bare id [0]."""
    from llmasr.data.dataset import ctc_label_ids
    from llmasr.models.ctc_vocab import SentencePieceCTCTokenizer
    from llmasr.testing.tiny_funasr import SENSEVOICE_BPE, tiny_sensevoice_conf, write_funasr_dir

    model_dir = write_funasr_dir(tmp_path / "sv", model="SenseVoiceSmall", encoder_conf=tiny_sensevoice_conf())
    vocab = SentencePieceCTCTokenizer(str(model_dir / SENSEVOICE_BPE), blank="<unk>")
    assert isinstance(ctc_label_ids(vocab, "six five"), np.ndarray)
    why = ctc_label_ids(vocab, "six 5 five")
    assert isinstance(why, str) and "'5'" in why and "<unk>" in why and "blank" in why, why
    assert reason_category(why) == "target outside the CTC vocabulary"
