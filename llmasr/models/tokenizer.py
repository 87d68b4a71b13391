"""Reading an LLM's tokenizer from a local directory: where it lies (model.llm.tokenizer, an adapter folder's own,
or the LLM folder), and one load of each folder per start-up (one_tokenizer_load)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from llmasr.config_io import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class LLMLoadError(ConfigError):
    """The LLM directory (its tokenizer or its model) cannot be used."""


_SHARED_TOKENIZERS: dict | None = None  # while one_tokenizer_load is entered: (folder, remote code) -> tokenizer


@contextlib.contextmanager
def one_tokenizer_load():
    """Within it (a decorator too) load_tokenizer loads each folder's tokenizer once and gives every later caller
    that same object: a start-up's comparison with the folder it starts from, data plan and model build each loaded
    their own. For one recipe's start-up only: its PromptBuilders set the shared tokenizer's chat_template alike."""
    global _SHARED_TOKENIZERS
    outer = _SHARED_TOKENIZERS
    _SHARED_TOKENIZERS = {} if outer is None else outer
    try:
        yield
    finally:
        _SHARED_TOKENIZERS = outer


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False):
    key = (str(Path(path).resolve()), trust_remote_code)
    if _SHARED_TOKENIZERS is not None and key in _SHARED_TOKENIZERS:
        return _SHARED_TOKENIZERS[key]
    tok = _load_tokenizer(path, trust_remote_code)
    if _SHARED_TOKENIZERS is not None:
        _SHARED_TOKENIZERS[key] = tok
    return tok


def _load_tokenizer(path: str | Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as err:  # a cut-short or damaged tokenizer.json: its parser's error names no file
        raise LLMLoadError(f"{path}: its tokenizer files cannot be read ({type(err).__name__}: {err})") from err
    if len(tok) and len(tok) == len(getattr(tok, "added_tokens_decoder", None) or {}):
        # tokenizer_config.json alone: transformers builds a tokenizer of its special tokens that encodes every text
        # to no token at all
        raise LLMLoadError(
            f"{path}: the tokenizer holds its {len(tok)} special tokens and no vocabulary: its vocabulary file is "
            "missing (tokenizer.json, or vocab.json with merges.txt, or tokenizer.model)"
        )
    return tok


def tokenizer_dir(path: str | Path, tokenizer: str | Path | None = None, adapter: str | Path | None = None) -> Path:
    """Where an LLM's tokenizer is read from: model.llm.tokenizer, else an adapter directory that carries one, else
    the LLM directory itself. The model's build and the data's text side both read it here, so training rows and
    the model's prompts come from one tokenizer."""
    return Path(tokenizer or _adapter_tokenizer(adapter) or path)


def _adapter_tokenizer(adapter: str | Path | None) -> Path | None:
    """An adapter directory that carries tokenizer files (an llmasr adapter export does) supplies the tokenizer."""
    if adapter is None:
        return None
    adapter = Path(adapter)
    return adapter if any((adapter / name).is_file() for name in TOKENIZER_FILES) else None
