"""The parts every audio adaptor shares: the length-masking base class and FunASR-named attention/FFN blocks.

Kept apart from the concrete adaptors (llmasr.models.adaptors) so that each adaptor module, the Q-Former
included, imports its parts from here and the factory imports the adaptors: dependencies point one way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmasr.config_io import ConfigError


def length_mask(lens: Tensor, max_len: int) -> Tensor:
    """[B, max_len] bool, True at valid positions."""
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


def check_lengths(x: Tensor, lens: Tensor, input_dim: int) -> None:
    if x.dim() != 3 or x.size(-1) != input_dim:
        raise ValueError(f"adaptor input must be [B, T, {input_dim}], got {list(x.shape)}")
    if lens.dim() != 1 or lens.size(0) != x.size(0):
        raise ValueError(f"adaptor lengths must be [B={x.size(0)}], got {list(lens.shape)}")
    bad = ((lens < 1) | (lens > x.size(1))).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(
            f"adaptor input length {int(lens[i])} of utterance {i} is outside [1, {x.size(1)}] "
            f"(the padded time axis); empty utterances must be filtered before the model"
        )


def funasr_nano_token_len(lens: Tensor) -> Tensor:
    """FunASR Fun-ASR-Nano's `fake_token_len` for L input frames: three halvings, (L - 1) // 2 + 1 each."""
    for _ in range(3):
        lens = (lens - 1) // 2 + 1
    return lens


class Adaptor(nn.Module):
    """Base: masks padded input frames, runs `_forward`, zeroes padded outputs.

    `audio_token_cap` (model.adaptor.audio_token_cap, set by the builder): "funasr_nano" keeps only the first
    `funasr_nano_token_len(lens)` outputs, after the adaptor ran over all frames, as FunASR's Nano does.

    `IO_WEIGHTS` = (input tensor, its axis that carries the encoder dim, output tensor whose rows are llm_dim): the
    builder reads a pretrained adaptor's sizes there, to name an encoder or LLM that does not fit it."""

    input_dim: int
    llm_dim: int
    IO_WEIGHTS: tuple[str, int, str]
    audio_token_cap: str = "none"

    def output_lengths(self, lens: Tensor) -> Tensor:
        raise NotImplementedError

    def token_lengths(self, lens: Tensor) -> Tensor:
        """The audio tokens the LLM reads for `lens` input frames: output_lengths under audio_token_cap."""
        out_lens = self.output_lengths(lens)
        if self.audio_token_cap == "funasr_nano":
            out_lens = torch.minimum(out_lens, funasr_nano_token_len(lens))
        return out_lens

    def _forward(self, x: Tensor, lens: Tensor, out_lens: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        lens = lens.to(device=x.device, dtype=torch.long)
        check_lengths(x, lens, self.input_dim)
        x = x * length_mask(lens, x.size(1)).unsqueeze(-1).to(x.dtype)
        y = self._forward(x, lens, self.output_lengths(lens))
        out_lens = self.token_lengths(lens)
        if self.audio_token_cap == "funasr_nano":
            y = y[:, : int(out_lens.max())]
        y = y * length_mask(out_lens, y.size(1)).unsqueeze(-1).to(y.dtype)
        return y, out_lens


class MultiHeadAttention(nn.Module):
    """Multi-head attention with FunASR's parameter names (linear_q/k/v/out); `key_mask` [B, Tk], True = valid."""

    def __init__(self, dim: int, n_head: int, dropout: float, kv_dim: int | None = None):
        super().__init__()
        if dim % n_head:
            raise ConfigError(f"adaptor attention: dim {dim} is not divisible by n_head {n_head}")
        kv_dim = kv_dim or dim
        self.n_head, self.dropout = n_head, dropout
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(kv_dim, dim)
        self.linear_v = nn.Linear(kv_dim, dim)
        self.linear_out = nn.Linear(dim, dim)

    def forward(self, q: Tensor, kv: Tensor, key_mask: Tensor | None) -> Tensor:
        b, tq, d = q.shape
        h = self.n_head

        def heads(t: Tensor) -> Tensor:
            return t.view(b, -1, h, d // h).transpose(1, 2)

        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            heads(self.linear_q(q)),
            heads(self.linear_k(kv)),
            heads(self.linear_v(kv)),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.linear_out(out.transpose(1, 2).reshape(b, tq, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, activation: nn.Module):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))
