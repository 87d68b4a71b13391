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
from llmasr.models.adaptor_blocks import Adaptor, FeedForward, MultiHeadAttention, length_mask
from llmasr.models.config import AdaptorConfig
from llmasr.models.qformer import QFormerAdaptor


def stack_frames(x: Tensor, n_out: int, k: int) -> Tensor:
    """Trim or zero-pad the time axis to n_out * k frames, then stack k frames: [B, n_out, D * k]."""
    b, t, d = x.shape
    need = n_out * k
    x = x[:, :need] if t >= need else F.pad(x, (0, 0, 0, need - t))
    return x.reshape(b, n_out, d * k)


class StackingAdaptor(Adaptor):
    """Frame stacking, then Linear(D*k -> ffn_dim) - ReLU - Linear(ffn_dim -> llm_dim), FunASR parameter names."""

    IO_WEIGHTS = ("linear1.weight", 1, "linear2.weight")

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
    IO_WEIGHTS = ("conv.weight", 1, "proj.weight")

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
        if cfg.n_layer and llm_dim % cfg.n_head:
            raise ConfigError(
                f"model.adaptor.n_head: the transformer blocks work at the LLM width {llm_dim}, which n_head="
                f"{cfg.n_head} does not divide"
            )
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


ADAPTORS: dict[str, type[Adaptor]] = {
    "linear": LinearAdaptor,
    "conv": ConvAdaptor,
    "transformer": TransformerAdaptor,
    "qformer": QFormerAdaptor,
}
ADAPTOR_TYPES = tuple(ADAPTORS)


def build_adaptor(cfg: AdaptorConfig, input_dim: int, llm_dim: int) -> Adaptor:
    """Build the adaptor named by `cfg.type`; `llm_dim` is the LLM's embedding size (from the LLM, not the recipe)."""
    cfg.validate("model.adaptor")
    if cfg.type not in ADAPTORS:
        raise ConfigError(f"model.adaptor.type: unknown adaptor {cfg.type!r}; choose one of {', '.join(ADAPTOR_TYPES)}")
    adaptor = ADAPTORS[cfg.type](cfg, input_dim, llm_dim)
    adaptor.audio_token_cap = cfg.audio_token_cap
    return adaptor
