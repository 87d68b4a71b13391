"""Reading a text or JSON file a person wrote (a manifest, a model folder's JSON, a hotword or noise list, a DeepSpeed
config): what a file that is not UTF-8, a malformed JSON line, a key given twice or a file of the wrong JSON type is
told, naming the file and, where it can, what to do. Every such file is read as UTF-8 whatever the locale
(tests/test_text_files.py)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmasr.config_io import ConfigError

# how a Git LFS pointer file begins: what a repository cloned without LFS holds in place of each large file
LFS_POINTER = b"version https://git-lfs"


def unique_keys(refuse: Callable[[str], Exception], pairs: list[tuple[str, Any]]) -> dict:
    """json.loads' object_pairs_hook (bound with functools.partial) for an object whose keys are all different: JSON
    keeps the last of a repeated key without a word. `refuse(key)`: the error for a repeated one, naming the file."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise refuse(key)
        seen.add(key)
    return dict(pairs)


def not_utf8(err: UnicodeDecodeError, path: str | Path | None = None) -> str:
    """What a file saved in a local code page (GBK, cp1252) is told, after its path: the encoding its bytes read in,
    where they read as Chinese in GB18030 (Chinese Windows' code page) or start with a UTF-16 byte order mark."""
    data = err.object if isinstance(err.object, bytes) else b""
    how = "save it as UTF-8"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        how = "it is UTF-16 (Windows Notepad's 'Unicode'): save it as UTF-8"
    elif _reads_as_chinese(data):
        name = Path(path).name if path is not None else "FILE"
        how = f"it reads as GB18030/GBK Chinese: convert it, e.g. iconv -f GB18030 -t UTF-8 {name} > {name}.utf8"
    return f"not UTF-8 text ({err.reason} at byte {err.start}); {how}"


def malformed_json(err: ValueError) -> str:
    """A JSON-lines record's parse error, placed in its line: json's own "line 2 column 1" counts the lines of the
    text it parsed (the record and its line end), which beside FILE:LINE reads as another line of the file."""
    if not isinstance(err, json.JSONDecodeError):
        return f"malformed JSON: {err}"
    end = len(err.doc.rstrip())
    where = "at the end of the line" if err.pos >= end else f"at column {err.pos + 1} of the line"
    return f"malformed JSON: {err.msg} {where}"


def _reads_as_chinese(data: bytes) -> bool:
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        return False
    # two Chinese characters at least: an accented letter of a cp1252 file before an ASCII one ("è" "s") decodes as one
    return sum("\u4e00" <= ch <= "\u9fff" for ch in text) >= 2


def text_line(raw: bytes, path: str | Path, n: int, error: Callable[[str], Exception] = ValueError) -> str:
    """Line `n` of the file `path` ("-": standard input) as every line-by-line reader takes it: UTF-8, its ends
    stripped, a BOM opening it (one that `cat` joined files saved with one) no part of it; a line that is not UTF-8
    is `error("FILE:LINE: why")`, with the encoding it reads in (GB18030, UTF-16)."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff").strip()
    except UnicodeDecodeError as err:
        raise error(f"{path}:{n}: {not_utf8(err, None if str(path) == '-' else path)}") from None


def json_lines(
    path: Path, error: Callable[[str], Exception] = ValueError, *, forms: str = ""
) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of each non-blank line of a JSON Lines file, gzipped where its name ends in .gz (as
    every manifest reader opens such a name); a line that is not UTF-8 or not JSON is `error("FILE:LINE: why")`, the
    latter ending in `forms` (what a line of this file holds), in brackets: a file of another kind (a plain list of
    paths) fails at its first line. A BOM opening a line (one that `cat` joined files saved with one) is no part of
    it."""
    aside = f" ({forms})" if forms else ""
    gz = str(path).endswith(".gz")
    n = 0
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                if not (text := text_line(raw, path, n, error)):
                    continue
                try:
                    value = json.loads(text)
                except ValueError as err:
                    raise error(f"{path}:{n}: {malformed_json(err)}{aside}") from None
                yield n, value
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # a copy cut short, a plain file named .gz
        if not gz:
            raise
        after = f", after line {n}" if n else ""
        raise error(f"{path}: not a complete gzip file ({err}{after})") from None


def key_text_lines(path: Path, error: Callable[[str], Exception] = ValueError) -> Iterator[tuple[int, str, str]]:
    """(line number, key, text) of each non-blank line of a "key text" file (Kaldi's text, wav.scp, utt2dur; hyp.txt;
    FunASR's 1best_recog/text): the key up to the first whitespace, the rest stripped ("" for a key alone). Each line
    is read by text_line (a BOM opening a line is no part of its key)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if line := text_line(raw, path, n, error):
                key, *text = line.split(maxsplit=1)
                yield n, key, text[0] if text else ""


def read_json(path: Path, kind: type, what: str) -> Any:
    """The JSON file `path`, which must hold a `kind` (dict, list): a ConfigError naming the file and `what` it is
    meant to be otherwise (unreadable, not UTF-8, not JSON, another type at the top)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON {what}: {err}") from err
    if not isinstance(data, kind):
        raise ConfigError(f"{path}: must hold a JSON {kind.__name__} ({what}), got {type(data).__name__}")
    return data
