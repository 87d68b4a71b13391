"""Recipe loading: overrides, typed errors, and paths relative to the recipe file."""

import pytest
import yaml

from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe


def test_paths_resolve_against_the_recipe_and_overrides_apply(tmp_path):
    (tmp_path / "models" / "llm").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    (tmp_path / "models" / "am.mvn").write_text("")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    path = recipes / "r.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"llm": {"path": "../models/llm"}, "encoder": {"frontend": {"cmvn_file": "../models/am.mvn"}}},
        "data": {"train": ["../data/train.jsonl"]},
        "train": {"output_dir": "../exp/run", "grad_accum": 2},
    }))  # fmt: skip
    r = load_recipe(path, ["train.epochs=3", "optim.branches.llm.lr=2e-5"])
    assert r.model.llm.path == str(tmp_path / "models" / "llm")
    assert r.model.encoder.frontend["cmvn_file"] == str(tmp_path / "models" / "am.mvn")
    assert r.data.train[0].path == str(tmp_path / "data" / "train.jsonl")
    assert r.train.output_dir == str(tmp_path / "exp" / "run")
    assert r.train.epochs == 3 and r.optim.branches["llm"].lr == 2e-5


def test_bad_override_and_bad_type_name_their_key(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got 'many'"):
        load_recipe(data={"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        load_recipe(data={}, overrides=["train.epochs"])
    with pytest.raises(ConfigError, match=r"top level: unknown key\(s\) \['trian'\]"):
        load_recipe(data={"trian": {}})
