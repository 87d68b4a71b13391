"""Fixtures of the model tests."""

from __future__ import annotations

import pytest

from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Paraformer directory (SAN-M encoder, seed 3), written once per test module."""
    return write_funasr_dir(tmp_path_factory.mktemp("paraformer_tiny"), encoder_conf=tiny_sanm_conf(), seed=3)
