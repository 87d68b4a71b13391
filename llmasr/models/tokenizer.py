"""Reading an LLM's tokenizer from a local directory: where it lies (model.llm.tokenizer, an adapter folder's own,
or the LLM folder), as its tokenizer.json writes it (as_written), and one load of each folder per start-up
(one_tokenizer_load)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from llmasr.config_io import ConfigError
from llmasr.errors import EVERY_RANK

log = logging.getLogger(__name__)

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
    return as_written(tok, Path(path))


# The parts of a tokenizer.json that make a text's ids. Its post-processor is left to the class: tokenizer_config.json's
# add_bos_token / add_eos_token rewrite it, as they did in transformers 4.
_PIPELINE = ("normalizer", "pre_tokenizer", "model", "decoder")


def as_written(tok, folder: Path):
    """`tok`, or the folder's tokenizer.json read as written where the class transformers chose rebuilt it.

    transformers 5 loads a folder whose config.json says qwen2 (or whose tokenizer_config.json names Qwen2Tokenizer)
    with Qwen2Tokenizer, which keeps only the file's vocabulary and merges under Qwen's own normaliser and
    pre-tokenizer, and only the added tokens tokenizer_config.json lists. The file is what the LLM was trained with,
    and what the tokenizers library, transformers 4 and tokenizer.json readers elsewhere use, so it is read here as
    written (TokenizersBackend) with tokenizer_config.json's special tokens and template. A class from the folder's
    own code (trust_remote_code) is the folder's word and is kept. Other classes transformers picks (LlamaTokenizer's
    Metaspace for a legacy Prepend/Replace normaliser, ...) write the same text as their files in other words, and
    transformers chooses among them on purpose: they are kept."""
    from transformers import TokenizersBackend

    file = folder / "tokenizer.json"
    backend = getattr(tok, "backend_tokenizer", None)
    if type(tok).__name__ != "Qwen2Tokenizer" or backend is None or not file.is_file():
        return tok
    if not type(tok).__module__.startswith("transformers."):
        return tok
    differs = rebuilt_parts(backend, file)
    if not differs:
        return tok
    log.warning(
        "%s: transformers' %s does not tokenize as its tokenizer.json writes (%s); llmasr reads tokenizer.json as "
        "written. Load this folder elsewhere (inference, export) with transformers.TokenizersBackend.from_pretrained "
        "to get the same ids",
        folder, type(tok).__name__, "; ".join(differs), extra=EVERY_RANK,
    )  # fmt: skip
    return TokenizersBackend.from_pretrained(str(folder), local_files_only=True)


def rebuilt_parts(backend, file: Path) -> list[str]:
    """What of tokenizer.json `file` a loaded tokenizer's pipeline `backend` (a tokenizers.Tokenizer) does not hold,
    in words: a differing part of the pipeline, or an added token it lacks or gives another id."""
    from tokenizers import Tokenizer

    held, written = json.loads(backend.to_str()), json.loads(Tokenizer.from_file(str(file)).to_str())
    for spec in (held, written):  # an empty prefix or suffix is none (Qwen2Tokenizer writes "", a trained BPE null)
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if (spec.get("model") or {}).get(key) == "":
                spec["model"][key] = None
    differs = [f"its {part}" for part in _PIPELINE if held.get(part) != written.get(part)]
    ids = {t["content"]: t["id"] for t in held.get("added_tokens") or []}
    lost = [
        f"{t['content']!r} (id {t['id']})"
        for t in written.get("added_tokens") or []
        if ids.get(t["content"]) != t["id"]
    ]
    if lost:
        differs.append(
            f"the added token{'s' * (len(lost) > 1)} {', '.join(lost[:5])}" + (" ..." if len(lost) > 5 else "")
        )
    return differs


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
