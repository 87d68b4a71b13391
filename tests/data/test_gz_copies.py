"""The decompressed copies of .gz manifests: each records its .gz, a process reading one holds it, and `llmasr data
cache` lists them and removes the ones no longer current, never one a running process reads."""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from llmasr.commands import data_cache
from llmasr.data import gz_copies
from llmasr.data.manifest import Manifest

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")  # each test's own folder of copies


def write_gz(path, n: int):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"key": f"u{i}", "source": "a.wav", "target": "x"}) + "\n" for i in range(n))
    return path


def read_elsewhere(path):
    """Open the manifest in a process that then exits: its copy is made and no longer held."""
    code = "import sys; from llmasr.data.manifest import Manifest; print(len(Manifest.open(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr


def reading_elsewhere(path) -> subprocess.Popen:
    """A process that opens the manifest and holds on (a run reading it): it prints "open" once it has."""
    code = ("import sys, time; from llmasr.data.manifest import Manifest; Manifest.open(sys.argv[1]); "
            "print('open', flush=True); time.sleep(120)")  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                            env=os.environ.copy())  # fmt: skip


def states():
    return sorted((c.state, c.in_use, c.source) for c in gz_copies.cached_copies())


def cache(capsys, *args):
    rc = data_cache.main(list(args))
    return rc, capsys.readouterr().out


def test_each_version_of_a_gz_is_listed_with_its_source_and_prune_removes_the_earlier(tmp_path, capsys):
    src = write_gz(tmp_path / "cuts.jsonl.gz", 3)
    read_elsewhere(src)
    assert states() == [("current", False, str(src.resolve()))]
    write_gz(src, 5)  # the corpus grew: a second version, a second copy
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    read_elsewhere(src)
    assert states() == [("changed", False, str(src)), ("current", False, str(src))]
    rc, out = cache(capsys)
    assert rc == 0 and "2 file(s)" in out and "changed" in out and f"<- {src}" in out
    assert "`llmasr data cache --prune` removes the 1 not current" in out
    rc, out = cache(capsys, "--prune", "--dry-run")
    assert "would remove 1 file(s)" in out and len(gz_copies.cached_copies()) == 2
    rc, out = cache(capsys, "--prune")
    assert rc == 0 and "removed 1 file(s)" in out
    assert states() == [("current", False, str(src))]
    assert len(Manifest.open(src)) == 5  # read from the copy that stayed
    # its record went with it: the folder holds the current copy, its record, nothing else of the removed one
    left = sorted(p.name for p in gz_copies.cache_folder().iterdir() if not p.name.endswith(".lock"))
    assert len(left) == 2 and [n for n in left if n.endswith(".source")], left


def test_a_copy_a_running_process_reads_is_kept_by_prune_and_clear(tmp_path, capsys):
    src = write_gz(tmp_path / "m.jsonl.gz", 2)
    holder = reading_elsewhere(src)
    try:
        assert holder.stdout.readline().strip() == "open"
        src.unlink()  # the run's .gz is gone now, but the run still reads the copy
        assert states() == [("gone", True, str(src.resolve()))]
        rc, out = cache(capsys, "--clear")
        assert rc == 0 and "removed 0 file(s)" in out and "kept 1 that a running process reads" in out
        assert len(gz_copies.cached_copies()) == 1
    finally:
        holder.kill()
        holder.wait()
    rc, out = cache(capsys, "--prune")
    assert "removed 1 file(s)" in out and gz_copies.cached_copies() == []


def test_this_process_holds_the_copies_it_read(tmp_path):
    """A Manifest's DataLoader workers reopen the copy by path: the process that opened it keeps it from removal."""
    src = write_gz(tmp_path / "m.jsonl.gz", 2)
    Manifest.open(src)
    (copy,) = gz_copies.cached_copies()
    assert copy.in_use and not gz_copies.remove(copy) and copy.path.is_file()


