"""Writing a model folder (`llmasr export`, `llmasr convert`) so that an interrupted write never looks complete.

`output_dir` is the one reading of the OUT a user names: `~` expanded and the path resolved before any check, so
the folder checked (empty, writable, not the run being exported) is the folder written. `.` has no name of its own: its
staging sibling had been a folder inside it that the final replacement deleted, with the model just written.

Everything is written under a hidden `.NAME.partial` beside OUT and put in place at the end by renames. An OUT
folder that exists keeps its own inode (it may be the shell's current folder or a mount point): what it held
(nothing, or --overwrite said so) moves aside into `.NAME.old`, completion marker first, the new files move in,
marker last, and the old ones are deleted; a move that fails puts OUT back as it was. A mount point's sibling is on
another filesystem, where the renames fail, and a folder of one's own inside a shared one has no sibling one may
make, so there the staging folder is `OUT/.partial` (and `OUT/.old`, `OUT/.lock`).

`writing(OUT)` holds a lock file beside OUT (`.NAME.lock`) for the whole write: a second export or conversion to the
same OUT while the first runs would clear and fill the same staging folder, so it is refused at once instead.
Meanwhile SIGTERM (a scheduler's time limit, `kill`) or SIGUSR1 (SLURM's notice before it) stops the write as Ctrl-C
does, by an exception: the staging folder is removed and OUT left as it was, where the signal's default had ended
the process with a model-sized hidden folder left.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
from pathlib import Path

from llmasr.errors import stop_signals_raise, write_error

log = logging.getLogger(__name__)


def output_dir(out, *, overwrite: bool, flag: str, error=ValueError) -> Path:
    """The resolved folder `out` (`~` expanded), refused with `error` naming `flag` when it exists and is not empty
    (a staging folder an interrupted write left does not count) unless `overwrite`."""
    where = Path(out).expanduser().resolve()
    if where.exists() and not where.is_dir():  # --overwrite replaces a folder, never a file
        raise error(f"{flag} {out}: a file, not a folder; choose another {flag}")
    if where.exists():
        hidden = (".partial", ".stage", ".lock", ".old")
        left = [p for p in where.iterdir() if p.name not in hidden] if where.is_dir() else [where]
        if left and not overwrite:
            raise error(f"{flag} {out}: exists and is not empty; choose another {flag} or pass --overwrite")
        if not os.access(where, os.W_OK | os.X_OK):  # the files move in at the very end: refused before the work
            raise error(f"{flag} {out}: no permission to write in this folder; choose another {flag}")
    return where


def _mount_point(where: Path) -> bool:
    return where.is_dir() and os.stat(where).st_dev != os.stat(where.parent).st_dev


def _inside(where: Path) -> bool:
    """OUT's companions go inside it: a mount point, or a folder in a parent this process may not write in."""
    return _mount_point(where) or (where.is_dir() and not os.access(where.parent, os.W_OK | os.X_OK))


def _hidden(out: Path, what: str) -> Path:
    """OUT's hidden companion `what`: a sibling, or inside OUT (_inside)."""
    where = Path(out).expanduser().resolve()
    return where / f".{what}" if _inside(where) else where.parent / f".{where.name}.{what}"


def staging_dir(out: Path, what: str = "partial") -> Path:
    """The hidden folder a write of `out` goes into (`what`: its suffix), cleared of any leftover: a sibling, or
    inside `out` when it is a mount point. Call it inside `writing(out)`."""
    tmp = _hidden(out, what)
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


