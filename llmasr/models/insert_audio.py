"""Writing audio embeddings into the text embedding sequence with tensor indexing (no per-sample loop).

Each row of the batch is `text[:audio_pos] + audio[:audio_len] + text[audio_pos:text_len]`. The destination of
every text and audio position is computed for the whole batch at once and written with one index_put each, which
is differentiable with respect to both the text and the audio embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmasr.models.losses import IGNORE_INDEX


@dataclass
class MergedInputs:
    inputs_embeds: torch.Tensor  # [B, N, H]
    attention_mask: torch.Tensor  # [B, N] int64, 1 on real positions
    position_ids: torch.Tensor  # [B, N] int64, counting real positions only (left padding safe)
    labels: torch.Tensor | None  # [B, N] int64 with IGNORE_INDEX outside the targets
    audio_mask: torch.Tensor  # [B, N] bool, True where audio embeddings sit


def merge_audio_into_text(
    text_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    text_lens: torch.Tensor,
    audio_pos: torch.Tensor,
    target_start: torch.Tensor,
    audio_embeds: torch.Tensor,
    audio_lens: torch.Tensor,
    *,
    left_pad: bool = False,
    with_labels: bool = True,
) -> MergedInputs:
    """Insert `audio_embeds[b, :audio_lens[b]]` before text position `audio_pos[b]` of each row.

    Labels are the text ids from `target_start` to `text_lens` (the target and its end token), -100 elsewhere.
    `left_pad=True` right-aligns the rows, as batched generation requires.
    """
    batch, text_len, hidden = text_embeds.shape
    audio_len = audio_embeds.shape[1]
    check_merge_inputs(text_embeds, text_ids, text_lens, audio_pos, target_start, audio_embeds, audio_lens)
    device = text_embeds.device
    total = text_lens + audio_lens
    width = int(total.max()) if batch else 0
    offset = (width - total) if left_pad else torch.zeros_like(total)

    j = torch.arange(text_len, device=device).unsqueeze(0)
    text_valid = j < text_lens.unsqueeze(1)
    after_audio = j >= audio_pos.unsqueeze(1)
    text_dest = j + after_audio * audio_lens.unsqueeze(1) + offset.unsqueeze(1)

    k = torch.arange(audio_len, device=device).unsqueeze(0)
    audio_valid = k < audio_lens.unsqueeze(1)
    audio_dest = audio_pos.unsqueeze(1) + k + offset.unsqueeze(1)

    # Each mask's (row, column) indices are found once: indexing with a bool mask finds them again at every use, and
    # on a GPU each search waits for the device (the count of True entries decides the result's size).
    text_at = text_valid.nonzero(as_tuple=True)
    audio_at = audio_valid.nonzero(as_tuple=True)
    text_to = (text_at[0], text_dest[text_at])
    audio_to = (audio_at[0], audio_dest[audio_at])

    embeds = text_embeds.new_zeros(batch, width, hidden)
    embeds = embeds.index_put(text_to, text_embeds[text_at])
    embeds = embeds.index_put(audio_to, audio_embeds[audio_at].to(embeds))

    attention_mask = torch.zeros(batch, width, dtype=torch.long, device=device)
    attention_mask[text_to] = 1
    attention_mask[audio_to] = 1
    audio_mask = torch.zeros(batch, width, dtype=torch.bool, device=device)
    audio_mask[audio_to] = True
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)

    labels = None
    if with_labels:
        labelled = (text_valid & (j >= target_start.unsqueeze(1))).nonzero(as_tuple=True)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long, device=device)
        labels[labelled[0], text_dest[labelled]] = text_ids[labelled]
    return MergedInputs(embeds, attention_mask, position_ids, labels, audio_mask)


def check_merge_inputs(text_embeds, text_ids, text_lens, audio_pos, target_start, audio_embeds, audio_lens) -> None:
    """ValueError naming the input and both shapes (or the row and both values) that do not fit together. A length
    past its tensor's width had been taken as is: the missing positions became zeros the mask hides, so audio or text
    went missing from the row without a word."""
    batch, text_len, hidden = text_embeds.shape
    audio_len = audio_embeds.shape[1]
    if audio_embeds.dim() != 3 or audio_embeds.shape[0] != batch or audio_embeds.shape[2] != hidden:
        raise ValueError(
            f"audio embeddings {list(audio_embeds.shape)} do not fit text embeddings {list(text_embeds.shape)}: "
            "the adaptor output size must equal the LLM hidden size"
        )
    if tuple(text_ids.shape) != (batch, text_len):
        raise ValueError(f"text_ids {list(text_ids.shape)} do not fit text embeddings {list(text_embeds.shape)}")
    named = {"text_lens": text_lens, "audio_pos": audio_pos, "target_start": target_start, "audio_lens": audio_lens}
    for name, lens in named.items():
        if tuple(lens.shape) != (batch,):
            raise ValueError(f"{name} {list(lens.shape)} must be one value per row: [{batch}]")
    # Every rule at once: one wait for the device, and only a failing batch looks further.
    rules = {
        f"text_lens outside [0, {text_len}] (text embeddings {list(text_embeds.shape)})": (text_lens < 0)
        | (text_lens > text_len),
        f"audio_lens outside [0, {audio_len}] (audio embeddings {list(audio_embeds.shape)})": (audio_lens < 0)
        | (audio_lens > audio_len),
        "audio_pos outside [0, text_lens]": (audio_pos < 0) | (audio_pos > text_lens),
        "target_start outside [audio_pos, text_lens] (labels only after the audio)": (target_start < audio_pos)
        | (target_start > text_lens),
    }
    if not bool(torch.stack(list(rules.values())).any()):
        return
    for rule, bad in rules.items():
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            values = ", ".join(f"{name} {int(lens[row])}" for name, lens in named.items())
            raise ValueError(f"row {row} of the batch: {rule}; its values: {values}")
