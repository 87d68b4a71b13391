"""Paraformer-streaming's SAN-M encoder (FunASR `SANMEncoderChunkOpt`): its chunk settings and its chunked layout.

FunASR's SANMEncoderChunkOpt is SANMEncoder with the same parameters plus chunk masks, and its forward always runs
chunked: it copies the frames into overlapping chunks (chunk_size[i] rows each, advancing by stride[i], pad_left[i]
rows of left context, the rest look-ahead) behind a gap of (kernel_size - 1) // 2 zero rows each, so the FSMN
memory stops at the gap; a row attends to its own chunk and, when it is one of a chunk's first stride[i] rows, to
the first stride[i] rows of the encoder_att_look_back_factor[i] chunks before. Training picks a configuration i per
batch, evaluation uses 0; FunASR's CTC branch reads each frame's output from the chunk in which it is new
(`remove_chunk`).

`context` (model.encoder.conf.context) chooses: "chunked" computes that, configuration 0 in training and evaluation
alike, and returns each frame's output as FunASR's remove_chunk gives it (the default for a SANMEncoderChunkOpt
directory); "full" runs every frame against the whole utterance (FunASR's SANMEncoder on the same weights). The
layout here is built from index arithmetic (gathers and a boolean mask), not FunASR's dense 0/1 matrices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from llmasr.config_io import ConfigError

CONTEXTS = ("full", "chunked")  # model.encoder.conf.context
CHUNK_KEYS = ("chunk_size", "stride", "pad_left", "encoder_att_look_back_factor", "decoder_att_look_back_factor")


def _ints(name: str, value: Any) -> tuple[int, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"SANMEncoderChunkOpt: encoder_conf.{name} must be an int or a list of ints, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class ChunkSettings:
    """One entry per chunk configuration (index i of every field belongs together)."""

    chunk_size: tuple[int, ...]
    stride: tuple[int, ...]
    pad_left: tuple[int, ...]
    encoder_att_look_back_factor: tuple[int, ...]
    decoder_att_look_back_factor: tuple[int, ...]

    @classmethod
    def from_conf(cls, conf: dict[str, Any]) -> ChunkSettings:
        """From encoder_conf values; FunASR's defaults fill absent keys, and pad_left and the look-back factors
        given for fewer configurations than chunk_size repeat their first value (as FunASR's overlap_chunk does)."""
        defaults = {"chunk_size": (16,), "stride": (10,), "pad_left": (0,)}
        values = {k: _ints(k, conf.get(k, defaults.get(k, (1,)))) for k in CHUNK_KEYS}
        n = len(values["chunk_size"])
        if len(values["stride"]) != n:
            raise ConfigError(
                f"SANMEncoderChunkOpt: encoder_conf.stride has {len(values['stride'])} values but chunk_size has {n} "
                f"(stride {list(values['stride'])}, chunk_size {list(values['chunk_size'])})"
            )
        for key in CHUNK_KEYS[2:]:
            if len(values[key]) < n:
                values[key] = values[key][:1] * n
            elif len(values[key]) > n:
                raise ConfigError(
                    f"SANMEncoderChunkOpt: encoder_conf.{key} has {len(values[key])} values but chunk_size has {n}"
                )
        for size, step, left in zip(values["chunk_size"], values["stride"], values["pad_left"]):
            if not 0 < step <= size or left < 0:
                raise ConfigError(
                    f"SANMEncoderChunkOpt: chunk configuration chunk_size {size}, stride {step}, pad_left {left} is "
                    "not valid (needs 0 < stride <= chunk_size and pad_left >= 0)"
                )
        return cls(**values)

    def to_conf(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    def check_chunked(self, where: str) -> None:
        """Refuse configuration 0 where FunASR's overlap_chunk cannot build it (it fails on a negative block)."""
        size, step, left = self.chunk_size[0], self.stride[0], self.pad_left[0]
        back = self.encoder_att_look_back_factor[0]
        if step + left > size or back < 0:
            raise ConfigError(
                f"{where}: context 'chunked' needs stride + pad_left <= chunk_size and encoder_att_look_back_factor "
                f">= 0 in chunk configuration 0, got chunk_size {size}, stride {step}, pad_left {left}, "
                f"encoder_att_look_back_factor {back}"
            )


def check_context(value: Any, chunk: ChunkSettings | None, where: str) -> str:
    """`value` of model.encoder.conf.context, refused unless one of CONTEXTS and, for "chunked", chunk settings."""
    if value not in CONTEXTS:
        raise ConfigError(f"{where}: context must be one of {', '.join(CONTEXTS)}, got {value!r}")
    if value == "chunked":
        if chunk is None:
            raise ConfigError(
                f"{where}: context 'chunked' needs chunk settings (chunk_size, stride, ...: a SANMEncoderChunkOpt, "
                "Paraformer-streaming); this encoder has none"
            )
        chunk.check_chunked(where)
    return value


@dataclass(frozen=True)
class ChunkLayout:
    """Configuration 0 of `ChunkSettings` laid out over `frames` padded frames. Layout row r belongs to chunk
    r // (chunk_size + gap); its first `gap` rows are the zero gap, the others hold frame `source[r]` (-1: zeros)."""

    source: torch.Tensor  # [R] long: the frame a row holds, -1 for a gap row or a frame outside [0, frames)
    content: torch.Tensor  # [R] bool: False on gap rows (FunASR's mask_shfit_chunk)
    attend: torch.Tensor  # [R, R] bool: query row -> key rows (FunASR's mask_att_chunk_encoder)
    output_rows: torch.Tensor  # [frames] long: the row whose output is each frame's (FunASR's remove_chunk)
    size: int
    stride: int
    pad_left: int
    gap: int

    def lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Rows of an utterance of each length (FunASR's x_len_chunk): all chunks up to the one its last frame is
        new in, that one cut after the last frame."""
        n = torch.div(frame_lengths + self.stride - 1, self.stride, rounding_mode="floor")
        return (n - 1) * (self.size + self.gap - self.stride) + self.gap + self.pad_left + frame_lengths

    def gather(self, xs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """xs [B, T, D] (frames past an item's length zeroed by valid [B, T, 1]) -> [B, R, D]."""
        padded = torch.cat([xs.new_zeros(xs.size(0), 1, xs.size(2)), xs * valid], dim=1)
        return padded[:, self.source + 1]

    def attention_bias(self, row_lengths: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, R, R] additive mask: 0 where FunASR's chunk mask and key padding let a row attend, the dtype's
        lowest finite value elsewhere. Finite, because gap rows and rows past an utterance's end attend to nothing
        (FunASR zeroes their probabilities): -inf would make them NaN in the attention kernels that do not zero such
        rows, and the next block's products would carry the NaN through zero weights; no other row reads them."""
        rows = self.attend.size(0)
        keys = torch.arange(rows, device=row_lengths.device)[None, :] < row_lengths[:, None]  # [B, R]
        allowed = self.attend[None] & keys[:, None, :]
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def chunk_layout(chunk: ChunkSettings, kernel_size: int, frames: int, device=None) -> ChunkLayout:
    """The layout of configuration 0 for `frames` padded frames (rows up to the last frame's, as FunASR cuts them);
    `kernel_size` of the FSMN memory sets the gap, (kernel_size - 1) // 2 rows (FunASR's shfit_fsmn)."""
    size, stride, left = chunk.chunk_size[0], chunk.stride[0], chunk.pad_left[0]
    back, gap = chunk.encoder_att_look_back_factor[0], (kernel_size - 1) // 2
    block = size + gap
    n = math.ceil(frames / stride)
    total = (n - 1) * (block - stride) + gap + left + frames
    r = torch.arange(total, device=device)
    chunk_of, offset = torch.div(r, block, rounding_mode="floor"), r % block
    content = offset >= gap
    within = offset - gap  # position among the chunk's rows
    frame = chunk_of * stride + within - left
    source = torch.where(content & (frame >= 0) & (frame < frames), frame, torch.full_like(frame, -1))
    # own chunk: every row; the look-back chunks: a chunk's first `stride` rows see their first `stride` rows
    same = chunk_of[:, None] == chunk_of[None, :]
    behind = chunk_of[:, None] - chunk_of[None, :]
    first = within < stride
    earlier = (behind > 0) & (behind <= back) & first[:, None] & first[None, :]
    attend = content[:, None] & content[None, :] & (same | earlier)
    t = torch.arange(frames, device=device)
    output_rows = torch.div(t, stride, rounding_mode="floor") * block + gap + left + t % stride
    return ChunkLayout(source, content, attend, output_rows, size, stride, left, gap)
