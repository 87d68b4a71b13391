"""Writing a model folder (`llmasr export`, `llmasr convert`) so that an interrupted write never looks complete.

`output_dir` is the one reading of the OUT a user names: `~` expanded and the path resolved before any check, so
the folder checked (empty, not the run being exported) is the folder written. `.` has no name of its own: its
staging sibling had been a folder inside it that the final replacement deleted, with the model just written.

Everything is written under a hidden `.NAME.partial` beside OUT and put in place at the end by renames. An OUT
folder that exists keeps its own inode (it may be the shell's current folder or a mount point): what it held is
removed (empty, or --overwrite said so) and the new files are moved in. A mount point's sibling is on another
filesystem, where a rename fails after the old files are gone, so there the staging folder is `OUT/.partial`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def output_dir(out, *, overwrite: bool, flag: str, error=ValueError) -> Path:
    """The resolved folder `out` (`~` expanded), refused with `error` naming `flag` when it exists and is not empty
    (a staging folder an interrupted write left does not count) unless `overwrite`."""
    where = Path(out).expanduser().resolve()
    if where.exists():
        left = [p for p in where.iterdir() if p.name not in (".partial", ".stage")] if where.is_dir() else [where]
        if left and not overwrite:
            raise error(f"{flag} {out}: exists and is not empty; choose another {flag} or pass --overwrite")
    return where


def _mount_point(where: Path) -> bool:
    return where.is_dir() and os.stat(where).st_dev != os.stat(where.parent).st_dev


def staging_dir(out: Path, what: str = "partial") -> Path:
    """The hidden folder a write of `out` goes into (`what`: its suffix), cleared of any leftover: a sibling, or
    inside `out` when it is a mount point."""
    where = Path(out).expanduser().resolve()
    tmp = where / f".{what}" if _mount_point(where) else where.parent / f".{where.name}.{what}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` (see the module docstring)."""
    where = Path(out).expanduser().resolve()
    if where.is_dir():
        for old in where.iterdir():
            if old == tmp:
                continue
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for new in tmp.iterdir():
            new.rename(where / new.name)
        tmp.rmdir()
        return
    if where.exists():
        where.unlink()
    tmp.rename(where)
