"""The espeak-ng corpus: planning, resampling and noise without espeak-ng; real synthesis when it is installed."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.manifest import Manifest
from llmasr.demo import synth
from llmasr.demo.synth import CorpusConfig, SynthError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install -y espeak-ng)"
)


def small_config(**kw) -> CorpusConfig:
    base = dict(n_train=6, n_dev=2, n_test=4, train_voices=["en-us+m3", "en-gb+f2"], test_voices=["en-us+m6"])
    base.update(names=["zandor", "keltrix", "mirabo"], name_repeats=1, n_hotword=2, hotword_distractors=1)
    base.update(n_hotword_dev=2)
    return CorpusConfig(**{**base, **kw})


def test_default_voices_hold_out_the_test_voices():
    assert not set(synth.DEFAULT_TRAIN_VOICES) & set(synth.DEFAULT_TEST_VOICES)
    train_variants = {v.split("+")[1] for v in synth.DEFAULT_TRAIN_VOICES}
    assert not train_variants & {v.split("+")[1] for v in synth.DEFAULT_TEST_VOICES}


def test_overlapping_voices_are_rejected_by_name():
    with pytest.raises(SynthError, match=r"en-us\+m3"):
        small_config(test_voices=["en-us+m3", "en-us+m6"]).validate()
    with pytest.raises(SynthError, match=r"en-us\+m3"):  # espeak-ng reads the language in any case: one voice
        small_config(test_voices=["en-US+m3"]).validate()


def test_plan_is_deterministic_and_uses_each_splits_voices():
    cfg = small_config(n_train=40)
    a, b = synth.plan_corpus(cfg), synth.plan_corpus(cfg)
    assert a == b
    assert {it["voice"] for it in a["train"] + a["dev"]} <= set(cfg.train_voices)
    assert {it["voice"] for it in a["test"]} <= set(cfg.test_voices)
    vocab = set(synth.DIGITS) | set(synth.WORDS) | set(cfg.names)
    for it in a["train"]:
        words = it["target"].split()
        assert words and set(words) <= vocab
        assert cfg.rate[0] <= it["rate"] <= cfg.rate[1]
    assert synth.plan_corpus(small_config(n_train=40, seed=1)) != a


def test_names_are_rare_in_training_and_biased_in_the_hotword_split():
    cfg = CorpusConfig(n_train=400, n_dev=0, n_test=10, n_hotword=200, name_repeats=4, hotword_distractors=4)
    plan = synth.plan_corpus(cfg)
    base = synth.plan_corpus(CorpusConfig(n_train=400, n_dev=0, n_test=10, n_hotword=0, name_repeats=0))
    # Planting names leaves every other draw as it was: voices, rates and the test split are unchanged.
    assert [it["voice"] for it in plan["train"]] == [it["voice"] for it in base["train"]]
    assert plan["test"] == base["test"]
    spoken = [w for it in plan["train"] for w in it["target"].split()]
    assert all(spoken.count(name) == 4 for name in cfg.names)
    with_name = 0
    for it in plan["hotword"]:
        assert it["voice"] in cfg.test_voices
        listed = it["hotwords"]
        assert len(listed) == 5 and len(set(listed)) == 5 and set(listed) <= set(cfg.names)
        in_text = [w for w in it["target"].split() if w in cfg.names]
        assert len(in_text) <= 1 and set(in_text) <= set(listed)
        with_name += bool(in_text)
    # About a fifth of the lists are distractors only (no name spoken).
    assert 0.7 < with_name / len(plan["hotword"]) < 0.9
    with pytest.raises(SynthError, match="exceed n_train"):
        CorpusConfig(n_train=10, name_repeats=4).validate()


def test_the_hotword_dev_split_is_in_training_voices_and_changes_no_other_split():
    """Settings are chosen on hotword_dev (training voices) and reported on hotword (held-out voices): adding the dev
    split leaves every other split as it was, so a corpus with it trains the same model."""
    cfg = CorpusConfig(n_train=400, n_dev=5, n_test=10, n_hotword=50, n_hotword_dev=60, name_repeats=4)
    plan = synth.plan_corpus(cfg)
    without = synth.plan_corpus(CorpusConfig(n_train=400, n_dev=5, n_test=10, n_hotword=50, n_hotword_dev=0,
                                             name_repeats=4))  # fmt: skip
    assert "hotword_dev" not in without
    assert all(plan[split] == without[split] for split in ("train", "dev", "test", "hotword"))
    dev = plan["hotword_dev"]
    assert len(dev) == 60 and {it["voice"] for it in dev} <= set(cfg.train_voices)
    assert all(len(set(it["hotwords"])) == 5 and set(it["hotwords"]) <= set(cfg.names) for it in dev)
    assert [it["hotwords"] for it in dev[:50]] != [it["hotwords"] for it in plan["hotword"]]
    with pytest.raises(SynthError, match="n_hotword_dev"):
        CorpusConfig(n_hotword_dev=-1).validate()


def test_noise_is_mixed_at_the_requested_snr():
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 2000, 32000)).astype(np.float32)
    noisy = synth.add_noise(speech, 10.0, rng)
    snr = 10 * np.log10(np.mean(speech**2) / np.mean((noisy - speech) ** 2))
    assert snr == pytest.approx(10.0, abs=0.01)


def test_missing_espeak_names_the_install_command(monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(SynthError, match="apt-get install -y espeak-ng"):
        synth.espeak_binary()


@needs_espeak
def test_one_utterance_is_written_at_16k(tmp_path):
    item = synth.plan_corpus(small_config())["train"][0]
    path = tmp_path / "a.wav"
    duration = synth.synthesize_one(item, str(path))
    info = sf.info(str(path))
    assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
    assert duration > 0.2 and info.frames == pytest.approx(duration * 16000, abs=1)
    wav, _ = sf.read(str(path))
    assert np.abs(wav).max() < 1.0 and np.abs(wav).max() > 0.2


@needs_espeak
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a device every write to fails, disk full)")
def test_a_full_disk_names_the_wav_it_could_not_write():
    """The demo said only "OSError: [Errno 28] No space left on device", raised in multiprocessing's pool."""
    item = synth.plan_corpus(small_config())["train"][0]
    with pytest.raises(OSError) as err:
        synth.synthesize_one(item, "/dev/full")
    assert err.value.filename == "/dev/full" and err.value.errno == errno.ENOSPC
    assert pickle.loads(pickle.dumps(err.value)).filename == "/dev/full"  # as a worker process hands it back


