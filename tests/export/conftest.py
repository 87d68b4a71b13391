"""Fixtures of the export/decode tests: base model directories, tiny wav corpora, and run directories that the
real trainer wrote at each ZeRO stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmasr.testing.run_dirs import TEXTS, model_section, train_run, write_corpus


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
def train_corpus(tmp_path_factory):
    """16 tone-word utterances: the training data of every run the export tests make."""
    from llmasr.testing.tiny_corpus import write_tiny_corpus

    return write_tiny_corpus(tmp_path_factory.mktemp("train_corpus"), n=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """TEXTS as a FunASR manifest of short wavs (test000..test005), once per test module."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), TEXTS)


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, base_dirs, train_corpus):
    """stage -> TrainedRun of one update (frozen SAN-M with LoRA, LLM LoRA, CTC head) under ZeRO 0, 2 and 3."""
    section = model_section(*base_dirs)
    return {
        stage: train_run(tmp_path_factory.mktemp(f"run_z{stage}"), section, train_corpus, preset=f"zero{stage}")
        for stage in (0, 2, 3)
    }


@pytest.fixture(scope="session")
def runs(trained_runs):
    """stage -> RUN_DIR of `trained_runs`."""
    return {stage: run.run_dir for stage, run in trained_runs.items()}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, base_dirs, train_corpus):
    """A ZeRO-2 run of 4 updates, validated and saved after each (all kept; best.json ranks 3 by loss)."""
    return train_run(
        tmp_path_factory.mktemp("run_trained"), model_section(*base_dirs), train_corpus, preset="zero2", updates=4,
        valid=train_corpus, save_every_updates=1, valid_every_updates=1, keep_last=0, best_k=3,
    ).run_dir  # fmt: skip


@pytest.fixture
def copy_run():
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    return copy


@pytest.fixture(scope="module")
def exported_dir(runs, tmp_path_factory):
    """The ZeRO-2 run exported, once per test module (modules may change what they load from it)."""
    from llmasr.export.export import export_model

    return export_model(runs[2], tmp_path_factory.mktemp("exported") / "model")


@pytest.fixture(scope="module")
def model(exported_dir):
    """The exported model loaded, once per test module (a module may swap its CTC head)."""
    from llmasr.models.exported import load_exported

    return load_exported(exported_dir)
