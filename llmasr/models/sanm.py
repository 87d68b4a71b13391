"""Paraformer's SAN-M encoder: self-attention with an FSMN memory block, state-dict compatible with FunASR.

The parameter names and the arithmetic follow FunASR's `SANMEncoder` (funasr.models.sanm.encoder), so a
Paraformer `model.pt` loads key for key (under its `encoder.` prefix) and gives the same outputs; the pinned
fixture in tests/fixtures/sanm_parity.pt guards that. Layout:

    xs * sqrt(output_size) + sinusoidal PE (depth = input_size, positions 1..T, [sin | cos] halves)
    encoders0.0   first block: input_size -> output_size, no residual around its attention
    encoders.{i}  num_blocks - 1 blocks at output_size
    after_norm    final LayerNorm (normalize_before only)

Each block (pre-norm): x = x + SANM(norm1(x)); x = x + FFN(norm2(x)), where
SANM(x) = softmax(q k^T / sqrt(d_k)) v W_out  +  mask * (dwconv(mask * v) + mask * v)
with q, k, v from one `linear_q_k_v` and the depthwise `fsmn_block` convolution (no bias) over time.
LayerNorms use eps 1e-12, as FunASR's do.

Frames past an item's length never influence the valid frames (keys and FSMN inputs are masked), so padding
a batch does not change any item's output on its valid frames. With `context: chunked` (Paraformer-streaming's
default) the blocks run over FunASR's chunk layout instead of the frames (llmasr.models.sanm_chunk).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmasr.config_io import ConfigError
from llmasr.errors import nearest_hint
from llmasr.models.attention_kernels import key_padding_bias
from llmasr.models.sanm_chunk import CHUNK_KEYS, ChunkDraw, ChunkSettings, check_context, chunk_layout

# encoder_conf keys FunASR configs carry that have no effect on this encoder (or only at their default value).
# value None: accepted with any value; otherwise the tuple of accepted values.
_HARMLESS_KEYS: dict[str, tuple | None] = {
    "tf2torch_tensor_name_prefix_torch": None,
    "tf2torch_tensor_name_prefix_tf": None,
    "positionwise_conv_kernel_size": None,  # only used by conv1d feed-forward layers
    "padding_idx": None,  # only used by input_layer "embed"
    "interctc_layer_idx": (None, [], ()),  # intermediate CTC outputs are not supported
    "interctc_use_conditioning": (False, None),
    "lora_list": (None, [], ()),  # FunASR's own LoRA changes the parameter layout; use llmasr's LoRA instead
    "lora_rank": None,
    "lora_alpha": None,
    "lora_dropout": None,
}

# "pe_online" (Paraformer-streaming) is FunASR's streaming variant of "pe": the same table over a whole utterance.
_SUPPORTED_INPUT_LAYERS = ("pe", "pe_online", None)
_SUPPORTED_POS_ENC = ("SinusoidalPositionEncoder", "sinusoidal", None)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm with FunASR's eps of 1e-12 (same parameter names)."""

    def __init__(self, size: int):
        super().__init__(size, eps=1e-12)


