import math

import numpy as np
import pytest
import torch

from llmasr.config_io import ConfigError, from_dict
from llmasr.train.config import OptimConfig, SchedulerConfig
from llmasr.train.param_groups import build_param_groups
from llmasr.train.schedulers import (
    BranchLRScheduler,
    build_group_schedules,
    lr_curve,
    schedule_lr,
    warmup_warnings,
)


def sched(**kw) -> SchedulerConfig:
    return from_dict(SchedulerConfig, kw, "scheduler")


def funasr_tri_stage(u, peak, max_update, ratios, init_scale, final_scale):
    """TriStageLR as REFERENCE.md describes it, written out step by step."""
    warmup_steps = int(max_update * ratios[0])
    hold_steps = int(max_update * ratios[1])
    decay_steps = int(max_update * ratios[2])
    init_lr, final_lr = init_scale * peak, final_scale * peak
    if u < warmup_steps:
        return init_lr + (peak - init_lr) * u / warmup_steps
    if u < warmup_steps + hold_steps:
        return peak
    t = u - warmup_steps - hold_steps
    if t <= decay_steps:
        k = -math.log(final_scale) / decay_steps
        return peak * math.exp(-k * t)
    return final_lr


def funasr_warmup(u, peak, w):
    s = u + 1
    return peak * w**0.5 * min(s**-0.5, s * w**-1.5)


@pytest.mark.parametrize("ratios", [[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.0, 0.5, 0.5]])
def test_tri_stage_matches_funasr_update_by_update(ratios):
    cfg = sched(type="tri_stage", phase_ratio=ratios, init_lr_scale=0.05, final_lr_scale=0.02)
    total = 137
    for u in range(total + 20):
        want = funasr_tri_stage(u, 2e-4, total, ratios, 0.05, 0.02)
        assert schedule_lr(cfg, u, 2e-4, total) == pytest.approx(want, rel=1e-12), u


def test_tri_stage_accepts_float_rounded_ratios_and_rejects_bad_sums():
    assert sum([0.7, 0.2, 0.1]) != 1.0  # the float rounding an exact == 1 check trips over
    sched(type="tri_stage", phase_ratio=[0.1, 0.2, 0.7])
    sched(type="tri_stage", phase_ratio=[0.7, 0.2, 0.1])
    with pytest.raises(ConfigError, match="sum to 1"):
        sched(type="tri_stage", phase_ratio=[0.1, 0.2, 0.6])
    with pytest.raises(ConfigError, match="phase_ratio"):
        sched(type="tri_stage")
    with pytest.raises(ConfigError, match="phase_ratio"):
        sched(type="tri_stage", phase_ratio=[0.5, 0.5])
    with pytest.raises(ConfigError, match="final_lr_scale"):
        sched(type="tri_stage", phase_ratio=[0.1, 0.2, 0.7], final_lr_scale=0.0)
    with pytest.raises(ConfigError, match="tri_stage takes its warmup"):
        sched(type="tri_stage", phase_ratio=[0.1, 0.2, 0.7], warmup_steps=5)


def test_tri_stage_endpoints():
    cfg = sched(type="tri_stage", phase_ratio=[0.1, 0.2, 0.7], init_lr_scale=0.01, final_lr_scale=0.05)
    assert schedule_lr(cfg, 0, 1.0, 100) == pytest.approx(0.01)
    assert schedule_lr(cfg, 10, 1.0, 100) == 1.0
    assert schedule_lr(cfg, 29, 1.0, 100) == 1.0
    assert schedule_lr(cfg, 100, 1.0, 100) == pytest.approx(0.05)
    assert schedule_lr(cfg, 10_000, 1.0, 100) == pytest.approx(0.05)


def test_warmup_lr_is_funasr_formula():
    cfg = sched(type="warmup", warmup_steps=25)
    for u in range(200):
        assert schedule_lr(cfg, u, 1e-3, 200) == pytest.approx(funasr_warmup(u, 1e-3, 25), rel=1e-12)
    assert schedule_lr(cfg, 24, 1e-3, 200) == pytest.approx(1e-3)  # s == w: the peak
    with pytest.raises(ConfigError, match="needs warmup_steps"):
        sched(type="warmup")


