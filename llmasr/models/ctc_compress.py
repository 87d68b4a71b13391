"""CTC compression: shorten the encoder output to one vector per CTC segment before the adaptor.

The CTC head's best path splits an utterance's frames into runs of one label; each run becomes the mean of its
encoder frames (Gaido et al., 2021, "CTC-based compression for direct speech translation"). The LLM then reads
about one audio vector per token instead of several frames per token: shorter sequences, and an alignment close
to the text it writes, which is what lets a small or briefly trained LLM follow the audio.

Modes (`model.adaptor.ctc_compress`):
- `none`: no compression.
- `avg`: every run becomes a vector, blank runs included (they keep the pauses and anything the CTC head missed).
- `avg_no_blank`: blank runs are dropped: one vector per CTC token. A word the CTC head deletes is lost to the
  LLM, so use it with an encoder whose CTC output is already good.

The segmentation is an argmax, so no gradient flows through it; gradients flow to the averaged frames. An utterance
whose best path is all blank keeps one vector (the mean of its frames) rather than vanishing. Padding frames never
contribute, so an utterance compresses the same alone as inside a padded batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmasr.models.adaptor_blocks import length_mask

CTC_COMPRESS_MODES = ("none", "avg", "avg_no_blank")


def ctc_segments(best: Tensor, lens: Tensor, blank_id: int, drop_blank: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Segment index per frame for best-path labels `best` [B, T].

    Returns (seg [B, T] long, kept [B, T] bool, n_seg [B] long): frame t of utterance b belongs to segment
    seg[b, t] when kept[b, t]; every utterance has n_seg >= 1.
    """
    valid = length_mask(lens, best.size(1))
    kept = valid & (best != blank_id) if drop_blank else valid.clone()
    starts = torch.ones_like(kept)
    starts[:, 1:] = best[:, 1:] != best[:, :-1]
    starts &= kept
    seg = starts.long().cumsum(dim=1) - 1
    n_seg = starts.sum(dim=1)
    empty = n_seg == 0  # all blank (drop_blank): keep one segment of every valid frame
    if bool(empty.any()):
        kept = kept | (valid & empty[:, None])
        seg = torch.where(empty[:, None], torch.zeros_like(seg), seg)
        n_seg = torch.where(empty, torch.ones_like(n_seg), n_seg)
    return seg, kept, n_seg


def ctc_compress(x: Tensor, lens: Tensor, log_probs: Tensor, blank_id: int, mode: str) -> tuple[Tensor, Tensor]:
    """Mean of `x` [B, T, D] over the segments of the CTC best path of `log_probs` [B, T, V]: ([B, S, D], [B])."""
    if mode not in CTC_COMPRESS_MODES:
        raise ValueError(f"ctc_compress: mode must be one of {CTC_COMPRESS_MODES}, got {mode!r}")
    if mode == "none":
        return x, lens
    if log_probs.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"ctc_compress: CTC log-probs {list(log_probs.shape)} and encoder frames {list(x.shape)} must share "
            "[batch, time]"
        )
    lens = lens.to(device=x.device, dtype=torch.long)
    seg, kept, n_seg = ctc_segments(log_probs.detach().argmax(dim=-1), lens, blank_id, mode == "avg_no_blank")
    b, t, d = x.shape
    s = int(n_seg.max())
    index = torch.where(kept, seg, torch.full_like(seg, s))  # frames not kept go to a spare slot, then dropped
    # Summed in float32: CUDA adds bf16 one element at a time, rounding each sum, and a count stops at 256 (a long
    # silence, or every frame of an all-blank utterance early in training, is one segment)
    xf = x.float()
    sums = xf.new_zeros(b, s + 1, d).scatter_add_(1, index[..., None].expand(b, t, d), xf)
    counts = xf.new_zeros(b, s + 1).scatter_add_(1, index, kept.float())
    return (sums[:, :s] / counts[:, :s, None].clamp(min=1)).to(x.dtype), n_seg
