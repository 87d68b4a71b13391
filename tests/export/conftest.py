"""Fixtures of the export/decode tests: base model directories and run directories at each ZeRO stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmasr.testing.run_dirs import make_run, model_section


@pytest.fixture(scope="session")
def base_dirs(tmp_path_factory):
    """(LLM dir, FunASR encoder dir) private to the export tests."""
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    root = tmp_path_factory.mktemp("export_base")
    llm = write_tiny_llm_dir(root / "llm")
    enc = write_funasr_dir(root / "encoder", encoder_conf=tiny_sanm_conf())
    return llm, enc


@pytest.fixture(scope="session")
def runs(tmp_path_factory, base_dirs):
    """stage -> RUN_DIR with one checkpoint (update 0) of the same perturbed weights, for ZeRO 0, 2 and 3."""
    llm, enc = base_dirs
    out = {}
    for stage in (0, 2, 3):
        out[stage] = make_run(tmp_path_factory.mktemp(f"run_z{stage}"), model_section(llm, enc), stage=stage, steps=0)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, base_dirs):
    """A ZeRO-2 run trained 4 updates with a checkpoint after each."""
    llm, enc = base_dirs
    return make_run(
        tmp_path_factory.mktemp("run_trained"), model_section(llm, enc), stage=2, steps=4, save_at=[1, 2, 3, 4]
    )


@pytest.fixture
def copy_run():
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    return copy
