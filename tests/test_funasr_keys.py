"""llmasr.funasr_keys: a FunASR key written where a recipe key is wanted (README, Coming from FunASR) is refused
naming the llmasr key that does its work, not a guess at the nearest spelling."""

import pytest

from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe


@pytest.mark.parametrize(
    "override, said",
    [("train.accum_grad=4", "FunASR's train_conf.accum_grad is train.grad_accum here"),
     ("train.keep_nbest_models=5", "FunASR's train_conf.keep_nbest_models is train.best_k here"),
     ("train.avg_keep_nbest_models_type=acc",
      "FunASR's train_conf.avg_keep_nbest_models_type is train.best_metric (acc, loss or wer) here"),
     ("train.max_epoch=20", "FunASR's train_conf.max_epoch is train.epochs here"),
     ("train.validate_interval=500", "FunASR's train_conf.validate_interval is train.valid_every_updates here"),
     ("train.use_deepspeed=true", "FunASR's train_conf.use_deepspeed is the --deepspeed flag here"),
     ("optim.lr=1e-4", "FunASR's optim_conf.lr is optim.branches.<branch>.lr here"),
     ("data.batching.batch_size=6000", "FunASR's dataset_conf.batch_size is data.batching.max_seconds here"),
     ("train_conf.accum_grad=4", "FunASR's train_conf is train here"),
     ("dataset_conf.batch_size=6000", "FunASR's dataset_conf is data and data.batching here")],
)  # fmt: skip
def test_a_funasr_key_is_named_with_the_llmasr_key_for_it(override, said):
    """`train.keep_nbest_models=5` had been answered "did you mean 'best_mode'?", and `train.accum_grad=4` or
    `optim.lr=1e-4` with the section's key list alone, though the README's table maps each."""
    with pytest.raises(ConfigError) as err:
        load_recipe(data={}, overrides=[override])
    assert said in str(err.value) and "did you mean" not in str(err.value)
    assert str(err.value).endswith(f"(set by the override {override!r})")


def test_a_misspelling_beside_a_funasr_key_still_gets_its_guess():
    with pytest.raises(ConfigError) as err:
        load_recipe(data={}, overrides=["train.accum_grad=4", "train.epoch=3"])
    assert "did you mean 'epochs'?" in str(err.value) and "train.grad_accum here" in str(err.value)


def test_every_llmasr_key_named_is_a_recipe_key():
    from llmasr.funasr_keys import KEYS, SECTIONS
    from tests.test_readme_funasr import all_recipe_keys

    known = all_recipe_keys()
    named = [v for section in KEYS.values() for _, v in section.values()] + list(SECTIONS.values())
    keys = {k for text in named for k in text.replace(" and ", " ").split() if k[0].isalpha() and "." in k}
    keys |= {k.split(".")[0] for k in keys} | {"train", "optim"}
    for key in keys:
        key = key.replace("<branch>", "llm")
        assert key in known or any(k.startswith(key + ".") for k in known), key
