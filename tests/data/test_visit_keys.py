"""Visit keys: a line's first visit in an epoch is keyed by its index, each later one by index + copy * n."""

from __future__ import annotations

import numpy as np

from llmasr.data.visit_keys import dataset_index, visit_keys


def test_keys_count_the_earlier_visits_of_each_line():
    items = np.array([3, 1, 3, 0, 3, 1])
    keys = visit_keys(items, 5)
    assert keys.tolist() == [3, 1, 8, 0, 13, 6]
    assert [dataset_index(k, 5) for k in keys] == items.tolist()
    assert len(set(keys.tolist())) == items.size  # every visit its own draws


def test_lines_visited_once_keep_their_index():
    items = np.random.default_rng(0).permutation(50)
    np.testing.assert_array_equal(visit_keys(items, 50), items)
    assert visit_keys(np.zeros(0, dtype=np.int64), 50).size == 0
