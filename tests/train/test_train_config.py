import pytest
import yaml

from llmasr.config_io import ConfigError, from_dict, to_dict
from llmasr.config_overrides import apply_overrides
from llmasr.train.config import DEFAULT_LRS, OptimConfig, SchedulerConfig, TrainConfig

RECIPE = """
optim:
  weight_decay: 0.02
  scheduler: {type: tri_stage, phase_ratio: [0.1, 0.2, 0.7], final_lr_scale: 0.05}
  branches:
    encoder: {lr: 5.0e-5}
    llm: {lr: 1e-5, betas: [0.9, 0.95], scheduler: {type: warmup_cosine, warmup_ratio: 0.05, min_lr_ratio: 0.1}}
train:
  epochs: 3
  grad_accum: 4
  precision: fp16
  best_metric: wer
"""


def test_recipe_sections_load_with_inheritance():
    data = yaml.safe_load(RECIPE)
    optim = from_dict(OptimConfig, data["optim"], "optim")
    train = from_dict(TrainConfig, data["train"], "train")
    enc, llm, ada = optim.branch("encoder"), optim.branch("llm"), optim.branch("adaptor")
    assert enc.lr == 5e-5 and llm.lr == 1e-5 and ada.lr == DEFAULT_LRS["adaptor"]
    assert enc.scheduler.type == "tri_stage" and enc.scheduler.final_lr_scale == 0.05
    assert ada.scheduler is optim.scheduler
    assert llm.scheduler.type == "warmup_cosine" and llm.scheduler.warmup_updates(1000) == 50
    assert llm.betas == (0.9, 0.95) and enc.betas == (0.9, 0.999)
    assert enc.weight_decay == llm.weight_decay == 0.02
    assert train.grad_accum == 4 and train.precision == "fp16" and train.ranking_mode == "min"
    # round trip through a plain dict
    assert from_dict(OptimConfig, to_dict(optim), "optim").branch("llm") == llm


def test_dotted_override_of_a_branch_lr():
    data = apply_overrides(yaml.safe_load(RECIPE), ["optim.branches.adaptor.lr=3e-4", "train.grad_accum=8"])
    assert from_dict(OptimConfig, data["optim"], "optim").branch("adaptor").lr == 3e-4
    assert from_dict(TrainConfig, data["train"], "train").grad_accum == 8


def test_defaults():
    optim = from_dict(OptimConfig, {}, "optim")
    assert {b: optim.branch(b).lr for b in DEFAULT_LRS} == DEFAULT_LRS
    assert DEFAULT_LRS["llm"] < DEFAULT_LRS["encoder"] < DEFAULT_LRS["adaptor"]
    train = from_dict(TrainConfig, {}, "train")
    assert train.grad_accum is None and train.precision == "bf16"
    assert from_dict(TrainConfig, {"best_metric": "acc"}, "train").ranking_mode == "max"


def test_the_ranking_follows_the_metric_of_a_recipe_saved_with_another():
    """A run's saved recipe (its best_mode unset, as a recipe leaves it) run again with another best_metric ranks by
    that metric's direction (it had kept the saved "min": the worst accuracy was kept as best); a best_mode that
    ranks a metric the wrong way round is refused."""
    saved = to_dict(from_dict(TrainConfig, {"best_metric": "loss"}, "train"))
    assert saved["best_mode"] is None
    assert from_dict(TrainConfig, {**saved, "best_metric": "acc"}, "train").ranking_mode == "max"
    assert from_dict(TrainConfig, {"best_metric": "wer", "best_mode": "min"}, "train").ranking_mode == "min"
    with pytest.raises(ConfigError, match="train.best_mode: min ranks acc the wrong way round"):
        from_dict(TrainConfig, {"best_metric": "acc", "best_mode": "min"}, "train")