def sinusoidal_position_encoding(length: int, depth: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """FunASR's SinusoidalPositionEncoder table, [1, length, depth].

    Positions start at 1; timescales are 10000^(i / (depth/2 - 1)) for i in [0, depth/2); the first half of the
    channels holds the sines, the second half the cosines. Computed in float32 and cast to `dtype`.
    """
    if depth % 2 or depth < 4:
        raise ValueError(f"sinusoidal position encoding needs an even depth >= 4, got {depth}")
    positions = torch.arange(1, length + 1, device=device, dtype=torch.float32)
    increment = math.log(10000.0) / (depth / 2 - 1)
    inv_timescales = torch.exp(torch.arange(depth // 2, device=device, dtype=torch.float32) * -increment)
    scaled = positions[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1).unsqueeze(0).to(dtype)


class SinusoidalPositionEncoder(nn.Module):
    """Adds the parameter-free sinusoidal table (depth = the feature dimension of its input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + sinusoidal_position_encoding(x.size(1), x.size(2), device=x.device, dtype=x.dtype)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, size: int, hidden: int, dropout_rate: float):
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(torch.relu(self.w_1(x))))


class MultiHeadedAttentionSANM(nn.Module):
    """Self-attention plus the FSMN memory of the values (FunASR's MultiHeadedAttentionSANM)."""

    def __init__(
        self, n_head: int, in_feat: int, n_feat: int, dropout_rate: float, kernel_size: int, sanm_shfit: int = 0
    ):
        super().__init__()
        if n_feat % n_head:
            raise ConfigError(f"output_size {n_feat} is not divisible by attention_heads {n_head}")
        self.d_k = n_feat // n_head
        self.h = n_head
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_q_k_v = nn.Linear(in_feat, n_feat * 3)
        self.dropout_rate = dropout_rate
        self.dropout = nn.Dropout(dropout_rate)
        left = (kernel_size - 1) // 2 + max(sanm_shfit, 0)
        right = kernel_size - 1 - left
        if right < 0:
            raise ConfigError(f"sanm_shfit {sanm_shfit} is too large for kernel_size {kernel_size}")
        # zero padding on both sides the same (sanm_shfit 0): the convolution pads, without a padded copy of v
        same = left == right
        self.fsmn_block = nn.Conv1d(
            n_feat, n_feat, kernel_size, stride=1, padding=left if same else 0, groups=n_feat, bias=False
        )
        self.padding = None if same else (left, right)

    def forward_fsmn(self, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """v [B, T, D], valid [B, T, 1] float -> memory [B, T, D]."""
        v = v * valid
        vt = v.transpose(1, 2)
        memory = self.fsmn_block(vt if self.padding is None else F.pad(vt, self.padding)).transpose(1, 2)
        memory = self.dropout(memory + v)
        return memory * valid

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, T, in], key_mask [B, 1, 1, T] (attention_kernels.key_padding_bias), valid [B, T, 1] float."""
        b, t, _ = x.shape
        q, k, v = self.linear_q_k_v(x).split(self.h * self.d_k, dim=-1)
        memory = self.forward_fsmn(v, valid)

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(b, t, self.h, self.d_k).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(q),
            heads(k),
            heads(v),
            attn_mask=key_mask,
            dropout_p=self.dropout_rate if self.training else 0.0,
        )
        ctx = ctx.transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(ctx) + memory


class EncoderLayerSANM(nn.Module):
    def __init__(
        self,
        in_size: int,
        size: int,
        self_attn: MultiHeadedAttentionSANM,
        feed_forward: PositionwiseFeedForward,
        dropout_rate: float,
        normalize_before: bool = True,
        norm: type[nn.Module] = LayerNorm,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.norm1 = norm(in_size)
        self.norm2 = norm(size)
        self.dropout = nn.Dropout(dropout_rate)
        self.in_size = in_size
        self.size = size
        self.normalize_before = normalize_before

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        residual = x
        if self.normalize_before:
            x = self.norm1(x)
        att = self.dropout(self.self_attn(x, key_mask, valid))
        x = residual + att if self.in_size == self.size else att
        if not self.normalize_before:
            x = self.norm1(x)

        residual = x
        if self.normalize_before:
            x = self.norm2(x)
        x = residual + self.dropout(self.feed_forward(x))
        if not self.normalize_before:
            x = self.norm2(x)
        return x


class SANMEncoder(nn.Module):
    """Paraformer encoder. Constructor arguments are FunASR's `encoder_conf` names (plus input_size).

    Paraformer-streaming's SANMEncoderChunkOpt builds this class too: its chunk settings (chunk_size, stride, ...)
    are kept as `self.chunk` (llmasr.models.sanm_chunk), None for a plain SANMEncoder. `context` (llmasr's own key)
    "chunked" runs the blocks as FunASR's SANMEncoderChunkOpt does (a FunASR directory's SANMEncoderChunkOpt gets it
    by default, llmasr.models.funasr_dir), "full" over the whole utterance. The constructor's default stays "full":
    an encoder described without the key (an export made before it existed) was trained that way. Chunked, it runs
    chunk configuration 0 in evaluation; in training `train_chunks` (llmasr's own key) "random", the default, draws
    one per forward from `self.chunk_draw` as FunASR does, "first" keeps configuration 0.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,  # accepted for config compatibility; the "pe" layer has no dropout
        attention_dropout_rate: float = 0.0,
        input_layer: str | None = "pe",
        pos_enc_class: str | None = "SinusoidalPositionEncoder",
        normalize_before: bool = True,
        concat_after: bool = False,
        positionwise_layer_type: str = "linear",
        kernel_size: int = 11,
        sanm_shfit: int = 0,
        selfattention_layer_type: str = "sanm",
        context: str = "full",
        train_chunks: str | None = None,
        **extra,
    ):
        super().__init__()
        chunk_conf = {k: extra.pop(k) for k in CHUNK_KEYS if k in extra}
        self.chunk = ChunkSettings.from_conf(chunk_conf) if chunk_conf or input_layer == "pe_online" else None
        self.context = check_context(context, self.chunk, "SANMEncoder", train_chunks)
        # a draw only with a choice to draw from (FunASR's random_choice draws nothing for one configuration)
        draws = self.context == "chunked" and (train_chunks or "random") == "random" and len(self.chunk.chunk_size) > 1
        self.chunk_draw = ChunkDraw(len(self.chunk.chunk_size)) if draws else None
        self.kernel_size = kernel_size
        _check_extra(extra)
        _check_layer_types(input_layer, pos_enc_class, positionwise_layer_type, selfattention_layer_type)
        _check_sizes(input_size, output_size, num_blocks, input_layer, normalize_before, concat_after)

        self._output_size = output_size
        self.input_size = input_size
        self.normalize_before = normalize_before
        self.gradient_checkpointing = False
        self.embed = SinusoidalPositionEncoder() if input_layer in ("pe", "pe_online") else None

        def block(in_size: int) -> EncoderLayerSANM:
            return EncoderLayerSANM(
                in_size,
                output_size,
                MultiHeadedAttentionSANM(
                    attention_heads, in_size, output_size, attention_dropout_rate, kernel_size, sanm_shfit
                ),
                PositionwiseFeedForward(output_size, linear_units, dropout_rate),
                dropout_rate,
                normalize_before,
            )

        self.encoders0 = nn.ModuleList([block(input_size)])
        self.encoders = nn.ModuleList([block(output_size) for _ in range(num_blocks - 1)])
        if normalize_before:
            self.after_norm = LayerNorm(output_size)

    def output_size(self) -> int:
        return self._output_size

    @staticmethod
    def output_lengths(xs_lens: torch.Tensor) -> torch.Tensor:
        return xs_lens  # no subsampling: the frontend's LFR sets the frame rate

    def forward(
        self, xs: torch.Tensor, xs_lens: torch.Tensor, *, chunk_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """xs [B, T, input_size], xs_lens [B] -> ([B, T, output_size], xs_lens). `chunk_index` (context chunked):
        the chunk configuration to run, as FunASR's `ind`; None draws one in training (train_chunks random), else 0."""
        xs_lens = checked_input("SANMEncoder", xs, xs_lens, self.input_size)
        t = xs.size(1)
        mask = torch.arange(t, device=xs.device)[None, :] < xs_lens[:, None]  # [B, T] True = valid
        valid = mask[:, :, None].to(xs.dtype)

        xs = xs * self.output_size() ** 0.5
        if self.embed is not None:
            xs = self.embed(xs)  # positions are the frames', before any chunking (as FunASR's)
        if self.context == "chunked":
            index = self._chunk_index(chunk_index)
            layout = chunk_layout(self.chunk, self.kernel_size, t, index, device=xs.device)
            xs = layout.gather(xs, valid)
            rows = layout.lengths(xs_lens)
            in_rows = torch.arange(xs.size(1), device=xs.device)[None, :] < rows[:, None]
            key_mask = layout.attention_bias(rows, xs.dtype)  # [B, 1, R, R], once for all blocks
            valid = (in_rows & layout.content[None, :])[:, :, None].to(xs.dtype)  # FSMN: no gap rows
            xs = self._blocks(xs, key_mask, valid)[:, layout.output_rows]
        else:
            xs = self._blocks(xs, key_padding_bias(mask, xs.dtype), valid)
        return xs, xs_lens

    def _chunk_index(self, given: int | None) -> int:
        if given is None:
            return self.chunk_draw.next() if self.training and self.chunk_draw is not None else 0
        if not 0 <= given < len(self.chunk.chunk_size):
            raise ValueError(f"SANMEncoder: chunk_index {given}, but there are {len(self.chunk.chunk_size)} "
                             "chunk configurations (chunk_size, stride, ...)")  # fmt: skip
        return given

    def _blocks(self, xs: torch.Tensor, key_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        for layer in (*self.encoders0, *self.encoders):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                xs = checkpoint(layer, xs, key_mask, valid, use_reentrant=False)
            else:
                xs = layer(xs, key_mask, valid)
        if self.normalize_before:
            xs = self.after_norm(xs)
        return xs


def checked_input(name: str, xs: torch.Tensor, xs_lens: torch.Tensor, input_size: int) -> torch.Tensor:
    """`xs_lens` as long on `xs`'s device, after checking that `xs` is [B, T, input_size] and each length in [1, T]."""
    if xs.dim() != 3 or xs.size(-1) != input_size:
        raise ValueError(f"{name} expects [B, T, {input_size}] features, got {list(xs.shape)}")
    t = xs.size(1)
    xs_lens = xs_lens.to(device=xs.device, dtype=torch.long)
    if xs_lens.numel() != xs.size(0) or bool((xs_lens < 1).any()) or bool((xs_lens > t).any()):
        raise ValueError(f"{name}: lengths must be in [1, {t}] (one per item), got {xs_lens.tolist()}")
    return xs_lens


def _check_extra(extra: dict) -> None:
    """Keys beyond the constructor's: only those FunASR configs carry without effect here, at their usual value."""
    for key, value in extra.items():
        if key not in _HARMLESS_KEYS:
            known = sorted([*_CONSTRUCTOR_KEYS, *CHUNK_KEYS, *_HARMLESS_KEYS])
            raise ConfigError(
                f"SANMEncoder: unknown encoder_conf key {key!r} (value {value!r}){nearest_hint(key, known)}; "
                f"supported keys: {', '.join(known)}"
            )
        accepted = _HARMLESS_KEYS[key]
        if accepted is not None and value not in accepted:
            raise ConfigError(f"SANMEncoder: encoder_conf.{key}={value!r} is not supported (only {accepted[0]!r} is)")


def _check_layer_types(input_layer, pos_enc_class, positionwise_layer_type, selfattention_layer_type) -> None:
    if input_layer not in _SUPPORTED_INPUT_LAYERS:
        raise ConfigError(
            f"SANMEncoder: input_layer {input_layer!r} is not supported; "
            "supported: 'pe' (Paraformer), 'pe_online' (Paraformer-streaming), null (input_size == output_size)"
        )
    if isinstance(pos_enc_class, str):
        pos_enc_class = pos_enc_class.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    if pos_enc_class not in _SUPPORTED_POS_ENC:
        raise ConfigError(
            f"SANMEncoder: pos_enc_class {pos_enc_class!r} is not supported; supported: SinusoidalPositionEncoder"
        )
    if positionwise_layer_type != "linear":
        raise ConfigError(
            f"SANMEncoder: positionwise_layer_type {positionwise_layer_type!r} is not supported; supported: linear"
        )
    if selfattention_layer_type != "sanm":
        raise ConfigError(
            f"SANMEncoder: selfattention_layer_type {selfattention_layer_type!r} is not supported; supported: sanm"
        )


def _check_sizes(input_size, output_size, num_blocks, input_layer, normalize_before, concat_after) -> None:
    if concat_after:
        # FunASR's SANM block sizes concat_linear for in_size == size only, so no Paraformer uses it.
        raise ConfigError("SANMEncoder: concat_after true is not supported (FunASR's SANM cannot build it either)")
    if input_layer is None and input_size != output_size:
        raise ConfigError(
            f"SANMEncoder: input_layer null needs input_size == output_size, got {input_size} and {output_size}"
        )
    if not normalize_before and input_size != output_size:
        # The first block applies norm1 (input_size) to its attention output (output_size) when post-norm.
        raise ConfigError(
            f"SANMEncoder: normalize_before false needs input_size == output_size, got {input_size} and {output_size}"
        )
    if num_blocks < 1:
        raise ConfigError(f"SANMEncoder: num_blocks must be >= 1, got {num_blocks}")
    if input_layer in ("pe", "pe_online") and input_size % 2:
        raise ConfigError(f"SANMEncoder: input_layer {input_layer!r} needs an even input_size, got {input_size}")


_CONSTRUCTOR_KEYS = (
    "input_size",
    "output_size",
    "attention_heads",
    "linear_units",
    "num_blocks",
    "dropout_rate",
    "positional_dropout_rate",
    "attention_dropout_rate",
    "input_layer",
    "pos_enc_class",
    "normalize_before",
    "concat_after",
    "positionwise_layer_type",
    "kernel_size",
    "sanm_shfit",
    "selfattention_layer_type",
    "context",
    "train_chunks",
)
