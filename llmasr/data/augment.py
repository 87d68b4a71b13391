"""Training-time augmentation: waveform (speed perturbation, pauses around the speech, additive noise, gain) and
SpecAugment.

A clip's speed factor and pauses come from llmasr.data.clip_lengths (the sampler costs batches by them); every other
random draw comes from the numpy Generator the caller passes, in a fixed order, so the same seed gives the same
augmentation. The caller applies it to training data only (see `Augmenter.enabled`).

SpecAugment on LFR features (lfr_m > 1): a row holds lfr_m stacked sub-frames of n_mels bins each. A frequency
mask covers the same mel bins in every sub-frame, and a time mask zeroes one span of whole LFR rows (60 ms each for
Paraformer's 7/6), as FunASR's SpecAugLFR does (its MaskAlongAxisLFR stacks only frequency masks: for time it sets
lfr_rate to 1). `spec_augment.lfr_time_replicate: true` instead repeats each time mask lfr_m times at a stride of
T // lfr_m rows, the layout FunASR's mask_along_axis_lfr would give time masks, which SpecAugLFR never asks of it.
Masked values are set to 0: the mean after CMVN, where a CMVN file normalises the features (without one, a log-mel 0).

Pauses (`silence`): clips cut tightly around their speech teach a model that audio starts with a word, and an
LLM-ASR model so trained writes words into the pause before speech it meets in real recordings. The pause put
before and after the clip is Gaussian noise at the clip's own floor (its quietest frames), so it sounds like the
recording going on; noise augmentation, applied after it, covers the pause as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from llmasr.config_io import ConfigError
from llmasr.config_paths import path_field
from llmasr.data.frontend import FrontendConfig
from llmasr.data.long_audio import frame_energies
from llmasr.data.noise_list import NoiseDraws
from llmasr.unread_fields import as_section, changed


def _check_range(path: str, name: str, values: list[float], lo: float | None = None, hi: float | None = None):
    if len(values) != 2 or values[0] > values[1]:
        raise ConfigError(f"{path}.{name}: expected [low, high] with low <= high, got {values}")
    for v in values:
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = "be finite" if lo is None and hi is None else f"lie in [{lo}, {hi}]"
            raise ConfigError(f"{path}.{name}: values must {bounds}, got {values}")


def _check_prob(path: str, prob: float):
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"{path}.prob: must be in [0, 1], got {prob}")


@dataclass
class SpecAugmentConfig:
    enable: bool = False
    num_time_masks: int = 1
    max_time_width: float = 12  # >= 1: frames (after LFR); < 1: fraction of the utterance's frames
    num_freq_masks: int = 1
    max_freq_width: int = 30  # mel bins (per LFR sub-frame)
    lfr_time_replicate: bool = False  # each time mask repeated lfr_m times (not SpecAugLFR's: module docstring)
    # The time masks together cover at most this fraction of an utterance (each its share): one mask could cover
    # a whole short clip, teaching words over nothing; lhotse caps them at 0.15, FunASR and WeNet not at all.
    max_time_fraction: float = 0.5

    def validate(self, path: str) -> None:
        if self.num_time_masks < 0 or self.num_freq_masks < 0:
            raise ConfigError(f"{path}: num_time_masks and num_freq_masks must be >= 0")
        if not (math.isfinite(self.max_time_width) and self.max_time_width >= 0):
            raise ConfigError(
                f"{path}.max_time_width: must be >= 0 (frames, or a fraction < 1), got {self.max_time_width}"
            )
        if self.max_time_width >= 1 and not float(self.max_time_width).is_integer():
            raise ConfigError(
                f"{path}.max_time_width: a width >= 1 counts frames and must be whole, got {self.max_time_width}"
            )
        if self.max_freq_width < 0:
            raise ConfigError(f"{path}.max_freq_width: must be >= 0, got {self.max_freq_width}")
        if not 0 < self.max_time_fraction <= 1:
            raise ConfigError(f"{path}.max_time_fraction: must be in (0, 1], got {self.max_time_fraction}")

    def idle(self) -> str | None:
        no_time = self.num_time_masks == 0 or self.max_time_width == 0
        if no_time and (self.num_freq_masks == 0 or self.max_freq_width == 0):
            return "no mask can be drawn (num_*_masks or max_*_width 0 for both time and frequency)"
        return None


@dataclass
class NoiseConfig:
    enable: bool = False
    manifest: str | None = path_field(None)  # jsonl(.gz): {"key": ..., "source": audio path} or lhotse recordings
    snr_db: list[float] = field(default_factory=lambda: [10.0, 20.0])
    prob: float = 0.5

    def validate(self, path: str) -> None:
        _check_range(path, "snr_db", self.snr_db)
        _check_prob(path, self.prob)
        if self.enable:
            if not self.manifest:
                raise ConfigError(f"{path}.manifest: required when noise is enabled")
            if Path(self.manifest).is_dir():  # a folder of noise files: it was called "not found"
                raise ConfigError(f"{path}.manifest: a directory, not a noise list (a jsonl): {self.manifest}")
            if not Path(self.manifest).is_file():
                raise ConfigError(f"{path}.manifest: not found: {self.manifest}")

    def idle(self) -> str | None:
        return "prob is 0" if self.prob == 0 else None


@dataclass
class SpeedPerturbConfig:
    enable: bool = False
    factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # one picked uniformly per utterance

    def validate(self, path: str) -> None:
        if not self.factors:
            raise ConfigError(f"{path}.factors: must not be empty")
        for f in self.factors:
            if not (math.isfinite(f) and 0.5 <= f <= 2.0):
                raise ConfigError(f"{path}.factors: each factor must lie in [0.5, 2.0], got {self.factors}")

    def idle(self) -> str | None:
        return "every factor is 1.0" if all(f == 1.0 for f in self.factors) else None


@dataclass
class GainConfig:
    enable: bool = False
    db: list[float] = field(default_factory=lambda: [-6.0, 6.0])
    prob: float = 0.5

    def validate(self, path: str) -> None:
        _check_range(path, "db", self.db, -60.0, 40.0)
        _check_prob(path, self.prob)

    def idle(self) -> str | None:
        return "prob is 0" if self.prob == 0 else "db is [0, 0]" if self.db == [0.0, 0.0] else None


@dataclass
class SilenceConfig:
    enable: bool = False
    prob: float = 0.5  # one draw decides both pauses of a clip
    lead: list[float] = field(default_factory=lambda: [0.0, 1.0])  # seconds of pause before the speech
    trail: list[float] = field(default_factory=lambda: [0.0, 0.5])  # and after it
    level_db: list[float] = field(default_factory=lambda: [-20.0, 0.0])  # against the clip's quietest frames

    def validate(self, path: str) -> None:
        _check_range(path, "lead", self.lead, 0.0, 30.0)
        _check_range(path, "trail", self.trail, 0.0, 30.0)
        _check_range(path, "level_db", self.level_db, -60.0, 20.0)
        _check_prob(path, self.prob)

    def idle(self) -> str | None:
        return "prob is 0" if self.prob == 0 else "lead and trail are both [0, 0]" if not self.max_seconds else None

    @property
    def max_seconds(self) -> float:
        """The most audio the pauses add to one clip (what the batch budget reserves for them)."""
        return float(self.lead[1] + self.trail[1]) if self.enable else 0.0


@dataclass
class AugmentConfig:
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    speed_perturb: SpeedPerturbConfig = field(default_factory=SpeedPerturbConfig)
    silence: SilenceConfig = field(default_factory=SilenceConfig)
    gain: GainConfig = field(default_factory=GainConfig)

    def validate(self, path: str) -> None:
        self.spec_augment.validate(f"{path}.spec_augment")
        self.noise.validate(f"{path}.noise")
        self.speed_perturb.validate(f"{path}.speed_perturb")
        self.silence.validate(f"{path}.silence")
        self.gain.validate(f"{path}.gain")

    def whole_masks(self, frontend: FrontendConfig) -> list[str]:
        """SpecAugment frequency masks that together can cover every mel bin of a clip: the time masks are capped
        (max_time_fraction), frequency masks are not, and a clip masked whole is trained to give words over nothing."""
        sa = self.spec_augment
        widest = min(sa.max_freq_width, frontend.n_mels) * sa.num_freq_masks
        if not sa.enable or widest < frontend.n_mels:
            return []
        return [
            f"data.augment.spec_augment: num_freq_masks x max_freq_width = {sa.num_freq_masks} x {sa.max_freq_width} "
            f"reaches all {frontend.n_mels} mel bins: some draws mask a clip whole (frequency masks have no cap such "
            "as max_time_fraction), training words over nothing; keep it below n_mels (Paraformer's: 1 x 30 of 80)"
        ]

    def idle_settings(self, frontend: FrontendConfig) -> list[str]:
        """Settings that change nothing, one line each: a section's keys set away from their defaults while its
        `enable` is false (`speed_perturb.factors` alone does not turn speed perturbation on), a section enabled with
        settings under which it changes no clip (its `idle`), and lfr_time_replicate on features that stack no
        frames."""
        out = []
        for f in fields(self):
            section = getattr(self, f.name)
            if section.enable:
                if why := section.idle():  # trained without it, while the recipe reads as trained with it
                    out.append(f"data.augment.{f.name}: enable is true, but {why}: it changes no clip")
                continue
            given = changed(type(section), as_section(section), [k.name for k in fields(section)])
            if given:
                out.append(
                    f"data.augment.{f.name}: {', '.join(given)} set, but {f.name}.enable is false: it does nothing"
                )
        sa = self.spec_augment
        if sa.enable and sa.lfr_time_replicate and (frontend.kind != "fbank" or frontend.lfr_m == 1):
            out.append(
                "data.augment.spec_augment.lfr_time_replicate: the frontend stacks no frames (LFR m = 1): each time "
                "mask is one span, as without it"
            )
        return out

    @property
    def stretch(self) -> float:
        """The most speed perturbation lengthens a clip by: 1 / its slowest factor (at least 1)."""
        sp = self.speed_perturb
        return max(1.0, 1.0 / min(sp.factors)) if sp.enable and sp.factors else 1.0

    @property
    def squeeze(self) -> float:
        """The most speed perturbation shortens a clip by: its fastest factor (at least 1). A clip sped up has fewer
        encoder frames for the same transcript."""
        sp = self.speed_perturb
        return max(1.0, max(sp.factors)) if sp.enable and sp.factors else 1.0

    def cost(self, frontend: FrontendConfig) -> tuple[float, float]:
        """(scale, seconds): a clip of d seconds leaves the waveform augmentations at most d * scale + seconds long,
        what the batch budget reserves. In a Whisper frontend's window, which every clip costs anyway, speed and
        pauses stretch a clip only as far as the window holds it."""
        if frontend.kind == "whisper":
            return 1.0, 0.0
        return self.stretch, self.silence.max_seconds


def cost_text(cost: tuple[float, float]) -> str | None:
    """What a sampler's (scale, seconds) cost (AugmentConfig.cost) makes of a line, for the messages that explain
    its batches; None when augmentation adds nothing."""
    scale, pad = cost
    if scale == 1.0 and not pad:
        return None
    return (
        f"its duration x {scale:.3g} + {pad:g} s (data.augment: speed_perturb's slowest factor, silence's "
        "lead[1] + trail[1])"
    )


class Augmenter:
    """Applies the enabled augmentations; `wave` before feature extraction, `spec` after (on final features)."""

    def __init__(self, cfg: AugmentConfig, frontend: FrontendConfig):
        self.cfg = cfg
        self.frontend = frontend
        self.lfr_m = frontend.lfr_m if frontend.kind == "fbank" else 1
        self.noise = NoiseDraws(cfg.noise)  # reads its list when it first draws (in a loader worker)

    @property
    def enabled(self) -> bool:
        return self.cfg.spec_augment.enable or self.wave_enabled

    @property
    def wave_enabled(self) -> bool:
        c = self.cfg
        return c.noise.enable or c.speed_perturb.enable or c.silence.enable or c.gain.enable

    # -------------------------------------------------------------------------------------------------- waveform
    def wave(
        self, waveform: np.ndarray, sr: int, rng: np.random.Generator, lengths: tuple[float, float, float]
    ) -> np.ndarray:
        """Speed perturbation and pauses around the speech as `lengths` gives them (the item's speed factor, lead and
        trail seconds: llmasr.data.clip_lengths, drawn where the sampler draws them), then noise at a random SNR,
        then gain (clipped to [-1, 1]), drawn from `rng`."""
        c = self.cfg
        factor, lead, trail = lengths
        x = np.asarray(waveform, dtype=np.float32)
        if c.speed_perturb.enable and factor != 1.0:
            if self.frontend.kind == "whisper":  # the window cuts what passes it: slow a clip only as far as it holds
                factor = max(factor, min(1.0, x.shape[0] / (self.frontend.chunk_seconds * sr)))
            x = speed_perturb(x, sr, factor)
        speech = slice(0, x.shape[0])
        if c.silence.enable and lead + trail > 0:
            x, n_lead = self._add_pauses(x, sr, rng, lead, trail)
            speech = slice(n_lead, n_lead + speech.stop)
        if c.noise.enable:
            if rng.random() < c.noise.prob:
                x = self.noise.mix(x, sr, rng, speech)
        if c.gain.enable:
            if rng.random() < c.gain.prob:
                db = rng.uniform(c.gain.db[0], c.gain.db[1])
                x = np.clip(x * np.float32(10.0 ** (db / 20.0)), -1.0, 1.0)
        return x

    def _add_pauses(
        self, x: np.ndarray, sr: int, rng: np.random.Generator, lead: float, trail: float
    ) -> tuple[np.ndarray, int]:
        """`x` between `lead` and `trail` seconds of noise at its own floor (see the module docstring), and the
        samples before it. A Whisper frontend cuts audio at its window: there the pauses shrink to the room the clip
        leaves in it."""
        c = self.cfg.silence
        level_db = rng.uniform(c.level_db[0], c.level_db[1])
        if self.frontend.kind == "whisper" and lead + trail > 0:
            fit = min(1.0, max(0.0, self.frontend.chunk_seconds - x.shape[0] / sr) / (lead + trail))
            lead, trail = lead * fit, trail * fit
        n_lead, n_trail = int(round(lead * sr)), int(round(trail * sr))
        if n_lead + n_trail == 0 or x.shape[0] == 0:
            return x, 0
        floor_db = float(np.percentile(frame_energies(x, sr), 10)) + level_db
        pause = rng.standard_normal(n_lead + n_trail).astype(np.float32) * np.float32(10.0 ** (floor_db / 20.0))
        # a loud clip's floor (speech over music, compressed audio) lies near full scale: its Gaussian peaks pass it
        pause = np.clip(pause, -1.0, 1.0)
        return np.concatenate([pause[:n_lead], x, pause[n_lead:]]), n_lead

    # ----------------------------------------------------------------------------------------------- SpecAugment
    def spec(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.cfg.spec_augment.enable:
            return feats
        return apply_spec_masks(feats, self.spec_masks(feats.shape[0], feats.shape[1], rng))

    def spec_masks(self, t: int, d: int, rng: np.random.Generator) -> np.ndarray:
        """SpecAugment's masks for features of [t, d], drawn from `rng`: int64 [K, 3] rows (axis, start, width),
        axis 0 = frames, 1 = feature columns. Drawn apart from the features so that the data worker can draw them
        and the device apply them (`apply_spec_masks`, `device_features`)."""
        sa = self.cfg.spec_augment
        out: list[tuple[int, int, int]] = []
        if not sa.enable:
            return np.zeros((0, 3), dtype=np.int64)
        m = self.lfr_m if d % self.lfr_m == 0 else 1
        bins = d // m
        for _ in range(sa.num_freq_masks):
            w = int(rng.integers(0, min(sa.max_freq_width, bins) + 1))
            f0 = int(rng.integers(0, bins - w + 1))
            if w:
                out.extend((1, i * bins + f0, w) for i in range(m))
        max_w = int(sa.max_time_width * t) if sa.max_time_width < 1 else int(sa.max_time_width)
        share = sa.max_time_fraction / max(sa.num_time_masks, 1)  # of the frames a mask spans
        for _ in range(sa.num_time_masks if t > 0 else 0):
            if sa.lfr_time_replicate and m > 1:
                span = t // m
                w = int(rng.integers(0, max(0, min(max_w, span, int(share * span))) + 1))
                t0 = int(rng.integers(0, max(1, span - w)))
                if w:
                    out.extend((0, t0 + i * span, w) for i in range(m))
            else:
                w = int(rng.integers(0, min(max_w, t, int(share * t)) + 1))
                t0 = int(rng.integers(0, t - w + 1))
                if w:
                    out.append((0, t0, w))
        return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def apply_spec_masks(feats: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """A copy of `feats` [T, D] with the (axis, start, width) masks of `Augmenter.spec_masks` set to 0."""
    x = np.array(feats, dtype=np.float32, copy=True)
    for axis, start, width in np.asarray(masks, dtype=np.int64).reshape(-1, 3).tolist():
        if axis == 0:
            x[start : start + width] = 0.0
        else:
            x[:, start : start + width] = 0.0
    return x


def speed_perturb(x: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Play `x` `factor` times faster (pitch shifts with it, as sox `speed`): len(out) ~ len(x) / factor."""
    from llmasr.data.resample import resample

    if factor == 1.0:
        return x
    return resample(x, int(round(sr * factor)), sr)