@pytest.mark.parametrize(
    "section, data, pattern",
    [
        (
            OptimConfig,
            {"branches": {"decoder": {}}},
            r"optim.branches.decoder: unknown branch; the branches are \['encoder'",
        ),
        (OptimConfig, {"branches": {"llm": {"lr": 0}}}, r"optim.branches.llm.lr: must be > 0"),
        (OptimConfig, {"branches": {"llm": {"betas": [0.9]}}}, r"optim.branches.llm.betas"),
        (OptimConfig, {"type": "sgd"}, r"optim.type: 'sgd' is not one of \['adamw'\]"),
        (
            OptimConfig,
            {"scheduler": {"type": "warmup_cosine", "phase_ratio": [1, 0, 0]}},
            "only used by type tri_stage",
        ),
        (OptimConfig, {"scheduler": {"type": "noam"}}, "optim.scheduler.type"),
        # another type's fields changed nothing: FunASR's final_lr_scale kept after switching to warmup_cosine
        (
            OptimConfig,
            {"scheduler": {"type": "warmup_cosine", "final_lr_scale": 0.05}},
            r"optim.scheduler.final_lr_scale: only used by type tri_stage, not warmup_cosine",
        ),
        (
            OptimConfig,
            {"branches": {"llm": {"scheduler": {"type": "warmup", "warmup_steps": 4, "init_lr_scale": 0.1}}}},
            r"optim.branches.llm.scheduler.init_lr_scale: only used by type tri_stage, not warmup",
        ),
        (
            OptimConfig,
            {"scheduler": {"type": "constant", "min_lr_ratio": 0.1}},
            r"optim.scheduler.min_lr_ratio: only used by type warmup_cosine or warmup_linear, not constant",
        ),
        (
            OptimConfig,
            {"scheduler": {"type": "tri_stage", "phase_ratio": [0.1, 0.4, 0.5], "min_lr_ratio": 0.1}},
            r"min_lr_ratio: only used by type warmup_cosine or warmup_linear, not tri_stage",
        ),
        (TrainConfig, {"grad_accum": 0}, r"train.grad_accum: must be >= 1"),
        (TrainConfig, {"epochs": 0}, r"train.epochs: must be >= 1"),
        (TrainConfig, {"precision": "fp8"}, r"train.precision"),
        (TrainConfig, {"grad_clip": -1}, r"train.grad_clip"),
        (TrainConfig, {"best_metric": "cer"}, r"train.best_metric"),
        (TrainConfig, {"grad_acum": 4}, r"unknown key\(s\) \['grad_acum'\]"),
        (SchedulerConfig, {"warmup_ratio": 1.5}, r"warmup_ratio: must be in \[0, 1\]"),
    ],
)
def test_validation_errors(section, data, pattern):
    path = {OptimConfig: "optim", TrainConfig: "train", SchedulerConfig: "scheduler"}[section]
    with pytest.raises(ConfigError, match=pattern):
        from_dict(section, data, path)


@pytest.mark.parametrize("given", ["recipes/demo.yaml", {"train": {"epochs": 1}}])
def test_the_library_entry_points_name_the_loader_when_handed_a_recipe_file(given, tmp_path):
    # The README's Python API calls llmasr.train.trainer.train and llmasr.train.check.check directly; handed the
    # recipe path `llmasr train --config` takes, they failed on "'str' object has no attribute 'train'"
    from pathlib import Path

    from llmasr.train.check import check
    from llmasr.train.trainer import train

    for call in (lambda r: check(r, "zero2", world_size=1, out=tmp_path), lambda r: train(r, "zero2")):
        for recipe in (given, Path(given)) if isinstance(given, str) else (given,):
            with pytest.raises(TypeError, match=r"is not a loaded recipe: pass llmasr\.recipe\.load_recipe\(path"):
                call(recipe)


def test_a_branch_scheduler_without_a_type_under_another_optimizer_wide_type_is_refused(tmp_path):
    """A branch's scheduler replaces optim.scheduler as a whole: one that names no type was the default
    warmup_cosine, so a recipe with a tri_stage optim.scheduler whose LLM branch set only its warmup trained the LLM
    on a cosine curve, without a word. It is refused, naming the key and where it was set; a type written, or both
    sections at the default type, load as before."""
    from llmasr.recipe import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("{type: warmup_cosine, warmup_ratio: 0.05", "{warmup_ratio: 0.05"), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith("optim.branches.llm.scheduler: sets ['min_lr_ratio', 'warmup_ratio'] but no type")
    assert "warmup_cosine (the default), not optim.scheduler's tri_stage" in message
    assert "recipe.yaml, line 7" in message  # the llm branch
    path.write_text(RECIPE, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sets \['warmup_steps'\] .* \(set by the override "):
        load_recipe(path, ["optim.branches.encoder.scheduler.warmup_steps=10"])
    assert load_recipe(path).optim.branch("llm").scheduler.type == "warmup_cosine"  # written: as before
    same = load_recipe(
        path, ["optim.scheduler={warmup_ratio: 0.1}", "optim.branches.encoder.scheduler.warmup_steps=10"]
    )
    assert same.optim.branch("encoder").scheduler.type == "warmup_cosine"  # no type anywhere: the default for both
