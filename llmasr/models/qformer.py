"""Windowed Q-Former adaptor: learned queries read fixed windows of encoder frames.

Time is cut into windows of W = downsample * num_queries frames (the last one zero-padded and masked). In each
window `num_queries` learned queries go through `n_layer` blocks (self-attention over the queries, cross-attention
to the window's valid frames, FFN; pre-norm, hidden size = the encoder dim), then a LayerNorm and
Linear(input_dim -> llm_dim). Frames carry a learned position-in-window embedding so the queries see order.

Rate: num_queries tokens per W frames, i.e. one token per `downsample` frames on average, as the other adaptors.
Output lengths: ceil(lens / W) * num_queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmasr.config_io import ConfigError
from llmasr.models.adaptor_blocks import Adaptor, FeedForward, MultiHeadAttention, length_mask
from llmasr.models.config import AdaptorConfig


class QFormerBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, n_head, dropout)
        self.cross_attn = MultiHeadAttention(dim, n_head, dropout)
        self.feed_forward = FeedForward(dim, ffn_dim, dropout, nn.GELU())
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        h = self.norm1(q)
        q = q + self.dropout(self.self_attn(h, h, None))
        q = q + self.dropout(self.cross_attn(self.norm2(q), self.norm_kv(frames), frame_mask))
        return q + self.dropout(self.feed_forward(self.norm3(q)))


class QFormerAdaptor(Adaptor):
    IO_WEIGHTS = ("query", 1, "proj.weight")

    def __init__(self, cfg: AdaptorConfig, input_dim: int, llm_dim: int):
        super().__init__()
        if cfg.num_queries < 1:
            raise ConfigError(f"model.adaptor.num_queries: must be >= 1 for a qformer, got {cfg.num_queries}")
        if cfg.n_layer < 1:  # the queries read the frames only in the blocks: without one, every output is the same
            raise ConfigError(
                f"model.adaptor.n_layer: must be >= 1 for a qformer (its queries read the audio only through its "
                f"layers; with none the LLM gets the same embeddings for every utterance), got {cfg.n_layer}"
            )
        if input_dim % cfg.n_head:
            raise ConfigError(
                f"model.adaptor.n_head: the qformer works at the encoder dim {input_dim}, "
                f"which n_head={cfg.n_head} does not divide"
            )
        self.input_dim, self.llm_dim = input_dim, llm_dim
        self.num_queries = cfg.num_queries
        self.window = cfg.downsample * cfg.num_queries
        self.query = nn.Parameter(torch.randn(cfg.num_queries, input_dim) * 0.02)
        self.frame_pos = nn.Parameter(torch.randn(self.window, input_dim) * 0.02)
        self.blocks = nn.ModuleList(
            QFormerBlock(input_dim, cfg.n_head, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.n_layer)
        )
        self.norm = nn.LayerNorm(input_dim)
        self.proj = nn.Linear(input_dim, llm_dim)

    def output_lengths(self, lens: Tensor) -> Tensor:
        return (lens + self.window - 1) // self.window * self.num_queries

    def _forward(self, x: Tensor, lens: Tensor, out_lens: Tensor) -> Tensor:
        b, t, d = x.shape
        w = self.window
        n_win = -(-t // w)
        x = F.pad(x, (0, 0, 0, n_win * w - t))
        frames = x.reshape(b * n_win, w, d) + self.frame_pos
        frame_mask = length_mask(lens, n_win * w).reshape(b * n_win, w)
        # Windows wholly past an utterance's end see every frame (zeros); their outputs are zeroed by the caller.
        frame_mask = frame_mask | ~frame_mask.any(dim=1, keepdim=True)
        q = self.query.expand(b * n_win, -1, -1).to(x.dtype)
        for block in self.blocks:
            q = block(q, frames, frame_mask)
        y = self.proj(self.norm(q))
        return y.reshape(b, n_win * self.num_queries, self.llm_dim)
