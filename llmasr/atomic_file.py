"""Writing a text file so that a reader never sees half of it: the run's recipe.yaml, ds_config.json and
lr_schedule.csv (rewritten at every start and resume, and read back by resume, export and decode), the checkpoint
bookkeeping (llmasr_meta.json, latest, best.json) and a decode's outputs (hyp.txt, results.jsonl, wer.json). A full
disk or a kill during the write leaves the old file, or none, never a cut-short one that parses (a cut YAML mapping
reads as one whose later keys take their defaults; a cut hyp.txt, as a decode of fewer utterances). The rename is
synced with its folder, so after a power loss the name holds the new text or the old, never an empty file."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def write_atomic(path: str | Path, text: str) -> None:
    """`text` into `path` through a hidden sibling that is flushed to disk, then renamed over `path` (the folder
    synced); the sibling is removed when the write fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    sync_dir(path.parent)


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
