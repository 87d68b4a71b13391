"""Reading checkpoints the trainer wrote: every ZeRO stage reads offline to the trainer's own tensors, safe loading,
tag selection, averaging."""

from __future__ import annotations

import json
import os

import pytest
import torch

from llmasr.export.trained_model import average_states, load_checkpoint_model, run_recipe
from llmasr.run_dir import (
    CheckpointError,
    CheckpointMeta,
    list_tags,
    read_best,
    read_meta,
    resolve_checkpoint,
    select_tags,
)
from llmasr.safe_load import weights_only_torch_load
from llmasr.testing.run_dirs import model_section, train_run
from llmasr.train.ds_files import read_trained_state, strip_module_prefix


def test_every_zero_stage_reads_to_the_trainers_tensors(trained_runs):
    states = {}
    for stage, run in trained_runs.items():
        ref = resolve_checkpoint(run.run_dir)
        meta = read_meta(ref.path)
        assert (meta.zero_stage, meta.update, meta.world_size) == (stage, 1, 1)
        states[stage] = read_trained_state(ref.path, meta)
        assert set(states[stage]) >= set(meta.trainable)
        assert all(v.dtype == torch.float32 for v in states[stage].values() if v.is_floating_point())
        for name in meta.trainable:  # exactly what the trainer's model held after the update it saved
            assert torch.equal(states[stage][name], run.trained[name]), (stage, name)
    # (The stages' values differ in rounding: each optimizer updates its own flat or per-tensor layout.)
    assert states[0].keys() == states[2].keys() == states[3].keys()
    # ZeRO-3 model files hold empty placeholders: the values really came from the optimizer shards.
    z3_tag = trained_runs[3].run_dir / "checkpoints" / "update_00000001"
    z3 = torch.load(next(z3_tag.glob("*_model_states.pt")), weights_only=True)["module"]
    assert all(v.numel() == 0 for v in z3.values())


def test_reading_needs_no_distributed_and_no_gpu(runs):
    import subprocess
    import sys

    code = (
        "import torch.distributed as dist, sys\n"
        "from llmasr.run_dir import read_meta\n"
        "from llmasr.train.ds_files import read_trained_state\n"
        f"tag = {str(runs[3] / 'checkpoints' / 'update_00000001')!r}\n"
        "s = read_trained_state(tag, read_meta(tag))\n"
        "assert not dist.is_initialized()\n"
        "print(len(s))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 0


def test_safe_loading_refuses_unlisted_pickled_objects(tmp_path):
    class Sneaky:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(1)}, "payload": Sneaky()}, path)
    meta = CheckpointMeta(update=1, epoch=0, world_size=1, zero_stage=0, base_fingerprint={}, trainable=["w"])
    (tmp_path / "llmasr_meta.json").write_text(meta.text())
    with pytest.raises(CheckpointError, match=rf"{path}: refused: it pickles posix.getcwd, which is neither"):
        read_trained_state(tmp_path, read_meta(tmp_path))
    # torch.load is restored afterwards, and the context really forces weights_only
    with weights_only_torch_load():
        with pytest.raises(CheckpointError, match=r"refused: it pickles posix.getcwd"):
            torch.load(path, weights_only=False)
    assert torch.load(path, weights_only=False)["module"]["w"].shape == (1,)


def test_module_prefix_is_stripped():
    assert strip_module_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert strip_module_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}