def test_a_copy_removed_between_its_making_and_its_lock_is_made_again(tmp_path, monkeypatch):
    """`llmasr data cache --clear` takes a copy a starting run has just found: the run finds it gone once it holds
    it and makes it again, rather than reading a deleted file by path in its workers."""
    src = write_gz(tmp_path / "m.jsonl.gz", 4)
    made = gz_copies._decompressed_copy
    calls = []

    def taken_at_once(path):
        out = made(path)
        if not calls:
            (copy,) = gz_copies.cached_copies()
            assert gz_copies.remove(copy)
        calls.append(out)
        return out

    monkeypatch.setattr(gz_copies, "_decompressed_copy", taken_at_once)
    assert len(Manifest.open(src)) == 4
    assert len(calls) == 2 and calls[1].is_file()
    assert states() == [("current", True, str(src.resolve()))]


def test_partial_unrecorded_and_orphaned_files_are_pruned(tmp_path, capsys):
    src = write_gz(tmp_path / "m.jsonl.gz", 2)
    read_elsewhere(src)
    folder = gz_copies.cache_folder()
    (copy,) = gz_copies.cached_copies()
    record = folder / f".{copy.path.name}.source"
    record.unlink()  # a copy made before records were kept
    old = time.time() - 2 * gz_copies.ABANDONED_AFTER_S
    # by an llmasr that did not name them: a decompression killed long ago, one perhaps under way
    partial, fresh = folder / ".tmp-abc", folder / ".tmp-def"
    partial.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y")
    os.utime(partial, (old, old))
    # named after their copies: one whose maker was killed (its lock left, held by none), one whose maker holds it
    killed = folder / ".tmp-big.jsonl.00aa11bb22cc33dd.k1"
    killed.write_bytes(b"z" * 5)
    (folder / ".big.jsonl.00aa11bb22cc33dd.lock").touch()
    making = folder / ".tmp-big.jsonl.99aa11bb22cc33dd.m2"
    making.write_bytes(b"w")
    lock = folder / ".big.jsonl.99aa11bb22cc33dd.lock"
    maker = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(120)", str(lock)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    orphan = folder / ".gone.jsonl.0123456789abcdef.source"  # its copy deleted by hand
    orphan.write_text("{}", encoding="utf-8")
    os.utime(orphan, (old, old))
    try:
        assert maker.stdout.readline().strip() == "locked"
        assert states() == [("partial", False, None), ("partial", False, None), ("unrecorded", False, None)]
        rc, out = cache(capsys, "--prune")
    finally:
        maker.kill()
        maker.wait()
    assert rc == 0 and "removed 3 file(s)" in out
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == sorted([".tmp-def", making.name])


