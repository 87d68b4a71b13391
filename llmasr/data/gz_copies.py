"""Decompressed copies of .gz manifests, which are read by offset: one per version of a file (its path, size and
modification time), in $LLMASR_CACHE_DIR/manifests or ~/.cache/llmasr/manifests, made by one process while the
others of a run wait for it."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path

from llmasr.errors import EVERY_RANK

log = logging.getLogger(__name__)
_copies_told: set[Path] = set()  # the .gz copies this process has said where they are


class IncompleteGzip(ValueError):
    """A .gz file that does not decompress whole (a copy cut short, a plain file named .gz)."""


def _cache_dir() -> Path:
    return Path(os.environ.get("LLMASR_CACHE_DIR") or Path.home() / ".cache" / "llmasr") / "manifests"


def decompressed(path: Path) -> Path:
    """The decompressed copy of the .gz manifest `path`, made on the first read of this version of the file; each
    process that opens it says where it is, once."""
    out = _decompressed_copy(path)
    if out not in _copies_told:
        # by whichever process opens it, not the maker alone: rank 1 may make it for rank 0, whose INFO lines alone
        # show (EVERY_RANK: once a run). Each version's copy is kept: a run reading it reopens it in each worker
        _copies_told.add(out)
        log.info("%s: decompressed to %s (%.1f MB), read from there while the file is unchanged; copies of its "
                 "earlier versions stay there until removed (LLMASR_CACHE_DIR moves the folder)", path, out,
                 out.stat().st_size / 1e6, extra=EVERY_RANK)  # fmt: skip
    return out


def _decompressed_copy(path: Path) -> Path:
    st = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = _cache_dir() / f"{path.name[:-3]}.{tag}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # The ranks of a run open it at once: one decompresses, the others wait for its copy (each had written its own)
    lock_path = out.with_name(f".{out.name}.lock")
    with open(lock_path, "ab") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: each writes its own copy, the last one stays
            pass
        try:
            return out if out.is_file() else _decompress(path, out)
        finally:  # one that comes later finds the copy before it looks for the lock
            lock_path.unlink(missing_ok=True)


def _decompress(path: Path, out: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as dst, gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out)  # atomic: concurrent ranks all end with the same complete file
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, (EOFError, gzip.BadGzipFile, zlib.error)):  # a copy cut short, a plain file named .gz
            raise IncompleteGzip(f"not a complete gzip file ({err})") from None
        raise
    return out
