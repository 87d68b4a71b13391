"""Fixtures for end-to-end runs: a tiny wav corpus, a tiny FunASR encoder directory and a recipe file using them
(the LLM is the session's tiny Qwen2 directory from tests/conftest.py)."""

from __future__ import annotations

import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_corpus_manifests(tmp_path_factory):
    """(train manifest of 24 utterances, dev manifest of 6), real wav files beside them."""
    from llmasr.testing.tiny_corpus import write_tiny_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    return write_tiny_corpus(root / "train", n=24), write_tiny_corpus(root / "dev", n=6, seed=1)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A 2-block SAN-M FunASR directory (config.yaml, model.pt, am.mvn, tokens.json)."""
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir

    return write_funasr_dir(tmp_path_factory.mktemp("tiny_sanm"), encoder_conf=tiny_sanm_conf())


@pytest.fixture(scope="session")
def tiny_recipe_file(tiny_llm_dir, tiny_corpus_manifests, tiny_encoder_dir, tmp_path_factory):
    """A recipe YAML: pretrained tiny SAN-M + linear adaptor + tiny Qwen2 with LoRA + CTC head (weight 0.3)."""
    from llmasr.testing.tiny_corpus import tiny_recipe_dict

    root = tmp_path_factory.mktemp("tiny_recipe")
    train, dev = tiny_corpus_manifests
    data = tiny_recipe_dict(tiny_llm_dir, train=[train], valid=[dev], output_dir=root / "run",
                            encoder_dir=tiny_encoder_dir, ctc_weight=0.3, epochs=1, grad_accum=2)  # fmt: skip
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def launched_run(tiny_recipe_file, tmp_path_factory):
    """`launched_run(preset, *overrides, into=DIR)`: DIR holds a copy of a finished 2-rank run of the tiny recipe
    under the real launcher (llmasr.testing.launcher.launch_train). Each (preset, overrides) is launched once a
    session, for the tests that read or resume the same run (test_resume_world.py, test_resume_stage.py); each test
    gets its own copy, so what a resume writes beside the checkpoints (a universal copy) never reaches another."""
    import shutil

    from llmasr.testing.launcher import launch_train

    runs = {}

    def copy(preset: str, *overrides: str, into):
        key = (preset, overrides)
        if key not in runs:
            run = tmp_path_factory.mktemp(f"launched_{preset}") / "run"
            launch_train(tiny_recipe_file, preset, run, *overrides)
            runs[key] = run
        shutil.copytree(runs[key], into)
        return into

    return copy
