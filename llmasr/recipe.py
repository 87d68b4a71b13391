"""A recipe: one YAML file with `model`, `data`, `optim`, `train` and `decode` sections, plus dotted overrides.

    recipe = load_recipe("recipes/paraformer_qwen2.5-1.5b.yaml", ["optim.branches.llm.lr=2e-5", "train.epochs=3"])

Everything is typed and validated here, once, before any model or data is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmasr.config_io import (
    ConfigError,
    apply_overrides,
    dump_yaml,
    from_dict,
    load_yaml,
    resolve_paths,
    to_dict,
)
from llmasr.data.config import DataConfig
from llmasr.models.config import ModelConfig
from llmasr.train.config import OptimConfig, TrainConfig


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
        if self.metric not in ("auto", "wer", "cer"):
            raise ConfigError(f"{path}.metric: one of auto, wer, cer; got {self.metric!r}")


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None, *, data: dict | None = None):
    """Recipe from a YAML file (or a dict), with `key.path=value` overrides applied before validation."""
    if data is None:
        if path is None:
            raise ConfigError("load_recipe needs a recipe path or a dict")
        data = load_yaml(path)
        # paths are relative to the recipe file, so recipes can be moved with their assets
        resolve_paths(Recipe, data, Path(path).resolve().parent)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(Recipe, data)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    dump_yaml(recipe, path)


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)
