"""Relative-position self-attention of the ESPnet/FunASR Conformer, in its two flavours.

`rel_pos_type: latest`: RelPositionalEncoding (2T-1 relative positions) + RelPositionMultiHeadedAttention.
`rel_pos_type: legacy` (FunASR's default): LegacyRelPositionalEncoding + LegacyRelPositionMultiHeadedAttention.

Parameter names match FunASR (linear_q/k/v/out, linear_pos, pos_bias_u/v). The math matches FunASR on an
unpadded utterance. On a padded batch each utterance gets the result it would get alone: the latest flavour is
length independent by construction; the legacy one is not (its position table and shift depend on the padded
length), so its shift is done per utterance with its own valid length, and past LEGACY_MAX_LEN padded frames each
utterance reads the positions its own table would hold.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LEGACY_MAX_LEN = 5000  # FunASR's max_len: legacy position tables hold positions max_len-1, max_len-2, ...


def _sinusoid(position: torch.Tensor, d_model: int) -> torch.Tensor:
    """[N] float positions -> [N, d_model] (sin on even, cos on odd channels), as FunASR computes it."""
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    pe = torch.zeros(position.numel(), d_model)
    pe[:, 0::2] = torch.sin(position[:, None] * div_term)
    pe[:, 1::2] = torch.cos(position[:, None] * div_term)
    return pe


class RelPositionalEncoding(nn.Module):
    """Scales x by sqrt(d) and returns the relative table for positions T-1 ... -(T-1): [1, 2T-1, d]."""

    def __init__(self, d_model: int, dropout_rate: float, legacy: bool = False):
        super().__init__()
        self.d_model = d_model
        self.legacy = legacy
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(p=dropout_rate)
        self._cache: dict[tuple, torch.Tensor] = {}

    def table(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (length, device, dtype)
        pe = self._cache.get(key)
        if pe is None:
            if self.legacy:
                # FunASR builds max(max_len, T) reversed positions and keeps the first T: top-1, top-2, ...
                top = max(LEGACY_MAX_LEN, length)
                pos = torch.arange(top - 1, top - 1 - length, -1, dtype=torch.float32)
                pe = _sinusoid(pos, self.d_model)
            else:
                pos = torch.arange(length - 1, -length, -1, dtype=torch.float32)  # T-1 ... -(T-1)
                # FunASR computes the negative half as sin(-p w), cos(-p w) of positive p: same numbers.
                pe = _sinusoid(pos, self.d_model)
            pe = pe.unsqueeze(0).to(device=device, dtype=dtype)
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = pe
        return pe

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos_emb = self.table(x.size(1), x.device, x.dtype)
        return self.dropout(x * self.xscale), self.dropout(pos_emb)


class RelPositionMultiHeadedAttention(nn.Module):
    """Transformer-XL style attention with learned biases pos_bias_u / pos_bias_v (FunASR names)."""

    def __init__(self, n_head: int, n_feat: int, dropout_rate: float, zero_triu: bool = False, legacy: bool = False):
        super().__init__()
        if n_feat % n_head != 0:
            raise ValueError(f"output_size {n_feat} is not divisible by attention_heads {n_head}")
        self.d_k = n_feat // n_head
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.zero_triu = zero_triu
        self.legacy = legacy
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1, self.h, self.d_k).transpose(1, 2)  # [B, H, T, d_k]

    @staticmethod
    def _shift_latest(x: torch.Tensor, zero_triu: bool) -> torch.Tensor:
        """[B, H, T, 2T-1] scores against relative positions T-1..-(T-1) -> [B, H, T, T] indexed by key."""
        b, h, t1, n = x.shape
        x_padded = torch.cat([x.new_zeros(b, h, t1, 1), x], dim=-1).view(b, h, n + 1, t1)
        x = x_padded[:, :, 1:].reshape(b, h, t1, n)[:, :, :, : n // 2 + 1]
        if zero_triu:
            x = x * torch.tril(torch.ones(t1, x.size(3), device=x.device, dtype=x.dtype), x.size(3) - t1)
        return x

    @staticmethod
    def _legacy_columns(raw: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores [B, H, T, T] against the table of T positions T-1, T-2, ... when T passes LEGACY_MAX_LEN, moved to
        each utterance's own table (positions top-1, top-2, ... with top = max(LEGACY_MAX_LEN, its length n)): its
        column k is column k + T - top of this one. The columns past n, which the shift never reads, are clamped."""
        b, h, t, _ = raw.shape
        if t <= LEGACY_MAX_LEN:
            return raw
        top = lengths.to(raw.device).clamp(min=LEGACY_MAX_LEN).view(b, 1, 1)
        cols = (torch.arange(t, device=raw.device)[None, None, :] + t - top).clamp(max=t - 1)  # [B, 1, T]
        return torch.gather(raw, 3, cols[:, None].expand(b, h, t, t))

    def _shift_legacy(self, raw: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """FunASR's legacy rel_shift, done as if each utterance were alone with its valid length n.

        For an utterance of length n, FunASR's shift of raw [T=n, n] gives raw[i, n-1-i+j] for j <= i, 0 for
        j = i+1 and raw[i+1, j-i-2] for j > i+1 (the upper part is zeroed when zero_triu).
        """
        b, h, t, _ = raw.shape
        i = torch.arange(t, device=raw.device)[:, None]
        j = torch.arange(t, device=raw.device)[None, :]
        n = lengths.to(raw.device).view(b, 1, 1)
        lower_idx = (n - 1 - i + j).clamp(0, t - 1)  # [B, T, T]
        lower = torch.gather(raw, 3, lower_idx[:, None].expand(b, h, t, t))
        out = torch.where(j <= i, lower, raw.new_zeros(()))
        if not self.zero_triu and t > 2:
            raw_next = torch.cat([raw[:, :, 1:], raw.new_zeros(b, h, 1, t)], dim=2)
            upper_idx = (j - i - 2).clamp(0, t - 1).expand(t, t)
            upper = torch.gather(raw_next, 3, upper_idx[None, None].expand(b, h, t, t))
            out = torch.where(j >= i + 2, upper, out)
        return out

    def forward(
        self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """x [B, T, D]; pos_emb from RelPositionalEncoding; mask [B, 1, T] bool (True = valid key)."""
        bsz = x.size(0)
        q = self.linear_q(x).view(bsz, -1, self.h, self.d_k)  # [B, T, H, d_k]
        k = self._heads(self.linear_k(x))
        v = self._heads(self.linear_v(x))
        p = self._heads(self.linear_pos(pos_emb))  # [1, H, P, d_k]

        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))
        matrix_bd = torch.matmul(q_v, p.transpose(-2, -1))
        if self.legacy:
            matrix_bd = self._shift_legacy(self._legacy_columns(matrix_bd, lengths), lengths)
        else:
            matrix_bd = self._shift_latest(matrix_bd, self.zero_triu)
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)

        invalid = ~mask.unsqueeze(1)  # [B, 1, 1, T]
        scores = scores.masked_fill(invalid, float("-inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(invalid, 0.0)
        out = torch.matmul(self.dropout(attn), v)  # [B, H, T, d_k]
        out = out.transpose(1, 2).reshape(bsz, -1, self.h * self.d_k)
        return self.linear_out(out)
