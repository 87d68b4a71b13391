"""Whisper's audio encoder (transformers' WhisperEncoder) behind the llmasr encoder interface.

`load_whisper_encoder(path)` reads a local Hugging Face Whisper directory (config.json, preprocessor_config.json, and
the weights as transformers finds them: model.safetensors, its sharded index, or pytorch_model.bin or its index,
which older fine-tunes hold, read weights-only) and keeps only the encoder tensors; the decoder is never built.
Nothing is downloaded and no remote code runs.

Whisper's encoder takes a fixed number of frames (2 * max_source_positions: 3000 = 30 s for the released models)
and has no padding mask. `WhisperAudioEncoder.forward` therefore pads or truncates to that length and fills every
frame past an utterance's length (its frames whose window reaches the audio: FeatureExtractor.num_frames; those
after them hear only the zero padding) with what Whisper's feature extractor produces for zero (silent) audio: the
log-mel floor, i.e. the utterance's maximum feature value minus 2, or -1.5 when that is lower (the extractor's
log10 of the power clamped at 1e-10, then at the maximum minus 8, then (x+4)/4): a quiet clip's padding is -1.5.
Valid output frames are the conv-stack output frames of the valid input: (len - 1) // 2 + 1.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmasr.config_io import ConfigError, coerce
from llmasr.config_paths import not_found
from llmasr.data.frontend import FrontendConfig
from llmasr.errors import nearest_hint
from llmasr.models.llm_files import WEIGHT_LAYOUTS
from llmasr.models.state_dict import (
    CheckpointMismatchError,
    load_into,
    read_safetensors,
    refuse_lfs_pointer,
    reinit_patterns,
    torch_load,
)

log = logging.getLogger(__name__)

_PREFIXES = ("model.encoder.", "encoder.", "")  # WhisperForConditionalGeneration, WhisperModel, bare encoder
SILENCE_FLOOR = (-10.0 + 4.0) / 4.0  # zero audio's log-mel: log10 of the 1e-10 clamp, scaled as Whisper scales


class WhisperAudioEncoder(nn.Module):
    """forward(xs [B, T, n_mels], xs_lens [B]) -> (ys [B, T', d_model], ys_lens [B])."""

    def __init__(self, config: Any):
        super().__init__()
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.config = config
        self.encoder = WhisperEncoder(config)
        self.n_mels = int(config.num_mel_bins)
        self.n_frames = int(config.max_source_positions) * 2  # conv1 stride 1, conv2 stride 2
        self._gradient_checkpointing = False

    def output_size(self) -> int:
        return int(self.config.d_model)

    @property
    def gradient_checkpointing(self) -> bool:
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        # transformers >= 5 names it activation_checkpointing_*; 4.x only has gradient_checkpointing_*.
        if enabled:
            if hasattr(self.encoder, "activation_checkpointing_enable"):
                self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif self._gradient_checkpointing:
            if hasattr(self.encoder, "activation_checkpointing_disable"):
                self.encoder.activation_checkpointing_disable()
            else:
                self.encoder.gradient_checkpointing_disable()
        self._gradient_checkpointing = bool(enabled)

    @staticmethod
    def output_lengths(xs_lens: torch.Tensor) -> torch.Tensor:
        return torch.div(xs_lens + 1, 2, rounding_mode="floor")  # conv2: kernel 3, stride 2, padding 1

    def prepare_features(self, xs: torch.Tensor, xs_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, n_mels] -> ([B, n_mels, n_frames] padded with the silence floor, lengths). ValueError for an input
        longer than the window: cutting it would drop audio its transcript holds (the data loader makes such clips
        bad items, and decoding cuts long audio into windows)."""
        if xs.dim() != 3 or xs.size(-1) != self.n_mels:
            raise ValueError(
                f"whisper encoder expects [batch, time, {self.n_mels}] log-mel features, got {list(xs.shape)}"
            )
        n = self.n_frames
        longest = int(xs_lens.max()) if xs_lens.numel() else 0
        if longest > n:
            raise ValueError(
                f"whisper encoder: an input of {longest} frames is longer than its window of {n} frames; cut the "
                "audio into windows no longer than the encoder's chunk"
            )
        lens = xs_lens.to(xs.device).clamp(min=0)
        x = xs[:, :n]  # past every length: batch padding only
        if x.size(1) < n:
            x = nn.functional.pad(x, (0, 0, 0, n - x.size(1)))
        valid = torch.arange(n, device=x.device)[None, :] < lens[:, None]  # [B, n]
        peak = x.masked_fill(~valid[:, :, None], float("-inf")).amax(dim=(1, 2))
        fill = torch.where(lens > 0, (peak - 2.0).clamp(min=SILENCE_FLOOR), torch.zeros_like(peak))
        x = torch.where(valid[:, :, None], x, fill[:, None, None].to(x.dtype))
        return x.transpose(1, 2), lens

    def forward(self, xs: torch.Tensor, xs_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lens = self.prepare_features(xs, xs_lens)
        feats = feats.to(self.encoder.conv1.weight.dtype)
        hidden = self.encoder(input_features=feats).last_hidden_state  # [B, n_frames/2, d_model]
        out_lens = self.output_lengths(lens)
        hidden = hidden[:, : int(out_lens.max()) if out_lens.numel() else 0]
        valid = torch.arange(hidden.size(1), device=hidden.device)[None, :] < out_lens[:, None]
        return hidden.masked_fill(~valid[:, :, None], 0.0), out_lens


def whisper_frontend(config: Any, preprocessor: dict | None = None) -> FrontendConfig:
    """FrontendConfig for a Whisper encoder: log-mel settings from preprocessor_config.json, the chunk length
    from max_source_positions (the number of frames the encoder requires)."""
    pre = preprocessor or {}
    sample_rate = int(pre.get("sampling_rate", 16000))
    hop = int(pre.get("hop_length", 160))
    n_fft = int(pre.get("n_fft", 400))
    n_mels = int(pre.get("feature_size", config.num_mel_bins))
    if n_mels != int(config.num_mel_bins):
        raise ConfigError(
            f"preprocessor_config.json feature_size {n_mels} differs from config.json num_mel_bins "
            f"{config.num_mel_bins}"
        )
    return FrontendConfig(
        kind="whisper",
        sample_rate=sample_rate,
        n_mels=n_mels,
        frame_length_ms=1000.0 * n_fft / sample_rate,
        frame_shift_ms=1000.0 * hop / sample_rate,
        window="hann",
        dither=float(pre.get("dither", 0.0)),
        waveform_scale=1.0,
        n_fft=n_fft,
        chunk_seconds=2 * int(config.max_source_positions) * hop / sample_rate,
    )


def check_window(frontend: FrontendConfig, config: Any) -> FrontendConfig:
    """`frontend`, refused when its window (chunk_seconds at its frame shift) holds more frames than the encoder
    takes (2 * max_source_positions): the data would pass clips the encoder refuses at the first batch holding one."""
    from llmasr.data.features import FeatureExtractor

    frames = 2 * int(config.max_source_positions)
    held = FeatureExtractor(frontend).num_frames(int(round(frontend.chunk_seconds * frontend.sample_rate)))
    if held > frames:
        raise ConfigError(
            f"model.encoder.frontend: a window of chunk_seconds {frontend.chunk_seconds:g} at frame_shift_ms "
            f"{frontend.frame_shift_ms:g} holds {held} frames, but the Whisper encoder takes {frames} "
            f"(2 x max_source_positions {config.max_source_positions}); chunk_seconds may be at most "
            f"{frames * frontend.frame_seconds:g}"
        )
    return frontend


# WhisperConfig keys that fix the encoder's tensor shapes: a pretrained directory's config.json decides them.
SHAPE_KEYS = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins",
              "max_source_positions")  # fmt: skip
# Keys that fix what the pretrained tensors compute: over a directory, conf may not change them.
WEIGHT_KEYS = (*SHAPE_KEYS, "activation_function")
# The other WhisperConfig keys WhisperEncoder reads. The rest (the decoder's, SpecAugment's mask_* that only
# WhisperModel applies, a classification head's) would be kept and never used: refused.
ENCODER_KEYS = (*SHAPE_KEYS, "dropout", "attention_dropout", "activation_dropout", "activation_function",
                "encoder_layerdrop", "scale_embedding", "init_std")  # fmt: skip


def encoder_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """The ENCODER_KEYS of a WhisperConfig's dict: what an encoder built from conf needs (an exported model's
    description; one written by an older llmasr holds the whole WhisperConfig, decoder and all)."""
    return {k: conf[k] for k in ENCODER_KEYS if k in conf}


def check_whisper_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """`conf` (model.encoder.conf) with each value of the type WhisperConfig's default has (YAML reads 1e-4 as a
    string); keys that are not WhisperConfig options, or are options the encoder never reads, are refused
    (WhisperConfig itself would keep them silently)."""
    from transformers import WhisperConfig

    defaults = WhisperConfig().to_dict()
    out = {}
    for key, value in conf.items():
        if key not in defaults:
            raise ConfigError(f"model.encoder.conf.{key}: not a WhisperConfig option{nearest_hint(key, defaults)}")
        if key not in ENCODER_KEYS:
            hint = " (SpecAugment: data.augment.spec_augment)" if key.startswith(("mask_", "apply_spec")) else ""
            raise ConfigError(
                f"model.encoder.conf.{key}: a WhisperConfig option the encoder never reads{hint}; the encoder "
                f"reads {', '.join(ENCODER_KEYS)}"
            )
        kind = type(defaults[key])
        out[key] = coerce(value, kind, f"model.encoder.conf.{key}") if kind in (int, float, bool) else value
    return out


def whisper_config(path: str | Path | None, conf: dict[str, Any]):
    """The WhisperConfig of a directory's config.json (or of `conf` alone when `path` is None) with `conf` over
    it; a key that would change the pretrained tensors' shapes or activation is refused, naming both values."""
    from transformers import WhisperConfig

    conf = check_whisper_conf(conf)
    if path is None:
        return WhisperConfig(**conf)
    config = WhisperConfig.from_pretrained(str(path), local_files_only=True)
    for key, value in conf.items():
        if key in WEIGHT_KEYS and value != getattr(config, key):
            raise ConfigError(
                f"model.encoder.conf.{key}: {value} differs from {Path(path) / 'config.json'}'s "
                f"{getattr(config, key)}; the pretrained weights fix it"
            )
        setattr(config, key, value)
    return config