def test_tag_listing_and_selection(trained_run):
    ref = resolve_checkpoint(trained_run)
    assert list_tags(ref.root) == [f"update_{i:08d}" for i in (1, 2, 3, 4)]
    older = resolve_checkpoint(trained_run, "update_00000003")
    assert select_tags(older, 2, "last") == ["update_00000002", "update_00000003"]
    best = read_best(ref.root)  # the trainer's ranking by validation loss, lowest first
    assert len(best) == 3 and [b["value"] for b in best] == sorted(b["value"] for b in best)
    assert select_tags(ref, 2, "best") == [b["tag"] for b in best[:2]]
    with pytest.raises(CheckpointError, match=r"asked to average 5 checkpoints \(last\) but only 4"):
        select_tags(ref, 5, "last")
    with pytest.raises(CheckpointError, match="--average-by"):
        select_tags(ref, 2, "worst")
    with pytest.raises(CheckpointError, match=r"--average 0: the number of checkpoints to average must be >= 1"):
        load_checkpoint_model(trained_run, average=0)  # not one checkpoint silently


def test_averaging_more_than_the_run_kept_says_what_to_give(trained_run):
    """FunASR's avg_nbest_model=5 given as `--average 5 --average-by best` to a run whose recipe kept 3 best
    (train.best_k: 3, the shipped recipes') was refused naming the 3 alone: not the --average that works, nor the
    recipe key that keeps more."""
    ref = resolve_checkpoint(trained_run)
    best = r"train.best_k \(best.json keeps the run's train.best_k best\)$"
    with pytest.raises(
        CheckpointError, match=r"\(best\) but only 3 .*: give --average 3, or train with a larger " + best
    ):
        select_tags(ref, 5, "best")
    last = r"train.keep_last \(rotation keeps the last train.keep_last\)$"
    with pytest.raises(
        CheckpointError, match=r"\(last\) but only 4 .*: give --average 4, or train with a larger " + last
    ):
        select_tags(ref, 5, "last")


def _recipe_train(run, **train) -> None:
    """Set train.* keys in RUN_DIR/recipe.yaml (what export reads of the run's checkpoint policy)."""
    import yaml

    path = run / "recipe.yaml"
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    recipe["train"].update(train)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")


def test_averaging_more_than_a_run_saved_says_to_save_more_not_to_keep_more(trained_run, tmp_path, copy_run):
    """A run that kept every checkpoint it saved (train.keep_last: 0, as trained_run) or ranked every one it saved
    at a validation (fewer than train.best_k) had been told to train with a larger keep_last or best_k, which it
    already had: the advice follows the run's recipe. The recipe is edited below to stand for the other policies."""
    with pytest.raises(
        CheckpointError,
        match=r"\(last\) but only 4 .*: give --average 4, or save more often \(train.save_every_updates\) or train "
        r"longer: the run kept all it saved \(train.keep_last 0 keeps all\)$",
    ):
        load_checkpoint_model(trained_run, average=5)
    run = copy_run(trained_run, tmp_path / "r")
    _recipe_train(run, keep_last=2)  # fewer than the 4 kept: rotation is what limits them
    with pytest.raises(CheckpointError, match=r"give --average 4, or train with a larger train.keep_last"):
        load_checkpoint_model(run, average=5)
    _recipe_train(run, best_k=5)  # best.json ranks 3
    with pytest.raises(
        CheckpointError,
        match=r"\(best\) but only 3 .*: give --average 3, or validate more often \(train.valid_every_updates\) or "
        r"train longer: best.json ranks every checkpoint saved at a validation, up to train.best_k 5, and the run "
        r"saved fewer$",
    ):
        load_checkpoint_model(run, average=4, average_by="best")
    _recipe_train(run, best_k=0)
    (run / "checkpoints" / "best.json").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"best.json: missing; the run ranked none \(train.best_k: 0\); average the last checkpoints instead "
        r"\(--average 2 without --average-by best\)$",
    ):
        load_checkpoint_model(run, average=2, average_by="best")


def test_best_json_errors(trained_run, tmp_path, copy_run):
    run = copy_run(trained_run, tmp_path / "r")
    ref = resolve_checkpoint(run)
    (run / "checkpoints" / "best.json").write_text(json.dumps([{"tag": "update_00000077", "metric": "x", "value": 1}]))
    with pytest.raises(CheckpointError, match=r"lists tag 'update_00000077'.*does not exist"):
        select_tags(ref, 1, "best")
    (run / "checkpoints" / "best.json").unlink()
    with pytest.raises(CheckpointError, match="best.json: missing"):
        select_tags(ref, 1, "best")


