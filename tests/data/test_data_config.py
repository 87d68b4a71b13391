"""The typed data section: settings nothing would read are refused by their key at load; a saved run that holds one
still loads."""

import pytest
import yaml

from llmasr.config_io import ConfigError
from llmasr.data.loader import open_manifests
from llmasr.recipe import load_recipe


def test_a_valid_manifest_weight_is_refused_by_key(tmp_path):
    """Validation reads every valid manifest whole (data.loader.open_manifests mixes by weight for training only):
    a weight there had been accepted and changed nothing."""
    with pytest.raises(ConfigError, match=r"data.valid\[1\].weight: weights the draw among mixed training manifests"):
        load_recipe(data={"model": {"llm": {"path": "llm"}}, "data": {"valid": ["a.jsonl", "b.jsonl"]}},
                    overrides=["data.valid.1={path: b.jsonl, weight: 3.0}"])  # fmt: skip
    recipe = load_recipe(
        data={"model": {"llm": {"path": "llm"}}, "data": {"train": [{"path": "a.jsonl", "weight": 3.0}, "b.jsonl"],
                                                          "valid": [{"path": "a.jsonl", "weight": 1.0}]}})  # fmt: skip
    assert recipe.data.train[0].weight == 3.0 and recipe.data.valid[0].weight == 1.0


def test_a_saved_run_with_a_valid_manifest_weight_still_loads(tmp_path, caplog):
    lines = "".join(f'{{"key": "u{i}", "source": "x.wav", "duration": 1.0, "target": "a"}}\n' for i in range(3))
    (tmp_path / "a.jsonl").write_text(lines)
    (tmp_path / "b.jsonl").write_text(lines.replace('"u', '"v'))
    (tmp_path / "llm").mkdir()
    data = {"model": {"llm": {"path": "llm"}}, "data": {"valid": ["a.jsonl", {"path": "b.jsonl", "weight": 3.0}]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    with caplog.at_level("WARNING"):
        recipe = load_recipe(path, saved=True)
    assert f"{path}: data.valid[1].weight: weights the draw" in caplog.text and "dropped" in caplog.text
    assert [spec.weight for spec in recipe.data.valid] == [1.0, 1.0]
    manifest = open_manifests(recipe.data.valid, mix=False, fill=False)[0]
    assert [manifest[i].key for i in range(len(manifest))] == ["u0", "u1", "u2", "v0", "v1", "v2"]


@pytest.mark.parametrize("value", [0, -5])
def test_an_llm_budget_must_be_positive(value):
    with pytest.raises(ConfigError, match=rf"data.batching.max_llm_tokens: must be positive, got {value}"):
        load_recipe(data={"model": {"llm": {"path": "llm"}}, "data": {"batching": {"max_llm_tokens": value}}})


def test_a_validation_manifest_listed_twice_is_refused(tmp_path, monkeypatch):
    """`data.valid: [dev.jsonl, ./dev.jsonl]` (two dev sets meant, one copied twice) had been taken without a word:
    validation pools its manifests into one score, so each line was decoded and counted twice. Two files are two
    sets, whatever their names."""
    for name in ("dev.jsonl", "other.jsonl"):
        (tmp_path / name).write_text("")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  valid:\n    - dev.jsonl\n    - other.jsonl\n    - {path: ./dev.jsonl}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    assert str(err.value) == (
        f"data.valid[2]: {tmp_path}/dev.jsonl is data.valid[0] again; validation pools every manifest into one score, "
        f"so its lines would be decoded and counted twice: list it once ({recipe}, line 5)"
    )
    with pytest.raises(ConfigError, match=r"^data.valid\[1\]: .* \(set by the override 'data.valid=\[dev.jsonl, "):
        load_recipe(recipe, ["data.valid=[dev.jsonl, dev.jsonl]"])
    recipe.write_text("data:\n  valid: [dev.jsonl, other.jsonl]\n")
    assert len(load_recipe(recipe).data.valid) == 2


def test_a_training_manifest_listed_twice_is_refused_with_the_weight_that_does_it(tmp_path, monkeypatch):
    """The same manifest twice in data.train had silently doubled its share of the mix (each listing is drawn from
    apart): the weight says that openly."""
    for name in ("train.jsonl", "cuts.jsonl"):
        (tmp_path / name).write_text("")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data:\n  train:\n    - {path: train.jsonl, weight: 1.5}\n    - {path: cuts.jsonl, weight: 0.5}\n"
        "    - ./train.jsonl\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    assert str(err.value) == (
        f"data.train[2]: {tmp_path}/train.jsonl is data.train[0] again; each listing draws from it apart, so its "
        "share of the mix would silently double: list it once, with weight: 2.5 (the two weights summed) to draw it "
        f"as often ({recipe}, line 5)"
    )
    recipe.write_text("data:\n  train: [train.jsonl, cuts.jsonl]\n  valid: [train.jsonl]\n")
    assert len(load_recipe(recipe).data.train) == 2  # a manifest in train and in valid is not listed twice


@pytest.mark.parametrize("weight, hint", [(0, True), (-1, False), (float("inf"), False)])
def test_a_training_weight_must_be_positive_and_zero_says_how_to_leave_a_manifest_out(weight, hint):
    data = {"model": {"llm": {"path": "llm"}}, "data": {"train": ["a.jsonl", {"path": "b.jsonl", "weight": weight}]}}
    with pytest.raises(ConfigError, match=r"data.train\[1\].weight: must be a positive number") as err:
        load_recipe(data=data)
    assert ("to train without this manifest, remove its entry" in str(err.value)) == hint
