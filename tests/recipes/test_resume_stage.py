"""Resume at another ZeRO stage: checkpoints of ZeRO-0, 2 and 3 continued at another stage, through the universal copy
every stage 1-3 loads (and the ZeRO-0 checkpoint written from it), on the tiny model and corpus (1 rank in this
process; 2 ranks under the launcher)."""

import numpy as np
import pytest
import torch
from test_resume_world import EVERY_UPDATE, launch, log_rows

from llmasr import run_dir as ck
from llmasr.recipe import load_recipe
from llmasr.train.trainer import Run, train

pytestmark = pytest.mark.slow

# 24 utterances in batches of <= 2 s: 9 batches an epoch at 1 rank, 5 updates of grad_accum 2
SETTINGS = ["train.epochs=1", "data.batching.max_seconds=2.0", "data.valid=[]"]


def recipe(recipe_file, run_dir, *overrides):
    return load_recipe(recipe_file, [f"train.output_dir={run_dir}", *SETTINGS, *overrides])


def full_state(run) -> dict[str, torch.Tensor]:
    """Every trainable tensor's fp32 weight and Adam moments, whole, as the engine holds them."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    link = getattr(run.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO-1/2 link each tensor's view of the loaded moments at the first step
        link()
    out = {}
    for name, p in run.engine.module.named_parameters():
        if not p.requires_grad:
            continue
        if run.engine.stage == 0:  # torch's AdamW itself, on the whole tensors
            out[f"{name}/fp32"] = p.detach().clone()
            for key in ("exp_avg", "exp_avg_sq"):
                out[f"{name}/{key}"] = run.engine.optimizer.state[p][key].clone()
            continue
        out[f"{name}/fp32"] = safe_get_full_fp32_param(p).clone()
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{name}/{key}"] = safe_get_full_optimizer_state(p, key).clone()
    return out


def resumed(recipe_file, run_dir, preset, source):
    """Resume `source` at `preset`: (the state just loaded, the Adam steps, the rest of the run's history)."""
    run = Run(recipe(recipe_file, run_dir), preset, resume=str(source))
    try:
        run.load()
        state = full_state(run)
        inner = getattr(run.engine.optimizer, "optimizer", run.engine.optimizer)
        steps = [s["step"] for s in inner.state.values()]
        assert len({id(s) for s in steps}) == len(steps)  # each its own count (universal.unshare_steps)
        groups = run.engine.optimizer.param_groups  # each group keeps its own name and settings
        assert len({g["name"] for g in groups}) == len(groups) > 2
        assert all(g["weight_decay"] == (0.0 if g["name"].endswith("_no_decay") else 0.01) for g in groups)
        return state, {float(s) for s in steps}, run.fit()["history"]
    finally:
        run.close()


@pytest.mark.parametrize(("saved", "stage"), [(2, 3), (3, 2), (0, 2), (0, 3), (2, 0), (3, 0)])
def test_a_checkpoint_continues_exactly_at_another_stage(tiny_recipe_file, tmp_path, saved, stage):
    """The run saved at ZeRO-`saved` after update 2, resumed at ZeRO-`stage`, holds bit for bit the weights, moments
    and step that the same checkpoint resumed at its own stage holds; the rest of the run trains the same batches
    with the same lrs, and its losses agree to float32 rounding (the stages sum gradients in other orders: the
    uninterrupted runs of the two stages differ as much)."""
    whole = train(
        recipe(tiny_recipe_file, tmp_path / "run", "train.save_every_updates=1", "train.keep_last=0"), f"zero{saved}"
    )
    assert [h["update"] for h in whole["history"]] == [1, 2, 3, 4, 5]
    source = tmp_path / "run" / "checkpoints" / ck.tag_for(2)

    same_state, same_steps, same = resumed(tiny_recipe_file, tmp_path / "same", f"zero{saved}", source)
    assert not (source.parent / (source.name + ck.UNIVERSAL_SUFFIX)).exists()  # its own stage loads it as it is
    state, steps, rest = resumed(tiny_recipe_file, tmp_path / "other", f"zero{stage}", source)
    log = (tmp_path / "other" / "train.log").read_text()
    assert f"resume at ZeRO stage {stage} from a checkpoint saved at stage {saved}" in log
    assert (source.parent / (source.name + ck.UNIVERSAL_SUFFIX) / "llmasr_universal.json").is_file()

    assert steps == same_steps == {2.0}
    assert state.keys() == same_state.keys() and len(state) > 40
    for key, value in state.items():
        torch.testing.assert_close(value, same_state[key], rtol=0, atol=0, msg=key)
    assert [h["update"] for h in rest] == [3, 4, 5]
    assert [(h["update"], h["epoch"], h["n_utts"]) for h in rest] == [(h["update"], h["epoch"], h["n_utts"])
                                                                      for h in same]  # fmt: skip
    assert [h["lr"] for h in rest] == [h["lr"] for h in same]
    np.testing.assert_allclose([h["loss"] for h in rest], [h["loss"] for h in same], rtol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in rest], [h["loss"] for h in whole["history"][2:]], rtol=1e-6)