def test_the_verb_lists_an_empty_folder_and_refuses_a_lone_dry_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMASR_CACHE_DIR", str(tmp_path / "elsewhere"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "llmasr", "data", "cache"], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert (
        out.returncode == 0 and out.stdout.strip() == f"{tmp_path / 'elsewhere' / 'manifests'}: no decompressed copies"
    )
    out = subprocess.run([sys.executable, "-m", "llmasr", "data", "cache", "--dry-run"], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "--dry-run goes with --prune or --clear" in out.stderr


@pytest.mark.parametrize("flags", [["--prune", "--clear"]])
def test_prune_and_clear_are_one_or_the_other(flags, capsys):
    with pytest.raises(SystemExit) as err:
        data_cache.main(flags)
    assert err.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_on_a_file_system_without_locks_nothing_is_removed(tmp_path, capsys, monkeypatch):
    src = write_gz(tmp_path / "cuts.jsonl.gz", 3)
    read_elsewhere(src)
    write_gz(src, 5)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    read_elsewhere(src)  # a copy of the earlier version, which a run started before the change may still read

    def no_locks(fd, op):  # Lustre mounted without flock, NFS without its lock service
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(gz_copies.fcntl, "flock", no_locks)
    rc = data_cache.main(["--prune"])
    err = capsys.readouterr().err
    assert rc == 1 and "file locks fail there (No locks available)" in err and "nothing removed" in err
    assert len(gz_copies.cached_copies()) == 2  # the lock that tells a copy in use had been skipped, the copy removed
    (old,) = [c for c in gz_copies.cached_copies() if c.stale]
    assert not gz_copies.remove(old) and old.path.is_file()


def test_a_copy_an_earlier_llmasr_made_is_recorded_when_read_again(tmp_path):
    src = write_gz(tmp_path / "cuts.jsonl.gz", 3)
    read_elsewhere(src)
    (copy,) = gz_copies.cached_copies()
    gz_copies._record_path(copy.path).unlink()  # as an llmasr that kept no record left it
    assert states() == [("unrecorded", False, None)]
    read_elsewhere(src)  # it had stayed unrecorded, so --prune removed it though it is of the .gz as it is
    assert states() == [("current", False, str(src.resolve()))]


def test_on_nfs_a_copy_in_use_is_told_from_one_not_in_use(tmp_path, capsys, monkeypatch):
    """NFS makes flock a lock on the server, and an exclusive one needs the file open for writing (flock(2), NFS
    details): a read-only descriptor's try fails with EBADF whether or not a process reads the copy."""
    src = write_gz(tmp_path / "m.jsonl.gz", 2)
    read_elsewhere(src)
    write_gz(src, 3)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    real_flock = gz_copies.fcntl.flock

    def nfs_flock(fd, op):
        fd = fd if isinstance(fd, int) else fd.fileno()
        if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(fd, op)

    holder = reading_elsewhere(src)
    try:
        assert holder.stdout.readline().strip() == "open"
        monkeypatch.setattr(gz_copies.fcntl, "flock", nfs_flock)
        assert states() == [("changed", False, str(src)), ("current", True, str(src))]  # none had been in use
        rc, out = cache(capsys, "--clear")
        assert rc == 0 and "removed 1 file(s)" in out and "kept 1 that a running process reads" in out
        assert states() == [("current", True, str(src))]
    finally:
        holder.kill()
        holder.wait()


def test_a_process_forked_while_another_thread_takes_a_copy_can_take_copies(tmp_path):
    """A DataLoader worker is forked from a process whose other thread may be opening a manifest at that moment: the
    child inherits the lock around the held copies taken, by a thread it does not have, and had waited forever."""
    import multiprocessing
    import threading

    src = write_gz(tmp_path / "m.jsonl.gz", 2)
    taken, release = threading.Event(), threading.Event()

    def opening():
        with gz_copies._holding:
            taken.set()
            release.wait(60)

    thread = threading.Thread(target=opening)
    thread.start()
    try:
        taken.wait(60)
        child = multiprocessing.get_context("fork").Process(target=gz_copies.decompressed, args=(src,))
        child.start()
        child.join(30)
        stuck = child.is_alive()
        if stuck:
            child.kill()
            child.join()
    finally:
        release.set()
        thread.join()
    assert not stuck and child.exitcode == 0


def test_files_that_are_no_copies_are_neither_listed_nor_removed(tmp_path, capsys):
    """LLMASR_CACHE_DIR=data puts the copies in data/manifests, where lhotse's recipes write a corpus's own
    manifests: those are no copies of llmasr's, and --prune and --clear had removed them ("unrecorded")."""
    src = write_gz(tmp_path / "m.jsonl.gz", 2)
    read_elsewhere(src)
    folder = gz_copies.cache_folder()
    own = [folder / "librispeech_cuts_train-clean-100.jsonl.gz", folder / "train.jsonl", folder / ".notes.source"]
    old = time.time() - 3600
    for path in own:
        path.write_text("mine\n", encoding="utf-8")
        os.utime(path, (old, old))  # a hidden file named as a record is not one: no copy of its name is missing
    assert states() == [("current", False, str(src.resolve()))]
    rc, out = cache(capsys, "--clear")
    assert rc == 0 and "removed 1 file(s)" in out and all(path.is_file() for path in own)


def test_a_copy_is_readable_as_the_files_its_maker_makes(tmp_path):
    """mkstemp makes a file its owner's alone: a team's shared LLMASR_CACHE_DIR gave the others a copy they could not
    open. A copy now has the mode any file this process makes gets (its umask)."""
    src = write_gz(tmp_path / "m.jsonl.gz", 2)
    old = os.umask(0o027)
    try:
        Manifest.open(src)
    finally:
        os.umask(old)
    (copy,) = gz_copies.cached_copies()
    assert copy.path.stat().st_mode & 0o777 == 0o640
