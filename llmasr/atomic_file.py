"""Writing a text file so that a reader never sees half of it: the run's recipe.yaml, ds_config.json and
lr_schedule.csv (rewritten at every start and resume, and read back by resume, export and decode), the checkpoint
bookkeeping (llmasr_meta.json, latest, best.json) and a decode's outputs (hyp.txt, results.jsonl, wer.json). A full
disk or a kill during the write leaves the old file, or none, never a cut-short one that parses (a cut YAML mapping
reads as one whose later keys take their defaults; a cut hyp.txt, as a decode of fewer utterances). The rename is
synced with its folder, so after a power loss the name holds the new text or the old, never an empty file."""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def write_atomic(path: str | Path, text: str) -> None:
    """`text` into `path` through a hidden sibling that is flushed to disk, then renamed over `path` (the folder
    synced); the sibling is removed when the write fails."""
    with atomic_writer(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, binary: bool = False) -> Iterator[IO]:
    """A file to write `path` through, as write_atomic writes it (for a file written a piece at a time): UTF-8 text,
    or bytes with `binary`. An OSError of the write names `path` (the kernel's full disk or quota, reported at a
    write, flush or fsync, names no file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    sync_dir(path.parent)


@contextlib.contextmanager
def manifest_writer(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write a manifest's lines to, as atomic_writer writes it: gzipped where the name ends in .gz,
    as every manifest reader opens such a name (plain text under it was refused as "not a complete gzip file")."""
    with atomic_writer(path, binary=True) as f:
        if not str(path).endswith(".gz"):
            yield f
            return
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
            yield z


def sync_dir(path: str | Path) -> None:
    """Flush a folder's entries to disk: the files created or renamed in it keep their names after a power loss."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:  # a file system that cannot sync a folder (some network ones) orders its entries itself
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
