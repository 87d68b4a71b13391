"""Early stopping (llmasr.train.early_stop): a run ends when train.patience validations in a row improve nothing,
saves where it stopped, and a resume goes on counting from the checkpoint."""

import math

import pytest

from llmasr import run_dir as ck
from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.early_stop import EarlyStop
from llmasr.train.trainer import train


def test_improvement_is_strict_by_more_than_min_delta_and_nan_improves_nothing():
    early = EarlyStop("wer", "min", patience=2, min_delta=0.01)
    for update, wer in [(1, math.nan), (2, 0.5), (3, 0.495), (4, 0.48), (5, 0.48)]:
        early.observe(update, {"wer": wer})
    assert (early.best, early.best_update, early.since, early.exhausted) == (0.48, 4, 1, False)
    early.observe(6, {"loss": 1.0})  # no wer in the metrics: nothing scored
    assert early.exhausted and "valid wer has not improved on 0.48 (update 4) by more than 0.01 in 2" in early.why()
    acc = EarlyStop("acc", "max", patience=1)
    acc.observe(1, {"acc": 0.5})
    acc.observe(2, {"acc": 0.6})
    assert (acc.best, acc.since) == (0.6, 0)
    acc.observe(3, {"acc": 0.6})
    assert acc.exhausted
    off = EarlyStop("loss", "min", patience=0)
    for update in range(5):
        off.observe(update, {"loss": 1.0})
    assert not off.exhausted


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return write_tiny_corpus(root / "train", n=20), write_tiny_corpus(root / "dev", n=4, seed=1)


def recipe(tiny_llm_dir, corpus, run, **train_keys):
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus[0]], valid=[corpus[1]], output_dir=run, epochs=3,
                            grad_accum=1, max_seconds=2.0, valid_every_updates=1, **train_keys)  # fmt: skip
    return load_recipe(data=data)


def test_a_run_stops_after_patience_validations_without_improvement_and_resumes_counting(
    tiny_llm_dir, corpus, tmp_path, capsys
):
    """min_delta 1e9: no validation after the first improves, so patience 2 stops the run after update 3, mid-epoch,
    saved there. Resumed with the same patience it trains nothing (as `llmasr check --resume` says first); with
    patience 4 it trains two more updates."""
    from check_runner import run_check

    from llmasr.config_io import dump_yaml, to_dict

    run = tmp_path / "run"
    result = train(recipe(tiny_llm_dir, corpus, run, patience=2, min_delta=1e9), "zero0")
    assert [h["update"] for h in result["history"]] == [1, 2, 3] and result["stopped_early"]
    log = (run / "train.log").read_text()
    assert "stopping early after update 3: valid loss has not improved on" in log and "(update 1)" in log
    assert ck.latest(run / "checkpoints") == ck.tag_for(3)
    assert ck.read_meta(run / "checkpoints" / ck.tag_for(3)).epoch == 0  # mid-epoch: the loader position is kept

    dump_yaml(to_dict(recipe(tiny_llm_dir, corpus, run, patience=2, min_delta=1e9)), tmp_path / "recipe.yaml")
    code, out, err = run_check(capsys, "--config", str(tmp_path / "recipe.yaml"), "--deepspeed", "zero0", "--resume",
                               "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 0 and "  warning: nothing to train: valid loss has not improved on" in out, err
    again = train(recipe(tiny_llm_dir, corpus, run, patience=2, min_delta=1e9), "zero0", resume="latest")
    assert again["history"] == [] and again["stopped_early"]
    assert "nothing to train: valid loss has not improved" in (run / "train.log").read_text()

    more = train(recipe(tiny_llm_dir, corpus, run, patience=4, min_delta=1e9), "zero0", resume="latest")
    assert [h["update"] for h in more["history"]] == [4, 5] and more["stopped_early"]
    assert ck.latest(run / "checkpoints") == ck.tag_for(5)


def test_patience_running_out_at_the_planned_last_update_is_not_an_early_stop(tiny_llm_dir, corpus, tmp_path):
    """train.max_updates 2 and patience 1 both end the run at update 2: it ran as planned, so it did not stop
    early, and a resume of it says the run is at its end."""
    run = tmp_path / "run"
    result = train(recipe(tiny_llm_dir, corpus, run, patience=1, min_delta=1e9, max_updates=2), "zero0")
    assert [h["update"] for h in result["history"]] == [1, 2] and not result["stopped_early"]
    assert "stopping early" not in (run / "train.log").read_text()
    again = train(recipe(tiny_llm_dir, corpus, run, patience=1, min_delta=1e9, max_updates=2), "zero0", resume="latest")
    assert again["history"] == [] and not again["stopped_early"]
    assert "nothing to train: the run is at update 2 of 2" in (run / "train.log").read_text()


def test_patience_needs_validation_data(tiny_llm_dir, corpus, tmp_path):
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus[0]], output_dir=tmp_path / "run", patience=3)
    with pytest.raises(ConfigError, match="train.patience: 3 counts validations, but data.valid names no manifest"):
        train(load_recipe(data=data), "zero0")
    with pytest.raises(ConfigError, match=r"train.min_delta: must be >= 0 and finite, got -0.1"):
        load_recipe(data={**data, "train": {**data["train"], "min_delta": -0.1}})


def test_llmasr_train_says_the_run_stopped_early(tiny_llm_dir, corpus, tmp_path, caplog):
    import yaml

    from llmasr.commands.train import main

    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus[0]], valid=[corpus[1]], output_dir=tmp_path / "run",
                            epochs=3, grad_accum=1, max_seconds=2.0, valid_every_updates=1)  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    args = ["--config", str(path), "--deepspeed", "zero0", "train.patience=1", "train.min_delta=1e9"]
    with caplog.at_level("INFO", logger="llmasr"):
        assert main(args) == 0
        assert "done (stopped early: train.patience): 2 updates" in caplog.text
        caplog.clear()
        assert main([*args, "--resume"]) == 0  # it had said "0 updates this run, 2 in all, last loss None"
    assert "done (stopped early: train.patience): nothing to train (the run had stopped at update 2)\n" in caplog.text
