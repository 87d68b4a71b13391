"""Paraformer-streaming's SAN-M encoder (FunASR `SANMEncoderChunkOpt`): its chunk settings and its chunked layout.

FunASR's SANMEncoderChunkOpt is SANMEncoder with the same parameters plus chunk masks, and its forward always runs
chunked: it copies the frames into overlapping chunks (chunk_size[i] rows each, advancing by stride[i], pad_left[i]
rows of left context, the rest look-ahead) behind a gap of (kernel_size - 1) // 2 zero rows each, so the FSMN
memory stops at the gap; a row attends to its own chunk and, when it is one of a chunk's first stride[i] rows, to
the first stride[i] rows of the encoder_att_look_back_factor[i] chunks before. FunASR's training draws a
configuration i per batch (overlap_chunk.random_choice: uniform over the configurations when there are several),
evaluation uses 0; its CTC branch reads each frame's output from the chunk in which it is new (`remove_chunk`).

`context` (model.encoder.conf.context) chooses: "chunked" computes that and returns each frame's output as FunASR's
remove_chunk gives it (the default for a SANMEncoderChunkOpt directory); "full" runs every frame against the whole
utterance (FunASR's SANMEncoder on the same weights). `train_chunks` (model.encoder.conf.train_chunks) chooses the
configuration of a chunked encoder in training: "random" draws one per forward as FunASR does (ChunkDraw), "first"
keeps configuration 0; evaluation, validation, decoding and exports run configuration 0 either way. The layout here
is built from index arithmetic (gathers and a boolean mask), not FunASR's dense 0/1 matrices.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from llmasr.config_io import ConfigError
from llmasr.errors import EVERY_RANK

log = logging.getLogger(__name__)

CONTEXTS = ("full", "chunked")  # model.encoder.conf.context
TRAIN_CHUNKS = ("random", "first")  # model.encoder.conf.train_chunks; random is FunASR's
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
    def from_conf(cls, conf: dict[str, Any], where: str = "SANMEncoderChunkOpt") -> ChunkSettings:
        """From encoder_conf values; FunASR's defaults fill absent keys, and pad_left and the look-back factors
        given for fewer configurations than chunk_size repeat their first value (as FunASR's overlap_chunk does).
        `where` begins a refusal (the config.yaml the values came from)."""
        defaults = {"chunk_size": (16,), "stride": (10,), "pad_left": (0,)}
        values = {k: _ints(k, conf.get(k, defaults.get(k, (1,)))) for k in CHUNK_KEYS}
        n = len(values["chunk_size"])
        if len(values["stride"]) != n:
            raise ConfigError(
                f"{where}: encoder_conf.stride has {len(values['stride'])} values but chunk_size has {n} "
                f"(stride {list(values['stride'])}, chunk_size {list(values['chunk_size'])})"
            )
        for key in CHUNK_KEYS[2:]:
            if len(values[key]) < n:
                values[key] = values[key][:1] * n
            elif len(values[key]) > n:
                raise ConfigError(f"{where}: encoder_conf.{key} has {len(values[key])} values but chunk_size has {n}")
        for size, step, left in zip(values["chunk_size"], values["stride"], values["pad_left"]):
            if not 0 < step <= size or left < 0:
                raise ConfigError(
                    f"{where}: chunk configuration chunk_size {size}, stride {step}, pad_left {left} is "
                    "not valid (needs 0 < stride <= chunk_size and pad_left >= 0)"
                )
        return cls(**values)

    def to_conf(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    def check_chunked(self, where: str, every: bool = False) -> None:
        """Refuse a configuration FunASR's overlap_chunk cannot build (it fails on a negative block): configuration 0,
        and with `every` (training draws them all) every other one too."""
        for i in range(len(self.chunk_size) if every else 1):
            size, step, left = self.chunk_size[i], self.stride[i], self.pad_left[i]
            back = self.encoder_att_look_back_factor[i]
            if step + left > size or back < 0:
                drawn = " (train_chunks: random draws it in training; train_chunks: first keeps configuration 0)"
                raise ConfigError(
                    f"{where}: context 'chunked' needs stride + pad_left <= chunk_size and "
                    f"encoder_att_look_back_factor >= 0 in chunk configuration {i}{drawn if i else ''}, got chunk_size "
                    f"{size}, stride {step}, pad_left {left}, encoder_att_look_back_factor {back}"
                )


def check_context(
    value: Any, chunk: ChunkSettings | None, where: str, train_chunks: Any = None, chunk_where: str | None = None
) -> str:
    """`value` of model.encoder.conf.context, refused unless one of CONTEXTS and, for "chunked", chunk settings
    whose configurations run (check_train_chunks: `train_chunks` as given, None for the default); a refusal of the
    chunk settings names `chunk_where` (the config.yaml that states them), else `where`."""
    if value not in CONTEXTS:
        raise ConfigError(f"{where}: context must be one of {', '.join(CONTEXTS)}, got {value!r}")
    if value == "chunked":
        if chunk is None:
            raise ConfigError(
                f"{where}: context 'chunked' needs chunk settings (chunk_size, stride, ...: a SANMEncoderChunkOpt, "
                "Paraformer-streaming); this encoder has none"
            )
        chunk.check_chunked(chunk_where or where, every=check_train_chunks(train_chunks, value, where) == "random")
    else:
        check_train_chunks(train_chunks, value, where)
    return value


def check_train_chunks(value: Any, context: str, where: str) -> str:
    """model.encoder.conf.train_chunks: one of TRAIN_CHUNKS, given only with context chunked; None reads as FunASR's
    "random"."""
    if value is None:
        return "random"
    if value not in TRAIN_CHUNKS:
        raise ConfigError(
            f"{where}: train_chunks must be one of {', '.join(TRAIN_CHUNKS)} (random: a chunk configuration drawn "
            f"per training batch, as FunASR trains Paraformer-streaming; first: configuration 0 only), got {value!r}"
        )
    if context != "chunked":
        raise ConfigError(
            f"{where}: train_chunks {value!r} chooses the chunk configuration of a chunked encoder in training, but "
            f"context is {context!r}: remove train_chunks, or set context: chunked (Paraformer-streaming only)"
        )
    return value


class ChunkDraw:
    """The chunk configuration of each training forward: uniform over `n`, as FunASR's random_choice, from a stream
    that is a function of (seed, draws so far) alone. Seeded by the run with train.seed on every rank: every rank runs
    the same number of forwards, so the ranks of a data-parallel step draw alike (FunASR's draw comes from torch's
    global generator, which its trainers seed alike on every rank; llmasr offsets that one by rank for dropout, hence
    a stream of its own), and one rank's longer layout does not keep the others waiting at the gradient all-reduce.
    Saved in the run's checkpoints (state_dict), so that a resumed run draws what the uninterrupted run would have
    drawn (FunASR keeps no RNG state in its checkpoints)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.drawn = n, seed, 0

    def next(self) -> int:
        index = int(np.random.default_rng([self.seed % 2**64, self.drawn]).integers(self.n))
        self.drawn += 1
        return index

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "drawn": self.drawn, "configurations": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["configurations"]) != self.n:
            raise ValueError(
                f"chunk draw state for {state['configurations']} chunk configurations, but the encoder has {self.n}"
            )
        self.seed, self.drawn = int(state["seed"]), int(state["drawn"])


