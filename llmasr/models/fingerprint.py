"""Fingerprints of the pretrained files a run starts from.

Checkpoints hold only the trained tensors (LoRA, adaptor, CTC head, unfrozen branches); the frozen base weights
are read again from the recipe's paths at export or resume. A fingerprint stored with each checkpoint lets those
steps refuse a base model that is not the one the run was trained on, instead of merging LoRA into the wrong LLM.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from llmasr.models.config import ModelConfig

# Small files hashed in full; weight files are identified by name and size (hashing 15 GB would take minutes).
_CONFIG_FILES = ("config.json", "config.yaml", "tokenizer.json", "tokenizer_config.json", "am.mvn")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def dir_fingerprint(path: str | Path | None) -> dict | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_dir():
        return {"missing": str(path)}
    out: dict = {"files": {}}
    for name in _CONFIG_FILES:
        f = path / name
        if f.is_file():
            out["files"][name] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in _WEIGHT_SUFFIXES:
            out["files"][f.name] = f"{f.stat().st_size} bytes"
    return out


def file_fingerprint(path: str | Path) -> dict:
    """One weight file (adaptor or CTC `init_from`): hashed in full when small, else by name and size."""
    path = Path(path)
    if not path.is_file():
        return {"missing": str(path)}
    size = path.stat().st_size
    ident = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if size <= _HASH_LIMIT else f"{size} bytes"
    return {"files": {path.name: ident}}


_HASH_LIMIT = 64 * 2**20


def base_fingerprint(model_cfg: ModelConfig) -> dict:
    """{"llm": ..., "encoder": ...} describing the pretrained directories named by the model section, plus
    "adaptor" / "ctc" for branches initialised from a file (`init_from`): a frozen one is read again from there."""
    out = {"llm": dir_fingerprint(model_cfg.llm.path), "encoder": dir_fingerprint(model_cfg.encoder.path)}
    for branch, init_from in (("adaptor", model_cfg.adaptor.init_from), ("ctc", model_cfg.ctc.init_from)):
        if init_from:  # absent otherwise, so fingerprints of runs without init_from read as before
            out[branch] = file_fingerprint(init_from)
    return out


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two base fingerprints ([] when they agree)."""
    diffs = []
    for branch in sorted(set(saved) | set(current)):
        a, b = saved.get(branch), current.get(branch)
        if a == b:
            continue
        if a is None or b is None:
            diffs.append(
                f"{branch}: trained {'without' if a is None else 'with'} a pretrained directory, "
                f"now {'without' if b is None else 'with'} one"
            )
            continue
        files_a, files_b = a.get("files", {}), b.get("files", {})
        if "missing" in b:
            diffs.append(f"{branch}: not found: {b['missing']}")
            continue
        for name in sorted(set(files_a) | set(files_b)):
            if files_a.get(name) != files_b.get(name):
                diffs.append(
                    f"{branch}/{name}: trained on {files_a.get(name, 'absent')}, now {files_b.get(name, 'absent')}"
                )
    return diffs
