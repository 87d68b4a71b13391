"""The noise list of data.augment.noise: a jsonl of {"key", "source"} records, one recording a line."""

from __future__ import annotations

import json
from pathlib import Path

from llmasr.config_io import ConfigError


def read_noise_list(path: str | Path, *, must_exist: bool = False) -> list[str]:
    """Audio paths from a noise jsonl ({"key", "source"} a line; relative paths against the file's folder).
    `must_exist` (the check before training starts): a listed file that is not there, or whose header does not read
    as audio with samples, is refused, not skipped: the workers would leave it out, and with every file left out
    train without noise, saying so only in their logs."""
    from llmasr.data.audio import AudioError, probe_header  # read when a list is, not where the config is

    path = Path(path)
    base = path.resolve().parent
    out, missing = [], []
    with open(path, "rb") as f:
        for lineno, data in enumerate(f, start=1):
            try:
                raw = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"{path}:{lineno}: not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError as err:
                raise ConfigError(f"{path}:{lineno}: malformed JSON: {err}") from None
            src = rec.get("source") if isinstance(rec, dict) else None
            if not isinstance(src, str) or not src:
                raise ConfigError(f"{path}:{lineno}: a noise record needs 'source' (an audio path)")
            p = Path(src).expanduser()
            out.append(str(p if p.is_absolute() else base / p))
            if not must_exist:
                continue
            if not Path(out[-1]).is_file():
                missing.append(f"{path}:{lineno}: not found: {out[-1]}")
                continue
            try:
                probe_header(out[-1])
            except AudioError as err:
                missing.append(f"{path}:{lineno}: {err}")
    if not out:
        raise ConfigError(f"{path}: no noise files listed")
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(out)} noise files not found or not usable audio:\n  " + "\n  ".join(missing[:10])
        )
    return out