def test_average_rejects_mismatched_sets():
    a = {"x": torch.ones(2), "n": torch.tensor(3)}
    b = {"x": torch.zeros(2), "n": torch.tensor(5)}
    avg = average_states([a, b])
    assert torch.equal(avg["x"], torch.full((2,), 0.5)) and int(avg["n"]) == 5
    with pytest.raises(CheckpointError, match="holds different tensors"):
        average_states([a, {"x": torch.zeros(2)}])
    with pytest.raises(CheckpointError, match=r"x has shapes"):
        average_states([a, {"x": torch.zeros(3), "n": torch.tensor(1)}])


def test_not_a_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nope")


def test_a_zero0_bf16_checkpoint_reads_its_fp32_master_weights(tmp_path, base_dirs, train_corpus):
    """ZeRO-0 under bf16 saves the model in bf16 and the optimizer's fp32 masters beside it, per group and unnamed:
    export and decode read the masters (they had read the bf16 copy, so an fp32 export held bf16 values and
    differed from a ZeRO-2 export of the same training)."""
    run = train_run(tmp_path / "bf16_z0", model_section(*base_dirs), train_corpus, preset="zero0", updates=2,
                    precision="bf16")  # fmt: skip
    ref = resolve_checkpoint(run.run_dir)
    meta = read_meta(ref.path)
    assert run.masters and set(run.masters) == set(meta.trainable)
    assert any(not torch.equal(m, m.bfloat16().float()) for m in run.masters.values())  # finer than bf16
    state = read_trained_state(ref.path, meta)
    for name in meta.trainable:
        assert torch.equal(state[name], run.masters[name]), name
    model, _ = load_checkpoint_model(run.run_dir)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name].data, run.masters[name]) for name in meta.trainable)


def test_bf16_master_weights_read_as_the_trained_values_in_fp32(tmp_path, base_dirs, train_corpus):
    """bf16.bf16_master_weights_and_grads with bf16_optimizer_states trains on the device at ZeRO 1-3 (the masters
    themselves in bf16): zero_to_fp32 hands them out in bf16, and every reader takes fp32."""
    from llmasr.train.ds_config import load_ds_config

    ds = load_ds_config("zero2")
    ds["bf16"].update(bf16_master_weights_and_grads=True, bf16_optimizer_states=True)
    run = train_run(tmp_path / "pure_bf16", model_section(*base_dirs), train_corpus, preset=ds, updates=2,
                    precision="bf16")  # fmt: skip
    ref = resolve_checkpoint(run.run_dir)
    meta = read_meta(ref.path)
    state = read_trained_state(ref.path, meta)
    for name in meta.trainable:
        assert state[name].dtype == torch.float32 and torch.equal(state[name], run.trained[name]), name
    model, _ = load_checkpoint_model(run.run_dir)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name].data.float(), run.trained[name]) for name in meta.trainable)


def test_a_run_recipe_that_does_not_load_is_named_once(tmp_path):
    """A run's recipe.yaml that is not a recipe is refused naming the file once (the path had been said twice,
    "…/recipe.yaml: …/recipe.yaml: the top level must be a mapping"); an error naming only a key gets the path."""
    (tmp_path / "recipe.yaml").write_text("[1, 2]\n")
    with pytest.raises(CheckpointError) as err:
        run_recipe(tmp_path)
    assert str(err.value).count(str(tmp_path / "recipe.yaml")) == 1 and "must be a mapping" in str(err.value)
    (tmp_path / "recipe.yaml").write_text("train:\n  epochs: many\n")
    with pytest.raises(CheckpointError, match=r"recipe.yaml: .*train.epochs"):
        run_recipe(tmp_path)
