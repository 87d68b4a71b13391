"""Per-item batch costs: worst case and per-epoch draws, quantile buckets, per-batch reductions."""

from __future__ import annotations

import numpy as np

from llmasr.data.item_costs import ItemCosts, per_batch, quantile_buckets


def test_costs_in_seconds_or_frames_with_the_worst_case_and_each_epochs_draw():
    durations = np.array([1.0, 2.0, np.nan, 40.0])
    worst = ItemCosts(durations, max_seconds=10.0, max_frames=None, frames_per_second=None, max_duration=30.0,
                      truncate_to_max=True, cost_scale=1.25, cost_pad=0.5)  # fmt: skip
    np.testing.assert_allclose(worst.sizes, [1.75, 3.0, 0.5, 38.0])  # unknown costs 0, truncated to 30 s first
    assert worst.budget == 10.0 and (worst.drawn(3, np.arange(4)) == worst.sizes).all()
    np.testing.assert_array_equal(worst.least, worst.sizes)  # no draws: the worst case is the only case

    def slower_each_epoch(epoch: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(idx.size, 1.0 + epoch / 10), np.zeros(idx.size)

    drawn = ItemCosts(durations, max_seconds=None, max_frames=100, frames_per_second=10.0, max_duration=30.0,
                      truncate_to_max=False, cost_scale=1.25, cost_pad=0.5, epoch_costs=slower_each_epoch)  # fmt: skip
    np.testing.assert_array_equal(drawn.sizes, [18, 30, 5, 505])  # frames, rounded up
    np.testing.assert_array_equal(drawn.drawn(1, np.array([0, 1])), [11, 22])  # each item asked, at its draw
    np.testing.assert_array_equal(drawn.drawn(9, np.array([1])), [30])  # never above the worst case


class Draws:
    """Speed factors 0.8 / 1.25 by epoch parity; the shortest draw plays 1.25 times faster."""

    least = (0.8, 0.0)

    def __call__(self, epoch: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(idx.size, 1.25 if epoch % 2 else 0.8), np.zeros(idx.size)


def test_an_item_over_the_budget_at_some_draws_fits_in_the_epochs_that_let_it():
    durations = np.array([1.0, 9.0, 11.0, 14.0])
    costs = ItemCosts(durations, max_seconds=10.0, max_frames=None, frames_per_second=None, max_duration=30.0,
                      truncate_to_max=False, cost_scale=1.25, epoch_costs=Draws())  # fmt: skip
    np.testing.assert_allclose(costs.least, [0.8, 7.2, 8.8, 11.2])  # 14 s never fits a 10 s budget
    items, keep = np.arange(4), np.array([0, 1, 2])
    sizes, _, fit, late = costs.fitting(0, items, items, keep, 2, np.zeros(4, dtype=np.int64))
    assert fit.tolist() == [0, 1, 2] and late == 0 and sizes[2] == 8.8
    sizes, _, fit, late = costs.fitting(1, items, items, keep, 2, np.zeros(4, dtype=np.int64))
    assert fit.tolist() == [0] and late == 2 and sizes[1] == 11.25  # slowed: 9 s and 11 s pass the budget


def test_two_visits_of_one_item_cost_their_own_draws():
    """Per position in the epoch's visits: item 1 twice, by keys 1 and 5 (llmasr.data.visit_keys), at two speeds."""

    def by_key(epoch: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.where(keys >= 4, 1.0, 1.25), np.zeros(keys.size)

    costs = ItemCosts(np.array([1.0, 8.0, 4.0, 2.0]), max_seconds=10.0, max_frames=None, frames_per_second=None,
                      max_duration=30.0, truncate_to_max=False, cost_scale=1.25, epoch_costs=by_key)  # fmt: skip
    items, keys = np.array([0, 1, 2, 1]), np.array([0, 1, 2, 5])
    sizes, buckets, fit, late = costs.fitting(0, items, keys, np.arange(4), 2, np.zeros(4, dtype=np.int64))
    np.testing.assert_allclose(sizes, [1.25, 10.0, 5.0, 8.0])  # item 1: its slow visit, then its plain one
    assert fit.tolist() == [0, 1, 2, 3] and late == 0
    assert buckets.tolist() == [0, 1, 0, 1]


def test_quantile_buckets_and_per_batch_reductions():
    sizes = np.arange(10, dtype=np.float64)
    buckets = quantile_buckets(sizes, np.arange(10), 2)
    assert buckets.tolist() == [0] * 5 + [1] * 5
    assert quantile_buckets(sizes, np.arange(0), 4).tolist() == [0] * 10  # nothing kept: one bucket
    flat, lens = np.array([3, 1, 0, 9, 8, 7]), np.array([2, 1, 3])  # batches [3, 1], [0], [9, 8, 7]
    assert per_batch(flat, lens, sizes, np.maximum).tolist() == [3.0, 0.0, 9.0]
    assert per_batch(flat, lens, sizes, np.add).tolist() == [4.0, 0.0, 24.0]
    assert per_batch(flat[:0], lens[:0], sizes, np.add).size == 0
