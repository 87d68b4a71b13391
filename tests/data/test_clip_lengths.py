"""The speed factor and pauses of each training clip: drawn from (seed, epoch, index) alone, as the configuration
says, and the sampler's batches cut on them (llmasr.data.clip_lengths, llmasr.data.item_costs)."""

from __future__ import annotations

import numpy as np
import pytest

from llmasr.config_io import from_dict
from llmasr.data.augment import AugmentConfig
from llmasr.data.clip_lengths import EpochCosts, draw_clip_lengths, uniforms
from llmasr.data.frontend import FrontendConfig
from llmasr.data.sampler import DynamicBucketSampler
from llmasr.train.resolve import batches_per_epoch

AUGMENT = {
    "speed_perturb": {"enable": True, "factors": [0.9, 1.0, 1.1]},
    "silence": {"enable": True, "prob": 0.3, "lead": [0.2, 0.8], "trail": [0.1, 0.4]},
}


def augment(**kw) -> AugmentConfig:
    return from_dict(AugmentConfig, {**AUGMENT, **kw}, "augment")


def test_draws_depend_on_seed_epoch_index_and_draw_alone():
    idx = np.arange(50_000)
    u = uniforms(3, 1, idx, 1)
    assert ((u >= 0) & (u < 1)).all() and abs(u.mean() - 0.5) < 0.01
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 4_700  # flat: 5,000 a bin expected
    np.testing.assert_array_equal(uniforms(3, 1, idx[::-7], 1), u[::-7])  # an item's draw ignores the others
    for other in (uniforms(4, 1, idx, 1), uniforms(3, 2, idx, 1), uniforms(3, 1, idx, 2), uniforms(3, 1, idx + 1, 1)):
        assert np.mean(other == u) < 0.001 and abs(np.corrcoef(other, u)[0, 1]) < 0.02


def test_factors_and_pauses_follow_the_configuration():
    idx = np.arange(30_000)
    drawn = draw_clip_lengths(augment(), 0, 0, idx)
    factors, counts = np.unique(drawn.factor, return_counts=True)
    assert factors.tolist() == [0.9, 1.0, 1.1] and counts.min() > 9_500  # one factor in three each
    paused = drawn.lead > 0
    assert paused.mean() == pytest.approx(0.3, abs=0.01) and ((drawn.trail > 0) == paused).all()
    assert drawn.lead[paused].min() >= 0.2 and drawn.lead.max() <= 0.8 and drawn.trail[paused].min() >= 0.1
    assert drawn.item(7) == draw_clip_lengths(augment(), 0, 0, 7).item()
    off = draw_clip_lengths(AugmentConfig(), 0, 0, idx[:5])
    assert off.factor.tolist() == [1.0] * 5 and off.lead.tolist() == off.trail.tolist() == [0.0] * 5
    assert EpochCosts.of(AugmentConfig(), 0, FrontendConfig()) is None  # nothing changes a clip's length


def real_seconds(durations: np.ndarray, cfg: AugmentConfig, epoch: int) -> np.ndarray:
    drawn = draw_clip_lengths(cfg, 0, epoch, np.arange(durations.size))
    return durations / drawn.factor + drawn.lead + drawn.trail


def padding_and_batches(sampler: DynamicBucketSampler, real: np.ndarray, epoch: int) -> tuple[float, int, float]:
    batches = sampler.batches(epoch)
    padded = [len(b) * real[b].max() for b in batches]
    return float(sum(real[b].sum() for b in batches) / sum(padded)), len(batches), max(padded)


