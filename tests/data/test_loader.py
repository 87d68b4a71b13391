"""build_dataloader called from Python as the README's Python API calls it: a DataConfig made there is held to a
recipe's rules, and manifests may be given as paths of either kind, one or a list."""

import dataclasses
from pathlib import Path

import pytest
from speech_fakes import build, good_corpus

from llmasr.config_io import ConfigError
from llmasr.data.config import BatchingConfig, DataConfig
from llmasr.data.loader import build_dataloader


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"num_workers": -1}, r"^data.num_workers: must be >= 0, got -1$"),  # had been torch's DataLoader's error
        ({"max_bad_fraction": 2.0}, r"^data.max_bad_fraction: must be in \[0, 1\], got 2.0$"),  # had been taken
        ({"batching": BatchingConfig(max_seconds=0)}, r"^data.batching.max_seconds: must be positive and finite"),
        ({"valid_max_utts": -1}, r"^data.valid_max_utts: must be positive, got -1$"),  # had been numpy's error
        ({"num_workers": "2"}, r"^data.num_workers: expected an integer, got '2'$"),
    ],
)
def test_a_data_config_made_in_python_is_held_to_the_recipes_rules(tmp_path, settings, said):
    manifest = good_corpus(tmp_path, 4)
    with pytest.raises(ConfigError, match=said):
        build(DataConfig(**{"num_workers": 0, **settings}), [str(manifest)], train="valid_max_utts" not in settings)


def test_manifests_and_sections_may_be_given_as_python_writes_them(tmp_path):
    """A Path in the list had been an AttributeError, one path not in a list had been read as the list of its
    letters ('/: a directory, not a manifest file'), a dict for a section an AttributeError deep in the loader."""
    manifest = good_corpus(tmp_path, 4)
    data_cfg = DataConfig(num_workers=0, batching={"max_seconds": 6.0, "num_buckets": 2})
    for given in ([manifest], manifest, str(manifest)):
        assert sorted(k for batch in build(data_cfg, given)[0] for k in batch.keys) == [f"train{i}" for i in range(4)]
    with pytest.raises(ConfigError, match=r"^frontend: expected a FrontendConfig \(the model's, model.frontend\)"):
        build_dataloader(data_cfg, [Path(manifest)], None, prompt_builder=None, train=True)


def test_a_recipes_data_section_is_not_checked_again_and_one_edited_since_is(tmp_path, monkeypatch):
    """The trainer's loaders (train, valid) and `llmasr check`'s had each checked the recipe's data section again,
    its data.hotwords.distractors file read again each time; one edited in Python since the recipe was read is."""
    from llmasr.recipe import load_recipe

    manifest = good_corpus(tmp_path, 4)
    data = {"train": [str(manifest)], "num_workers": 0, "batching": {"max_seconds": 6.0, "num_buckets": 2}}
    recipe = load_recipe(data={"data": data, "train": {"output_dir": str(tmp_path / "run")}})
    checks = []
    validate = DataConfig.validate
    monkeypatch.setattr(DataConfig, "validate", lambda self, path: checks.append(path) or validate(self, path))
    assert len(build(recipe.data, recipe.data.train)[1]) > 0
    assert checks == []
    # what was checked is kept beside the section, not on it: its vars() (a fingerprint's input) are its fields
    assert set(vars(recipe.data)) == {f.name for f in dataclasses.fields(DataConfig)}
    recipe.data.num_workers = -1
    with pytest.raises(ConfigError, match=r"^data.num_workers: must be >= 0, got -1$"):
        build(recipe.data, recipe.data.train)
    assert checks == ["data"]