def test_an_offloaded_checkpoint_continues_at_zero3(tiny_recipe_file, tmp_path):
    """ZeRO-2 with the optimizer offloaded (DeepSpeedCPUAdam, whose step is an int) resumed at ZeRO-3, which loads
    the step into torch's Adam as it is: its first update had failed ("`state_steps` argument must contain a list of
    singleton tensors"). It loads the checkpoint's weights and step and trains the rest of the run."""
    from llmasr.train.ds_files import read_trained_state

    whole = train(
        recipe(tiny_recipe_file, tmp_path / "run", "train.save_every_updates=1", "train.keep_last=0"), "zero2_offload"
    )
    source = tmp_path / "run" / "checkpoints" / ck.tag_for(2)
    saved = read_trained_state(source, ck.read_meta(source))
    run = Run(recipe(tiny_recipe_file, tmp_path / "other"), "zero3", resume=str(source))
    try:
        run.load()
        weights = {k.removesuffix("/fp32"): v for k, v in full_state(run).items() if k.endswith("/fp32")}
        rest = run.fit()["history"]
    finally:
        run.close()
    assert len(weights) > 10 and all(torch.equal(v, saved[k]) for k, v in weights.items())
    assert [h["update"] for h in rest] == [3, 4, 5]
    # torch's Adam from here, DeepSpeedCPUAdam in the uninterrupted run: the same updates to their rounding
    np.testing.assert_allclose([h["loss"] for h in rest], [h["loss"] for h in whole["history"][2:]], rtol=1e-4)


@pytest.mark.parametrize(("saved", "stage"), [(2, 3), (3, 0)])
def test_two_ranks_continued_at_another_stage(tiny_recipe_file, launched_run, tmp_path, saved, stage):
    """Under the launcher: 2 ranks of ZeRO-`saved` checkpoint update 1; 2 ranks of ZeRO-`stage` resume it (each rank
    loading its own partition of the converted states, or at ZeRO-0 the whole of them) and train the rest of the run
    as the uninterrupted run did."""
    first = launched_run(f"zero{saved}", *EVERY_UPDATE, into=tmp_path / "first")  # the run test_resume_world resumes
    whole = log_rows(first)
    source = first / "checkpoints" / ck.tag_for(1)
    proc = launch(tiny_recipe_file, f"zero{stage}", tmp_path / "then", resume=source)
    assert f"resume at ZeRO stage {stage} from a checkpoint saved at stage {saved}" in proc.stderr
    rest = log_rows(tmp_path / "then")
    assert [(r["update"], r["epoch"]) for r in rest] == [(r["update"], r["epoch"]) for r in whole[1:]]
    np.testing.assert_allclose([r["loss"] for r in rest], [r["loss"] for r in whole[1:]], rtol=1e-5)
    for r, w in zip(rest, whole[1:]):
        assert {k: v for k, v in r.items() if k.startswith("lr/")} == {
            k: v for k, v in w.items() if k.startswith("lr/")
        }
