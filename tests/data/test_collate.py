import dataclasses

import numpy as np
import pytest
import torch

from llmasr.data.bad_data import BadItem
from llmasr.data.collate import Collator, EmptyBatchError

FIELDS = {
    "ctc_labelled",
    "feats",
    "feat_lens",
    "text_ids",
    "text_lens",
    "audio_pos",
    "target_start",
    "ctc_ids",
    "ctc_lens",
    "keys",
    "targets",
    "durations",
    "n_bad",
    "bad",
    "empty",
    "indices",
    "duplicate",
    "wave",
    "wave_lens",
    "spec_masks",
    "hotwords",
    "hotwords_dropped",
    "leads",
    "speech_runs",
    "languages",
}


def item(key, t, n_text, n_ctc=None, dim=4):
    return {
        "key": key,
        "index": 0,
        "feats": np.full((t, dim), 1.0, dtype=np.float32),
        "target": f"text {key}",
        "text_ids": np.arange(1, n_text + 1, dtype=np.int64),
        "audio_pos": 2,
        "target_start": 3,
        "ctc_ids": None if n_ctc is None else np.arange(1, n_ctc + 1, dtype=np.int64),
        "duration": t * 0.06,
    }


def bad(line):
    return BadItem(manifest="m.jsonl", line=line, key=f"k{line}", reason="audio: file not found (x.wav)", index=line)


def test_shapes_padding_and_keys():
    batch = Collator(pad_id=-7, with_ctc=True)([item("a", 5, 6, 3), bad(4), item("b", 3, 9, 5)])
    assert {f.name for f in dataclasses.fields(batch)} == FIELDS
    assert batch.feats.shape == (2, 5, 4) and batch.feats.dtype == torch.float32
    assert batch.feats[1, 3:].abs().sum() == 0 and batch.feats[1, :3].min() == 1
    assert batch.feat_lens.tolist() == [5, 3] and batch.feat_lens.dtype == torch.int64
    assert batch.text_ids.shape == (2, 9) and batch.text_ids.dtype == torch.int64
    assert batch.text_ids[0, 6:].tolist() == [-7, -7, -7]
    assert batch.text_lens.tolist() == [6, 9]
    assert batch.audio_pos.tolist() == [2, 2] and batch.target_start.tolist() == [3, 3]
    assert batch.ctc_ids.shape == (2, 5) and batch.ctc_ids[0].tolist() == [1, 2, 3, 0, 0]
    assert batch.ctc_lens.tolist() == [3, 5] and batch.ctc_labelled is True
    assert batch.keys == ["a", "b"] and batch.targets == ["text a", "text b"]
    assert batch.durations.dtype == torch.float32 and batch.durations.shape == (2,)
    assert batch.n_bad == 1 and batch.bad[0]["line"] == 4 and batch.empty is False


def test_without_ctc_keys_present_and_empty():
    batch = Collator(pad_id=0)([item("a", 5, 6), item("b", 3, 2)])
    assert {f.name for f in dataclasses.fields(batch)} == FIELDS
    assert batch.ctc_ids.shape == (2, 0) and batch.ctc_ids.dtype == torch.int64
    assert batch.ctc_lens.tolist() == [0, 0] and batch.ctc_labelled is False
    assert batch.n_bad == 0 and batch.bad == []


def test_all_bad_batch_uses_fallback_and_is_flagged():
    fb = item("fallback", 4, 5, 2)
    batch = Collator(pad_id=0, with_ctc=True, fallback=fb)([bad(1), bad(2)])
    assert {f.name for f in dataclasses.fields(batch)} == FIELDS
    assert batch.empty is True and batch.n_bad == 2
    assert batch.keys == ["fallback"] and batch.feats.shape == (1, 4, 4)


def test_all_bad_without_fallback_raises():
    with pytest.raises(EmptyBatchError, match="m.jsonl:1"):
        Collator(pad_id=0)([bad(1)])


def test_missing_ctc_ids_is_an_error():
    with pytest.raises(ValueError, match="ctc_ids"):
        Collator(pad_id=0, with_ctc=True)([item("a", 5, 6)])


def test_feature_dim_mismatch_is_an_error():
    with pytest.raises(ValueError, match="feature dims"):
        Collator(pad_id=0)([item("a", 5, 6, dim=4), item("b", 5, 6, dim=3)])


def test_languages_travel_per_row():
    """Each item's language key (the dataset's `lang`) is its row's in the batch, through select too: a SenseVoice
    encoder with per-line language queries reads them."""
    items = [{**item("a", 5, 6, 3), "lang": "zh"}, item("b", 3, 9, 5), {**item("c", 4, 4, 2), "lang": "en"}]
    batch = Collator(pad_id=0, with_ctc=True)(items)
    assert batch.languages == ["zh", None, "en"] and batch.select([2, 0]).languages == ["en", "zh"]
