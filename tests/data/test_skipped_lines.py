"""longest_trained: the longest audio a recipe's training data holds, which decoding takes as its window limit."""

from __future__ import annotations

import math

import pytest
from test_screen import cfg, manifest

from llmasr.config_io import from_dict
from llmasr.data.config import DataConfig
from llmasr.data.skipped_lines import longest_trained


def test_the_longest_kept_training_utterance(tmp_path):
    path = manifest(tmp_path, [1.5, 3.25, 12.0, 2.0])
    assert longest_trained(cfg([path], max_duration=10.0)) == 3.25  # 12 s is skipped by training
    assert longest_trained(cfg([path], max_duration=10.0, truncate_to_max=True)) == 10.0  # ... or cut to 10 s
    assert longest_trained(cfg([path], max_duration=math.inf)) == 12.0
    # a line of exactly max_duration is trained (the sampler keeps it): its float32 duration is not past the limit
    exact = manifest(tmp_path, [1.5, 20.1], name="exact.jsonl")
    assert longest_trained(cfg([exact], max_duration=20.1)) == pytest.approx(20.1)
    other = manifest(tmp_path, [4.0], name="other.jsonl")
    assert longest_trained(cfg([path, other], max_duration=10.0)) == 4.0  # every training manifest
    slow = from_dict(
        DataConfig,
        {"train": [path], "batching": {"max_duration": 10.0}, "augment": {"speed_perturb": {"enable": True}}},
        "data",
    )
    assert longest_trained(slow) == pytest.approx(3.25 / 0.9, abs=1e-4)  # speed 0.9 stretches it


def test_unknown_durations_fall_back_to_max_duration(tmp_path, caplog):
    assert longest_trained(cfg([manifest(tmp_path, [1.0, None])], max_duration=20.0)) == 20.0
    assert longest_trained(cfg([manifest(tmp_path, [1.0, None])], max_duration=math.inf)) is None
    assert longest_trained(cfg([str(tmp_path / "moved.jsonl")], max_duration=20.0)) == 20.0
    assert "the longest training utterance is unknown" in caplog.text
