"""A recipe that starts from a model folder written by `llmasr export` or `llmasr convert funasr` (its
llmasr_model.yaml beside the weights the recipe reads) must show the model what that folder's description shows it.

The recipe restates the model's settings (the folder is reached only through `init_from` and `llm.path`), so a
recipe's frontend, CMVN or prompt can differ from the ones the model was trained and decodes with, and fine-tuning
would then train it on another input without a word. Compared by llmasr.train's check (`llmasr check`) and its
run's start-up (`llmasr train`, or llmasr.train.trainer.train called from Python) against the description as
`llmasr decode` reads it (exported_model_config), the base LLM of an adapter export looked for only when the
recipe reads the LLM from that folder:

- the features, when the recipe reads the folder's encoder, adaptor or CTC head: every frontend setting but the
  dither noise and a data filter (llmasr.models.encoder_spec.FRONTEND_REFINEMENTS), the CMVN by its numbers (not its
  path);
- the prompt and `model.adaptor.audio_token_cap`, when it reads the folder's adaptor or LLM;
- `model.llm.rotary_dtype` (the rotary frequencies the LLM's weights were trained with), when it reads its LLM.

A difference is refused, naming the recipe key, both values and the file, unless the recipe lists the key in
`model.differs_from_start` (a deliberate change, e.g. another task prompt): then it is a warning in train.log and
`llmasr check`'s report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from llmasr.config_io import ConfigError
from llmasr.config_paths import not_found
from llmasr.data.frontend import FrontendConfig, read_kaldi_cmvn
from llmasr.models.chat_template import read_chat_template
from llmasr.models.config import ModelConfig, PromptConfig
from llmasr.models.encoder_spec import FRONTEND_REFINEMENTS, encoder_frontend
from llmasr.models.exported import MODEL_FILE, ExportedModelError, exported_model_config
from llmasr.models.rotary import KEY as ROTARY_KEY

# Every feature setting but those a recipe may refine over any pretrained encoder (its dither noise, a data
# filter); the CMVN is compared here: the recipe restates the folder's frontend and cannot inherit its file.
FRONTEND_KEYS = tuple(f"model.encoder.frontend.{f.name}" for f in dataclasses.fields(FrontendConfig)
                      if f.name == "cmvn_file" or f.name not in FRONTEND_REFINEMENTS)  # fmt: skip
PROMPT_KEYS = tuple(f"model.prompt.{f.name}" for f in dataclasses.fields(PromptConfig))
CAP_KEY = "model.adaptor.audio_token_cap"
KNOWN_KEYS = (*FRONTEND_KEYS, CAP_KEY, *PROMPT_KEYS, ROTARY_KEY)
_FEATURE_READERS = ("model.encoder.init_from", "model.adaptor.init_from", "model.ctc.init_from")
_PROMPT_READERS = ("model.adaptor.init_from", "model.llm.path", "model.llm.adapter", "model.llm.tokenizer")
_LLM_READERS = ("model.llm.path", "model.llm.adapter")  # the weights an adapter export's base fingerprint guards


def start_folders(m: ModelConfig) -> dict[Path, list[str]]:
    """{folder holding llmasr_model.yaml: the recipe keys that read from it}."""
    reads = {
        "model.encoder.init_from": m.encoder.init_from,
        "model.adaptor.init_from": m.adaptor.init_from,
        "model.ctc.init_from": m.ctc.init_from,
        "model.llm.path": m.llm.path,
        "model.llm.adapter": m.llm.adapter,
        "model.llm.tokenizer": m.llm.tokenizer,
    }
    found: dict[Path, list[str]] = {}
    for key, path in reads.items():
        if path and (Path(path).parent / MODEL_FILE).is_file():
            if not Path(path).exists():  # a misspelt file in the folder: named, before its settings are compared
                raise ConfigError(not_found(key, "file", path))
            found.setdefault(Path(path).parent.resolve(), []).append(key)
    return found


def _cmvn(path: str | None):
    if not path:
        return None
    shift, scale = read_kaldi_cmvn(path)
    return np.asarray(shift).tolist(), np.asarray(scale).tolist()


def _template(text: str | None) -> str | None:
    """A chat template's text (a recipe may name a .jinja file, as PromptBuilder reads it)."""
    if text and len(text) < 4096 and "{" not in text and Path(text).is_file():
        return read_chat_template(Path(text))
    return text


def _own_tokenizer(m: ModelConfig, folder: Path) -> bool:
    """The recipe renders with the folder's own tokenizer (whose template the export or conversion wrote beside
    its description; the two texts may differ in what renders to nothing)."""
    tok = m.llm.tokenizer or m.llm.path
    return bool(tok) and Path(tok).resolve().parent == folder


def _frontend_differences(mine: FrontendConfig, theirs: FrontendConfig) -> list[tuple[str, object, object]]:
    out = []
    for key in FRONTEND_KEYS:
        name = key.rsplit(".", 1)[1]
        a, b = getattr(mine, name), getattr(theirs, name)
        if name == "cmvn_file":
            same = _cmvn(a) == _cmvn(b)  # the numbers applied, wherever the file lies
        else:
            same = a == b
        if not same:
            out.append((key, a, b))
    return out


