import pytest
import torch

from llmasr.models.insert_audio import merge_audio_into_text
from llmasr.models.losses import IGNORE_INDEX


def loop_reference(text_embeds, text_ids, text_lens, audio_pos, target_start, audio, audio_lens, left_pad):
    """Per-sample construction, the way FunASR's reference does it, for comparison."""
    rows, labels = [], []
    for b in range(text_embeds.shape[0]):
        t, p, a = int(text_lens[b]), int(audio_pos[b]), int(audio_lens[b])
        rows.append(torch.cat([text_embeds[b, :p], audio[b, :a], text_embeds[b, p:t]]))
        lab = [IGNORE_INDEX] * p + [IGNORE_INDEX] * a
        lab += [int(text_ids[b, j]) if j >= int(target_start[b]) else IGNORE_INDEX for j in range(p, t)]
        labels.append(torch.tensor(lab))
    width = max(r.shape[0] for r in rows)
    out = torch.zeros(len(rows), width, text_embeds.shape[-1])
    lab_out = torch.full((len(rows), width), IGNORE_INDEX)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (r, lab) in enumerate(zip(rows, labels)):
        s = width - r.shape[0] if left_pad else 0
        out[b, s : s + r.shape[0]] = r
        lab_out[b, s : s + r.shape[0]] = lab
        mask[b, s : s + r.shape[0]] = 1
    return out, lab_out, mask


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    text_lens = torch.tensor([7, 4, 9])
    audio_pos = torch.tensor([3, 2, 0])
    target_start = torch.tensor([5, 4, 6])
    audio_lens = torch.tensor([2, 5, 3])
    text_ids = torch.randint(0, 50, (3, 9), generator=g)
    text_embeds = torch.randn(3, 9, 4, generator=g)
    audio = torch.randn(3, 5, 4, generator=g)
    return text_embeds, text_ids, text_lens, audio_pos, target_start, audio, audio_lens


def test_vectorised_merge_equals_per_sample_loop():
    for left_pad in (False, True):
        args = make_batch()
        merged = merge_audio_into_text(*args, left_pad=left_pad)
        ref, ref_labels, ref_mask = loop_reference(*args, left_pad=left_pad)
        assert torch.equal(merged.inputs_embeds, ref)
        assert torch.equal(merged.labels, ref_labels)
        assert torch.equal(merged.attention_mask, ref_mask)
        # Positions count real tokens only, so left padding leaves each row's positions at 0, 1, 2, ...
        for b in range(3):
            real = merged.position_ids[b][ref_mask[b].bool()]
            assert real.tolist() == list(range(int(ref_mask[b].sum())))
        assert int(merged.audio_mask.sum()) == int(args[-1].sum())


def test_merge_is_differentiable_for_text_and_audio():
    text_embeds, text_ids, text_lens, audio_pos, target_start, audio, audio_lens = make_batch()
    text_embeds.requires_grad_(True)
    audio.requires_grad_(True)
    merged = merge_audio_into_text(text_embeds, text_ids, text_lens, audio_pos, target_start, audio, audio_lens)
    merged.inputs_embeds.sum().backward()
    # Gradient reaches exactly the valid positions.
    assert torch.equal(audio.grad[:, :, 0] != 0, torch.arange(5)[None] < audio_lens[:, None])
    assert torch.equal(text_embeds.grad[:, :, 0] != 0, torch.arange(9)[None] < text_lens[:, None])


def test_dimension_mismatch_names_both_shapes():
    text_embeds, text_ids, text_lens, audio_pos, target_start, audio, audio_lens = make_batch()
    try:
        merge_audio_into_text(text_embeds, text_ids, text_lens, audio_pos, target_start, audio[..., :3], audio_lens)
    except ValueError as err:
        assert "[3, 5, 3]" in str(err) and "[3, 9, 4]" in str(err) and "hidden size" in str(err)
    else:
        raise AssertionError("expected a ValueError")


def test_each_mask_is_searched_once():
    """Indexing with a bool mask searches it (nonzero: on a GPU a wait for the device) at every use; the text, audio
    and label masks are searched once each, 3 searches where there were 16."""
    from llmasr.testing.op_count import aten_ops

    text_embeds, text_ids, text_lens, audio_pos, target_start, audio, audio_lens = make_batch()

    def merge(**kw):
        return merge_audio_into_text(text_embeds, text_ids, text_lens, audio_pos, target_start, audio, audio_lens, **kw)

    assert aten_ops(merge)["aten::nonzero"] == 3
    assert aten_ops(merge, left_pad=True, with_labels=False)["aten::nonzero"] == 2


@pytest.mark.parametrize(
    "change,said",
    [
        ({"audio_lens": torch.tensor([2, 6, 3])}, r"row 1 of the batch: audio_lens outside \[0, 5\] .*\[3, 5, 4\]"),
        ({"text_lens": torch.tensor([7, 4, 10])}, r"row 2 of the batch: text_lens outside \[0, 9\] .*\[3, 9, 4\]"),
        ({"target_start": torch.tensor([2, 4, 6])}, r"row 0 .*target_start outside \[audio_pos, text_lens\]"),
        ({"target_start": torch.tensor([5, 5, 6])}, r"row 1 .*target_start 5"),
        ({"audio_pos": torch.tensor([3, 5, 0])}, r"row 1 of the batch: audio_pos outside \[0, text_lens\]"),
        (
            {"text_ids": torch.zeros(3, 8, dtype=torch.long)},
            r"text_ids \[3, 8\] do not fit text embeddings \[3, 9, 4\]",
        ),
        ({"audio_lens": torch.tensor([2, 5])}, r"audio_lens \[2\] must be one value per row: \[3\]"),
    ],
)
def test_lengths_that_do_not_fit_their_tensors_are_named(change, said):
    """A length past its tensor's width had been taken as is: the audio or text it counted went missing from the row
    (zeros the attention mask hides) or a row lost its labels, without a word."""
    names = ["text_embeds", "text_ids", "text_lens", "audio_pos", "target_start", "audio_embeds", "audio_lens"]
    args = dict(zip(names, make_batch())) | change
    with pytest.raises(ValueError, match=said):
        merge_audio_into_text(**args)