@needs_espeak
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_full_disk_names_the_manifest_it_could_not_write(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "dev.jsonl").symlink_to("/dev/full")  # the wavs fit, the manifests do not
    with pytest.raises(OSError) as err:
        synth.synthesize_corpus(out, small_config(), workers=1, log=lambda m: None)
    assert err.value.filename == str(out / "dev.jsonl") and err.value.errno == errno.ENOSPC


@needs_espeak
def test_unknown_voice_is_reported():
    with pytest.raises(SynthError, match="no-such-voice"):
        synth.check_voices(["en-us", "no-such-voice"])
    synth.check_voices(["EN-us+m3"])  # a language in any case is the voice
    with pytest.raises(SynthError, match=r"\['en-us\+M3'\]"):  # espeak-ng falls back to en-us for +M3
        synth.check_voices(["en-us+m3", "en-us+M3"])


def test_an_espeak_that_lists_no_voices_says_why(tmp_path, monkeypatch):
    """A broken install (its data missing) had been reported as voices espeak-ng does not know."""
    fake = tmp_path / "espeak-ng"
    fake.write_text("#!/bin/sh\necho 'Error processing file /usr/share/espeak-ng-data/phontab' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(synth, "espeak_binary", lambda: str(fake))
    with pytest.raises(SynthError, match=r"lists no voices \(Error processing file .*phontab\); is espeak-ng"):
        synth.check_voices(["en-us+m3"])


@needs_espeak
def test_corpus_manifests_and_reuse(tmp_path):
    cfg = small_config()
    logs: list[str] = []
    summary = synth.synthesize_corpus(tmp_path, cfg, workers=1, log=logs.append)
    assert summary["counts"] == {"train": 6, "dev": 2, "test": 4, "hotword": 2, "hotword_dev": 2}
    voices = {}
    for split in ("train", "dev", "test", "hotword", "hotword_dev"):
        rows = [json.loads(line) for line in open(tmp_path / f"{split}.jsonl")]
        assert len(rows) == summary["counts"][split]
        for row in rows:
            assert set(row) >= {"key", "source", "target", "duration", "source_len", "target_len", "voice"}
            assert (tmp_path / row["source"]).is_file()
            assert row["duration"] > 0 and row["source_len"] == int(row["duration"] * 100)
            assert row["target_len"] == len(row["target"].split())
        voices[split] = {row["voice"] for row in rows}
        # The project's own manifest reader accepts it, durations included.
        m = Manifest.open(tmp_path / f"{split}.jsonl")
        assert len(m) == len(rows) and not np.isnan(m.durations()).any()
    assert not (voices["train"] | voices["dev"] | voices["hotword_dev"]) & (voices["test"] | voices["hotword"])
    for row in [
        *map(json.loads, open(tmp_path / "hotword.jsonl")),
        *map(json.loads, open(tmp_path / "hotword_dev.jsonl")),
    ]:
        assert len(row["hotwords"]) == 2 and set(row["hotwords"]) <= set(cfg.names)
    stamp = (tmp_path / "corpus.json").stat().st_mtime_ns
    logs.clear()
    synth.synthesize_corpus(tmp_path, cfg, workers=1, log=logs.append)
    assert any("reusing" in line for line in logs)
    assert (tmp_path / "corpus.json").stat().st_mtime_ns == stamp
    assert not synth.corpus_done(tmp_path, small_config(n_train=7))


@needs_espeak
def test_two_processes_give_the_same_corpus_as_one(tmp_path):
    cfg = small_config(n_train=8, n_dev=0, n_test=2)
    synth.synthesize_corpus(tmp_path / "one", cfg, workers=1, log=lambda m: None)
    synth.synthesize_corpus(tmp_path / "two", cfg, workers=2, log=lambda m: None)
    assert (tmp_path / "one" / "train.jsonl").read_text() == (tmp_path / "two" / "train.jsonl").read_text()
    a, _ = sf.read(str(tmp_path / "one" / "wav" / "train" / "train_00003.wav"))
    b, _ = sf.read(str(tmp_path / "two" / "wav" / "train" / "train_00003.wav"))
    assert np.array_equal(a, b)
