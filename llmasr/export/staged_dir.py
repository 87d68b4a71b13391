"""Writing a model folder (`llmasr export`, `llmasr convert`) so that an interrupted write never looks complete.

Everything is written under a hidden sibling, `.NAME.partial`, and put in place at the end. OUT is resolved first:
`.` has no name of its own, so its sibling had been a folder inside it that the final replacement deleted, with the
model just written. An OUT folder that exists keeps its own inode (it may be the shell's current folder or a mount
point): what it held is removed (empty, or --overwrite said so) and the new files are moved in.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def staging_dir(out: Path, what: str = "partial") -> Path:
    """The hidden sibling of the resolved `out` a write goes into (`what`: its suffix), cleared of any leftover."""
    where = Path(out).expanduser().resolve()
    tmp = where.parent / f".{where.name}.{what}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` (see the module docstring)."""
    where = Path(out).expanduser().resolve()
    if where.is_dir():
        for old in where.iterdir():
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for new in tmp.iterdir():
            new.rename(where / new.name)
        tmp.rmdir()
        return
    if where.exists():
        where.unlink()
    tmp.rename(where)
