"""Resume at another world size: a run of 2 CPU ranks under the real launcher continued by 1 rank (and back), through
DeepSpeed's universal checkpoint (ZeRO-2/3) or a plain load (ZeRO-0), on the tiny model and corpus."""

import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch

from llmasr import run_dir as ck
from llmasr.recipe import load_recipe
from llmasr.run_dir.files import hash_share
from llmasr.safe_load import CheckpointError
from llmasr.train.progress import parse_log_line
from llmasr.train.trainer import Run, train

pytestmark = pytest.mark.slow

# 24 utterances in batches of <= 2 s: 9 batches an epoch, 5 steps per rank at 2 ranks (one padding batch), so with
# grad_accum 2 an epoch is 3 updates of 2, 2 and 1 steps; at 1 rank grad_accum 4 keeps the 4 batches per update.
SETTINGS = ["train.epochs=2", "data.batching.max_seconds=2.0"]
# the 2-rank run of these settings that checkpoints every update: launched once a session per preset (launched_run),
# resumed here and by test_resume_stage.py
EVERY_UPDATE = (*SETTINGS, "train.save_every_updates=1", "train.keep_last=0")


def launch(recipe_file, preset, run_dir, *overrides, resume=None):
    from llmasr.train.process_group import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--module", "llmasr", "train",
           "--config", str(recipe_file), "--deepspeed", preset, *(["--resume", str(resume)] if resume else []),
           f"train.output_dir={run_dir}", *SETTINGS, *overrides]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def log_rows(run_dir, kind="train"):
    lines = (run_dir / "train.log").read_text().splitlines()
    return [parse_log_line(line) for line in lines if f" {kind} update=" in line]


def one_rank_recipe(recipe_file, run_dir, *overrides):
    return load_recipe(recipe_file, [f"train.output_dir={run_dir}", *SETTINGS, *overrides])


def universal_state(zero_dir, name, key):
    value = torch.load(zero_dir / name / f"{key}.pt", weights_only=True)
    return (value["param"] if isinstance(value, dict) else value).flatten()


def check_moments_equal_the_converted_ones(run, zero_dir):
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    checked = 0
    for name, p in run.engine.module.named_parameters():
        if not p.requires_grad:
            continue
        for key in ("exp_avg", "exp_avg_sq", "fp32"):
            got = safe_get_full_fp32_param(p) if key == "fp32" else safe_get_full_optimizer_state(p, key)
            torch.testing.assert_close(got.flatten(), universal_state(zero_dir, name, key), rtol=0, atol=0)
        checked += 1
    assert checked == len(run.trainable)
    groups = run.engine.optimizer.param_groups  # each group keeps its own name and settings
    assert len({g["name"] for g in groups}) == len(groups) > 2
    assert all(g["weight_decay"] == (0.0 if g["name"].endswith("_no_decay") else 0.01) for g in groups)
    steps = [s["step"] for s in run.engine.optimizer.optimizer.state.values()]
    assert len({id(s) for s in steps}) == len(steps) and {float(s) for s in steps} == {1.0}


