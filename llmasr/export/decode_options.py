"""What a decoding run needs besides its DecodeConfig (llmasr.models.decoding): DecodeOptions, checked when made,
DecodeError, a decode that cannot run as asked, and Pace, the progress it logs. llmasr.export.decode, which decodes
with them, names them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from llmasr.config_io import ConfigError
from llmasr.data.config import DataConfig
from llmasr.export.subtitles import FORMATS
from llmasr.train.config import TrainConfig
from llmasr.unread_fields import default_of


@dataclass
class DecodeOptions:
    """What a decoding run needs besides its DecodeConfig."""

    num_workers: int = 2  # data loader workers
    max_bad_fraction: float = DataConfig.max_bad_fraction  # fail (after writing the outputs) above this
    ctc: bool = False  # also write the CTC branch's greedy transcripts to HYP_DIR/ctc/
    features_on: str = "auto"  # as data.features_on: worker, device, or auto (device on an accelerator)
    hotwords: list[str] | None = None  # --hotwords: the list of every line without its own `hotwords` field
    hotwords_file: str | None = None  # where that list came from (reported in wer.txt)
    # --hotwords-unprompted: the lists are scored but no prompt renders them (the unbiased baseline of the same lists)
    hotwords_unprompted: bool = False
    # The hotword flags given (--hotwords-unprompted, --hotword-boost B): each acts on the lines' lists alone, so where
    # no decoded line has one they are named in a warning (the log, wer.txt, wer.json's hotword_flags_unused)
    hotword_flags: tuple[str, ...] = ()
    # The longest audio the model was trained on (its export's or checkpoint meta's training.longest_seconds):
    # decode.max_window_seconds unset means this. None: unknown.
    training_max_seconds: float | None = None
    # --task: the task of every line without its own `prompt`; --language: the language query (a language key) of
    # every line without its own `lang` (a line's `lang` stays its label in wer.txt's groups). A line's own wins.
    task: str | None = None
    language: str | None = None
    # False: bad lines are not logged, the caller names each by what its user gave (Transcriber: the audio, not the
    # line of the manifest it wrote for it in a folder gone by then)
    log_bad_lines: bool = True
    # --subtitles: each decoded row's subtitles in this format (srt, vtt) too, in OUT/subtitles/ (decode_subtitles)
    subtitles: str | None = None

    def __post_init__(self):
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0 (0: load in the decoding process), got {self.num_workers}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"max_bad_fraction: must be in [0, 1], got {self.max_bad_fraction}")
        if self.features_on not in ("worker", "device", "auto"):
            raise ConfigError(f"features_on: expected worker, device or auto, got {self.features_on!r}")
        if self.task is not None and (not isinstance(self.task, str) or not self.task.strip()):
            raise ConfigError(f"task: the prompt's task text, got {self.task!r}; leave it out for the model's")
        if self.subtitles is not None and self.subtitles not in FORMATS:
            raise ConfigError(f"subtitles: one of {', '.join(FORMATS)}, got {self.subtitles!r}")


class DecodeError(RuntimeError):
    """Decoding cannot run as asked."""


# its own logger, a child of the decode's: transcribe shows it at INFO and the decode's other INFO lines not
PACE_LOGGER = "llmasr.export.decode.progress"
log = logging.getLogger(PACE_LOGGER)
PROGRESS_EVERY_S = default_of(TrainConfig, "progress_every_s")  # a decode's progress line as often as training's


class Pace:
    """A decode's progress: a plain log line every `every_s` seconds (None: none), the batches done of `total`
    (this rank's), the audio decoded and the time left at the pace so far. A long decode had said nothing
    between its start and its scores. No line after the last batch: the scores follow."""

    def __init__(self, name: str, every_s: float | None, total: int, ranks: int = 1):
        self.name, self.every_s, self.total = name, every_s, total
        if ranks > 1:  # rank 0 speaks: its pace stands for every rank's
            self.name += f" (rank 0's share of {ranks} ranks)"
        self.done, self.audio_s = 0, 0.0
        self.t0 = time.monotonic()
        self.next = self.t0 + (every_s or 0.0)

    def batch(self, audio_s: float) -> None:
        """One batch decoded (`audio_s`: its items' seconds of audio; 0 for a batch with none to decode)."""
        self.done, self.audio_s = self.done + 1, self.audio_s + audio_s
        now = time.monotonic()
        if self.every_s is None or now < self.next or self.done >= self.total:
            return
        self.next = now + self.every_s
        spent = now - self.t0
        log.info(
            "decoding %s: batch %d of %d (%.0f%%), %.1f s of audio in %.0f s, about %.0f s left", self.name,
            self.done, self.total, 100 * self.done / max(self.total, 1), self.audio_s, spent,
            spent / self.done * (self.total - self.done),
        )  # fmt: skip
