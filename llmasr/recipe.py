"""A recipe: one YAML file with `model`, `data`, `optim`, `train` and `decode` sections, plus dotted overrides.

    recipe = load_recipe("recipes/demo.yaml", ["optim.branches.llm.lr=2e-5", "train.epochs=3"])

Everything is typed and validated here, once, before any model or data is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from llmasr.config_io import ConfigError, apply_overrides, dump_yaml, from_dict, load_yaml, to_dict
from llmasr.config_paths import resolve_paths
from llmasr.data.config import DataConfig
from llmasr.models.config import ModelConfig
from llmasr.models.decoding import DecodeConfig
from llmasr.train.config import OptimConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self, path: str) -> None:
        """Checks across sections: the decode section must suit the model the recipe trains (CTC guidance and word
        timestamps need its CTC head; guidance by a head of its own vocabulary rescores a beam's n-best), or every
        decode of the export would be refused."""
        ctc, weight = self.model.ctc, self.decode.ctc_weight
        if weight is not None and weight > 0:
            try:
                self.decode.guidance(ctc.weight > 0, ctc.vocab == "llm")
            except ConfigError as err:
                raise ConfigError(f"{err} (model.ctc.weight {ctc.weight}, model.ctc.vocab {ctc.vocab!r})") from err
        if self.decode.timestamps and ctc.weight <= 0:
            raise ConfigError(
                "decode.timestamps: word times come from the CTC head, and this recipe trains none (model.ctc.weight "
                f"{ctc.weight}); set model.ctc.weight > 0 or decode.timestamps false"
            )

    @staticmethod
    def saved_data(data: dict, where) -> dict:
        """A run's saved recipe (RUN_DIR/recipe.yaml) as read now: what an older llmasr let a run keep and a new
        run is refused is turned off, with a warning, so that its run still resumes, exports and decodes
        (decode.timestamps without a CTC head: nothing could time its words)."""
        decode = data.get("decode") if isinstance(data.get("decode"), dict) else {}
        ctc = ((data.get("model") or {}).get("ctc") or {}) if isinstance(data.get("model"), dict) else {}
        weight = ctc.get("weight", 0.0) if isinstance(ctc, dict) else 0.0
        if decode.get("timestamps") and isinstance(weight, (int, float)) and weight <= 0:
            log.warning("%s: decode.timestamps is true but the model has no CTC head to time words: read as false",
                        where)  # fmt: skip
            data = {**data, "decode": {**decode, "timestamps": False}}
        return data


def load_recipe(
    path: str | Path | None = None, overrides: list[str] | None = None, *, data: dict | None = None,
    saved: bool = False,
):  # fmt: skip
    """Recipe from a YAML file (or a dict), with `key.path=value` overrides applied before validation. `saved`: the
    file is a run's RUN_DIR/recipe.yaml (Recipe.saved_data)."""
    if data is None:
        if path is None:
            raise ConfigError("load_recipe needs a recipe path or a dict")
        data = load_yaml(path)
        data = Recipe.saved_data(data, path) if saved else data
        # paths are relative to the recipe file, so recipes can be moved with their assets
        resolve_paths(Recipe, data, Path(path).resolve().parent)
    data = apply_overrides(data, list(overrides or []))
    # the rest (overrides among them) from the working directory, named absolutely: RUN_DIR/recipe.yaml is read
    # again by export, decode and resume, started from anywhere
    resolve_paths(Recipe, data, Path.cwd())
    return from_dict(Recipe, data)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    dump_yaml(recipe, path)


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)
