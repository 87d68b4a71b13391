import json

import numpy as np
import pytest
import torch
from speech_fakes import FakeCTCTokenizer, FakePromptBuilder, good_corpus, write_manifest, write_wav

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.bad_data import TooMuchBadData
from llmasr.data.clip_lengths import draw_clip_lengths
from llmasr.data.config import DataConfig
from llmasr.data.frontend import FrontendConfig
from llmasr.data.loader import build_dataloader

FRONTEND = FrontendConfig(lfr_m=7, lfr_n=6)


def cfg(**kw):
    base = {"batching": {"max_seconds": 6.0, "num_buckets": 4}, "num_workers": 0, "max_bad_fraction": 0.2}
    for k, v in kw.items():
        if k == "batching":
            base["batching"].update(v)
        else:
            base[k] = v
    return from_dict(DataConfig, base, "data")


def build(data_cfg, manifests, **kw):
    kw.setdefault("train", True)
    kw.setdefault("ctc_tokenizer", FakeCTCTokenizer())
    return build_dataloader(data_cfg, manifests, FRONTEND, prompt_builder=FakePromptBuilder(), **kw)


@pytest.fixture
def mixed(tmp_path):
    """40 good utterances (no durations: filled from headers), plus 3 bad lines (2 screened at start)."""
    path = good_corpus(tmp_path, 40, with_duration=False)
    lines = path.read_text().splitlines()
    write_wav(tmp_path / "short.wav", 0.5)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    extra = [
        {"key": "digits", "source": "short.wav", "target": "room 101", "duration": 0.5},  # outside CTC vocab: screened
        {"key": "corrupt", "source": "corrupt.wav", "target": "hello", "duration": 0.8},  # fails only on decode
        {"key": "gone", "source": "gone.wav", "target": "hello", "duration": 0.7},  # missing file: screened too
    ]
    return write_manifest(tmp_path / "mixed.jsonl", lines + extra)


def test_workers_batches_and_bad_accounting(mixed):
    loader, sampler = build(cfg(num_workers=2), [str(mixed)])
    assert loader.num_workers == 2
    batches = list(loader)
    assert len(batches) == len(sampler) == len(loader)
    keys = [k for b in batches if not b.empty for k in b.keys]
    assert len(keys) == len(set(keys)) == 40
    assert sum(b.n_bad for b in batches) == 1  # corrupt shows as it loads; digits and gone were screened at start
    assert loader.bad_data.bad == 3 and loader.bad_data.good == 40
    assert set(loader.bad_data.by_reason) == {
        "target outside the CTC vocabulary",
        "unreadable or corrupt audio",
        "audio file not found",
    }
    for b in batches:
        assert b.feats.dtype == torch.float32 and b.feats.shape[2] == 560
        assert b.ctc_ids.shape[0] == b.feats.shape[0]
        assert float(b.durations.max()) * len(b.keys) <= 6.0 + 1e-6 or b.empty


def test_too_much_bad_data_stops_the_epoch(mixed):
    loader, _ = build(cfg(max_bad_fraction=0.05), [str(mixed)])  # the two lines screened at start are 4.7%
    with pytest.raises(TooMuchBadData, match="3 of 43"):
        list(loader)


def test_header_probe_failures_are_reported_up_front(tmp_path):
    path = good_corpus(tmp_path, 10, with_duration=False)
    lines = path.read_text().splitlines() + ['{"key": "gone", "source": "gone.wav", "target": "hello"}']
    m = write_manifest(tmp_path / "m.jsonl", lines)
    with pytest.raises(TooMuchBadData, match="gone.wav"):
        build(cfg(max_bad_fraction=0.05), [str(m)])
    loader, sampler = build(cfg(max_bad_fraction=0.5), [str(m)])
    assert sampler.filtered == {"bad_line": 1}
    list(loader)
    assert loader.bad_data.bad == 1 and loader.bad_data.good == 10


def test_all_bad_batch_keeps_ranks_in_step(tmp_path):
    write_wav(tmp_path / "ok.wav", 1.0)
    recs = [{"key": "ok", "source": "ok.wav", "target": "hello", "duration": 1.0}]
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)  # bad only when loaded
    recs += [{"key": f"bad{i}", "source": "corrupt.wav", "target": "hello", "duration": 1.0} for i in range(5)]
    m = write_manifest(tmp_path / "m.jsonl", recs)
    loader, sampler = build(cfg(max_bad_fraction=1.0, batching={"max_seconds": 1.0}), [str(m)])
    batches = list(loader)
    assert len(batches) == 6
    assert sum(b.empty for b in batches) == 5
    assert all(b.keys == ["ok"] for b in batches)


def test_ranks_get_equal_counts_and_disjoint_keys(tmp_path):
    path = good_corpus(tmp_path, 31)
    per_rank = []
    for rank in range(2):
        loader, sampler = build(cfg(), [str(path)], rank=rank, world_size=2, epoch=1)
        per_rank.append([b.keys for b in loader])
        assert len(per_rank[-1]) == len(sampler)
    assert len(per_rank[0]) == len(per_rank[1])
    a = {k for ks in per_rank[0] for k in ks}
    b = {k for ks in per_rank[1] for k in ks}
    dup = {k for x, y in zip(per_rank[0], per_rank[1]) if x == y for k in x}
    assert not (a & b) - dup
    assert len(a | b) == 31


