import dataclasses
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils.pin_memory import pin_memory as torch_pin_memory

import llmasr
from llmasr.data.bad_data import BadItem
from llmasr.data.batch import Batch
from llmasr.data.collate import Collator
from llmasr.testing.tiny_recipe import random_batch, speech_logits, tiny_model_section

TENSORS = (
    "feats feat_lens text_ids text_lens audio_pos target_start ctc_ids ctc_lens durations wave wave_lens spec_masks"
).split()


def item(i, frames, n_text, n_ctc):
    rng = np.random.default_rng(i)
    return {
        "key": f"u{i}",
        "index": 10 + i,
        "feats": rng.standard_normal((frames, 3)).astype(np.float32),
        "target": f"text {i}",
        "text_ids": rng.integers(1, 50, n_text).astype(np.int64),
        "audio_pos": 1,
        "target_start": 2 + i % 2,
        "ctc_ids": rng.integers(1, 9, n_ctc).astype(np.int64),
        "duration": frames * 0.06,
    }


ITEMS = [item(0, 5, 6, 3), item(1, 9, 4, 7), item(2, 3, 8, 2), item(3, 7, 5, 4)]
BAD = BadItem(manifest="m.jsonl", line=9, key="k9", reason="audio: file not found (x.wav)", index=9)


def collate(items):
    return Collator(pad_id=-1, with_ctc=True)(items)


def assert_same(a: Batch, b: Batch):
    for name in TENSORS:
        got, want = getattr(a, name), getattr(b, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    assert (a.keys, a.targets, a.indices) == (b.keys, b.targets, b.indices)


@pytest.mark.parametrize("rows", [[1], [0, 2], [3, 0], [2, 3, 1]])
def test_select_equals_collating_those_items_alone(rows):
    whole = collate([ITEMS[0], BAD, *ITEMS[1:]])
    part = whole.select(rows)
    assert_same(part, collate([ITEMS[r] for r in rows]))
    assert part.n_bad == 0 and part.bad == [] and whole.n_bad == 1  # dropped items are not rows: not counted twice


def test_select_refuses_no_rows_and_rows_out_of_range():
    batch = collate(ITEMS)
    with pytest.raises(ValueError, match="no rows"):
        batch.select([])
    with pytest.raises(IndexError, match=r"rows \[4\] out of range for a batch of 4"):
        batch.select([0, 4])


def test_derived_values():
    batch = collate(ITEMS)
    assert batch.size == 4
    assert batch.labelled_tokens == sum(len(it["text_ids"]) - it["target_start"] for it in ITEMS)
    assert batch.audio_seconds == pytest.approx(sum(it["duration"] for it in ITEMS))


def test_rows_must_agree():
    batch = collate(ITEMS)
    with pytest.raises(ValueError, match="batch field targets has 3 rows but keys has 4"):
        dataclasses.replace(batch, targets=batch.targets[:3])


def test_to_casts_only_the_features():
    batch = collate(ITEMS)
    moved = batch.to("cpu", torch.float64)
    assert moved.feats.dtype == torch.float64 and torch.equal(moved.feats.float(), batch.feats)
    assert all(getattr(moved, n).dtype == torch.int64 for n in TENSORS if n not in ("feats", "durations", "wave"))
    assert moved.durations.dtype == torch.float32 and moved.keys == batch.keys
    assert batch.feats.dtype == torch.float32  # the original is left as it was
    assert batch.to("cpu").feats.dtype == torch.float32


def test_pickles_through_a_dataloader_worker():
    batch = collate([ITEMS[0], BAD, ITEMS[1]])
    again = pickle.loads(pickle.dumps(batch))
    assert_same(again, batch)
    assert (again.n_bad, again.bad, again.empty) == (1, batch.bad, False)
    loader = DataLoader([ITEMS[0], BAD, ITEMS[1]], batch_size=3, collate_fn=Collator(-1, with_ctc=True), num_workers=1)
    (from_worker,) = list(loader)
    assert isinstance(from_worker, Batch)
    assert_same(from_worker, batch)
    assert from_worker.bad == batch.bad


def test_torch_pin_memory_pins_every_tensor(monkeypatch):
    """torch's DataLoader pins a custom type only through its pin_memory(); a dataclass without one stays unpinned."""
    pinned = []

    def fake_pin(t, *args, **kwargs):
        pinned.append(t)
        return t.clone()

    if not torch.cuda.is_available():  # pinning needs an accelerator; count the calls instead
        monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = collate(ITEMS)
    out = torch_pin_memory(batch)
    assert isinstance(out, Batch) and out is not batch
    assert_same(out, batch)
    if torch.cuda.is_available():
        assert all(getattr(out, n).is_pinned() for n in TENSORS)
    else:
        assert len(pinned) == len(TENSORS)


def test_decode_collator_keeps_an_all_bad_batch_as_no_rows():
    batch = Collator(pad_id=0, no_rows=True)([BAD])
    assert batch.size == 0 and batch.empty and batch.n_bad == 1 and batch.bad[0]["line"] == 9
    assert batch.feats.shape[0] == 0 and batch.text_ids.shape[0] == 0
    with pytest.raises(ValueError, match="either a fallback item or no_rows"):
        Collator(pad_id=0, fallback=ITEMS[0], no_rows=True)


@pytest.fixture
def model(tiny_llm_dir):
    torch.manual_seed(0)
    return llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.3)).eval()


def test_forward_on_selected_rows_equals_those_rows_of_the_whole_forward(model):
    batch = random_batch(model, ["zero one two", "three four", "five six seven eight", "nine"], frames=[12, 30, 21, 17])
    rows = [3, 1]
    with torch.no_grad():
        enc_whole, enc_lens_whole, merged_whole = model.embed_batch(batch)
        enc_part, enc_lens_part, merged_part = model.embed_batch(batch.select(rows))
        ctc_whole, ctc_part = model.ctc_head(enc_whole, enc_lens_whole), model.ctc_head(enc_part, enc_lens_part)
        part = model(batch.select(rows))
    logits_whole, logits_part = speech_logits(model, batch), speech_logits(model, batch.select(rows))
    for j, r in enumerate(rows):
        n = int(enc_lens_part[j])
        assert n == int(enc_lens_whole[r])
        torch.testing.assert_close(ctc_part[j, :n], ctc_whole[r, :n], rtol=0, atol=1e-5)
        valid = int(merged_part.attention_mask[j].sum())
        assert valid == int(merged_whole.attention_mask[r].sum())
        # right-padded rows: the valid positions come first in both
        torch.testing.assert_close(logits_part[j, :valid], logits_whole[r, :valid], rtol=0, atol=1e-4)
        assert torch.equal(merged_part.labels[j, :valid], merged_whole.labels[r, :valid])
    assert int(part.n_tokens) == batch.select(rows).labelled_tokens
