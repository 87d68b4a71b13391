"""The loader's epochs: each rank's share, an exact resume despite prefetch, validation subsets and padding, weighted
mixes, and the workers that keep an accumulation window ready."""

import json
import logging

import pytest
from speech_fakes import build, cfg, good_corpus

from llmasr.config_io import from_dict
from llmasr.data.config import DataConfig
from llmasr.data.loader import evenly_spaced


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


def test_valid_subset_and_no_shuffle(tmp_path):
    path = good_corpus(tmp_path, 20, name="dev")
    loader, sampler = build(cfg(valid_max_utts=5), [str(path)], train=False)
    keys = [k for b in loader for k in b.keys]
    assert len(keys) == 5
    loader2, _ = build(cfg(valid_max_utts=5), [str(path)], train=False, epoch=3)
    assert [k for b in loader2 for k in b.keys] == keys


def test_the_valid_subset_says_how_many_lines_it_leaves_out(tmp_path, caplog):
    """data.valid_max_utts hears 5 of 20 lines: the log had said "valid data: 20 items ... skipped none"."""
    path = good_corpus(tmp_path, 20, name="dev")
    with caplog.at_level(logging.INFO, logger="llmasr.data"):
        build(cfg(valid_max_utts=5), [str(path)], train=False)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("valid data:")]
    assert len(said) == 1 and "5 of 20 items (data.valid_max_utts 5, evenly spaced: 15 left out)" in said[0], said


def test_lines_the_valid_subset_skips_are_counted_among_the_subsets_lines(tmp_path, caplog):
    """The skip warning said "valid: 2 of 20 lines are skipped every epoch" of a 5-line valid_max_utts subset: a share
    of the manifest where the share of what validation hears was meant."""
    path = good_corpus(tmp_path, 20, name="dev")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    subset = [lines[i] for i in evenly_spaced(20, 5)]
    durations = sorted(r["duration"] for r in subset)
    limit = (durations[2] + durations[3]) / 2
    too_long = [r["key"] for r in subset if r["duration"] > limit]
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):
        build(cfg(valid_max_utts=5, batching={"max_duration": limit}), [str(path)], train=False)
    said = [r.getMessage() for r in caplog.records if "skipped every epoch" in r.getMessage()]
    assert len(said) == 1 and len(too_long) == 2, said
    assert said[0].startswith("valid: 2 of 5 lines (a subset of 20) are skipped every epoch: 2 longer than"), said


def test_a_mix_weight_that_leaves_a_manifest_under_one_line_an_epoch_is_named(tmp_path, caplog):
    """Weight 0.04 of a 10-line manifest is 0.4 lines an epoch: most epochs trained on none of it, and train.log said
    only "train data: 30 items"."""
    a = good_corpus(tmp_path, 20, name="a")
    b = good_corpus(tmp_path, 10, name="b", seed=1)
    data_cfg = cfg(train=[{"path": str(a)}, {"path": str(b), "weight": 0.04}])
    with caplog.at_level(logging.INFO, logger="llmasr.data"):
        build(data_cfg, data_cfg.train)
    said = [r.getMessage() for r in caplog.records]
    assert any(f"{a}: 20 lines x weight 1 = 20 visits; {b}: 10 lines x weight 0.04 = 0.4 visits" in m for m in said)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(b) in r.getMessage()]
    assert len(warned) == 1 and "0.4 visits an epoch in expectation" in warned[0] and "at least 0.1" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llmasr.data"):  # a whole line an epoch or more: no warning
        whole = cfg(train=[{"path": str(a)}, {"path": str(b), "weight": 0.1}])
        build(whole, whole.train)
    assert any("10 lines x weight 0.1 = 1 visits" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llmasr.data"):  # every weight 1: each line once, "N items" says it
        plain = cfg(train=[{"path": str(a)}, {"path": str(b)}])
        build(plain, plain.train)
    assert not [r for r in caplog.records if "visits" in r.getMessage()]


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


@pytest.mark.parametrize("weight, visits", [(3.0, 30), (0.5, 5)])
def test_a_single_training_manifest_keeps_its_weight(tmp_path, weight, visits):
    """`data.train: [{path: a.jsonl, weight: 3}]` (one corpus, three passes an epoch) had trained each line once: the
    weight of a manifest listed alone was dropped without a word, while the same weight beside a second manifest
    counted."""
    a = good_corpus(tmp_path, 10, name="a")
    data_cfg = cfg(train=[{"path": str(a), "weight": weight}])
    loader, sampler = build(data_cfg, data_cfg.train)
    keys = [k for batch in loader for k in batch.keys]
    assert len(keys) == visits and sampler.stats(0)["num_items"] == visits


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


def test_a_resume_after_an_audio_file_went_missing_names_that_cause(tmp_path):
    """The manifest as it was, one line's audio removed since the state was saved: the screen skips that line, the
    epoch makes other batches, and the refusal names the unusable lines (it had said a manifest's lines were added,
    removed or their durations changed)."""
    path = good_corpus(tmp_path, 30)
    data_cfg = cfg(batching={"max_seconds": 3.0})
    loader, _ = build(data_cfg, [str(path)], epoch=1)
    it = iter(loader)
    [next(it) for _ in range(3)]
    state = loader.state_dict()
    del it
    (tmp_path / "wav_train" / "u7.wav").unlink()
    again, _ = build(data_cfg, [str(path)], epoch=0)
    with pytest.raises(ValueError, match="1 of its lines are screened unusable before loading now, the run had 0"):
        again.load_state_dict(state)
