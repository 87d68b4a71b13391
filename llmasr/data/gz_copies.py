"""Decompressed copies of .gz manifests, which are read by offset: one per version of a file (its path, size and
modification time), in $LLMASR_CACHE_DIR/manifests or ~/.cache/llmasr/manifests, made by one process while the
others of a run wait for it, each with a record of the file it came from. A process that reads a copy holds a shared
lock on it until it exits (its DataLoader workers reopen the copy by path): `cached_copies` tells which are in use,
and `remove` leaves those alone."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from llmasr.atomic_file import write_atomic
from llmasr.errors import EVERY_RANK

log = logging.getLogger(__name__)
_copies_told: set[Path] = set()  # the .gz copies this process has said where they are
_held: dict[Path, int] = {}  # copy -> the descriptor whose shared lock says this process reads it
_holding = threading.Lock()
# A copy's name: its .gz's name less ".gz", then its version's tag (16 hex digits), by the rule llmasr always used.
# Nothing else in the folder is a copy (LLMASR_CACHE_DIR=data puts it in data/manifests, lhotse's recipes' folder)
COPY_NAME = re.compile(r"[^.].*\.[0-9a-f]{16}")
ABANDONED_AFTER_S = 600  # an unnamed partial copy unchanged this long was left by a process killed mid-way


def _fresh_lock_in_child() -> None:  # a forked DataLoader worker: a thread of its parent may have held the lock
    global _holding
    _holding = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_in_child)


class IncompleteGzip(ValueError):
    """A .gz file that does not decompress whole (a copy cut short, a plain file named .gz)."""


def cache_folder() -> Path:
    return Path(os.environ.get("LLMASR_CACHE_DIR") or Path.home() / ".cache" / "llmasr") / "manifests"


def decompressed(path: Path) -> Path:
    """The decompressed copy of the .gz manifest `path`, made on the first read of this version of the file and held
    (a shared lock) while this process lives; each process that opens it says where it is, once."""
    for _ in range(3):
        out = _decompressed_copy(path)
        if _hold(out):
            break
    else:  # removed three times between its making and its lock: something removes copies as they are made
        raise OSError(f"{path}: its decompressed copy {out} was removed as soon as it was made, three times")
    if out not in _copies_told:
        # by whichever process opens it, not the maker alone: rank 1 may make it for rank 0, whose INFO lines alone
        # show (EVERY_RANK: once a run). Each version's copy is kept: a run reading it reopens it in each worker
        _copies_told.add(out)
        log.info("%s: decompressed to %s (%.1f MB), read from there while the file is unchanged; copies of its "
                 "earlier versions stay there until `llmasr data cache --prune` removes them (LLMASR_CACHE_DIR moves "
                 "the folder)", path, out,
                 out.stat().st_size / 1e6, extra=EVERY_RANK)  # fmt: skip
    return out


def _decompressed_copy(path: Path) -> Path:
    st = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_folder() / f"{path.name[:-3]}.{tag}"
    if out.is_file():
        _record_found(out, path, st)
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
            return out if out.is_file() else _decompress(path, out, st)
        finally:  # one that comes later finds the copy before it looks for the lock
            lock_path.unlink(missing_ok=True)


def _decompress(path: Path, out: Path, st: os.stat_result) -> Path:
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".tmp-{out.name}.")  # named: its maker's lock tells it apart
    try:
        # readable as any file this process makes (mkstemp's are its owner's alone): a team's shared
        # LLMASR_CACHE_DIR had given the others a copy they could not open
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as dst, gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
        write_atomic(_record_path(out), _record(path, st))  # before the copy: never a copy without one
        os.replace(tmp, out)  # atomic: concurrent ranks all end with the same complete file
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, (EOFError, gzip.BadGzipFile, zlib.error)):  # a copy cut short, a plain file named .gz
            raise IncompleteGzip(f"not a complete gzip file ({err})") from None
        raise
    return out


def _umask() -> int:
    """This process's umask, read without setting it (os.umask sets it: another thread's file made meanwhile would
    get none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0o022


def _record_path(copy: Path) -> Path:
    return copy.with_name(f".{copy.name}.source")