def build_whisper_encoder(conf: dict[str, Any]) -> tuple[WhisperAudioEncoder, FrontendConfig]:
    """A randomly initialised Whisper encoder from WhisperConfig keys (d_model, encoder_layers, num_mel_bins, ...)."""
    config = whisper_config(None, conf)
    return WhisperAudioEncoder(config), whisper_frontend(config)


def _read_json(path: Path) -> dict:
    """A JSON object file of the directory; one that does not parse is a ConfigError naming it (json's own error
    names no file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def _weight_files(path: Path) -> list[Path]:
    """The files transformers would read the weights from (safetensors before .bin, the single file before its
    index), only the shards an index maps encoder keys to; each must be there and not a Git LFS pointer."""
    for index_name, single_name in WEIGHT_LAYOUTS:
        single, index = path / single_name, path / index_name
        if single.is_file():
            files = [single]
            break
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            names = sorted({f for k, f in weight_map.items() if k.startswith(("model.encoder.", "encoder."))})
            files = [path / name for name in names or sorted(set(weight_map.values()))]
            for f in files:
                if not f.is_file():
                    raise FileNotFoundError(f"{f}: listed in {index.name} but missing")
            break
    else:
        names = ", ".join(name for pair in WEIGHT_LAYOUTS for name in reversed(pair))
        raise FileNotFoundError(f"{path}: no weights in the Whisper directory (none of {names})")
    for f in files:
        refuse_lfs_pointer(f)  # a clone without LFS: the readers' own errors (a header too large) do not say so
    return files


def _read_encoder_tensors(path: Path, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """Encoder tensors only (prefix stripped), from the directory's weight files; `shapes_only`: meta tensors from
    the files' headers (a .bin file is memory-mapped)."""
    stored: dict[Path, dict[str, torch.Tensor]] = {}
    for f in _weight_files(path):
        if f.suffix == ".safetensors":
            stored[f] = read_safetensors(f, shapes_only=True)  # names only: the header
        else:
            state = torch_load(f, shapes_only=shapes_only)
            if not isinstance(state, dict):
                raise CheckpointMismatchError(f"{f}: holds a {type(state).__name__}, not a state dict")
            stored[f] = state
    all_keys = [k for tensors in stored.values() for k in tensors]
    prefix = next((p for p in _PREFIXES if p + "conv1.weight" in all_keys), None)
    if prefix is None:
        names = ", ".join(f.name for f in stored)
        raise CheckpointMismatchError(f"{path}: no Whisper encoder weights (no *conv1.weight key) in {names}")
    out: dict[str, torch.Tensor] = {}
    for f, tensors in stored.items():
        other = ("model.", "decoder.", "proj_out")  # with no prefix (a bare encoder's keys), the rest is skipped
        wanted = [k for k in tensors if k.startswith(prefix) and (prefix or not k.startswith(other))]
        if f.suffix == ".safetensors":
            tensors = read_safetensors(f, wanted, shapes_only=shapes_only)
        out.update((k[len(prefix) :], tensors[k]) for k in wanted)
    return out


