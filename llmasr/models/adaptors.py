"""Audio adaptors: encoder frames [B, T, input_dim] -> LLM input embeddings [B, T', llm_dim].

Every adaptor computes its own output lengths (`output_lengths`), and those are the only audio-token counts the
rest of the code uses: nothing recomputes them from a formula elsewhere. Input frames past each utterance's
length are zeroed before use and output positions past the output length are zeroed after, so an utterance gives
the same valid outputs alone as inside a padded batch.

Types (`AdaptorConfig.type`), with k = `downsample`:
- `linear`: FunASR `Linear`. Drop the T % k trailing frames, stack k frames, Linear(D*k -> ffn_dim) - ReLU -
  Linear(ffn_dim -> llm_dim). Output lengths max(lens // k, 1): an utterance shorter than k frames is padded up
  with zero frames to one token instead of vanishing (FunASR would give it none).
- `conv`: Conv1d(D -> ffn_dim, kernel 2k-1, stride k, padding k-1) - GELU - Linear(ffn_dim -> llm_dim).
  Output lengths (lens - 1) // k + 1 (= ceil(lens / k)), from the conv formula.
- `transformer`: FunASR `Transformer`. Pad T up to a multiple of k, the same two linears, then `n_layer`
  pre-norm transformer blocks at llm_dim (`n_head` heads, FFN hidden llm_dim // 4 as in FunASR, key padding
  mask). Output lengths (lens - 1) // k + 1. Parameter names match FunASR, so its adaptor weights load as is.
- `qformer`: see `llmasr.models.qformer`: `num_queries` tokens per window of k * num_queries frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmasr.config_io import ConfigError
from llmasr.models.config import AdaptorConfig

ADAPTOR_TYPES = ("linear", "conv", "transformer", "qformer")


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


class Adaptor(nn.Module):
    """Base: masks padded input frames, runs `_forward`, zeroes padded outputs."""

    input_dim: int
    llm_dim: int

    def output_lengths(self, lens: Tensor) -> Tensor:
        raise NotImplementedError

    def _forward(self, x: Tensor, lens: Tensor, out_lens: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        lens = lens.to(device=x.device, dtype=torch.long)
        check_lengths(x, lens, self.input_dim)
        x = x * length_mask(lens, x.size(1)).unsqueeze(-1).to(x.dtype)
        out_lens = self.output_lengths(lens)
        y = self._forward(x, lens, out_lens)
        y = y * length_mask(out_lens, y.size(1)).unsqueeze(-1).to(y.dtype)
        return y, out_lens


def stack_frames(x: Tensor, n_out: int, k: int) -> Tensor:
    """Trim or zero-pad the time axis to n_out * k frames, then stack k frames: [B, n_out, D * k]."""
    b, t, d = x.shape
    need = n_out * k
    x = x[:, :need] if t >= need else F.pad(x, (0, 0, 0, need - t))
    return x.reshape(b, n_out, d * k)


class StackingAdaptor(Adaptor):
    """Frame stacking, then Linear(D*k -> ffn_dim) - ReLU - Linear(ffn_dim -> llm_dim), FunASR parameter names."""

    def __init__(self, cfg: AdaptorConfig, input_dim: int, llm_dim: int):
        super().__init__()
        self.input_dim, self.llm_dim, self.k = input_dim, llm_dim, cfg.downsample
        self.linear1 = nn.Linear(input_dim * self.k, cfg.ffn_dim)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(cfg.ffn_dim, llm_dim)

    def project(self, x: Tensor, n_out: int) -> Tensor:
        return self.linear2(self.relu(self.linear1(stack_frames(x, n_out, self.k))))


class LinearAdaptor(StackingAdaptor):
    def __init__(self, cfg: AdaptorConfig, input_dim: int, llm_dim: int):
        super().__init__(cfg, input_dim, llm_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def output_lengths(self, lens: Tensor) -> Tensor:
        return torch.clamp(lens // self.k, min=1)

    def _forward(self, x: Tensor, lens: Tensor, out_lens: Tensor) -> Tensor:
        return self.dropout(self.project(x, max(x.size(1) // self.k, 1)))


class ConvAdaptor(Adaptor):
    def __init__(self, cfg: AdaptorConfig, input_dim: int, llm_dim: int):
        super().__init__()
        self.input_dim, self.llm_dim, self.k = input_dim, llm_dim, cfg.downsample
        self.conv = nn.Conv1d(input_dim, cfg.ffn_dim, kernel_size=2 * self.k - 1, stride=self.k, padding=self.k - 1)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.ffn_dim, llm_dim)

    def output_lengths(self, lens: Tensor) -> Tensor:
        # (L + 2 * (k - 1) - (2k - 1)) // k + 1
        return (lens - 1) // self.k + 1

    def _forward(self, x: Tensor, lens: Tensor, out_lens: Tensor) -> Tensor:
        h = self.act(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.proj(self.dropout(h))


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


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + FFN block; names and LayerNorm eps (1e-12) as FunASR's EncoderLayer."""

    def __init__(self, dim: int, n_head: int, ffn_hidden: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, n_head, dropout)
        self.feed_forward = FeedForward(dim, ffn_hidden, dropout, nn.ReLU())
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, key_mask))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class TransformerAdaptor(StackingAdaptor):
    def __init__(self, cfg: AdaptorConfig, input_dim: int, llm_dim: int):
        super().__init__(cfg, input_dim, llm_dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(llm_dim, cfg.n_head, llm_dim // 4, cfg.dropout) for _ in range(cfg.n_layer)
        )

    def output_lengths(self, lens: Tensor) -> Tensor:
        return (lens - 1) // self.k + 1

    def _forward(self, x: Tensor, lens: Tensor, out_lens: Tensor) -> Tensor:
        y = self.project(x, math.ceil(x.size(1) / self.k))
        key_mask = length_mask(out_lens, y.size(1))
        for block in self.blocks:
            y = block(y, key_mask)
        return y


def build_adaptor(cfg: AdaptorConfig, input_dim: int, llm_dim: int) -> Adaptor:
    """Build the adaptor named by `cfg.type`; `llm_dim` is the LLM's embedding size (from the LLM, not the recipe)."""
    cfg.validate("model.adaptor")
    if cfg.type == "linear":
        return LinearAdaptor(cfg, input_dim, llm_dim)
    if cfg.type == "conv":
        return ConvAdaptor(cfg, input_dim, llm_dim)
    if cfg.type == "transformer":
        return TransformerAdaptor(cfg, input_dim, llm_dim)
    if cfg.type == "qformer":
        from llmasr.models.qformer import QFormerAdaptor

        return QFormerAdaptor(cfg, input_dim, llm_dim)
    raise ConfigError(f"model.adaptor.type: unknown adaptor {cfg.type!r}; choose one of {', '.join(ADAPTOR_TYPES)}")
