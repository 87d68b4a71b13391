"""Conformer encoder with the math and state-dict names of FunASR's `ConformerEncoder` (ESPnet family).

The constructor takes FunASR's `encoder_conf` keys with FunASR's defaults, so a FunASR config.yaml + model.pt load
into it unchanged (`encoder.` prefix stripped). Unsupported values and unknown keys are ConfigErrors.

Differences from FunASR, all on padded batches only (an unpadded utterance gives FunASR's numbers):
- output lengths are the frames computed from valid input only (FunASR also counts frames that read padding);
- padded frames are zeroed before the depthwise convolution, so they never leak into valid frames;
- legacy relative attention is computed per utterance with its own length;
- padded output frames are zero.
So in eval mode a valid frame's output does not depend on how much padding the batch adds.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmasr.config_io import ConfigError, coerce_arguments
from llmasr.errors import nearest_hint
from llmasr.models.rel_attention import RelPositionalEncoding, RelPositionMultiHeadedAttention
from llmasr.models.subsampling import CONV_STACKS, Conv2dSubsampling, LinearInput, subsampled_lengths


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


ACTIVATIONS = {"hardtanh": nn.Hardtanh, "tanh": nn.Tanh, "relu": nn.ReLU, "selu": nn.SELU, "swish": Swish}


def _layer_norm(size: int) -> nn.LayerNorm:
    return nn.LayerNorm(size, eps=1e-12)  # FunASR's LayerNorm


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int, dropout_rate: float, activation: nn.Module):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)
        self.dropout = nn.Dropout(dropout_rate)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class BatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d (same tensors and statistics) computed in float32 when its running statistics are float32 and
    its input or parameters are not. DeepSpeed's bf16/fp16 engine casts a model's parameters but keeps its buffers,
    and torch's batch_norm refuses a bf16 weight beside float32 statistics: every Conformer trained in bf16 failed at
    its first batch. Float32 statistics are also what autocast keeps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self.running_mean  # (None without track_running_stats; an affine norm: ConvolutionModule's)
        if stats is None or stats.dtype != torch.float32 or x.dtype == self.weight.dtype == torch.float32:
            return super().forward(x)
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative moving average, as nn.BatchNorm1d keeps it
                momentum = 1.0 / float(self.num_batches_tracked)
        out = nn.functional.batch_norm(
            x.float(), self.running_mean, self.running_var, self.weight.float(), self.bias.float(), self.training,
            0.0 if momentum is None else momentum, self.eps,
        )  # fmt: skip
        return out.to(x.dtype)


class ConvolutionModule(nn.Module):
    """pointwise_conv1 -> GLU -> (mask) -> depthwise_conv -> BatchNorm -> activation -> pointwise_conv2."""

    def __init__(self, channels: int, kernel_size: int, activation: nn.Module, bias: bool = True):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels, bias=bias
        )
        self.norm = BatchNorm1d(channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = nn.functional.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)  # [B, C, T]
        x = x.masked_fill(~mask, 0.0)  # mask [B, 1, T]: padded frames read as the zero padding of 'same' conv
        x = self.activation(self.norm(self.depthwise_conv(x)))
        return self.pointwise_conv2(x).transpose(1, 2)


class ConformerLayer(nn.Module):
    """FunASR's conformer EncoderLayer (macaron FF, rel-pos MHA, conv module, FF, norm_final)."""

    def __init__(
        self,
        size: int,
        self_attn: nn.Module,
        feed_forward: nn.Module,
        feed_forward_macaron: nn.Module | None,
        conv_module: nn.Module | None,
        dropout_rate: float,
        normalize_before: bool,
        concat_after: bool,
        stochastic_depth_rate: float,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.feed_forward_macaron = feed_forward_macaron
        self.conv_module = conv_module
        self.norm_ff = _layer_norm(size)
        self.norm_mha = _layer_norm(size)
        if feed_forward_macaron is not None:
            self.norm_ff_macaron = _layer_norm(size)
            self.ff_scale = 0.5
        else:
            self.ff_scale = 1.0
        if conv_module is not None:
            self.norm_conv = _layer_norm(size)
            self.norm_final = _layer_norm(size)
        self.dropout = nn.Dropout(dropout_rate)
        self.normalize_before = normalize_before
        self.concat_after = concat_after
        if concat_after:
            self.concat_linear = nn.Linear(size + size, size)
        self.stochastic_depth_rate = stochastic_depth_rate

    def forward(
        self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        coeff = 1.0
        if self.training and self.stochastic_depth_rate > 0:
            if torch.rand(1).item() < self.stochastic_depth_rate:
                return x
            coeff = 1.0 / (1 - self.stochastic_depth_rate)
        pre = self.normalize_before

        if self.feed_forward_macaron is not None:
            residual = x
            if pre:
                x = self.norm_ff_macaron(x)
            x = residual + coeff * self.ff_scale * self.dropout(self.feed_forward_macaron(x))
            if not pre:
                x = self.norm_ff_macaron(x)

        residual = x
        if pre:
            x = self.norm_mha(x)
        x_att = self.self_attn(x, pos_emb, mask, lengths)
        if self.concat_after:
            x = residual + coeff * self.concat_linear(torch.cat((x, x_att), dim=-1))
        else:
            x = residual + coeff * self.dropout(x_att)
        if not pre:
            x = self.norm_mha(x)

        if self.conv_module is not None:
            residual = x
            if pre:
                x = self.norm_conv(x)
            x = residual + coeff * self.dropout(self.conv_module(x, mask))
            if not pre:
                x = self.norm_conv(x)

        residual = x
        if pre:
            x = self.norm_ff(x)
        x = residual + coeff * self.ff_scale * self.dropout(self.feed_forward(x))
        if not pre:
            x = self.norm_ff(x)

        if self.conv_module is not None:
            x = self.norm_final(x)
        return x


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"encoder.conf.{key}: {value!r} is not supported (supported: {', '.join(map(str, allowed))})")


@dataclass(frozen=True)
class ConformerConf:
    """FunASR's `ConformerEncoder` encoder_conf keys with FunASR's defaults (plus input_size), checked once."""

    input_size: int
    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    input_layer: str = "conv2d"
    normalize_before: bool = True
    concat_after: bool = False
    positionwise_layer_type: str = "linear"
    positionwise_conv_kernel_size: int = 3  # accepted for FunASR configs; unused by the supported layers
    macaron_style: bool = False
    rel_pos_type: str = "legacy"
    pos_enc_layer_type: str = "rel_pos"
    selfattention_layer_type: str = "rel_selfattn"
    activation_type: str = "swish"
    use_cnn_module: bool = True
    zero_triu: bool = False  # FunASR does not pass it to the legacy attention, so it has no effect there
    cnn_module_kernel: int = 31
    padding_idx: int = -1  # accepted for FunASR configs; unused by the supported layers
    interctc_layer_idx: list[int] | None = None
    interctc_use_conditioning: bool = False
    stochastic_depth_rate: float | list[float] = 0.0

    @classmethod
    def from_conf(cls, input_size: int, conf: dict[str, Any]) -> ConformerConf:
        """The checked settings; an unknown key or an unsupported value is a ConfigError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(conf) - known)
        if unknown:
            raise ConfigError(
                f"model.encoder.conf.{unknown[0]}: not a ConformerEncoder option{nearest_hint(unknown[0], known)} "
                f"(unknown keys: {', '.join(unknown)})"
            )
        out = cls(input_size, **coerce_arguments(cls, conf, "model.encoder.conf"))
        out.check()
        return out

    @property
    def legacy(self) -> bool:
        return self.rel_pos_type == "legacy"

    def check(self) -> None:
        _choice("rel_pos_type", self.rel_pos_type, ("legacy", "latest"))
        # FunASR renames rel_pos/rel_selfattn to their legacy_* forms under rel_pos_type: legacy.
        legacy = self.legacy
        _choice(
            "pos_enc_layer_type", self.pos_enc_layer_type, ("rel_pos", "legacy_rel_pos") if legacy else ("rel_pos",)
        )
        _choice(
            "selfattention_layer_type",
            self.selfattention_layer_type,
            ("rel_selfattn", "legacy_rel_selfattn") if legacy else ("rel_selfattn",),
        )
        _choice("input_layer", self.input_layer, (*CONV_STACKS, "linear"))
        _choice("positionwise_layer_type", self.positionwise_layer_type, ("linear",))
        _choice("activation_type", self.activation_type, tuple(ACTIVATIONS))
        if self.interctc_layer_idx:
            raise ConfigError("encoder.conf.interctc_layer_idx: intermediate CTC is not supported; use []")
        if self.interctc_use_conditioning:
            raise ConfigError("encoder.conf.interctc_use_conditioning: not supported; use false")
        if self.cnn_module_kernel % 2 != 1:
            raise ConfigError(f"encoder.conf.cnn_module_kernel: must be odd, got {self.cnn_module_kernel}")
        if self.output_size % self.attention_heads != 0:
            raise ConfigError(
                f"encoder.conf.output_size: {self.output_size} is not divisible by attention_heads "
                f"{self.attention_heads}"
            )
        if len(self.depth_rates()) != self.num_blocks:
            raise ConfigError(
                f"encoder.conf.stochastic_depth_rate: {len(self.depth_rates())} values for {self.num_blocks} blocks"
            )

    def depth_rates(self) -> list[float]:
        """The stochastic depth rate of each block (one number means the same for all)."""
        rate = self.stochastic_depth_rate
        return [float(rate)] * self.num_blocks if isinstance(rate, (int, float)) else list(rate)

    def layer(self, n: int) -> ConformerLayer:
        """Block `n` of the encoder."""
        size = self.output_size

        def activation() -> nn.Module:
            return ACTIVATIONS[self.activation_type]()

        return ConformerLayer(
            size,
            RelPositionMultiHeadedAttention(
                self.attention_heads,
                size,
                self.attention_dropout_rate,
                zero_triu=self.zero_triu and not self.legacy,
                legacy=self.legacy,
            ),
            PositionwiseFeedForward(size, self.linear_units, self.dropout_rate, activation()),
            PositionwiseFeedForward(size, self.linear_units, self.dropout_rate, activation())
            if self.macaron_style
            else None,
            ConvolutionModule(size, self.cnn_module_kernel, activation()) if self.use_cnn_module else None,
            self.dropout_rate,
            self.normalize_before,
            self.concat_after,
            self.depth_rates()[n],
        )


class ConformerEncoder(nn.Module):
    """FunASR `ConformerEncoder`: forward(xs [B,T,D], xs_lens [B]) -> (ys [B,T',output_size], ys_lens [B]).

    Built from FunASR's encoder_conf keys (ConformerConf lists them with their defaults).
    """

    def __init__(self, input_size: int, **conf: Any):
        super().__init__()
        c = ConformerConf.from_conf(input_size, conf)
        self._output_size = c.output_size
        self.input_layer = c.input_layer
        self.normalize_before = c.normalize_before
        self.gradient_checkpointing = False
        if c.input_layer == "linear":
            self.embed: nn.Module = LinearInput(input_size, c.output_size, c.dropout_rate)
        else:
            try:
                self.embed = Conv2dSubsampling(input_size, c.output_size, c.input_layer)
            except ValueError as err:
                raise ConfigError(f"encoder.conf.input_size: {err}") from err
        self.pos_enc = RelPositionalEncoding(c.output_size, c.positional_dropout_rate, legacy=c.legacy)
        self.encoders = nn.ModuleList(c.layer(n) for n in range(c.num_blocks))
        if c.normalize_before:
            self.after_norm = _layer_norm(c.output_size)

    def output_size(self) -> int:
        return self._output_size

    def output_lengths(self, xs_lens: torch.Tensor) -> torch.Tensor:
        return subsampled_lengths(xs_lens, self.input_layer)

    def forward(self, xs: torch.Tensor, xs_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_layer == "linear":
            x, lengths = self.embed(xs), xs_lens
        else:
            x, lengths = self.embed(xs, xs_lens)
        lengths = lengths.to(x.device).clamp(max=x.size(1))
        x, pos_emb = self.pos_enc(x)
        mask = (torch.arange(x.size(1), device=x.device)[None, :] < lengths[:, None]).unsqueeze(1)
        for layer in self.encoders:
            if self.gradient_checkpointing and self.training:
                recompute = functools.partial(_batch_norm_stats_kept, layer)
                x = checkpoint(
                    layer, x, pos_emb, mask, lengths, use_reentrant=False,
                    context_fn=lambda recompute=recompute: (contextlib.nullcontext(), recompute()),
                )  # fmt: skip
            else:
                x = layer(x, pos_emb, mask, lengths)
        if self.normalize_before:
            x = self.after_norm(x)
        x = x.masked_fill(~mask.transpose(1, 2), 0.0)
        return x, lengths


@contextlib.contextmanager
def _batch_norm_stats_kept(layer: nn.Module):
    """Around the backward's recompute of a checkpointed layer: its BatchNorm runs again in training mode, and its
    running statistics are put back after, so a step moves them once, as without checkpointing."""
    norms = [m for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        for m, buffers in zip(norms, saved):
            for k, b in m.named_buffers(recurse=False):
                b.copy_(buffers[k])
