"""How a SpeechLLM decodes: the one decode configuration (a recipe's `decode:` section, an export's saved decode
settings, `llmasr decode`'s flags) and what `SpeechLLM.transcribe` returns.

Validation during training and `llmasr decode` both decode through `SpeechLLM.transcribe(batch, DecodeConfig)`, so a
setting means the same in both and its default is written here only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmasr.config_io import ConfigError

METRICS = ("auto", "wer", "cer")


@dataclass
class DecodeConfig:
    num_beams: int = 1
    max_new_tokens: int | None = None  # None: tied to audio duration (tokens_per_second * seconds + 8)
    tokens_per_second: float = 8.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    batch_seconds: float = 120.0  # audio seconds per decoding batch
    # Text normaliser before scoring: lowercase, strip punctuation; CER instead of WER for languages written
    # without spaces (auto: decided per utterance by the script of the reference).
    metric: str = "auto"  # auto | wer | cer

    def validate(self, path: str) -> None:
        if self.num_beams < 1:
            raise ConfigError(f"{path}.num_beams: must be >= 1, got {self.num_beams}")
        if self.metric not in METRICS:
            raise ConfigError(f"{path}.metric: one of {', '.join(METRICS)}; got {self.metric!r}")

    def greedy(self, **changes) -> DecodeConfig:
        """This configuration as validation decodes: greedy search with neither repetition penalty nor n-gram
        blocking (their defaults); length cap and metric as set here; `changes` on top."""
        plain = {"num_beams": 1, "repetition_penalty": DecodeConfig.repetition_penalty}
        plain["no_repeat_ngram_size"] = DecodeConfig.no_repeat_ngram_size
        return dataclasses.replace(self, **{**plain, **changes})

    def generation(self) -> dict:
        """The keyword arguments of the LLM's generate that this configuration sets."""
        return {
            "num_beams": int(self.num_beams),
            "repetition_penalty": float(self.repetition_penalty),
            "no_repeat_ngram_size": int(self.no_repeat_ngram_size),
        }


def decode_config(saved: DecodeConfig, path: str = "decode", **given) -> DecodeConfig:
    """`saved` with every `given` value that is not None put in its place, checked (ConfigError naming the
    field under `path`). Unknown names are a TypeError: they are a caller's bug, not a user's input."""
    names = {f.name for f in dataclasses.fields(DecodeConfig)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"decode_config: unknown setting(s) {unknown}; known: {sorted(names)}")
    cfg = dataclasses.replace(saved, **{k: v for k, v in given.items() if v is not None})
    cfg.validate(path)
    return cfg


@dataclass
class Transcripts:
    """One batch's hypotheses, in batch row order: the LLM's, and the CTC head's greedy best path over the same
    encoder output (None when the model has no CTC head)."""

    llm: list[str]
    ctc: list[str] | None = None