def whisper_dir_frontend(path: str | Path) -> FrontendConfig:
    """The frontend a local HF Whisper directory expects, without reading its weights."""
    from transformers import WhisperConfig

    path = Path(path)
    for name in ("config.json", "preprocessor_config.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name}: missing from the Whisper directory")
    config = WhisperConfig.from_pretrained(str(path), local_files_only=True)
    return whisper_frontend(config, _read_json(path / "preprocessor_config.json"))


def load_whisper_encoder(
    path: str | Path,
    *,
    conf: dict[str, Any] | None = None,
    reinit_keys: list[str] | tuple[str, ...] = (),
    shapes_only: bool = False,
    frozen_by: str | None = None,
) -> tuple[WhisperAudioEncoder, FrontendConfig]:
    """Encoder + frontend settings from a local HF Whisper directory; `conf`: WhisperConfig values over its
    config.json (dropout, layerdrop: what leaves the shapes alone). `reinit_keys` are WhisperEncoder names
    (globs allowed, e.g. "layers.31.*") that may be missing or differently shaped and stay freshly initialised.
    `shapes_only`: the files' tensor names and shapes are checked against the encoder, no data is read (build it on
    the meta device)."""
    reinit_keys = reinit_patterns(reinit_keys)
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(not_found("model.encoder.path", "Whisper directory", path))
    for name in ("config.json", "preprocessor_config.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name}: missing from the Whisper directory")
    config = whisper_config(path, conf or {})
    if getattr(config, "model_type", None) != "whisper":
        raise ConfigError(f"{path / 'config.json'}: model_type {config.model_type!r}, expected 'whisper'")
    preprocessor = _read_json(path / "preprocessor_config.json")
    frontend = whisper_frontend(config, preprocessor)
    state = _read_encoder_tensors(path, shapes_only)
    model = WhisperAudioEncoder(config)
    load_into(model.encoder, state, source=str(path), reinit_keys=reinit_keys, frozen_by=frozen_by,
              reinit_option="model.encoder.reinit_keys")  # fmt: skip
    return model, frontend