def test_loader_resume_is_exact_despite_prefetch(tmp_path):
    path = good_corpus(tmp_path, 30)
    data_cfg = cfg(num_workers=2, batching={"max_seconds": 3.0})
    loader, sampler = build(data_cfg, [str(path)], epoch=2)
    full = [b.keys for b in loader]
    it = iter(loader)
    first = [next(it).keys for _ in range(4)]
    state = loader.state_dict()
    del it
    assert state["sampler"]["batches_yielded"] == 4 and first == full[:4]

    again, _ = build(data_cfg, [str(path)], epoch=0)
    again.load_state_dict(state)
    again.set_epoch(2)
    rest = [b.keys for b in again]
    assert rest == full[4:]


def test_loader_state_before_the_first_batch_is_where_iteration_starts(tmp_path):
    """Saved right after set_epoch or after a resume, before any batch: the position is that epoch's start, or the
    resharded remainder's (not the saved run's count, which would skip untrained batches on the next resume)."""
    path = good_corpus(tmp_path, 30)
    data_cfg = cfg(batching={"max_seconds": 3.0})
    loader, _ = build(data_cfg, [str(path)], epoch=0)
    assert len(list(loader)) > 0
    loader.set_epoch(1)
    assert loader.state_dict()["sampler"]["batches_yielded"] == 0
    two, _ = build(data_cfg, [str(path)], rank=0, world_size=2, epoch=1)
    it = iter(two)
    [next(it) for _ in range(2)]
    saved = two.state_dict()
    one, sampler = build(data_cfg, [str(path)], epoch=0)
    one.load_state_dict(saved)
    rest = [b.keys for b in one]
    again, _ = build(data_cfg, [str(path)], epoch=0)
    again.load_state_dict(saved)
    state = again.state_dict()
    assert state["sampler"]["batches_yielded"] == 0 and state["sampler"]["history"] == [[2, 2]]
    last, _ = build(data_cfg, [str(path)], epoch=0)
    last.load_state_dict(state)
    assert [b.keys for b in last] == rest and len(rest) == len(sampler) > 0