@contextlib.contextmanager
def writing(out: Path, *, flag: str, error=ValueError, writer: str = "export or conversion", lockless_ok=False):
    """Hold OUT's lock while the block writes it; refused with `error` naming `flag` when another process holds it
    (another `writer`: `llmasr decode` holds its --output's too). The lock file goes when the block ends; one that a
    killed writer left is taken over (the lock died with it). `lockless_ok`: on a filesystem without file locks (a
    Lustre mount without flock) the block runs unlocked, with a warning, where it would stop."""
    path = _hidden(out, "lock")
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]  # removed again if nothing is written
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError as err:  # before any work, naming what the user gave rather than the lock file
            if err.filename == str(path) and os.path.lexists(path):  # the lock file refuses, not the folder
                raise error(
                    f"{flag} {out}: its lock file {path} is not this user's to open (another user's {writer} holds "
                    f"it or left it): remove it if none is running, or choose another {flag}"
                ) from None
            denied = path.parent if err.filename in (None, str(path)) else Path(err.filename).parent
            raise error(f"{flag} {out}: no permission to write in {denied}; choose another {flag}") from None
        except (FileExistsError, NotADirectoryError):  # a file where a folder of the path must be
            file = next(d for d in reversed([path.parent, *path.parent.parents]) if d.exists() and not d.is_dir())
            raise error(f"{flag} {out}: {file} is a file, not a folder; choose another {flag}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise error(
                f"{flag} {out}: another {writer} is writing it now (it holds {path}); wait for it to finish or "
                f"choose another {flag}"
            ) from None
        except OSError as err:  # ENOSYS, ENOLCK, EOPNOTSUPP: this filesystem keeps no locks
            if not lockless_ok:
                raise
            log.warning("%s %s: no file lock on this filesystem (%s): another %s into it is not refused at its start",
                        flag, out, err.strerror or err, writer)  # fmt: skip
            break
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a file its last holder removed meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with stop_signals_raise(f"while writing {out}"):
            yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        for folder in made:  # innermost first; a refused write leaves no folders of a mistyped OUT behind
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def discarded_on_error(*folders: Path):
    """The block writes `folders` (the first: the staging folder OUT is published from). On an error they are removed,
    so a half-written model never stays, and a full disk is raised as an OSError naming the first folder and its free
    space, read before the removal frees it (safetensors reports the errno only in its text)."""
    try:
        yield
    except BaseException as err:
        full = write_error(folders[0], err) if isinstance(err, Exception) else None
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        if full is not None:
            raise full from err
        raise


def readable_as_umask_says(tmp: Path) -> None:
    """Give every file under `tmp` the mode a plain open() gives a new file there (0666 less the umask). safetensors
    writes its files 0600 whatever the umask (a temporary file renamed into place), so a model folder meant for a
    team or a container's other user was readable by its writer alone. The mode is read off a probe file: asking
    the process for its umask means setting it, which other threads would see."""
    probe = tmp / ".mode-probe"
    probe.touch()
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    for path in tmp.rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)


def publish(tmp: Path, out: Path, marker: str) -> None:
    """Put the finished folder `tmp` at `out` (see the module docstring). `marker`: the file whose presence says the
    folder is complete (its reader looks for it first): an existing OUT's goes first and the new one comes last, so
    an interrupted move never looks complete; what OUT held waits in a hidden folder until the new files are all in,
    and a move that fails puts it back. What OUT held is then deleted: the caller checks OUT with output_dir again
    first (files may have reached an empty OUT while the model was written)."""
    readable_as_umask_says(tmp)
    where = Path(out).expanduser().resolve()
    if not where.exists():  # (output_dir refused a file there)
        tmp.rename(where)  # one rename: complete or not there
        return
    aside = _hidden(out, "old")
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    olds = sorted((p for p in where.iterdir() if p not in (tmp, aside) and p.name != ".lock"),
                  key=lambda p: p.name != marker)  # fmt: skip
    news = sorted(tmp.iterdir(), key=lambda p: p.name == marker)
    moved_old, moved_new = [], []
    try:
        for old in olds:
            old.rename(aside / old.name)
            moved_old.append(old.name)
        for new in news:
            new.rename(where / new.name)
            moved_new.append(new.name)
    except BaseException:  # OUT as it was: the new files back into staging (the caller removes it), the old ones back
        for name in reversed(moved_new):
            with contextlib.suppress(OSError):
                (where / name).rename(tmp / name)
        for name in reversed(moved_old):
            with contextlib.suppress(OSError):
                (aside / name).rename(where / name)
        with contextlib.suppress(OSError):
            aside.rmdir()
        raise
    tmp.rmdir()
    shutil.rmtree(aside)