def _prompt_differences(mine: ModelConfig, theirs: ModelConfig, folder: Path) -> list[tuple[str, object, object]]:
    out = []
    if mine.adaptor.audio_token_cap != theirs.adaptor.audio_token_cap:
        out.append((CAP_KEY, mine.adaptor.audio_token_cap, theirs.adaptor.audio_token_cap))
    for key in PROMPT_KEYS:
        name = key.rsplit(".", 1)[1]
        a, b = getattr(mine.prompt, name), getattr(theirs.prompt, name)
        if name == "chat_template":
            if a is None and _own_tokenizer(mine, folder):
                continue
            own = _tokenizer_template(mine) if a is None else None
            if own is not None and own[1] == _template(b):
                continue
            a, b = (_Said(f"None, so {own[0]}'s own template {own[1]!r}") if own else _template(a)), _template(b)
        if a != b:
            out.append((key, a, b))
    return out


class _Said(str):
    """A value shown as written (the errors show each value by its repr)."""

    __repr__ = str.__str__


def _tokenizer_template(m: ModelConfig) -> tuple[str, str] | None:
    """(tokenizer folder, its chat template's text): what a recipe that names no chat_template renders with; None
    when its tokenizer does not load (the build names why)."""
    from llmasr.models.tokenizer import load_tokenizer

    folder = m.llm.tokenizer or m.llm.path
    try:
        tokenizer = load_tokenizer(folder, trust_remote_code=m.llm.trust_remote_code)
        return str(folder), tokenizer.get_chat_template()
    except Exception:  # noqa: BLE001 - a tokenizer that does not load, or has no template: refused where it is built
        return None


def start_differences(m: ModelConfig) -> list[tuple[str, object, object, Path, list[str]]]:
    """(recipe key, recipe's value, folder's value, the folder's llmasr_model.yaml, the keys reading it) for every
    setting that shapes the model's input and differs from the folder the recipe starts from."""
    out = []
    for folder, readers in start_folders(m).items():
        # a recipe that takes the folder's adapter over a base LLM of its own (model.llm.path elsewhere: the folder
        # moved to another machine) is checked against that base, not the one the description names
        base = m.llm.path if "model.llm.path" not in readers and "model.llm.adapter" in readers else None
        try:  # nothing of the folder is run: its description is only read
            theirs = exported_model_config(
                folder, trust_remote_code=True, read_llm=any(r in _LLM_READERS for r in readers), base_llm=base
            )
        except ExportedModelError as err:
            raise ConfigError(f"{readers[0]}: reads {folder}, whose description cannot be read: {err}") from None
        diffs = []
        if any(r in _FEATURE_READERS for r in readers):
            diffs += _frontend_differences(encoder_frontend(m.encoder), encoder_frontend(theirs.encoder))
        if any(r in _PROMPT_READERS for r in readers):
            diffs += _prompt_differences(m, theirs, folder)
        if any(r in _LLM_READERS for r in readers) and m.llm.rotary_dtype != theirs.llm.rotary_dtype:
            diffs.append((ROTARY_KEY, m.llm.rotary_dtype, theirs.llm.rotary_dtype))
        out += [(key, a, b, folder / MODEL_FILE, readers) for key, a, b in diffs]
    return out


def check_start_folder(m: ModelConfig) -> list[str]:
    """Refuse a setting that differs from the folder the recipe starts from (ConfigError naming them all); return
    a warning for each difference the recipe allows by model.differs_from_start."""
    unknown = [k for k in m.differs_from_start if k not in KNOWN_KEYS]
    if unknown:
        raise ConfigError(
            f"model.differs_from_start: {unknown} are not settings compared with the starting model's; known: "
            f"{', '.join(KNOWN_KEYS)}"
        )
    diffs = start_differences(m)
    refused = [d for d in diffs if d[0] not in m.differs_from_start]
    if refused:
        folders = {path: readers for _, _, _, path, readers in refused}
        starts = "; ".join(f"{path}, read by {', '.join(readers)}" for path, readers in folders.items())
        lines = [
            f"{refused[0][0]}: the recipe differs from the model it starts from ({starts}) on what the model sees:"
        ]
        lines += [f"  {key}: the recipe has {a!r}, {path} has {b!r}" for key, a, b, path, _ in refused]
        lines.append(
            "  Fine-tuning would train the model on another input than it was trained and decodes with: set the "
            "recipe's values to the folder's, or list a key in model.differs_from_start to change it on purpose"
        )
        raise ConfigError("\n".join(lines))
    allowed = [
        f"{key}: {a!r} here, {b!r} in {path}, the model the recipe starts from (allowed by model.differs_from_start)"
        for key, a, b, path, _ in diffs
    ]
    same = sorted(set(m.differs_from_start) - {d[0] for d in diffs})
    if same:
        allowed.append(f"model.differs_from_start lists {same}, which agree with the starting model (or no "
                       "llmasr_model.yaml folder is read): nothing is changed by them")  # fmt: skip
    return allowed
