"""Shared fixtures: tiny models written to disk in their real formats, built once per test session."""

from __future__ import annotations

import hashlib
import logging
import os
import sys

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def extensions_dir() -> str:
    """A JIT-extension cache of this environment's own. DeepSpeed builds its CPU ops (the shared-memory all-reduce
    every launched run loads, CPU Adam) in torch's cache, whose folder is per Python version, not per environment:
    two virtual environments on one machine compile against other include paths, so each suite run after the other
    environment's rebuilt both ops (half a minute to two minutes each, on whichever test came first)."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    digest = hashlib.sha256(os.path.realpath(sys.prefix).encode("utf-8")).hexdigest()[:12]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "torch_extensions", f"llmasr-tests-{python}-{digest}")


os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())  # the launched ranks inherit it


def _llmasr_logger_states() -> dict[str, tuple[int, bool, bool]]:
    named = {
        name: logger for name, logger in logging.root.manager.loggerDict.items() if isinstance(logger, logging.Logger)
    }
    named["llmasr"] = logging.getLogger("llmasr")
    named["root"] = logging.root  # an llmasr logger left at NOTSET takes the root's level: at ERROR, it is silenced
    return {name: (logger.level, logger.disabled, logger.propagate) for name, logger in named.items()
            if name in ("llmasr", "root") or name.startswith("llmasr.")}  # fmt: skip


def _silenced(old: tuple[int, bool, bool], new: tuple[int, bool, bool]) -> bool:
    """Whether a logger now drops warnings it passed (a level above WARNING, disabled, no longer propagating to the
    root, where caplog listens). A lower level is the training process's own setting (run_log.setup_logging: INFO)."""
    return (new[0] > logging.WARNING and new[0] != old[0]) or (new[1] and not old[1]) or (old[2] and not new[2])


@pytest.fixture(autouse=True)
def _warnings_left_audible():
    """Fails the test that leaves an llmasr logger silenced (its level above WARNING, disabled, not propagating) or
    logging disabled, and puts it back: a bench script run in-process that set the llmasr logger to ERROR and kept it
    there once silenced every later test's warnings, failing 20 unrelated caplog tests far from the cause."""
    before, disabled = _llmasr_logger_states(), logging.root.manager.disable
    yield
    unset = (logging.NOTSET, False, True)
    changed = {name: (before.get(name, unset), state) for name, state in _llmasr_logger_states().items()
               if _silenced(before.get(name, unset), state)}  # fmt: skip
    for name, (old, _) in changed.items():
        logger = logging.root if name == "root" else logging.getLogger(name)
        logger.setLevel(old[0])  # setLevel, not the attribute: it also clears the loggers' cached isEnabledFor answers
        logger.disabled, logger.propagate = old[1], old[2]
    faults = [f"logger {name!r}: (level, disabled, propagate) {old} -> {new}" for name, (old, new) in changed.items()]
    now_disabled = logging.root.manager.disable
    if now_disabled >= logging.WARNING and now_disabled > disabled:  # logging.disable(INFO) leaves warnings audible
        logging.disable(disabled)
        faults.append(f"logging.disable level {disabled} -> {now_disabled}")
    if faults:
        pytest.fail("the test left llmasr's warnings silenced (later tests would run under it): " + "; ".join(faults))


@pytest.fixture(scope="session", autouse=True)
def _manifest_cache_of_the_run(tmp_path_factory):
    """Decompressed .gz manifests go to this test run's own folder (each xdist worker its own), not the user's
    ~/.cache/llmasr: a test reading a .gz manifest outside tests/data (whose tests name one each) left a copy there
    on every run. Subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMASR_CACHE_DIR", str(tmp_path_factory.mktemp("llmasr_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """A 2-layer Qwen2 directory with a byte-level BPE tokenizer and a ChatML template."""
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    return write_tiny_llm_dir(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def word_level_llm_dir(tmp_path_factory):
    """A 2-layer Llama whose WordLevel tokenizer has the tiny corpus's digit words (any other word is "<unk>")."""
    from llmasr.testing.tiny_corpus import WORDS
    from llmasr.testing.tiny_llm import train_word_level_tokenizer, write_unk_llm_dir

    return write_unk_llm_dir(tmp_path_factory.mktemp("tiny_word_level"), train_word_level_tokenizer([" ".join(WORDS)]))


@pytest.fixture(scope="session")
def unigram_llm_dir(tmp_path_factory):
    """A 2-layer Llama whose SentencePiece-style Unigram tokenizer (no byte fallback) has the characters of the tiny
    corpus's words and of llmasr.testing.tiny_llm.DEFAULT_CORPUS (any other character is "<unk>")."""
    from llmasr.testing.tiny_corpus import WORDS
    from llmasr.testing.tiny_llm import train_unigram_tokenizer, write_unk_llm_dir

    return write_unk_llm_dir(tmp_path_factory.mktemp("tiny_unigram"), train_unigram_tokenizer([" ".join(WORDS)]))


@pytest.fixture(scope="session")
def char_bpe_llm_dir(tmp_path_factory):
    """A 2-layer Llama whose BPE tokenizer over characters has no unk token and no byte fallback, trained on the tiny
    corpus's words and llmasr.testing.tiny_llm.DEFAULT_CORPUS: it writes no token for any other character."""
    from llmasr.testing.tiny_corpus import WORDS
    from llmasr.testing.tiny_llm import train_char_bpe_tokenizer, write_unk_llm_dir

    return write_unk_llm_dir(tmp_path_factory.mktemp("tiny_char_bpe"), train_char_bpe_tokenizer([" ".join(WORDS)]))


@pytest.fixture(scope="session")
def tiny_llm_no_template_dir(tmp_path_factory):
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    return write_tiny_llm_dir(tmp_path_factory.mktemp("tiny_qwen2_base"), chat_template=None)
