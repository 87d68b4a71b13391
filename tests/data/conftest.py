"""Fixtures of the data-pipeline tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def manifest_cache_dir(tmp_path, monkeypatch):
    """Decompressed manifests go to the test's own cache folder (tmp_path / "cache"), not the user's."""
    monkeypatch.setenv("LLMASR_CACHE_DIR", str(tmp_path / "cache"))