def chunk_draws(model: torch.nn.Module) -> list[ChunkDraw]:
    """The ChunkDraw of every encoder in `model` that draws a configuration per training batch."""
    return [draw for m in model.modules() if (draw := getattr(m, "chunk_draw", None)) is not None]


def seed_chunk_draws(model: torch.nn.Module, seed: int) -> None:
    """A run's start: every draw from `seed` (train.seed, not offset by rank: the ranks draw alike)."""
    for draw in chunk_draws(model):
        draw.seed, draw.drawn = seed, 0


def load_chunk_draws(model: torch.nn.Module, states: list[dict] | None, where: str) -> None:
    """A resume: the draws where checkpoint `where` left them (`states`: what chunk_draws' state_dicts saved; None
    from an llmasr that drew none). A run that trained on configuration 0 alone (that llmasr, or train_chunks: first)
    and now draws, or the other way round, changes what the encoder trains on from here: said, not refused (the
    weights are the same; model.encoder.conf.train_chunks may change on a resume)."""
    draws = chunk_draws(model)
    if not states and draws:
        why = "written by an llmasr that did not draw chunk configurations" if states is None else "train_chunks: first"
        log.warning(
            "%s: its run trained the streaming encoder on chunk configuration 0 alone (%s); from here training draws "
            "one of %d configurations per batch (model.encoder.conf.train_chunks: random). To go on as it trained, "
            "set model.encoder.conf.train_chunks: first",
            where, why, draws[0].n, extra=EVERY_RANK,
        )  # fmt: skip
        return
    if states and not draws:
        log.warning(
            "%s: its run drew a chunk configuration per training batch; from here the streaming encoder trains on "
            "configuration 0 alone (model.encoder.conf.train_chunks: first)",
            where,
            extra=EVERY_RANK,
        )
        return
    if states is None:
        return
    if len(states) != len(draws):
        raise ValueError(f"{where}: holds {len(states)} chunk draw states, the model has {len(draws)} drawing encoders")
    for draw, state in zip(draws, states):
        draw.load_state_dict(state)


