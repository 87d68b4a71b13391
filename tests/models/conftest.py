"""Fixtures of the model tests."""

from __future__ import annotations

import pytest

from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Paraformer directory (SAN-M encoder, seed 3), written once per test module."""
    return write_funasr_dir(tmp_path_factory.mktemp("paraformer_tiny"), encoder_conf=tiny_sanm_conf(), seed=3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-update run (tiny SAN-M with LoRA, adaptor, tiny LLM with LoRA, CTC head) on base directories of its
    own, so that a test may move them."""
    from llmasr.testing.run_dirs import model_section, train_run
    from llmasr.testing.tiny_corpus import write_tiny_corpus
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    root = tmp_path_factory.mktemp("tiny_run")
    section = model_section(
        write_tiny_llm_dir(root / "base_llm"), write_funasr_dir(root / "encoder", encoder_conf=tiny_sanm_conf())
    )
    return train_run(root / "run", section, write_tiny_corpus(root / "corpus", n=4))


@pytest.fixture(scope="module")
def exported_dir(tiny_run, tmp_path_factory):
    """`tiny_run` exported (LoRA merged), once per test module."""
    from llmasr.export.export import export_model

    return export_model(tiny_run.run_dir, tmp_path_factory.mktemp("exported") / "model")