@pytest.mark.parametrize("preset", ["zero0", "zero2", "zero3"])
def test_two_ranks_continued_by_one_train_the_same_updates(tiny_recipe_file, launched_run, tmp_path, request, preset):
    """The 2-rank run checkpoints every update; 1 rank resumes from update 1 with twice the accumulation, so the
    rest of epoch 0 runs the same batches per update: same losses and lrs as the uninterrupted 2-rank run."""
    two = launched_run(preset, *EVERY_UPDATE, into=tmp_path / "two")
    whole = log_rows(two)
    assert [(r["update"], r["epoch"]) for r in whole] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1)]
    source = two / "checkpoints" / ck.tag_for(1)
    if preset != "zero3":  # DeepSpeed writes rank 0's client state only: it holds every rank's bad-data counts
        client = torch.load(source / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["llmasr"]
        shares = client["loader"]["bad_data"]
        assert isinstance(shares, list) and len(shares) == 2 and all("good" in share for share in shares)

    run = Run(one_rank_recipe(tiny_recipe_file, tmp_path / "one", "train.grad_accum=4"), preset, resume=str(source))
    request.addfinalizer(run.close)  # an open ZeRO-3 run would have the next test's LLM created partitioned
    assert run.world == 1
    run.load()
    converted = two / "checkpoints" / (ck.tag_for(1) + ck.UNIVERSAL_SUFFIX)
    if preset == "zero0":
        assert not converted.exists()  # no partitions: the checkpoint loads as it is
    else:
        assert (converted / "llmasr_universal.json").is_file()
        check_moments_equal_the_converted_ones(run, converted / "zero")
    assert run.sampler.resharded and len(run.sampler) == 6  # 3 steps of 2 ranks, in order
    assert run.total == 6 and {s.total for s in run.engine.scheduler.schedules} == {6}

    rest = run.fit()["history"]
    assert [(h["update"], h["epoch"]) for h in rest] == [(2, 0), (3, 0), (4, 1), (5, 1), (6, 1)]
    assert all(math.isfinite(h["loss"]) for h in rest)
    np.testing.assert_allclose([h["loss"] for h in rest[:2]], [r["loss"] for r in whole[1:3]], rtol=0, atol=1e-4)
    for h, r in zip(rest, whole[1:]):  # the schedule continues from update 1, sized as before
        for group, lr in h["lr"].items():
            assert lr == pytest.approx(r[f"lr/{group}"], rel=1e-3, abs=1e-9), (h["update"], group)
    valid = log_rows(tmp_path / "one", "valid")
    assert [v["update"] for v in valid] == [3, 6] and valid[1]["loss"] < valid[0]["loss"]
    if preset == "zero2":  # a second resume at 1 rank reuses the converted copy
        again = Run(one_rank_recipe(tiny_recipe_file, tmp_path / "again", "train.grad_accum=4"), preset,
                    resume=str(source))  # fmt: skip
        request.addfinalizer(again.close)
        again.load()
        assert "using the universal checkpoint" in (tmp_path / "again" / "train.log").read_text()


def test_a_broken_checkpoint_fails_conversion_naming_it(tiny_recipe_file, launched_run, tmp_path):
    two = launched_run("zero2", *EVERY_UPDATE, into=tmp_path / "two")
    source = two / "checkpoints" / ck.tag_for(1)
    shard = source / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    whole = shard.read_bytes()
    shard.write_bytes(whole[:1000])
    run = Run(one_rank_recipe(tiny_recipe_file, tmp_path / "one"), "zero2", resume=str(source))
    with pytest.raises(CheckpointError, match=f"{shard.name}: 1000 bytes"):
        run.load()  # the recorded checksums stop a cut-short shard before the conversion reads it
    # a shard that is whole but not what DeepSpeed wrote (checksums recorded as if it had been): the conversion fails
    torch.save({"not": "an optimizer state"}, shard)
    meta = json.loads((source / "llmasr_meta.json").read_text())
    (source / "llmasr_meta.json").write_text(json.dumps({**meta, "files": hash_share(source)}))
    run = Run(one_rank_recipe(tiny_recipe_file, tmp_path / "one2"), "zero2", resume=str(source))
    with pytest.raises(RuntimeError, match="universal checkpoint failed") as err:
        run.load()
    assert str(source) in str(err.value)
    assert not (two / "checkpoints" / (ck.tag_for(1) + ck.UNIVERSAL_SUFFIX)).exists()
    assert not [p for p in (two / "checkpoints").iterdir() if p.name.startswith(".")]  # no partial copy left


def test_one_rank_continued_by_two(tiny_recipe_file, tmp_path):
    """1 rank (grad_accum 4) checkpoints update 1; 2 ranks resume with the same accumulation: the untrained batches
    of epoch 0 are dealt afresh, every utterance of the epoch is trained once, and the schedules are resized."""
    from llmasr.train.resolve import build_loaders, text_side
    from llmasr.train.schedulers import lr_curve

    r = one_rank_recipe(tiny_recipe_file, tmp_path / "one", "train.grad_accum=4", "train.save_every_updates=1")
    first = train(r, "zero2", stop_after_updates=2)["history"]
    source = tmp_path / "one" / "checkpoints" / ck.tag_for(1)
    proc = launch(tiny_recipe_file, "zero2", tmp_path / "two", "train.grad_accum=4", resume=source)
    assert "converting" in proc.stderr and "dealt afresh" in proc.stderr
    assert "learning-rate schedules rebuilt" in proc.stderr and "total updates" in proc.stderr
    assert "the global batch changes from 4 to 8" in proc.stderr
    rows = log_rows(tmp_path / "two")
    assert [(x["update"], x["epoch"]) for x in rows] == [(2, 0), (3, 1), (4, 1)]  # 3 steps left, 5 per epoch
    assert all(math.isfinite(x["loss"]) for x in rows)

    # epoch 0: the 4 batches of update 1 at 1 rank, then the rest at 2 ranks (with this plan's padding batch)
    side = text_side(r.model)
    one_plan = build_loaders(r, side, rank=0, world_size=1)[1].batches(epoch=0)
    rest = []
    for rank in range(2):
        sampler = build_loaders(r, side, rank=rank, world_size=2)[1]
        sampler.load_state_dict({"epoch": 0, "batches_yielded": 4, "world_size": 1, "seed": r.data.seed,
                                 "num_items": 24, "num_batches": len(one_plan)})  # fmt: skip
        rest += list(sampler)
    trained = [i for b in one_plan[:4] + rest for i in b]
    assert set(trained) == set(range(24)) and len(trained) - 24 <= max(len(b) for b in rest)
    assert first[0]["n_utts"] == sum(len(b) for b in one_plan[:4])

    # the run now holds 4 updates (1 done, 1 for the 3 steps left, 2 for epoch 1): the lrs follow that schedule
    curve = lr_curve(r.optim, list(first[0]["lr"]), 4)
    for x in rows:
        for group in first[0]["lr"]:
            assert x[f"lr/{group}"] == pytest.approx(curve[group][x["update"] - 1], rel=1e-3, abs=1e-9)
