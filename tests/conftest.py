"""Shared fixtures: tiny models written to disk in their real formats, built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """A 2-layer Qwen2 directory with a byte-level BPE tokenizer and a ChatML template."""
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    return write_tiny_llm_dir(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_llm_no_template_dir(tmp_path_factory):
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    return write_tiny_llm_dir(tmp_path_factory.mktemp("tiny_qwen2_base"), chat_template=None)
