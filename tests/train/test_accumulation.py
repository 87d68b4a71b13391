"""Gradient accumulation under DeepSpeed on the real tiny SpeechLLM: window-level loss normalisation, partial
windows at epoch ends, empty batches, and overflow-skipped steps."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import llmasr
from llmasr.config_io import from_dict
from llmasr.testing.tiny_recipe import random_batch, tiny_model_section
from llmasr.train.config import OptimConfig, TrainConfig

TARGETS = ["zero one two", "three four", "five six seven eight", "nine", "one one", "two three four five"]
FRAMES = [14, 30, 22, 12, 18, 26]


def build_model(llm_dir, seed=0):
    torch.manual_seed(seed)
    section = tiny_model_section(llm_dir, ctc_weight=0.3)
    section["encoder"]["conf"].update(dropout_rate=0.0, attention_dropout_rate=0.0, positional_dropout_rate=0.0)
    model = llmasr.build_model(section)
    model.train()
    return model


def rows(batch, lo, hi):
    """Rows lo:hi of a collated batch, trimmed to their own longest features/text (as the collator pads them)."""
    return batch.select(range(lo, hi))


def reference_grads(model, batch) -> dict:
    """Gradients of the plain (DeepSpeed-free) loss of one batch: token mean + 0.3 * CTC mean per utterance."""
    model.zero_grad()
    model(batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def make_engine(model, preset, grad_accum, world_size=1, lr=1e-3, optim=None):
    from llmasr.train.ds_config import resolve_ds_config
    from llmasr.train.engine import TrainEngine
    from llmasr.train.param_groups import build_param_groups
    from llmasr.train.process_group import init_distributed
    from llmasr.train.schedulers import build_group_schedules

    dist = init_distributed()
    optim = optim or from_dict(OptimConfig, {"scheduler": {"type": "constant"}, "branches": {
        b: {"lr": lr} for b in ("encoder", "adaptor", "ctc", "llm")}})  # fmt: skip
    ds = resolve_ds_config(preset, TrainConfig(grad_accum=grad_accum, precision="fp32"), world_size=world_size)
    groups = build_param_groups(model, optim)
    return TrainEngine(model, groups, build_group_schedules(groups, optim, 100), ds, dist.device)


def capture_boundary_grads(te) -> list[dict]:
    """Record the full (all-reduced) gradient of every trainable tensor at each accumulation boundary."""
    from deepspeed.utils import safe_get_full_grad

    captured: list[dict] = []
    real_step = te.engine.step

    def step(*args, **kwargs):
        if te.engine.is_gradient_accumulation_boundary():
            names = [(n, p) for n, p in te.module.named_parameters() if p.requires_grad]
            captured.append({n: safe_get_full_grad(p).detach().clone().float() for n, p in names})
        return real_step(*args, **kwargs)

    te.engine.step = step
    return captured


def max_diff(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max(float((got[n] - want[n]).abs().max()) for n in want)


@pytest.fixture
def full_batch(tiny_llm_dir):
    return random_batch(build_model(tiny_llm_dir), TARGETS, frames=FRAMES, seed=3)


@pytest.mark.parametrize("preset", ["zero0", "zero2"])
def test_window_gradient_equals_one_batch_holding_it_all(tiny_llm_dir, full_batch, preset):
    from llmasr.train.trainer import run_window

    want = reference_grads(build_model(tiny_llm_dir), full_batch)
    te = make_engine(build_model(tiny_llm_dir), preset, grad_accum=3)
    grads = capture_boundary_grads(te)
    window = [rows(full_batch, 0, 1), rows(full_batch, 1, 4), rows(full_batch, 4, 6)]  # 1, 3 and 2 utterances
    stats = run_window(te, window, world_size=1)
    assert len(grads) == 1 and te.global_steps == 1
    assert max_diff(grads[0], want) < 1e-5
    assert any(float(g.abs().max()) > 1e-3 for g in want.values())  # the comparison is not between zeros
    ref_out = build_model(tiny_llm_dir)(full_batch)
    assert abs(stats["loss"] - ref_out.loss.item()) < 1e-5
    assert stats["n_utts"] == 6 and stats["n_tokens"] == int(ref_out.n_tokens)


@pytest.mark.parametrize("preset", ["zero0", "zero2", "zero3"])
def test_deepspeed_starts_each_backward_from_the_model_output(tiny_llm_dir, full_batch, preset):
    """DeepSpeed starts a backward (its timers, ZeRO's backward state) from hooks on the tensors of the forward's
    output: it found none in SpeechLLMOutput, and wall_clock_breakdown or the flops profiler failed every run at its
    first backward ("timer is not started"). The gradient stays the window's: at ZeRO-0 that hook divides it by the
    accumulation steps when it sees the very tensor backward is given."""
    from llmasr.train.ds_config import load_ds_config
    from llmasr.train.trainer import run_window

    ds = load_ds_config(preset)
    ds.update(wall_clock_breakdown=True, flops_profiler={"enabled": True, "profile_step": 100})
    want = reference_grads(build_model(tiny_llm_dir), full_batch)
    te = make_engine(build_model(tiny_llm_dir), ds, grad_accum=3)
    grads = capture_boundary_grads(te)
    run_window(te, [rows(full_batch, 0, 1), rows(full_batch, 1, 4), rows(full_batch, 4, 6)], world_size=1)
    assert te.global_steps == 1 and max_diff(grads[0], want) < 1e-5


def test_partial_window_at_epoch_end_completes_an_update_and_leaks_nothing(tiny_llm_dir, full_batch):
    """5 micro batches per epoch with accumulation 4: 2 updates per epoch; the 5th batch's update sees only its own
    gradient, normalised by its own counts."""
    from llmasr.train.trainer import run_window, windows

    # A vanishing lr keeps the weights (to float32 precision) where the reference gradients are taken.
    te = make_engine(build_model(tiny_llm_dir), "zero0", grad_accum=4, lr=1e-30)
    grads = capture_boundary_grads(te)
    micro = [rows(full_batch, i, i + 1) for i in range(5)]
    for epoch in range(2):
        for window in windows(micro, 4):
            run_window(te, window, world_size=1)
        assert te.global_steps == 2 * (epoch + 1)
        assert te.scheduler.last_update == te.global_steps - te.skipped_steps
    ref = build_model(tiny_llm_dir)
    assert max_diff(grads[0], reference_grads(ref, rows(full_batch, 0, 4))) < 1e-5
    assert max_diff(grads[1], reference_grads(ref, micro[4])) < 1e-5
    assert max_diff(grads[3], grads[1]) < 1e-6


def test_empty_batch_runs_but_contributes_nothing(tiny_llm_dir, full_batch):
    from llmasr.train.trainer import run_window

    te = make_engine(build_model(tiny_llm_dir), "zero0", grad_accum=2)
    grads = capture_boundary_grads(te)
    stand_in = dataclasses.replace(rows(full_batch, 2, 4), empty=True)
    stats = run_window(te, [rows(full_batch, 0, 2), stand_in], world_size=1)
    assert max_diff(grads[0], reference_grads(build_model(tiny_llm_dir), rows(full_batch, 0, 2))) < 1e-5
    assert stats["n_utts"] == 2
    # a window of stand-ins only has no loss to report: NaN (it had logged 0.0, a false dip in the curve)
    stats = run_window(te, [stand_in, stand_in], world_size=1)
    assert stats["n_utts"] == 0 and all(math.isnan(stats[k]) for k in ("loss", "llm_loss", "acc"))


@pytest.mark.parametrize("preset", ["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"])
def test_a_window_of_stand_ins_only_leaves_the_weights_and_the_schedule(tiny_llm_dir, full_batch, preset):
    """After a real update, a window with no utterance on any rank is skipped as an overflow is: the weights and
    Adam's moments stay (a zero gradient stepped had moved every weight by the moments of the update before), the
    update is counted in skipped_steps and the lr schedule holds; the next real update runs as it would have."""
    from llmasr.train.trainer import run_window

    branches = {b: {"lr": 1e-3} for b in ("encoder", "adaptor", "ctc", "llm")}
    scheduler = {"type": "warmup_linear", "warmup_steps": 4}
    optim = from_dict(OptimConfig, {"weight_decay": 0.01, "scheduler": scheduler, "branches": branches})
    te = make_engine(build_model(tiny_llm_dir), preset, grad_accum=2, optim=optim)
    stand_in = dataclasses.replace(rows(full_batch, 2, 4), empty=True)
    run_window(te, [rows(full_batch, 0, 2), rows(full_batch, 2, 4)], world_size=1)
    before = _weights(te)
    lrs = te.lrs()
    stats = run_window(te, [stand_in, stand_in], world_size=1)
    assert stats["n_utts"] == 0 and te.global_steps == 2 and te.skipped_steps == 1
    assert max_diff(_weights(te), before) == 0.0
    assert te.lrs() == lrs and te.scheduler.last_update == 1
    run_window(te, [rows(full_batch, 0, 2), rows(full_batch, 2, 4)], world_size=1)  # the next update is a real one
    after = _weights(te)
    assert te.skipped_steps == 1 and te.scheduler.last_update == 2
    assert all(torch.isfinite(w).all() for w in after.values()) and max_diff(after, before) > 0


def test_a_window_of_stand_ins_only_stays_finite_where_zero_does_not_check_the_gradient(tiny_llm_dir, full_batch):
    """ZeRO-2 in fp32 with zero_optimization.compute_grad_norm false never checks the gradient: the stand-ins'
    skip by a NaN gradient had written NaN into every weight there; such a window steps its zero gradient."""
    from llmasr.train.ds_config import load_ds_config, resolve_ds_config
    from llmasr.train.engine import TrainEngine
    from llmasr.train.param_groups import build_param_groups
    from llmasr.train.process_group import init_distributed
    from llmasr.train.schedulers import build_group_schedules
    from llmasr.train.trainer import run_window

    ds = load_ds_config("zero2")
    ds["zero_optimization"]["compute_grad_norm"] = False
    ds = resolve_ds_config(ds, TrainConfig(grad_accum=1, precision="fp32", grad_clip=0.0), world_size=1)
    model = build_model(tiny_llm_dir)
    optim = from_dict(OptimConfig, {"scheduler": {"type": "constant"}})
    groups = build_param_groups(model, optim)
    te = TrainEngine(model, groups, build_group_schedules(groups, optim, 100), ds, init_distributed().device)
    run_window(te, [rows(full_batch, 0, 2)], world_size=1)
    run_window(te, [dataclasses.replace(rows(full_batch, 2, 4), empty=True)], world_size=1)
    assert all(torch.isfinite(w).all() for w in _weights(te).values())


def _weights(te) -> dict:
    """Every trainable weight in full (ZeRO-3 holds a partition of it on each rank: its fp32 master is gathered)."""
    from deepspeed.utils import safe_get_full_fp32_param

    named = [(n, p) for n, p in te.module.named_parameters() if p.requires_grad]
    return {n: (safe_get_full_fp32_param(p) if hasattr(p, "ds_id") else p).detach().clone().float() for n, p in named}


def test_overflow_skipped_update_does_not_advance_the_schedule(tiny_llm_dir, full_batch):
    """DeepSpeed skips the lr scheduler on an fp16-overflow step (fp16 does not run on this CPU, so the optimizer's
    overflow flag is set by hand, the way DeepSpeed's fp16 optimizers report it)."""
    from llmasr.train.trainer import run_window

    optim = from_dict(OptimConfig, {"scheduler": {"type": "warmup_linear", "warmup_steps": 3}})
    te = make_engine(build_model(tiny_llm_dir), "zero0", grad_accum=1, optim=optim)
    batch = rows(full_batch, 0, 3)
    run_window(te, [batch], world_size=1)
    before = te.lrs()
    te.optimizer.overflow = True
    run_window(te, [batch], world_size=1)
    assert te.skipped_steps == 1 and te.global_steps == 2
    assert te.scheduler.last_update == 1 == te.global_steps - te.skipped_steps
    assert te.lrs() == before
    te.optimizer.overflow = False
    run_window(te, [batch], world_size=1)
    assert te.scheduler.last_update == 2 == te.global_steps - te.skipped_steps
    assert te.lrs() != before


@pytest.mark.parametrize("preset", ["zero0", "zero2"])
def test_a_non_finite_loss_skips_the_update_and_names_its_keys(tiny_llm_dir, full_batch, preset):
    """A NaN feature (one corrupt micro batch) makes every gradient NaN: the update is skipped at every ZeRO stage
    (a plain torch optimizer at ZeRO-0 had written NaN into every weight, and the run went on to its end), counted
    in skipped_steps with the lr schedules held, and the window's stats name the batch's keys."""
    from llmasr.train.trainer import run_window

    optim = from_dict(OptimConfig, {"scheduler": {"type": "warmup_linear", "warmup_steps": 3}})
    te = make_engine(build_model(tiny_llm_dir), preset, grad_accum=2, optim=optim)
    before = {n: p.detach().clone() for n, p in te.module.named_parameters()}
    lrs = te.lrs()
    bad = rows(full_batch, 2, 4)
    feats = bad.feats.clone()
    feats[0, 0, 0] = float("nan")
    bad = dataclasses.replace(bad, feats=feats)
    stats = run_window(te, [rows(full_batch, 0, 2), bad], world_size=1)
    assert stats["nonfinite_keys"] == [[bad.keys]] and math.isnan(stats["loss"])
    assert te.global_steps == 1 and te.skipped_steps == 1 and te.scheduler.last_update == 0 and te.lrs() == lrs
    assert all(torch.equal(before[n], p.detach()) for n, p in te.module.named_parameters())
    stats = run_window(te, [rows(full_batch, 0, 2), rows(full_batch, 4, 6)], world_size=1)
    assert "nonfinite_keys" not in stats and math.isfinite(stats["loss"]) and te.scheduler.last_update == 1
    assert te.skipped_steps == 1 and math.isfinite(te.grad_norm())
    assert all(bool(torch.isfinite(p).all()) for p in te.module.parameters())
    assert any(not torch.equal(before[n], p.detach()) for n, p in te.module.named_parameters())


@pytest.mark.slow
def test_offloaded_optimizer_is_deepspeed_cpu_adam(tiny_llm_dir, full_batch):
    """ZeRO offload needs DeepSpeed's CPU Adam (JIT-built on first use, minutes on a fresh machine)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from llmasr.train.trainer import run_window

    te = make_engine(build_model(tiny_llm_dir), "zero2_offload", grad_accum=1)
    assert isinstance(te.engine.optimizer.optimizer, DeepSpeedCPUAdam)
    before = {n: p.detach().clone() for n, p in te.module.named_parameters() if p.requires_grad}
    stats = run_window(te, [rows(full_batch, 0, 3)], world_size=1)
    assert math.isfinite(stats["loss"]) and te.global_steps == 1
    assert any(not torch.equal(before[n], p.detach()) for n, p in te.module.named_parameters() if n in before)


TWO_RANK_SCRIPT = """
import json, sys
sys.path.insert(0, {tests_dir!r})
import torch
from llmasr.train.process_group import exit_rank
from test_accumulation import (TARGETS, FRAMES, build_model, rows, reference_grads, make_engine,
                               capture_boundary_grads, max_diff)
from llmasr.testing.tiny_recipe import random_batch
from llmasr.train.trainer import run_window

llm_dir, preset, out = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
full = random_batch(build_model(llm_dir), TARGETS, frames=FRAMES, seed=3)
te = make_engine(build_model(llm_dir), preset, grad_accum=2, world_size=2)
rank = torch.distributed.get_rank()
micro = [rows(full, 0, 1), rows(full, 1, 4), rows(full, 4, 5), rows(full, 5, 6)]
grads = capture_boundary_grads(te)
run_window(te, [micro[rank], micro[rank + 2]], world_size=2)
diff = max_diff(grads[0], reference_grads(build_model(llm_dir), full))
if rank == 0:
    json.dump({{"max_diff": diff, "steps": te.global_steps}}, open(out, "w"))
exit_rank(0)  # as the llmasr entry point ends a rank: no abort at exit
"""


@pytest.mark.slow
def test_two_rank_window_gradient_equals_one_batch(tiny_llm_dir, tmp_path):
    """Real `deepspeed` launcher, 2 CPU ranks (gloo), ZeRO-2: ranks hold 1+2 and 3+1 utterances."""
    from llmasr.testing.launcher import launch_script

    script = tmp_path / "two_rank_grads.py"
    script.write_text(TWO_RANK_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    out = tmp_path / "result.json"
    launch_script(script, tiny_llm_dir, "zero2", out)
    result = json.loads(out.read_text())
    assert result["steps"] == 1
    assert result["max_diff"] < 1e-5, result


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