def chunk_lines(model: torch.nn.Module, frozen: bool) -> list[str]:
    """What `llmasr check` says of a chunked streaming encoder's configurations in training and evaluation (`frozen`:
    the encoder trains nothing, so it runs in evaluation mode); none for any other encoder."""
    enc = next((m for m in model.modules() if isinstance(getattr(m, "chunk", None), ChunkSettings)), None)
    if enc is None or getattr(enc, "context", None) != "chunked":
        return []
    c = enc.chunk

    def config(i: int) -> str:
        return (f"{i}: chunk_size {c.chunk_size[i]}, stride {c.stride[i]}, pad_left {c.pad_left[i]}, "
                f"look-back {c.encoder_att_look_back_factor[i]}")  # fmt: skip

    n = len(c.chunk_size)
    if frozen:
        training = "configuration 0 (the encoder is frozen: it runs as in evaluation)"
    elif enc.chunk_draw is not None:
        training = f"one of {n} configurations drawn per batch, alike on every rank (train_chunks: random, FunASR's)"
    elif n > 1:
        training = f"configuration 0 only (train_chunks: first; FunASR draws one of {n} per batch)"
    else:
        training = "configuration 0 (the only one)"
    return [
        "streaming encoder chunks (model.encoder.conf.context: chunked)",
        *(f"  {config(i)}" for i in range(n)),
        f"  training: {training}",
        "  evaluation, validation, decoding, export: configuration 0",
    ]


@dataclass(frozen=True)
class ChunkLayout:
    """One configuration of `ChunkSettings` laid out over `frames` padded frames. Layout row r belongs to chunk
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


def chunk_layout(chunk: ChunkSettings, kernel_size: int, frames: int, index: int = 0, device=None) -> ChunkLayout:
    """The layout of configuration `index` for `frames` padded frames (rows up to the last frame's, as FunASR cuts
    them); `kernel_size` of the FSMN memory sets the gap, (kernel_size - 1) // 2 rows (FunASR's shfit_fsmn). Kept
    for the last few (configuration, frames, device): a batch of the same padded length reuses it. Tensors made
    under inference mode are kept apart (autograd refuses to save them for a backward)."""
    device = torch.device(device) if device is not None else None
    return _layout(chunk, kernel_size, frames, index, device, torch.is_inference_mode_enabled())


@functools.lru_cache(maxsize=32)
def _layout(chunk: ChunkSettings, kernel_size: int, frames: int, index: int, device, _inference: bool) -> ChunkLayout:
    size, stride, left = chunk.chunk_size[index], chunk.stride[index], chunk.pad_left[index]
    back, gap = chunk.encoder_att_look_back_factor[index], (kernel_size - 1) // 2
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