def test_augmentation_follows_epoch_and_is_worker_independent(tmp_path):
    path = good_corpus(tmp_path, 8)
    aug = {"spec_augment": {"enable": True}}

    def feats(workers, epoch):
        loader, _ = build(cfg(num_workers=workers, augment=aug), [str(path)], epoch=0)
        loader.set_epoch(epoch)
        out = {}
        for b in loader:
            for k, f, n in zip(b.keys, b.feats, b.feat_lens):
                out[k] = f[:n].numpy()
        return out

    a, b, c = feats(0, 1), feats(2, 1), feats(0, 2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_valid_subset_and_no_shuffle(tmp_path):
    path = good_corpus(tmp_path, 20, name="dev")
    loader, sampler = build(cfg(valid_max_utts=5), [str(path)], train=False)
    keys = [k for b in loader for k in b.keys]
    assert len(keys) == 5
    loader2, _ = build(cfg(valid_max_utts=5), [str(path)], train=False, epoch=3)
    assert [k for b in loader2 for k in b.keys] == keys


def test_weighted_mix(tmp_path):
    a = good_corpus(tmp_path, 10, name="a")
    b = good_corpus(tmp_path, 10, name="b", seed=1)
    data_cfg = from_dict(
        DataConfig,
        {
            "train": [{"path": str(a)}, {"path": str(b), "weight": 2.0}],
            "batching": {"max_seconds": 6.0},
            "num_workers": 0,
        },
        "data",
    )
    loader, sampler = build(data_cfg, data_cfg.train)
    keys = [k for batch in loader for k in batch.keys]
    assert sum(k.startswith("a") for k in keys) == 10
    assert sum(k.startswith("b") for k in keys) == 20


def test_each_visit_of_a_weighted_line_has_draws_of_its_own(tmp_path):
    """Weight 2 visits each line of b twice an epoch: each visit its own speed, pauses, noise-free SpecAugment
    masks and dither (llmasr.data.visit_keys), costed by the sampler at its own length. The two visits had been one
    example trained twice, and, of one length, mostly in the same batch."""
    a = good_corpus(tmp_path, 10, name="a")
    b = good_corpus(tmp_path, 10, name="b", seed=1)
    augment = {
        "speed_perturb": {"enable": True, "factors": [0.9, 1.0, 1.1]},
        "silence": {"enable": True, "prob": 0.5, "lead": [0.0, 0.6], "trail": [0.0, 0.3]},
        "spec_augment": {"enable": True},
    }
    data_cfg = from_dict(
        DataConfig,
        {"train": [{"path": str(a)}, {"path": str(b), "weight": 2.0}], "batching": {"max_seconds": 6.0},
         "num_workers": 0, "augment": augment},
        "data",
    )  # fmt: skip
    loader, sampler = build(data_cfg, data_cfg.train)
    frames_per_s = 100 / 6  # LFR 7/6 of 10 ms frames
    visits, same_batch = {}, 0
    for batch, keys in zip(loader, sampler.batches()):
        assert [k % 20 for k in keys] == batch.indices  # a repeated visit's key reads its line
        costs = sampler.costs.drawn(0, np.asarray(batch.indices), np.asarray(keys))
        for i, f, n, cost in zip(batch.indices, batch.feats, batch.feat_lens.tolist(), costs):
            assert n / frames_per_s == pytest.approx(cost, abs=0.07)  # each visit at its own drawn length
            visits.setdefault(i, []).append(f[:n].numpy())
        same_batch += len(batch.indices) - len(set(batch.indices))
    assert sorted(visits) == list(range(20)) and all(len(visits[i]) == (2 if i >= 10 else 1) for i in visits)
    assert all(not (v[0].shape == v[1].shape and np.array_equal(v[0], v[1])) for v in visits.values() if len(v) == 2)
    assert same_batch <= 3  # of 10 lines visited twice


def test_a_line_visited_once_keeps_its_draws(tmp_path):
    """Visit keys of first visits are the dataset indices: a run without repeated visits draws what it drew."""
    path = good_corpus(tmp_path, 8)
    loader, sampler = build(cfg(augment={"spec_augment": {"enable": True}}), [str(path)])
    dataset = loader.dataset
    for keys in sampler.batches():
        for k in keys:
            assert k < 8
            np.testing.assert_array_equal(dataset[k]["feats"], dataset[k]["feats"])
    again = dataset[3 + 8]  # a second visit of line 3: the same line, other draws
    assert again["index"] == 3 and again["key"] == dataset[3]["key"]
    assert not np.array_equal(again["feats"], dataset[3]["feats"])


def with_lines(tmp_path, n_good: int, extra: list) -> str:
    path = good_corpus(tmp_path, n_good)
    return str(write_manifest(tmp_path / "m.jsonl", path.read_text().splitlines() + extra))


MANIFEST_ONLY = [  # unusable whatever the audio holds; durations given, so no header probe finds them
    {"key": "blank", "source": "wav_train/u0.wav", "target": "   ", "duration": 1.0},
    {"key": "typed", "source": "wav_train/u1.wav", "target": 7, "duration": 1.0},
    '{"key": "cut", "source": ',
]


def test_truncate_to_max_cuts_whisper_audio_at_its_window(tmp_path, caplog):
    """With a Whisper frontend the sampler keeps clips up to the window whole and costs longer ones at it; the
    dataset cuts those at the window too (it had cut them at max_duration, past the window, 40 s against 30 s)."""
    whisper = FrontendConfig(kind="whisper", n_mels=80, chunk_seconds=3.0)
    write_wav(tmp_path / "long.wav", 4.0)
    write_wav(tmp_path / "short.wav", 2.0)
    m = write_manifest(tmp_path / "w.jsonl", [
        {"key": "long", "source": "long.wav", "target": "hello there", "duration": 4.0},
        {"key": "short", "source": "short.wav", "target": "hello", "duration": 2.0},
    ])  # fmt: skip
    data_cfg = cfg(batching={"truncate_to_max": True, "max_seconds": 12.0})
    loader, sampler = build_dataloader(
        data_cfg, [str(m)], whisper, prompt_builder=FakePromptBuilder(), train=True, ctc_tokenizer=FakeCTCTokenizer()
    )
    lens = {k: int(n) for b in loader for k, n in zip(b.keys, b.feat_lens)}
    assert lens == {"long": 300, "short": 200} and int(sampler.truncated_mask.sum()) == 1
    loader, _ = build_dataloader(
        cfg(batching={"max_seconds": 12.0}), [str(m)], whisper, prompt_builder=FakePromptBuilder(), train=True,
        ctc_tokenizer=FakeCTCTokenizer(),
    )  # fmt: skip
    assert [k for b in loader for k in b.keys] == ["short"]
    assert "longer than data.batching.max_duration = 40 s (the Whisper window, 3 s, caps it)" in caplog.text


def test_manifest_only_faults_refuse_the_run_at_start(tmp_path):
    m = with_lines(tmp_path, 40, MANIFEST_ONLY)
    with pytest.raises(TooMuchBadData) as err:
        build(cfg(max_bad_fraction=0.05), [m])  # 3 of 43 = 7% > 5%: decided before any batch
    msg = str(err.value)
    assert "3 of 43 items (6.98%) are unusable before training starts, above data.max_bad_fraction = 0.05" in msg
    for line, reason in ((41, "field 'target' is empty"), (42, "field 'target' is not text"), (43, "malformed JSON")):
        assert f"{m}:{line} " in msg and reason in msg


def test_manifest_only_faults_below_the_limit_are_skipped_and_counted_every_epoch(tmp_path, caplog):
    m = with_lines(tmp_path, 40, MANIFEST_ONLY)
    loader, sampler = build(cfg(max_bad_fraction=0.1), [m])
    assert "3 of 43 manifest lines are unusable before loading" in caplog.text and f"{m}:41" in caplog.text
    assert sampler.filtered == {"bad_line": 3}  # never batched: counted once, not again when loaded
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        keys = [k for b in loader for k in b.keys]
        assert len(keys) == 40 and loader.bad_data.bad == 3 and loader.bad_data.good == 40
    shares = [build(cfg(max_bad_fraction=0.1), [m], rank=r, world_size=2)[0].bad_data.bad for r in (0, 1)]
    assert sum(shares) == 3 and min(shares) >= 1  # each rank counts its share of the lines known bad


def test_a_resized_remainder_resumed_again_counts_the_known_bad_lines_as_it_would_uninterrupted(tmp_path):
    """Trained on 2 ranks, the epoch's remainder dealt to 1 (its counts start at 0), then saved and resumed again at
    1 rank: the known-bad lines stay uncounted in that remainder (they had been counted again, in full)."""
    m = with_lines(tmp_path, 40, MANIFEST_ONLY)
    two = [build(cfg(max_bad_fraction=0.5), [m], rank=r, world_size=2)[0] for r in (0, 1)]
    its = [iter(loader) for loader in two]
    for it in its:
        for _ in range(2):
            next(it)
    state = {**two[0].state_dict(), "bad_data": [loader.bad_data.state_dict() for loader in two]}
    whole = build(cfg(max_bad_fraction=0.5), [m])[0]
    whole.load_state_dict(state)
    list(whole)
    cut = build(cfg(max_bad_fraction=0.5), [m])[0]
    cut.load_state_dict(state)
    it = iter(cut)
    next(it)
    again = build(cfg(max_bad_fraction=0.5), [m])[0]
    again.load_state_dict({**cut.state_dict(), "bad_data": [cut.bad_data.state_dict()]})
    list(again)
    assert (again.bad_data.bad, again.bad_data.good) == (whole.bad_data.bad, whole.bad_data.good)


def test_lines_known_bad_count_once_per_visit_of_a_weighted_mix(tmp_path):
    """Good items count per visit, so lines known bad do too: a manifest of weight 3 holding them counts each three
    times (at start-up and in every epoch); one of weight 0.5 counts those of its lines an epoch draws."""
    a = good_corpus(tmp_path, 40, name="a")
    b = good_corpus(tmp_path, 10, name="b", seed=1)
    b = write_manifest(tmp_path / "b_bad.jsonl", b.read_text().splitlines() + [
        {**rec, "source": "wav_b/u0.wav"} if isinstance(rec, dict) else rec for rec in MANIFEST_ONLY])  # fmt: skip

    def mix(weight, fraction):
        return cfg(train=[{"path": str(a)}, {"path": str(b), "weight": weight}], max_bad_fraction=fraction)

    with pytest.raises(TooMuchBadData, match=r"9 of 79 items \(11\.39%\) are unusable before training starts"):
        build(mix(3.0, 0.1), mix(3.0, 0.1).train)  # 3 of 53 lines (5.7%), but 9 of 79 visits
    loader, _ = build(mix(3.0, 0.2), mix(3.0, 0.2).train)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        assert len([k for batch in loader for k in batch.keys]) == 70
        assert (loader.bad_data.bad, loader.bad_data.good) == (9, 70)
        assert sum(loader.bad_data.by_reason.values()) == 9
    loader, sampler = build(mix(0.5, 0.2), mix(0.5, 0.2).train)  # half of b each epoch: its bad lines as drawn
    for epoch in range(4):
        loader.set_epoch(epoch)
        keys = [k for batch in loader for k in batch.keys]
        assert loader.bad_data.seen == sampler._epoch_items(epoch).size and loader.bad_data.good == len(keys)


def test_transcripts_the_ctc_vocabulary_cannot_spell_are_found_at_start(tmp_path, caplog):
    """The fake CTC vocabulary spells a-z and space: a transcript with another character is a bad line before any
    audio loads (the dataset's own rule), not a surprise hours into the run; its letters alone are fine."""
    accented = [{"key": f"cafe{i}", "source": f"wav_train/u{i}.wav", "target": "café au lait", "duration": 1.0}
                for i in range(3)]  # fmt: skip
    m = with_lines(tmp_path, 40, [*accented, {"key": "fine", "source": "wav_train/u5.wav", "target": "cafe"}])
    loader, sampler = build(cfg(max_bad_fraction=0.1), [m])
    assert "3 of 44 manifest lines are unusable before loading" in caplog.text
    assert "target has CTC ids outside the vocabulary" in caplog.text and f"{m}:41" in caplog.text
    assert sampler.filtered == {"bad_line": 3} and sampler.skipped_indices("bad_line").tolist() == [40, 41, 42]
    assert len([k for b in loader for k in b.keys]) == 41 and loader.bad_data.bad == 3
    with pytest.raises(TooMuchBadData, match="3 of 44 items .* are unusable before training starts"):
        build(cfg(max_bad_fraction=0.05), [m])
    _, plain = build(cfg(max_bad_fraction=0.05), [m], ctc_tokenizer=None)  # no CTC head: nothing to spell
    assert plain.filtered == {}


def test_epoch_end_check_runs_when_the_loop_stops_at_the_last_batch(tmp_path):
    """The training loop stops iterating after an epoch's last batch (when its windows divide the epoch), so the
    epoch-end check must not wait for the iterator to be resumed past it."""
    write_wav(tmp_path / "vad.wav", 0.01)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    extra = [
        {"key": "corrupt", "source": "corrupt.wav", "target": "hello", "duration": 1.0},  # bad only when loaded
        {"key": "vad", "source": "vad.wav", "target": "hello", "duration": 0.01},  # too short for a frame
    ]
    loader, sampler = build(cfg(max_bad_fraction=0.01), [with_lines(tmp_path, 20, extra)])  # 2 of 22, < 1,000 seen
    with pytest.raises(TooMuchBadData, match="2 of 22 items .* at epoch end") as err:
        for _ in loader:
            if loader.consumed >= len(sampler):
                break
    assert "audio too short: 1" in str(err.value) and "unreadable or corrupt audio: 1" in str(err.value)


def test_duration_filters_are_reported_with_their_lines(tmp_path, caplog):
    write_wav(tmp_path / "long.wav", 3.0)
    write_wav(tmp_path / "blip.wav", 0.1)
    extra = [{"key": f"long{i}", "source": "long.wav", "target": "hello", "duration": 3.0} for i in range(7)]
    extra.append({"key": "blip", "source": "blip.wav", "target": "hello", "duration": 0.1})
    m = with_lines(tmp_path, 10, extra)  # the 10 good ones last 0.3-2.0 s
    _, sampler = build(cfg(batching={"max_duration": 2.5, "min_duration": 0.25}), [m])
    assert sampler.filtered == {"too_long": 7, "too_short": 1}
    line = next(r.getMessage() for r in caplog.records if "skipped every epoch" in r.getMessage())
    assert line.startswith("train: 8 of 18 lines are skipped every epoch: ")
    assert f"7 longer than data.batching.max_duration = 2.5 s (first: {m}:11, {m}:12, {m}:13, {m}:14, {m}:15)" in line
    assert f"1 shorter than data.batching.min_duration = 0.25 s (first: {m}:18)" in line


@pytest.mark.parametrize("drop_last", [False, True])
def test_valid_ranks_flag_padding_repeats_so_each_utterance_counts_once(tmp_path, drop_last):
    """Validation at 3 ranks: the batches that do not divide by the world size are padded with repeats; the loader
    flags those (Batch.duplicate), and the unflagged rows of all ranks hold every utterance exactly once. Training's
    drop_last does not drop them: a score (or a decode's WER) counts every utterance at any world size."""
    path = good_corpus(tmp_path, 25, name="dev")
    counted, flagged = [], 0
    batching = {"max_seconds": 4.0, "drop_last": drop_last}
    for rank in range(3):
        loader, sampler = build(cfg(batching=batching), [str(path)], train=False, rank=rank, world_size=3)
        for batch in loader:
            flagged += batch.duplicate
            counted += [] if batch.duplicate else batch.keys
    assert flagged == sampler.num_padding_batches > 0
    assert sorted(counted) == sorted(json.loads(line)["key"] for line in path.read_text().splitlines())


@pytest.mark.parametrize("version", [(3, 11, 7, "final", 0), (3, 11, 10, "final", 0)])
def test_a_rank_on_a_python_with_the_fork_deadlock_lets_go_before_forking_workers(tmp_path, monkeypatch, version):
    """On 2 ranks with workers, a Python with CPython gh-112275 pauses (GIL released) before each epoch's workers
    fork; a fixed one does not (llmasr.data.worker_start)."""
    import llmasr.data.worker_start as start

    monkeypatch.setattr(start.sys, "version_info", version)
    slept = []
    monkeypatch.setattr(start.time, "sleep", slept.append)
    loader, _ = build(cfg(num_workers=1), [str(good_corpus(tmp_path, 8))], rank=1, world_size=2)
    list(loader)
    list(loader)
    assert slept.count(start.FORK_QUIET_S) == (2 if version[2] == 7 else 0)


def test_pauses_lengthen_training_items_and_the_budget_reserves_room_for_them(tmp_path):
    path = good_corpus(tmp_path, 24)
    durations = {json.loads(line)["key"]: json.loads(line)["duration"] for line in path.read_text().splitlines()}
    pauses = {"silence": {"enable": True, "prob": 1.0, "lead": [0.6, 0.6], "trail": [0.3, 0.3]}}
    frames_per_s = 100 / 6  # LFR 7/6 of 10 ms frames
    for train in (True, False):
        loader, sampler = build(cfg(augment=pauses), [str(path)], train=train)
        assert sampler.budget == 6.0
        for batch in loader:
            lens = batch.feat_lens.tolist()
            for key, n in zip(batch.keys, lens):
                # 0.9 s more frames in training; validation and decoding hear the clip as it is
                assert n / frames_per_s == pytest.approx(durations[key] + (0.9 if train else 0.0), abs=0.1)
            assert len(lens) * max(lens) / frames_per_s <= 6.0 + 0.1  # the budget counted the pauses
            if train:
                assert sampler.sizes[sampler.base_indices].min() >= 0.9 + 0.3


def test_lines_that_fit_only_at_some_draws_are_batched_in_the_epochs_they_fit(tmp_path, caplog):
    """A clip whose longest pauses pass the budget but whose shortest fit is not skipped for good: each epoch skips
    it only when that epoch's draw puts it over, and the loader hears it in the others."""
    m = with_lines(tmp_path, 10, [])  # 0.3-2.0 s
    pauses = {"silence": {"enable": True, "lead": [0.0, 4.5], "trail": [0.0, 0.5]}}
    data = cfg(augment=pauses)
    loader, sampler = build(data, [m])
    durations = np.asarray([json.loads(line)["duration"] for line in open(m)])
    sometimes = np.flatnonzero(durations + 5.0 > 6.0)
    assert sometimes.size and sampler.fits_sometimes.tolist() == sometimes.tolist()
    assert sampler.skipped_indices("over_batch_budget").size == 0
    heard = set()
    for epoch in range(6):
        loader.set_epoch(epoch)
        drawn = draw_clip_lengths(data.augment, data.seed, epoch, np.arange(durations.size))
        over = durations + drawn.lead + drawn.trail > 6.0  # the length this epoch gives each clip
        assert sampler.filtered == ({"over_batch_budget": int(over.sum())} if over.any() else {})
        batched = {i for batch in loader for i in batch.indices}
        assert batched == set(np.flatnonzero(~over).tolist())
        heard |= batched
    assert heard == set(range(durations.size))  # every line trained in some epoch
    line = next(r.getMessage() for r in caplog.records if "only at some" in r.getMessage())
    assert (
        f"train: {sometimes.size} lines fit the batch budget only at some of augmentation's lengths (at most its "
        "duration x 1 + 5 s (data.augment: speed_perturb's slowest factor, silence's lead[1] + trail[1])): each "
        "epoch skips those its draws put over it (first: " in line
    )
    assert "skipped every epoch" not in caplog.text


def test_truncated_lines_are_counted_in_the_epochs_that_batch_them(tmp_path):
    """truncate_to_max's count is of the clips an epoch batches: one its draw puts over the budget is counted
    skipped (over_batch_budget), not truncated as well."""
    m = with_lines(tmp_path, 10, [])  # 0.3-2.0 s
    pauses = {"silence": {"enable": True, "lead": [0.0, 5.5], "trail": [0.0, 0.5]}}
    data = cfg(augment=pauses, batching={"max_duration": 1.0, "truncate_to_max": True})
    loader, sampler = build(data, [m])
    durations = np.asarray([json.loads(line)["duration"] for line in open(m)])
    for epoch in range(4):
        loader.set_epoch(epoch)
        drawn = draw_clip_lengths(data.augment, data.seed, epoch, np.arange(durations.size))
        over = np.minimum(durations, 1.0) + drawn.lead + drawn.trail > 6.0
        stats = sampler.stats()
        assert stats["filtered"].get("over_batch_budget", 0) == over.sum()
        assert stats["truncated"] == int(((durations > 1.0) & ~over).sum())
        assert stats["truncated"] + stats["filtered"].get("over_batch_budget", 0) <= durations.size


def test_lines_over_the_budget_at_every_draw_are_reported_with_the_reason(tmp_path, caplog):
    m = with_lines(tmp_path, 10, [])  # 0.3-2.0 s
    pauses = {"silence": {"enable": True, "prob": 1.0, "lead": [4.2, 4.5], "trail": [0.0, 0.5]}}
    _, sampler = build(cfg(augment=pauses), [m])
    durations = np.asarray([json.loads(line)["duration"] for line in open(m)])
    never = np.flatnonzero(durations + 4.2 > 6.0)
    assert never.size and sampler.skipped_indices("over_batch_budget").tolist() == never.tolist()
    assert sampler.filtered["over_batch_budget"] >= never.size
    line = next(r.getMessage() for r in caplog.records if "skipped every epoch" in r.getMessage())
    assert (
        f"train: {never.size} of 10 lines are skipped every epoch: {never.size} too large for a batch of one under "
        "the batch budget (max_seconds / max_frames / max_target_tokens), even at augmentation's shortest length "
        "(its duration x 1 + 4.2 s) (first: " in line
    )


def test_batches_are_cut_on_the_length_augmentation_gives_each_clip(tmp_path):
    """With speed perturbation and pauses, the sampler costs each clip at the length the dataset then gives it in
    that epoch (not at the slowest factor and the longest pauses), and no batch passes the budget."""
    path = good_corpus(tmp_path, 40)
    augment = {
        "speed_perturb": {"enable": True, "factors": [0.9, 1.0, 1.1]},
        "silence": {"enable": True, "prob": 0.5, "lead": [0.0, 0.6], "trail": [0.0, 0.3]},
    }
    frames_per_s = 100 / 6  # LFR 7/6 of 10 ms frames
    loader, sampler = build(cfg(augment=augment), [str(path)])
    seen = {}
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        costs = sampler.costs.drawn(epoch, sampler.base_indices)  # by dataset index: base_indices is 0..n-1
        assert (costs <= sampler.sizes).all() and (costs < sampler.sizes).any()
        for batch in loader:
            seconds = [n / frames_per_s for n in batch.feat_lens.tolist()]
            for i, s in zip(batch.indices, seconds):
                assert s == pytest.approx(costs[i], abs=0.07)  # LFR frames and resampling round
                seen.setdefault(i, set()).add(round(s, 2))
            assert len(seconds) * max(seconds) <= 6.0 + 0.07
    assert sum(len(v) > 1 for v in seen.values()) > 10  # each epoch draws its own lengths


def test_lines_known_bad_count_in_step_with_the_epoch(tmp_path):
    """20 blank transcripts in 4,020 lines (0.5%, under a 1% limit). Counted all at the epoch's start beside the few
    good items seen by then, they had read as 1.9% once the in-epoch check began (1,000 items) and stopped a run
    whose data is within the limit; counted in step with the epoch's batches, they reach their total at its end."""
    write_wav(tmp_path / "a.wav", 0.3)
    good = [{"key": f"u{i}", "source": "a.wav", "target": "hello", "duration": 0.3} for i in range(4000)]
    blank = [{"key": f"b{i}", "source": "a.wav", "target": "  ", "duration": 0.3} for i in range(20)]
    m = write_manifest(tmp_path / "m.jsonl", good[:1000] + blank + good[1000:])
    loader, sampler = build(cfg(max_bad_fraction=0.01, batching={"max_seconds": 12.0, "num_buckets": 1}), [str(m)])
    tracker, seen = loader.bad_data, 0
    for i, batch in enumerate(loader, start=1):
        seen += batch.size
        assert tracker.bad == int(20 * i / len(sampler)) or i == len(sampler)  # the share of the epoch so far
    assert seen == 4000 and (tracker.bad, tracker.good) == (20, 4000)
    assert tracker.by_reason == {"empty target": 20}


def test_each_rank_resumes_its_own_bad_data_counts(tmp_path):
    """Each rank counts its share of the lines known bad (index % world size) and its own bad items; a resume takes
    up that rank's entry of the gathered state. Rank 1 had taken rank 0's (DeepSpeed keeps one client state), and
    with it rank 0's share of the known-bad lines for the rest of the run."""
    path = good_corpus(tmp_path, 30)
    lines = path.read_text().splitlines()
    lines += [json.dumps({"key": f"b{i}", "source": "wav_train/u0.wav", "target": " "}) for i in range(5)]
    lines += [json.dumps({"key": "gone", "source": "gone.wav", "target": "hello", "duration": 0.5})]
    m = write_manifest(tmp_path / "m.jsonl", lines)
    data_cfg = cfg(max_bad_fraction=0.9, batching={"max_seconds": 3.0})
    ranks = [build(data_cfg, [str(m)], rank=r, world_size=2, epoch=0)[0] for r in (0, 1)]
    full = []
    for loader in ranks:
        list(loader)
        full.append((loader.bad_data.bad, loader.bad_data.good, dict(loader.bad_data.by_reason)))
    assert full[0] != full[1]  # the shares differ: 30 + 6 lines over 2 ranks, the missing file on one of them
    states = []
    for loader in ranks:
        it = iter(loader)
        next(it), next(it)
        states.append(loader.state_dict())
        del it
    gathered = {**states[0], "bad_data": [s["bad_data"] for s in states]}  # what the trainer saves
    for rank in (0, 1):
        again, _ = build(data_cfg, [str(m)], rank=rank, world_size=2, epoch=0)
        again.load_state_dict(gathered)
        list(again)
        assert (again.bad_data.bad, again.bad_data.good, dict(again.bad_data.by_reason)) == full[rank]
        assert {r["index"] % 2 for r in again.bad_data.static} == {rank}
    # saved at another world size, no rank's counts apply: the remainder counts afresh (its known-bad lines not again)
    one, _ = build(data_cfg, [str(m)], epoch=0)
    one.load_state_dict(gathered)
    batches = list(one)
    assert one.bad_data.bad == sum(b.n_bad for b in batches) and one.bad_data.good == sum(b.size for b in batches)


def test_workers_keep_an_accumulation_window_ready(tmp_path, caplog):
    """The trainer takes a window's batches before its first step: with fewer in flight (2 workers x 2 for a window
    of 16) the workers sat idle while each window computed. Unset, prefetch_factor covers the window; set, it is
    kept, with a warning when it is short."""
    path = good_corpus(tmp_path, 8)
    assert build(cfg(num_workers=2), [str(path)], window=16)[0].prefetch_factor == 9
    assert build(cfg(num_workers=4), [str(path)])[0].prefetch_factor == 2
    assert build(cfg(num_workers=0), [str(path)], window=16)[0].prefetch_factor is None
    with caplog.at_level("WARNING", logger="llmasr.data"):
        assert build(cfg(num_workers=2, prefetch_factor=2), [str(path)], window=16)[0].prefetch_factor == 2
    assert "keeps 4 batches in flight, fewer than the 16 of an accumulation window" in caplog.text


def test_a_loader_state_saved_before_the_counts_were_per_rank_still_resumes_them(tmp_path):
    """A checkpoint written before each rank's counts were gathered holds rank 0's tracker state, a dict, which had
    counted the epoch's known-bad lines all at its start: resumed at the same world size, the epoch ends with the
    counts of an uninterrupted one (it had lost them and never counted the lines still ahead)."""
    path = good_corpus(tmp_path, 30)
    lines = path.read_text().splitlines()
    lines += [json.dumps({"key": f"b{i}", "source": "wav_train/u0.wav", "target": " "}) for i in range(5)]
    m = write_manifest(tmp_path / "m.jsonl", lines)
    data_cfg = cfg(max_bad_fraction=0.9, batching={"max_seconds": 3.0})
    full, _ = build(data_cfg, [str(m)], epoch=0)
    list(full)
    assert (full.bad_data.bad, full.bad_data.good) == (5, 30)
    loader, _ = build(data_cfg, [str(m)], epoch=0)
    it = iter(loader)
    good = next(it).size + next(it).size
    old = {
        "sampler": loader.state_dict()["sampler"],
        "bad_data": {"good": good, "bad": 5, "by_reason": {"empty target": 5}, "examples": [], "static": []},
    }
    for rank, world in ((0, 1), (1, 2)):
        again, _ = build(data_cfg, [str(m)], epoch=0, rank=rank, world_size=world)
        if world == 1:
            again.load_state_dict(old)
            list(again)
            assert (again.bad_data.bad, again.bad_data.good) == (5, 30)
        else:  # rank 1 of 2 has no counts of its own in it: the known-bad lines of its share still count
            two, _ = build(data_cfg, [str(m)], epoch=0, rank=1, world_size=2)
            it = iter(two)
            next(it)
            state = {**two.state_dict(), "bad_data": old["bad_data"]}
            again.load_state_dict(state)
            list(again)
            assert again.bad_data.bad == len(again.bad_data.static) > 0


@pytest.mark.parametrize("case", ["malformed", "empty", "missing"])
def test_a_noise_list_that_cannot_serve_is_refused_when_the_training_loader_is_built(tmp_path, case):
    """The workers read the noise list at their first noisy clip, in the training loop after the model loaded: a
    malformed or empty list had failed there, and a list of files not there had let every epoch run without noise."""
    path = good_corpus(tmp_path, 20)
    write_wav(tmp_path / "n1.wav", 3.0, seed=3)
    lines = {
        "malformed": ['{"key": "a", "source": "n1.wav"}', '{"key": "b", "source": '],
        "empty": [],
        "missing": [{"key": "a", "source": "n1.wav"}, {"key": "b", "source": "gone.wav"}],
    }[case]
    noise = write_manifest(tmp_path / "noise.jsonl", lines)
    data_cfg = cfg(augment={"noise": {"enable": True, "manifest": str(noise), "prob": 0.01}})
    want = {"malformed": f"{noise}:2: malformed JSON", "empty": "no noise files listed",
            "missing": f"1 of 2 noise files not found:\n  {noise}:2: {tmp_path / 'gone.wav'}"}[case]  # fmt: skip
    with pytest.raises(ConfigError) as err:
        build(data_cfg, [str(path)])
    assert str(err.value).startswith("data.augment.noise.manifest: ") and want in str(err.value)
    build(data_cfg, [str(path)], train=False)  # validation mixes no noise


def test_a_transcript_past_the_llms_context_is_counted_not_batched(tmp_path, tiny_llm_dir):
    """A transcript longer than the LLM's context (a document pasted onto a clip) had been batched with the others,
    every row padded to its tokens: a batch of 21 x 27,025 text ids for a 2,048-token LLM, past its positions and,
    on a real LLM, out of memory mid-epoch. The training side's prompt builder (the LLM's config.json states its
    context) makes it a bad item, counted like any other, naming the count."""
    from llmasr.models.config import ModelConfig
    from llmasr.testing.tiny_recipe import tiny_model_section
    from llmasr.train.resolve import text_side

    path = good_corpus(tmp_path, 20)
    lines = path.read_text().splitlines()
    huge = {"key": "huge", "source": "wav_train/u0.wav", "target": " ".join(["hello world"] * 3000)}
    side = text_side(from_dict(ModelConfig, tiny_model_section(tiny_llm_dir), "model"))
    data_cfg = cfg(batching={"max_seconds": 60.0}, max_bad_fraction=0.1)
    manifest = write_manifest(tmp_path / "m.jsonl", [*lines, json.dumps(huge)])
    loader, _ = build_dataloader(data_cfg, [str(manifest)], FRONTEND, prompt_builder=side.prompt, train=True)
    batches = list(loader)
    assert max(b.text_ids.shape[1] for b in batches) < 100
    bad = [b for batch in batches for b in batch.bad]
    assert [b["key"] for b in bad] == ["huge"]
    assert "past the LLM's context of 2048" in bad[0]["reason"]
    assert loader.bad_data.by_reason == {"transcript past the LLM's context": 1}
    assert side.prompt.max_tokens == 2048  # the tiny LLM's max_position_embeddings


def test_target_lengths_come_from_the_screens_pass_over_the_lines(tmp_path, monkeypatch):
    """With max_target_len set, each line's target length is read in the start-up screen's pass: every line was
    parsed a second time for it (a minute at start-up of every rank on a few million lines)."""
    import llmasr.data.manifest as manifest_module

    path = good_corpus(tmp_path, 20)
    lines = path.read_text().splitlines()
    long = json.loads(lines[0]) | {"key": "wordy", "target": "hello " * 20}  # 120 characters
    write_manifest(
        path, [*lines, json.dumps(long), json.dumps(json.loads(lines[1]) | {"key": "told", "target_len": 99})]
    )
    parsed = []
    parse = manifest_module.parse_line
    monkeypatch.setattr(manifest_module, "parse_line", lambda rec, **kw: parsed.append(kw["line"]) or parse(rec, **kw))
    _, sampler = build(cfg(batching={"max_target_len": 50}), [str(path)])
    assert sampler.skipped_indices("target_too_long").tolist() == [20, 21]  # characters, else target_len
    assert sampler.target_lens[21] == 99 and sampler.target_lens[0] == len(json.loads(lines[0])["target"])
    assert len(parsed) <= 22 + 1  # the screen's pass, and the line the collator falls back to