def _record(path: Path, st: os.stat_result) -> str:
    return json.dumps({"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n"


def _record_found(copy: Path, path: Path, st: os.stat_result) -> None:
    """Record where `copy` came from where an llmasr that kept no records made it: its name is of this version of
    `path` (the same rule since the first), so it is current, not a copy `data cache --prune` would remove."""
    if _record_path(copy).exists():
        return
    try:
        write_atomic(_record_path(copy), _record(path, st))
    except OSError:  # a folder this process may read but not write: the copy is still read
        pass


def _hold(copy: Path) -> bool:
    """Take a shared lock on `copy` for the rest of this process; False where it was removed before the lock held
    (`remove` took it first), so that the caller makes it again."""
    with _holding:
        if copy in _held:
            return True
        try:
            fd = os.open(copy, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # a file system without locks: nothing can tell a copy in use there
            pass
        try:
            same = os.stat(copy).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        _held[copy] = fd
        return True


@dataclass(frozen=True)
class CachedCopy:
    """A file in the copies' folder. `state`: current (its .gz is unchanged), changed (the .gz has changed since: a
    copy of an earlier version), gone (no file at the .gz's path), unrecorded (made before llmasr recorded where
    copies come from), partial (left half-written by a process killed while it decompressed)."""

    path: Path
    size: int
    source: str | None
    state: str
    in_use: bool

    @property
    def stale(self) -> bool:
        return self.state != "current"


def cached_copies(folder: Path | None = None) -> list[CachedCopy]:
    """The copies in `folder` (the cache's, by default), largest first."""
    folder = folder or cache_folder()
    if not folder.is_dir():
        return []
    copies = []
    for entry in folder.iterdir():
        try:
            st = entry.stat()
        except FileNotFoundError:  # removed while listed
            continue
        if not entry.is_file():
            continue
        if entry.name.startswith(".tmp-"):
            if _abandoned(entry, st):
                copies.append(CachedCopy(entry, st.st_size, None, "partial", False))
        elif COPY_NAME.fullmatch(entry.name):  # the folder may hold other files: a corpus's own manifests
            source, state = _source_state(entry)
            copies.append(CachedCopy(entry, st.st_size, source, state, _in_use(entry)))
    return sorted(copies, key=lambda c: (-c.size, c.path.name))


def _abandoned(tmp: Path, st: os.stat_result) -> bool:
    """Whether the partial copy `tmp` was left by a process stopped while it decompressed: its maker holds the
    copy's lock until it is done (an unnamed one, from an llmasr before copies were named, by its age)."""
    made_as = tmp.name[len(".tmp-") :].rpartition(".")[0]
    if not made_as:
        return time.time() - st.st_mtime > ABANDONED_AFTER_S
    return not _locked(tmp.with_name(f".{made_as}.lock"))


def _locked(path: Path) -> bool:
    """Whether some process holds a lock on `path` (False where there is no such file, or no locks)."""
    try:
        fd = _open_to_lock(path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:  # no locks on this file system: nothing is known to hold it
        return False
    finally:
        os.close(fd)


def _open_to_lock(path: Path) -> int:
    """A descriptor of `path` that can take an exclusive lock: NFS makes flock a lock on the server that needs the
    file open for writing (read-only, every try failed, EBADF, and every copy looked free); read-only where this
    user may not write it (another's copy in a shared folder)."""
    try:
        return os.open(path, os.O_RDWR)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _source_state(copy: Path) -> tuple[str | None, str]:
    try:
        record = json.loads(_record_path(copy).read_text(encoding="utf-8"))
        source = str(record["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, "unrecorded"
    try:
        st = os.stat(source)
    except OSError:
        return source, "gone"
    return source, "current" if (st.st_size, st.st_mtime_ns) == (record["size"], record["mtime_ns"]) else "changed"


def _in_use(copy: Path) -> bool:
    """Whether some process holds a lock on `copy` (reads it, or is removing it)."""
    return copy in _held or _locked(copy)


def remove(copy: CachedCopy) -> bool:
    """Delete `copy` and its record unless a process reads it or no lock can tell (True when deleted). The exclusive
    lock held while deleting keeps out a run that would start reading it: that run finds it gone and makes it
    again."""
    if copy.state == "partial":
        copy.path.unlink(missing_ok=True)
        return True
    try:
        fd = _open_to_lock(copy.path)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # read by a running process, or no locks on this file system to tell: kept either way
        os.close(fd)
        return False
    try:
        copy.path.unlink(missing_ok=True)
        _record_path(copy.path).unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


def why_locks_fail(folder: Path | None = None) -> str | None:
    """None where `folder`'s file system keeps file locks, else why not (a shared file system mounted without them:
    Lustre without `flock`, some NFS): there a copy a running process reads cannot be told from one none reads."""
    folder = folder or cache_folder()
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".locks-") as probe:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return f"file locks fail there ({err.strerror or err})"
    return None


def remove_orphan_records(folder: Path | None = None) -> int:
    """Delete the records whose copies are gone (a copy deleted by hand); how many. A record is written just before
    its copy lands, so only one older than a minute counts."""
    folder = folder or cache_folder()
    removed = 0
    for record in folder.glob(".*.source") if folder.is_dir() else []:
        copy = record.with_name(record.name[1 : -len(".source")])
        if not COPY_NAME.fullmatch(copy.name):  # another's hidden file
            continue
        try:
            if not copy.exists() and time.time() - record.stat().st_mtime > 60:
                record.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