def test_batches_cut_on_drawn_lengths_pad_less_and_fit_the_budget():
    durations = np.clip(np.random.default_rng(0).lognormal(np.log(4.5), 0.5, 6_000), 1.0, 20.0)
    cfg = augment()
    scale, pad = cfg.cost(FrontendConfig())
    common = dict(max_seconds=120.0, max_duration=30.0, seed=0, cost_scale=scale, cost_pad=pad)
    exact = DynamicBucketSampler(durations, epoch_costs=EpochCosts.of(cfg, 0, FrontendConfig()), **common)
    worst = DynamicBucketSampler(durations, **common)
    for epoch in (0, 1):
        real = real_seconds(durations, cfg, epoch)
        eff, n, longest = padding_and_batches(exact, real, epoch)
        eff_worst, n_worst, _ = padding_and_batches(worst, real, epoch)
        assert longest <= 120.0 + 1e-6  # the budget holds for the audio the batches really get
        assert eff > 0.98 > 0.9 > eff_worst and n < 0.85 * n_worst
        assert exact.stats(epoch)["padding_efficiency"] == pytest.approx(eff)
    assert exact.batches(0) != exact.batches(1)
    assert batches_per_epoch(exact, 3) == [len(exact.batches(e)) for e in range(3)]


def test_a_resumed_epoch_yields_the_rest_of_the_same_batches():
    durations = np.random.default_rng(1).uniform(1.0, 8.0, 500)
    costs = EpochCosts.of(augment(), 5, FrontendConfig())

    def make() -> DynamicBucketSampler:
        return DynamicBucketSampler(
            durations, max_seconds=30.0, seed=5, cost_scale=1 / 0.9, cost_pad=1.2, epoch_costs=costs
        )

    first = make()
    first.set_epoch(2)
    it = iter(first)
    head = [next(it) for _ in range(7)]
    again = make()
    again.load_state_dict(first.state_dict())
    assert head + list(again) == first.batches(2)


def test_a_frame_budget_holds_for_the_frames_the_drawn_lengths_give():
    durations = np.random.default_rng(2).uniform(1.0, 10.0, 2_000)
    cfg, fps = augment(), 100 / 6  # LFR 7/6 frames
    scale, pad = cfg.cost(FrontendConfig())
    sampler = DynamicBucketSampler(durations, max_frames=3_000, frames_per_second=fps, seed=0, cost_scale=scale,
                                   cost_pad=pad, epoch_costs=EpochCosts.of(cfg, 0, FrontendConfig()))  # fmt: skip
    frames = np.ceil(real_seconds(durations, cfg, 1) * fps - 1e-9)
    padded = [len(b) * frames[b].max() for b in sampler.batches(1)]
    assert max(padded) <= 3_000 and sum(frames) / sum(padded) > 0.98


def test_a_whisper_window_s_padding_counts_the_audio_augmentation_puts_in_it():
    """Every clip costs a Whisper window whatever its draw, but the augmenter slows it and adds pauses up to the
    window: `llmasr check` had counted each clip's audio unaugmented, about half what train.log's pad_audio, from
    the clips as loaded, counted with pauses on."""
    from llmasr.data.augment import Augmenter

    sr, window = 16000, 2.0
    frontend = FrontendConfig(kind="whisper", chunk_seconds=window)
    cfg = augment(speed_perturb={"enable": True, "factors": [0.5, 1.0, 1.25]}, silence={"enable": True, "prob": 0.7})
    durations = np.random.default_rng(3).uniform(0.2, 1.9, 60).round(3)
    scale, pad = cfg.cost(frontend)
    sampler = DynamicBucketSampler(durations, max_seconds=8.0, seed=0, min_item_seconds=window, cost_scale=scale,
                                   cost_pad=pad, epoch_costs=EpochCosts.of(cfg, 0, frontend))  # fmt: skip
    aug = Augmenter(cfg, frontend)
    for epoch in (0, 1):
        drawn = draw_clip_lengths(cfg, 0, epoch, np.arange(durations.size))
        heard = [min(window, aug.wave(np.full(int(d * sr), 0.1, np.float32), sr, np.random.default_rng(i),
                                      drawn.item(i)).size / sr) for i, d in enumerate(durations)]  # fmt: skip
        batches = sampler.batches(epoch)
        assert all(len(b) * window <= 8.0 for b in batches)  # the window is still what each clip costs
        loaded = sum(heard[i] for b in batches for i in b) / sum(len(b) * window for b in batches)
        assert sampler.stats(epoch)["padding_efficiency"] == pytest.approx(loaded, abs=1e-3)
        assert loaded > 1.3 * durations.sum() / (durations.size * window)