@pytest.mark.parametrize("kind", ["warmup_cosine", "warmup_linear"])
def test_decay_endpoints(kind):
    cfg = sched(type=kind, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [schedule_lr(cfg, u, 1.0, 100) for u in range(100)]
    assert lrs[0] == pytest.approx(0.1)  # (u+1)/warmup: the first update already moves
    assert lrs[9] == lrs[10] == 1.0
    assert 0.1 < lrs[-1] < lrs[-2]  # the last update still decays: the floor is the lr after it
    assert schedule_lr(cfg, 100, 1.0, 100) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert schedule_lr(cfg, 10 + 45, 1.0, 100) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way, either shape
    quarter = schedule_lr(cfg, 10 + 90 // 4, 1.0, 100)
    assert quarter == pytest.approx(
        0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi * 22 / 90)) if kind == "warmup_cosine" else 1 - 22 / 90)
    )
    assert schedule_lr(cfg, 500, 1.0, 100) == pytest.approx(0.1)


def test_decay_without_warmup_and_ratio():
    cfg = sched(type="warmup_cosine")
    assert schedule_lr(cfg, 0, 2.0, 50) == 2.0
    assert schedule_lr(cfg, 49, 2.0, 50) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 49 / 50)))
    assert schedule_lr(cfg, 50, 2.0, 50) == pytest.approx(0.0)  # after the last update
    assert sched(type="warmup_linear", warmup_ratio=0.25).warmup_updates(10) == 2
    assert sched(type="warmup_linear", warmup_ratio=0.29).warmup_updates(100) == 29  # not 28: 0.29 * 100 < 29
    with pytest.raises(ConfigError, match="not both"):
        sched(warmup_steps=3, warmup_ratio=0.1)


EVERY_TYPE = {
    "tri_stage": {"type": "tri_stage", "phase_ratio": [0.1, 0.4, 0.5]},
    "tri_stage_no_hold": {"type": "tri_stage", "phase_ratio": [0.5, 0.0, 0.5], "final_lr_scale": 0.05},
    "warmup": {"type": "warmup", "warmup_steps": 3},
    "warmup_cosine": {"type": "warmup_cosine"},
    "warmup_cosine_warmup": {"type": "warmup_cosine", "warmup_ratio": 0.1},
    "warmup_linear": {"type": "warmup_linear", "warmup_steps": 2},
    "constant": {"type": "constant"},
    "constant_warmup": {"type": "constant", "warmup_steps": 5},
}


@pytest.mark.parametrize("total", [1, 2, 3, 57])
@pytest.mark.parametrize("name", sorted(EVERY_TYPE))
def test_no_update_runs_at_lr_zero(name, total):
    """Updates 0..total-1 all move the weights, whichever schedule, even in a 1- or 2-update run (min_lr_ratio and
    init_lr_scale at their defaults or 0: a floor of 0 is reached after the run, never by one of its updates)."""
    cfg = sched(**EVERY_TYPE[name])
    lrs = [schedule_lr(cfg, u, 1e-3, total) for u in range(total)]
    assert min(lrs) > 0, lrs
    assert max(lrs) <= 1e-3 * (1 + 1e-12)
    if cfg.type in ("warmup_cosine", "warmup_linear") and not cfg.warmup_updates(total):
        assert lrs[0] == 1e-3  # no warmup: the first update runs at the peak (a 1-update run included)


def test_lr_zero_only_where_the_recipe_asks_for_it():
    """tri_stage keeps FunASR's warmup from init_lr_scale * peak: init_lr_scale 0 is a recipe asking for lr 0."""
    cfg = sched(type="tri_stage", phase_ratio=[0.5, 0.0, 0.5], init_lr_scale=0.0)
    lrs = [schedule_lr(cfg, u, 1.0, 10) for u in range(10)]
    assert lrs[0] == 0.0 and min(lrs[1:]) > 0


