"""Encoder-input features computed on the model's device from a batch of waveforms (`data.features_on: device`).

With `features_on: device` the data workers only read, resample and augment waveforms; they scale and dither each
waveform with the item's own random stream and draw its SpecAugment masks (so a run is reproducible whichever
path computes the features), and the collator pads the waveforms into `Batch.wave`. `DeviceFeatures` then turns
the batch into the same features `FeatureExtractor` + `Augmenter.spec` give one by one: Kaldi fbank
(`torch_fbank`), LFR, CMVN, SpecAugment's masks. `SpeechLLM` calls it before the encoder, in training,
validation and decoding alike.
"""

from __future__ import annotations

import torch

from llmasr.config_io import ConfigError
from llmasr.data.features import _cached_cmvn
from llmasr.data.frontend import FrontendConfig
from llmasr.data.torch_fbank import TorchFbank

FEATURES_ON = ("worker", "device", "auto")


def resolve_features_on(setting: str, frontend: FrontendConfig, device=None, *, key: str = "data.features_on") -> str:
    """'worker' or 'device' for `data.features_on` (`key`: the setting's name in errors); auto is device on an
    accelerator (`device`, or CUDA when not given) for an fbank frontend, else worker."""
    if setting not in FEATURES_ON:
        raise ConfigError(f"{key}: expected one of {list(FEATURES_ON)}, got {setting!r}")
    if setting == "auto":
        on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type != "cpu"
        return "device" if on_gpu and frontend.kind == "fbank" else "worker"
    if setting == "device" and frontend.kind != "fbank":
        raise ConfigError(
            f"{key}: device computes Kaldi fbank features; this encoder's frontend is {frontend.kind!r} "
            "(use worker or auto)"
        )
    return setting


def lfr_batch(feats: torch.Tensor, lens: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`features.apply_lfr` per row of a padded batch: [B, T, D] -> [B, ceil(T/n), m*D], and the new lengths."""
    out_lens = torch.div(lens + n - 1, n, rounding_mode="floor")
    if m == 1 and n == 1:
        return feats, lens
    b, t, d = feats.shape
    t_out = -(-t // n)
    rows = torch.arange(t_out, device=feats.device)[:, None] * n + torch.arange(m, device=feats.device)[None, :]
    rows = rows - (m - 1) // 2  # [t_out, m]; each row clipped to its own [0, T_b - 1]
    last = (lens - 1).clamp(min=0)[:, None, None]
    rows = torch.minimum(rows[None].clamp(min=0), last)  # [B, t_out, m]
    picked = torch.gather(feats, 1, rows.reshape(b, t_out * m, 1).expand(b, t_out * m, d))
    return picked.reshape(b, t_out, m * d), out_lens


def apply_masks(feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Zero the (axis, start, width) rows of `masks` [B, K, 3] in `feats` [B, T, D] (`augment.apply_spec_masks`)."""
    if masks.shape[1] == 0:
        return feats
    masks = masks.to(feats.device)
    axis, start, width = masks[..., 0:1], masks[..., 1:2], masks[..., 2:3]  # [B, K, 1]
    t = torch.arange(feats.shape[1], device=feats.device)[None, None, :]
    d = torch.arange(feats.shape[2], device=feats.device)[None, None, :]
    rows = ((axis == 0) & (t >= start) & (t < start + width)).any(dim=1)  # [B, T]
    cols = ((axis == 1) & (d >= start) & (d < start + width)).any(dim=1)  # [B, D]
    return feats.masked_fill(rows[:, :, None] | cols[:, None, :], 0.0)


class DeviceFeatures:
    """Batch waveforms -> features: (scaled waveforms [B, N], lengths [B], SpecAugment masks [B, K, 3] or None)
    -> (float32 features [B, T, feature_dim] zero past each row's length, lengths [B])."""

    def __init__(self, frontend: FrontendConfig):
        self.frontend = frontend
        self.fbank = TorchFbank(frontend)
        self._cmvn: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if frontend.cmvn_file is not None:
            shift, _ = _cached_cmvn(str(frontend.cmvn_file))
            if shift.size != frontend.feature_dim:
                raise ValueError(
                    f"{frontend.cmvn_file}: CMVN has {shift.size} dims, features have {frontend.feature_dim}"
                )

    def num_frames(self, num_samples: int) -> int:
        t = self.fbank.num_frames(num_samples)
        return -(-t // self.frontend.lfr_n) if t > 0 else 0

    def _cmvn_on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._cmvn:
            shift, scale = _cached_cmvn(str(self.frontend.cmvn_file))
            self._cmvn[key] = (torch.tensor(shift, device=device), torch.tensor(scale, device=device))
        return self._cmvn[key]

    @torch.no_grad()
    def __call__(self, wave: torch.Tensor, lens: torch.Tensor, masks: torch.Tensor | None = None):
        # No autocast; the one matmul (the mel projection) is float64, so no TF32/bf16 matmul setting reaches it.
        with torch.autocast(wave.device.type, enabled=False):
            return self._features(wave, lens, masks)

    def _features(self, wave: torch.Tensor, lens: torch.Tensor, masks: torch.Tensor | None):
        fe = self.frontend
        feats, frames = self.fbank(wave, lens)
        feats, frames = lfr_batch(feats, frames, fe.lfr_m, fe.lfr_n)
        if fe.cmvn_file is not None:
            shift, scale = self._cmvn_on(feats.device)
            feats = (feats + shift) * scale
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < frames[:, None]
        feats = feats.masked_fill(~valid[:, :, None], 0.0)
        if masks is not None:
            feats = apply_masks(feats, masks)
        return feats, frames
