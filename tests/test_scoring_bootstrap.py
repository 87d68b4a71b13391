"""Bootstrap confidence intervals and the probability of improvement, against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from llmasr.scoring_bootstrap import improvement_probability, paired_change, rate_interval


def test_interval_holds_the_rate_and_narrows_with_more_utterances():
    errors, units = [0, 1, 0, 3, 1, 0, 2, 0, 0, 1], [5, 4, 6, 5, 3, 4, 6, 5, 4, 5]
    rate = sum(errors) / sum(units)
    low, high = rate_interval(errors, units)
    assert low < rate < high
    wide = high - low
    low4, high4 = rate_interval(errors * 4, units * 4)
    assert low4 < rate < high4 and high4 - low4 < 0.7 * wide  # four times the data: about half the width
    assert rate_interval(errors, units) == (low, high)  # a fixed seed: the report does not move between runs


def test_equal_utterances_give_a_point_and_too_little_data_gives_none():
    low, high = rate_interval([1] * 20, [4] * 20)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)
    assert rate_interval([1], [4]) is None and rate_interval([0, 0], [0, 0]) is None
    with pytest.raises(ValueError, match="3 error counts against 2 unit counts"):
        rate_interval([1, 2, 3], [4, 5])


def test_draws_of_empty_references_only_have_no_rate():
    """Silent clips (empty references) beside a few spoken ones: a draw of silent clips alone measures no rate; taken
    as 0 it had put the interval's low end at 0 though every draw with speech scores 50%."""
    errors, units = [5] * 3 + [1] * 20, [10] * 3 + [0] * 20
    low, high = rate_interval(errors, units)
    assert low >= 0.5 and high > low
    assert rate_interval([1, 0, 0], [0, 1, 1], resamples=1, seed=34) is None  # its one draw holds no reference unit


def test_one_spoken_utterance_beside_silent_clips_has_no_interval():
    """Silent clips decoded silent add nothing to resample: one spoken utterance among them had a zero-width interval
    (20.00-20.00%), as sure as no number from one utterance is; alone it has none."""
    assert rate_interval([1], [5]) is None
    assert rate_interval([1, 0], [5, 0]) is None and rate_interval([1, 2, 0, 0], [5, 0, 0, 0]) is None
    assert rate_interval([1, 0, 0], [5, 4, 0]) is not None


def test_probability_of_improvement():
    assert improvement_probability([0, 1, 0], [1, 2, 1]) == 1.0
    assert improvement_probability([1, 2, 1], [0, 1, 0]) == 0.0
    assert improvement_probability([1, 2, 1], [1, 2, 1]) == 0.5  # ties count half
    # A is better on one utterance of ten and equal elsewhere: it wins on every draw that holds that utterance,
    # 1 - 0.9^10 of them, and ties the rest.
    p_drawn = 1 - 0.9**10
    got = improvement_probability([0] + [1] * 9, [1] * 10, resamples=4000)
    assert got == pytest.approx(p_drawn + 0.5 * (1 - p_drawn), abs=0.03)
    with pytest.raises(ValueError, match="the same utterances"):
        improvement_probability([1, 2], [1])


def test_paired_change_holds_the_change_and_says_which_system_is_better():
    rng = np.random.default_rng(3)
    units = rng.integers(5, 15, size=400)
    a = rng.binomial(units, 0.10)
    b = np.where(rng.random(400) < 0.2, np.maximum(a - 1, 0), a)  # B fixes an error in a fifth of the utterances
    got = paired_change(a.tolist(), b.tolist(), units.tolist())
    change = (b.sum() - a.sum()) / units.sum()
    assert got["low"] <= change <= got["high"] < 0 and got["p_better"] > 0.99
    assert got["p_better"] == improvement_probability(b.tolist(), a.tolist())  # one owner of the probability
    same = paired_change(a.tolist(), a.tolist(), units.tolist())
    assert (same["low"], same["high"], same["p_better"]) == (0.0, 0.0, 0.5)
    # the pairing narrows the interval: B's own rate interval is wider than the change's
    own = rate_interval(b.tolist(), units.tolist())
    assert got["high"] - got["low"] < own[1] - own[0]
    with pytest.raises(ValueError, match="need the same utterances"):
        paired_change([1, 2], [1, 2], [3])


def test_draws_made_a_block_at_a_time_give_the_figures_of_one_draw(monkeypatch):
    """A million utterances drew 8 GB of indices in one [resamples, n] array: blocks of resamples draw the same
    stream, so every figure is the same whatever the block."""
    import llmasr.scoring_bootstrap as bootstrap

    rng = np.random.default_rng(1)
    units = rng.integers(0, 20, 500)
    a, b = rng.binomial(units, 0.1), rng.binomial(units, 0.09)
    whole = rate_interval(a, units), improvement_probability(a, b), paired_change(a, b, units)
    draws = np.random.default_rng(0).integers(0, 500, size=(1000, 500))  # the one draw, summed directly
    assert whole[0] == tuple(np.quantile((a[draws].sum(1) / units[draws].sum(1)), [0.025, 0.975]))
    for block in (1, 7, 499, 500, 1001):
        monkeypatch.setattr(bootstrap, "DRAWN_AT_ONCE", block * 500)
        assert (rate_interval(a, units), improvement_probability(a, b), paired_change(a, b, units)) == whole