def test_constant():
    cfg = sched(type="constant", warmup_steps=4)
    assert [schedule_lr(cfg, u, 1.0, 10) for u in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert schedule_lr(sched(type="constant"), 0, 3.0, 10) == 3.0


def _optim(scheduler, **branches):
    return from_dict(OptimConfig, {"scheduler": scheduler, "branches": branches}, "optim")


def _setup(make_model, optim_cfg, total):
    model = make_model()
    groups = build_param_groups(model, optim_cfg)
    opt = torch.optim.AdamW(groups)
    return opt, BranchLRScheduler(opt, build_group_schedules(groups, optim_cfg, total))


def _lrs(opt):
    return {g["name"]: g["lr"] for g in opt.param_groups}


def test_per_group_peaks_keep_branch_ratio(make_model):
    cfg = _optim({"type": "tri_stage", "phase_ratio": [0.1, 0.2, 0.7]}, encoder={"lr": 1e-4}, llm={"lr": 1e-5})
    total = 100
    opt, sch = _setup(make_model, cfg, total)
    assert _lrs(opt)["encoder"] / _lrs(opt)["llm"] == pytest.approx(10)  # update 0, before any step
    for u in range(1, total + 1):
        sch.step()
        lrs = _lrs(opt)
        assert lrs["encoder"] / lrs["llm"] == pytest.approx(10), u
        assert lrs["encoder_no_decay"] == lrs["encoder"]
        assert lrs["llm"] == pytest.approx(funasr_tri_stage(u, 1e-5, total, [0.1, 0.2, 0.7], 0.01, 0.01))
    assert sch.last_update == total


def test_per_branch_scheduler_overrides_top_level(make_model):
    cfg = _optim({"type": "constant"}, llm={"lr": 1e-5, "scheduler": {"type": "warmup", "warmup_steps": 4}})
    opt, sch = _setup(make_model, cfg, 20)
    for u in range(10):
        lrs = _lrs(opt)
        assert lrs["adaptor"] == 1e-4
        assert lrs["llm"] == pytest.approx(funasr_warmup(u, 1e-5, 4))
        sch.step()


def test_state_dict_round_trip_continues_identically(make_model):
    cfg = _optim({"type": "warmup_cosine", "warmup_steps": 5}, encoder={"lr": 3e-4})
    opt_a, sch_a = _setup(make_model, cfg, 40)
    for _ in range(13):
        sch_a.step()
    state = sch_a.state_dict()
    # a fresh scheduler built from another recipe restores the saved schedules exactly
    other = _optim({"type": "constant"}, encoder={"lr": 1.0})
    opt_b, sch_b = _setup(make_model, other, 999)
    sch_b.load_state_dict(torch.load(_save(state), weights_only=False))
    assert sch_b.last_update == 13 and _lrs(opt_b) == _lrs(opt_a)
    for _ in range(30):
        sch_a.step()
        sch_b.step()
        assert _lrs(opt_b) == _lrs(opt_a)
        assert sch_b.get_last_lr() == sch_a.get_last_lr()


def _save(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_state_dict_from_other_branch_set_is_refused(make_model):
    cfg = _optim({"type": "constant"})
    _, sch = _setup(make_model, cfg, 10)
    state = sch.state_dict()
    state["schedules"] = [s for s in state["schedules"] if not s["name"].startswith("llm")]
    with pytest.raises(ValueError, match="trainable"):
        sch.load_state_dict(state)


def test_groups_found_by_name_after_reordering_and_vanishing(make_model):
    cfg = _optim({"type": "warmup_linear", "warmup_steps": 3}, encoder={"lr": 2e-4}, llm={"lr": 2e-5})
    opt, sch = _setup(make_model, cfg, 30)
    opt.param_groups.reverse()
    sch.step()
    lrs = _lrs(opt)
    assert lrs["encoder"] == pytest.approx(2e-4 * 2 / 3) and lrs["llm"] == pytest.approx(2e-5 * 2 / 3)
    del opt.param_groups[0]
    with pytest.raises(RuntimeError, match="vanished"):
        sch.step()


def test_group_without_schedule_is_refused(make_model):
    cfg = _optim({"type": "constant"})
    model = make_model()
    groups = build_param_groups(model, cfg)
    opt = torch.optim.AdamW(groups)
    with pytest.raises(ValueError, match="no schedule"):
        BranchLRScheduler(opt, build_group_schedules(groups[1:], cfg, 10))


def test_lr_curve_matches_scheduler(make_model):
    cfg = _optim({"type": "tri_stage", "phase_ratio": [0.2, 0.3, 0.5]}, encoder={"lr": 1e-4})
    opt, sch = _setup(make_model, cfg, 25)
    curve = lr_curve(cfg, [g["name"] for g in opt.param_groups], 25)
    assert set(curve) == {g["name"] for g in opt.param_groups}
    for u in range(25):
        for name, lr in _lrs(opt).items():
            assert curve[name][u] == lr
        sch.step()
    assert isinstance(curve["encoder"], np.ndarray) and curve["encoder"].shape == (25,)


def test_a_warmup_as_long_as_the_run_is_named():
    """FunASR's usual 25000-update warmup on a short fine-tune: the lr never came near its peak, without a word."""
    optim = from_dict(OptimConfig, {
        "scheduler": {"type": "warmup_cosine", "warmup_steps": 25000},
        "branches": {"adaptor": {"lr": 1e-3, "scheduler": {"type": "tri_stage", "phase_ratio": [0.1, 0.4, 0.5]}}},
    }, "optim")  # fmt: skip
    (line,) = warmup_warnings(optim, ["llm", "adaptor", "llm"], 5)
    assert line.startswith("optim: the llm branch warms up over 25000 updates, but the run has 5: its lr ends at ")
    assert warmup_warnings(optim, ["llm"], 25000) == []  # the last update reaches the peak
