"""Typed `data:` section of a recipe: manifests, dynamic batching, loader workers, bad-data tolerance, augmentation.

Example::

    data:
      train:
        - {path: data/librispeech_train.jsonl, weight: 1.0}
        - data/extra.jsonl                  # a plain string is {path: ..., weight: 1.0}
      valid: [data/dev_clean.jsonl]
      batching:
        max_seconds: 120                    # padded seconds of audio per batch (B * longest utterance)
        max_target_tokens: 4096             # optional: padded target length per batch (B * longest target)
        max_llm_tokens: 16384               # optional: padded LLM positions per batch (B * longest row)
        num_buckets: 30
        max_duration: 35
      num_workers: 4
      features_on: auto                     # worker | device | auto (device on a GPU)
      max_bad_fraction: 0.01
      hotwords: {enable: true, ngram: [1, 2], list_size: [2, 10], distractors: corpus}   # see data.hotwords
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

from llmasr.config_io import ConfigError
from llmasr.config_paths import path_field
from llmasr.data.augment import AugmentConfig
from llmasr.data.hotwords import HotwordsConfig
from llmasr.unread_fields import changed, refuse_unread

log = logging.getLogger("llmasr.data")

DEFAULT_MAX_SECONDS = 120.0


@dataclass
class ManifestSpec:
    path: str = path_field()
    weight: float = 1.0  # sampling weight when several training manifests are mixed

    def validate(self, path: str) -> None:
        if not self.path:
            raise ConfigError(f"{path}.path: empty manifest path")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            leave = "; to train without this manifest, remove its entry" if self.weight == 0 else ""
            raise ConfigError(f"{path}.weight: must be a positive number, got {self.weight}{leave}")


@dataclass
class ValidManifestSpec(ManifestSpec):
    """A validation manifest: every one is read whole, so a sampling weight would change nothing."""

    @staticmethod
    def unread_fields(section: dict) -> dict[str, str]:
        """What a valid manifest sets that nothing reads (llmasr.unread_fields)."""
        return {
            name: "weights the draw among mixed training manifests; validation reads each valid manifest whole: "
            "leave it unset"
            for name in changed(ValidManifestSpec, section, ["weight"])
        }

    def validate(self, path: str) -> None:
        refuse_unread(self, path)
        super().validate(path)


@dataclass
class BatchingConfig:
    # Batch budget, in padded units: B * (longest item). Exactly one of max_seconds / max_frames; when neither is set
    # max_seconds = 120 is used. max_frames counts encoder-input feature frames (after low-frame-rate stacking).
    max_seconds: float | None = None
    max_frames: int | None = None
    # Target lengths are the manifest's target_len, else the transcript's character count.
    max_target_tokens: int | None = None  # padded target length per batch: B * (longest target_len)
    # Padded LLM positions per batch: B * (longest row), a row being the most LLM positions its line can take: its
    # audio tokens at the longest it is heard, its prompt (with the longest biasing list it can carry) and its
    # transcript, counted as the context check counts them (llmasr.train.line_positions). None: off.
    max_llm_tokens: int | None = None
    num_buckets: int = 30  # duration-quantile buckets; batches are drawn from one bucket each
    # Items per bucket window that are shuffled together and then sorted by duration before batches are cut.
    # Larger: tighter padding; smaller: more random batch composition. 0: no sorting (bucket width decides padding).
    shuffle_buffer: int = 2000
    shuffle: bool = True  # training only; validation batches are never shuffled
    # Ranks must run the same number of steps. The batches left over after dividing the epoch's batches by the
    # world size are padded with duplicates of real batches (drop_last: false) or dropped (drop_last: true; training
    # only: validation and decoding pad, and count each utterance once).
    drop_last: bool = False
    min_duration: float = 0.0  # seconds; shorter utterances are skipped (counted)
    max_duration: float = 40.0  # seconds; longer utterances are skipped (counted) unless truncate_to_max
    max_target_len: int | None = None  # target_len (else the transcript's characters) above this is skipped (counted)
    # Cut audio longer than max_duration to max_duration instead of skipping it. The transcript is NOT cut, so this
    # only suits data whose long utterances end in silence; off by default.
    truncate_to_max: bool = False

    @property
    def budget_seconds(self) -> float | None:
        if self.max_seconds is None and self.max_frames is None:
            return DEFAULT_MAX_SECONDS
        return self.max_seconds

    def validate(self, path: str) -> None:
        if self.max_seconds is not None and self.max_frames is not None:
            raise ConfigError(f"{path}: set max_seconds or max_frames, not both")
        if self.max_seconds is not None and not 0 < self.max_seconds < math.inf:
            raise ConfigError(
                f"{path}.max_seconds: must be positive and finite (a batch's budget), got {self.max_seconds}"
            )
        if self.max_frames is not None and self.max_frames <= 0:
            raise ConfigError(f"{path}.max_frames: must be positive, got {self.max_frames}")
        if self.max_target_tokens is not None and self.max_target_tokens <= 0:
            raise ConfigError(f"{path}.max_target_tokens: must be positive, got {self.max_target_tokens}")
        if self.max_llm_tokens is not None and self.max_llm_tokens <= 0:
            raise ConfigError(f"{path}.max_llm_tokens: must be positive, got {self.max_llm_tokens}")
        if self.num_buckets < 1:
            raise ConfigError(f"{path}.num_buckets: must be >= 1, got {self.num_buckets}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"{path}.shuffle_buffer: must be >= 0, got {self.shuffle_buffer}")
        if self.min_duration < 0:
            raise ConfigError(f"{path}.min_duration: must be >= 0, got {self.min_duration}")
        if not self.max_duration > self.min_duration:
            raise ConfigError(
                f"{path}: max_duration ({self.max_duration}) must be greater than min_duration ({self.min_duration})"
            )
        if self.max_target_len is not None and self.max_target_len <= 0:
            raise ConfigError(f"{path}.max_target_len: must be positive, got {self.max_target_len}")


@dataclass
class DataConfig:
    """A recipe's `data:` section (the module's docstring shows one): manifests, batching, loader workers, bad-data
    tolerance, augmentation; build_dataloader holds one made in Python to the same checks."""

    train: list[ManifestSpec | str] = path_field(default_factory=list)
    valid: list[ValidManifestSpec | str] = path_field(default_factory=list)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    num_workers: int = 4
    # Batches each worker keeps ready. Unset: enough for a whole accumulation window (ceil(grad_accum / num_workers)
    # + 1, at least 2): the trainer takes a window's batches before its first step, and with fewer in flight the
    # workers sit idle while the window computes, then the loop waits for them.
    prefetch_factor: int | None = None
    pin_memory: bool = True  # pinned host memory for batches bound for a CUDA device (a CPU run never pins)
    # Training stops with TooMuchBadData once more than this fraction of the items seen is unusable.
    max_bad_fraction: float = 0.01
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    hotwords: HotwordsConfig = field(default_factory=HotwordsConfig)  # training's biasing lists
    # Where fbank + LFR + CMVN + SpecAugment run: in the loader workers, on the model's device over the padded
    # waveform batch (workers then only read, resample and augment), or auto: device on an accelerator.
    features_on: str = "auto"
    # Validation uses at most this many utterances (evenly spaced over the valid manifests); None: all of them.
    valid_max_utts: int | None = None

    def __post_init__(self) -> None:
        self.train = [ManifestSpec(m) if isinstance(m, str) else m for m in self.train]
        self.valid = [ValidManifestSpec(m) if isinstance(m, str) else m for m in self.valid]

    @property
    def train_manifests(self) -> list[ManifestSpec]:
        return list(self.train)  # type: ignore[arg-type]

    @property
    def valid_manifests(self) -> list[ManifestSpec]:
        return list(self.valid)  # type: ignore[arg-type]

    def prefetch(self, window: int) -> int | None:
        """The DataLoader's prefetch_factor: prefetch_factor, or unset, enough batches in flight for an accumulation
        window of `window` batches; None without workers."""
        workers = int(self.num_workers)
        if workers == 0:
            return None
        if self.prefetch_factor is None:
            return max(2, math.ceil(window / workers) + 1)
        if workers * self.prefetch_factor < window:
            log.warning(
                "data.prefetch_factor %d x data.num_workers %d keeps %d batches in flight, fewer than the %d of an "
                "accumulation window: the workers wait while each window computes (unset prefetch_factor to size it)",
                self.prefetch_factor, workers, workers * self.prefetch_factor, window,
            )  # fmt: skip
        return int(self.prefetch_factor)

    def validate(self, path: str) -> None:
        for name in ("train", "valid"):
            for i, spec in enumerate(getattr(self, name)):
                spec.validate(f"{path}.{name}[{i}]")
        if twice := _listed_twice(self.train_manifests):  # each listing is a share of the mix of its own
            first, i = twice
            weight = f"{self.train[first].weight + self.train[i].weight:g}"
            raise ConfigError(
                f"{path}.train[{i}]: {self.train_manifests[i].path} is {path}.train[{first}] again; each listing draws "
                f"from it apart, so its share of the mix would silently double: list it once, with weight: {weight} "
                "(the two weights summed) to draw it as often"
            )
        if twice := _listed_twice(self.valid_manifests):  # validation pools its manifests into one score
            first, i = twice
            raise ConfigError(
                f"{path}.valid[{i}]: {self.valid_manifests[i].path} is {path}.valid[{first}] again; validation pools "
                "every manifest into one score, so its lines would be decoded and counted twice: list it once"
            )
        if self.num_workers < 0:
            raise ConfigError(f"{path}.num_workers: must be >= 0, got {self.num_workers}")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ConfigError(f"{path}.prefetch_factor: must be >= 1, got {self.prefetch_factor}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"{path}.max_bad_fraction: must be in [0, 1], got {self.max_bad_fraction}")
        if self.seed < 0:
            raise ConfigError(f"{path}.seed: must be >= 0, got {self.seed}")
        if self.features_on not in ("worker", "device", "auto"):
            raise ConfigError(f"{path}.features_on: expected worker, device or auto, got {self.features_on!r}")
        if self.valid_max_utts is not None and self.valid_max_utts <= 0:
            raise ConfigError(f"{path}.valid_max_utts: must be positive, got {self.valid_max_utts}")


def _listed_twice(specs) -> tuple[int, int] | None:
    """(first, i): the first manifest of `specs` that names the file of an earlier one (by its real path), and that
    earlier one's place; None where each file is listed once."""
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        first = seen.setdefault(os.path.realpath(spec.path), i)
        if first != i:
            return first, i
    return None
