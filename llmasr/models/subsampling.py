"""Conv2d input subsampling of the ESPnet/FunASR Conformer (`embed.conv.*`, `embed.out.*`).

Module layout and parameter names follow `funasr.models.transformer.utils.subsampling` so FunASR checkpoints load
unchanged. Unlike FunASR, output lengths come from the convolution arithmetic of each variant (the frames whose
receptive field lies entirely inside the valid input), not from a strided slice of the padding mask, so padded
frames never count as valid output.
"""

from __future__ import annotations

import torch
from torch import nn


class TooShortInputError(ValueError):
    """The padded batch has fewer input frames than the subsampling stack needs for one output frame."""


def _conv_out(length: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    return torch.div(length - kernel, stride, rounding_mode="floor") + 1


# (kernel, stride) of each time-axis convolution, in order.
CONV_STACKS: dict[str, tuple[tuple[int, int], ...]] = {
    "conv2d": ((3, 2), (3, 2)),
    "conv2d2": ((3, 2), (3, 1)),
    "conv2d6": ((3, 2), (5, 3)),
    "conv2d8": ((3, 2), (3, 2), (3, 2)),
}


def subsampled_lengths(lengths: torch.Tensor, input_layer: str) -> torch.Tensor:
    """Number of output frames computed only from valid input frames, per utterance (clamped at 0)."""
    out = lengths
    for kernel, stride in CONV_STACKS.get(input_layer, ()):
        out = _conv_out(out, kernel, stride)
    return out.clamp(min=0)


def min_input_frames(input_layer: str) -> int:
    """Fewest input frames that give one output frame."""
    need = 1
    for kernel, stride in reversed(CONV_STACKS.get(input_layer, ())):
        need = (need - 1) * stride + kernel
    return need


class Conv2dSubsampling(nn.Module):
    """Conv2d subsampling by 2 (conv2d2), 4 (conv2d), 6 (conv2d6) or 8 (conv2d8) in time and frequency.

    `embed.conv` is Conv2d/ReLU pairs, `embed.out.0` the Linear to `odim`; `embed.out.1` (FunASR's position
    encoding, parameter-free) is kept separate here, so it does not appear in this module.
    """

    def __init__(self, idim: int, odim: int, variant: str = "conv2d"):
        super().__init__()
        if variant not in CONV_STACKS:
            raise ValueError(f"unknown conv2d subsampling variant {variant!r}")
        self.variant = variant
        layers: list[nn.Module] = []
        freq = idim
        in_ch = 1
        for kernel, stride in CONV_STACKS[variant]:
            layers += [nn.Conv2d(in_ch, odim, kernel, stride), nn.ReLU()]
            in_ch = odim
            freq = (freq - kernel) // stride + 1
        if freq < 1:
            raise ValueError(f"input_size {idim} is too small for {variant} subsampling")
        self.conv = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Linear(odim * freq, odim))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        need = min_input_frames(self.variant)
        if x.size(1) < need:
            raise TooShortInputError(
                f"{self.variant} subsampling needs at least {need} input frames, the batch has {x.size(1)}"
            )
        x = self.conv(x.unsqueeze(1))  # [B, C, T', F']
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        return x, subsampled_lengths(lengths, self.variant)


class LinearInput(nn.Sequential):
    """FunASR `input_layer: linear`: Linear -> LayerNorm -> Dropout (position encoding applied by the caller)."""

    def __init__(self, idim: int, odim: int, dropout_rate: float):
        super().__init__(nn.Linear(idim, odim), nn.LayerNorm(odim), nn.Dropout(dropout_rate))
