"""Who may use a run directory: one run at a time, and a fresh run never mixes with an earlier one's checkpoints.

    lock = claim_run_dir(run_dir, rank=rank, resume=resume, overwrite=overwrite)   # every rank calls it
    ...
    write_run_files(run_dir, recipe, ds_config, schedules, start, total)           # rank 0, once the run is sound
    lock.release()                                                                  # normal exit and error alike

Rank 0 takes RUN_DIR/.lock (pid, host and the process's start time, created atomically) and checks the folder; the
other ranks wait for its verdict, so a refusal reaches every rank and none hangs in a later collective; then every
rank checks that it sees the folder rank 0 locked (node-local disks give each node its own; llmasr.train.shared_dir).
A lock whose process is gone (same host, pid not running or reused by another process) is stale: it is reported and
taken over. A lock from another host cannot be checked and is refused with its owner named. What the folder holds
(names, tags, `latest`, the checkpoint meta) is llmasr.run_dir's.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from llmasr import run_dir as ck
from llmasr.config_io import ConfigError, dump_yaml
from llmasr.config_paths import output_problem
from llmasr.train.process_group import all_gather_object, barrier, broadcast_object
from llmasr.train.progress import plot_lr, write_lr_csv
from llmasr.train.resume_recipe import check_resume_recipe
from llmasr.train.shared_dir import check_shared, plant_token


class RunDirError(ConfigError):
    """A run directory refused. `quiet` on the ranks that only learned of it from rank 0 (which reports it)."""

    def __init__(self, message: str, *, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet

    def reported(self) -> None:
        """Every rank calls this once rank 0 has printed the message: the deepspeed launcher kills all ranks when
        the first one exits non-zero, which could otherwise be a quiet rank, before rank 0 has said why."""
        barrier()


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22), or None where /proc
    does not tell. Together with the pid it names one process: a pid reused after a crash has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")  # comm: any bytes
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None) -> bool:
    """Whether the process that wrote a lock still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = process_start(pid)
    return start is None or now is None or now == start


def _owner_text(owner: dict) -> str:
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('since', '?')}"


class RunLock:
    """RUN_DIR/.lock held by this process."""

    def __init__(self, path: Path, owner: dict, notes: list[str]):
        self.path = path
        self.owner = owner
        self.notes = notes  # what taking it involved (a stale lock taken over), for the run's log

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunLock:
        run_dir = Path(run_dir)
        check_output_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / ck.LOCK_FILE
        pid = os.getpid()
        owner = {"pid": pid, "host": socket.gethostname(), "start": process_start(pid), "since": time.ctime()}
        tmp = run_dir / f"{ck.LOCK_FILE}.tmp{pid}"
        tmp.write_text(json.dumps(owner), encoding="utf-8")
        notes: list[str] = []
        try:
            while not _create(path, tmp):
                held = _read_lock(path)
                if held is None:
                    continue  # released between our attempt and our read: try again
                _refuse_unless_stale(path, held, owner)
                if _remove_if_still(path, held, run_dir / f"{ck.LOCK_FILE}.stale{pid}"):
                    notes.append(f"{path}: stale lock of {_owner_text(held)}, which is not running; taken over")
            return cls(path, owner, notes)
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent)."""
        if _read_lock(self.path) == self.owner:
            self.path.unlink(missing_ok=True)


def check_output_dir(run_dir: Path) -> None:
    """RunDirError where train.output_dir is no folder a run can make or write (a file, under a file or a folder
    it may not write): the lock's first step, and `llmasr check`'s."""
    if problem := output_problem(run_dir):
        raise RunDirError(f"train.output_dir {run_dir}: {problem}")


def check_lock(run_dir: str | Path) -> str | None:
    """What `llmasr train` would meet at RUN_DIR/.lock, without taking it (`llmasr check`): RunDirError for a
    live lock or one of another host, as acquire refuses them; a note for a stale one it would take over."""
    check_output_dir(Path(run_dir))
    path = Path(run_dir) / ck.LOCK_FILE
    held = _read_lock(path)
    if held is None:
        return None
    _refuse_unless_stale(path, held, {"host": socket.gethostname()})
    return f"{path}: stale lock of {_owner_text(held)}, which is not running; training takes it over"


def _create(path: Path, tmp: Path) -> bool:
    """Create `path` with the content of `tmp` unless it exists (then False)."""
    try:
        os.link(tmp, path)  # atomic, and the lock is complete the moment it exists
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then write
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tmp.read_text(encoding="utf-8"))
        return True


def _remove_if_still(path: Path, held: dict, grave: Path) -> bool:
    """Remove the lock at `path` if it is still the one `held` judged stale. Another start may have taken that one
    over since it was read: its fresh lock is moved aside atomically, seen not to be the stale one, and put back."""
    try:
        os.replace(path, grave)
    except FileNotFoundError:
        return False
    try:
        if _read_lock(grave) == held:
            return True
        _create(path, grave)  # a third start that locked the folder meanwhile keeps it; this start then refuses
        return False
    finally:
        grave.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        owner = None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        raise RunDirError(f"{path}: not a lock llmasr wrote ({text[:80]!r}); if no run uses the folder, delete it")
    return owner


def _refuse_unless_stale(path: Path, held: dict, me: dict) -> None:
    where = path.parent
    if held.get("host") != me["host"]:
        raise RunDirError(
            f"{where} is in use by a run on another host ({_owner_text(held)}; {path}). Its process cannot be checked "
            f"from here: if that run is over, delete {path}"
        )
    if process_alive(held["pid"], held.get("start")):  # this very process included: one run per folder
        raise RunDirError(
            f"{where} is in use by another run ({_owner_text(held)}; {path}): wait for it to end, or set another "
            "train.output_dir"
        )


def earlier_checkpoints(run_dir: str | Path) -> list[str]:
    """Checkpoint tags, `latest` and best.json that an earlier run left in RUN_DIR/checkpoints. A tag folder without
    its meta is a first save cut short (a job killed while saving), no run to continue: `train.resume: auto` then
    starts afresh, and the save of that update clears it."""
    ckpt_dir = ck.checkpoints_dir(run_dir)
    if not ckpt_dir.is_dir():
        return []
    names = (p.name for p in ckpt_dir.iterdir())
    return sorted(
        n
        for n in names
        if (ck.update_of(n) is not None and (ckpt_dir / n / ck.META).is_file()) or n in (ck.LATEST, ck.BEST)
    )


def clear_earlier_run(run_dir: str | Path) -> list[str]:
    """--overwrite: remove what the earlier run wrote and a new run would otherwise mix with (checkpoints,
    train.log, TensorBoard events). The recipe, DeepSpeed JSON and lr schedule are rewritten by the new run; files
    the trainer does not write (exports, decodes) are left. Returns the removed names."""
    run_dir = Path(run_dir)
    removed = []
    for name in (ck.CHECKPOINTS, ck.TRAIN_LOG, ck.TENSORBOARD):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def check_fresh_run(run_dir: Path, overwrite: bool, *, source: Path | None = None, clear: bool = True) -> list[str]:
    """A run that does not continue this folder's own checkpoints (fresh, or resumed from `source` in another
    folder): refuse a folder holding checkpoints, unless `overwrite` (then clear it; `clear` False, as `llmasr
    check` asks: only say what would go). Returns notes for the log."""
    earlier = earlier_checkpoints(run_dir)
    if earlier and not overwrite:
        tags = [n for n in earlier if ck.update_of(n) is not None]
        latest = ck.latest(ck.checkpoints_dir(run_dir))
        what = "a new run" if source is None else f"continuing {source} here"
        raise RunDirError(
            f"{run_dir} holds an earlier run's checkpoints ({len(tags)} checkpoint(s), latest {latest}): {what} "
            "would overwrite and mix with them. "
            + ("Continue that run with --resume, start" if source is None else "Start")
            + " over with --overwrite (deletes them), or set another train.output_dir"
        )
    if overwrite and not clear:
        n = sum(ck.update_of(name) is not None for name in earlier)
        return [f"--overwrite: would delete the earlier run's {n} checkpoint(s), train.log and TensorBoard events in "
                f"{run_dir}"] if earlier else []  # fmt: skip
    if overwrite:
        removed = clear_earlier_run(run_dir)
        if removed:
            return [f"--overwrite: removed {', '.join(removed)} of an earlier run from {run_dir}"]
    return _set_aside_logs(run_dir, clear) if not earlier else []


def _set_aside_logs(run_dir: Path, move: bool) -> list[str]:
    """The train.log and TensorBoard events of an earlier run that saved no checkpoint (it died first, or its start
    was refused): moved to NAME.before-STAMP, so that this run's log and curves are its own (the curves of both had
    been drawn over the same updates). `move` False: only say so."""
    left = [n for n in (ck.TRAIN_LOG, ck.TENSORBOARD) if (run_dir / n).exists()]
    if not left:
        return []
    if not move:
        return [f"would move aside {', '.join(left)} of an earlier run without checkpoints in {run_dir}"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for name in left:
        target = run_dir / f"{name}.before-{stamp}"
        (run_dir / name).rename(target)
        moved.append(target.name)
    return [f"moved aside the {' and '.join(left)} of an earlier run without checkpoints: {', '.join(moved)}"]


def check_run_start(
    run_dir: Path, resume: str | None, overwrite: bool, recipe=None, *, clear: bool = True, key: str = "--resume"
) -> list:
    """Rank 0, holding the lock: may a run (fresh, or resumed from `resume` with `recipe`) start in `run_dir`?
    Clears it when `overwrite` allows (and `clear`: `llmasr check` does not). Returns notes for the run's log."""
    if resume is None:
        return check_fresh_run(run_dir, overwrite, clear=clear)
    load_dir, tag = ck.resolve_resume(resume, run_dir, key)
    where = load_dir.resolve()  # the run's checkpoints folder, or one a resume set aside in it
    own = (ck.run_dir_of(where) if ck.abandoned_dir(where) else where.parent) == run_dir.resolve()
    if overwrite and own:
        raise RunDirError(
            f"--overwrite would delete {load_dir / tag}, which --resume continues from: give only one of them"
        )
    notes = check_resume_recipe(recipe, load_dir) if recipe is not None else []  # before anything is deleted
    if not own:
        notes += check_fresh_run(run_dir, overwrite, source=load_dir / tag, clear=clear)
    return notes


def claim_run_dir(
    run_dir: str | Path, *, rank: int, resume: str | None, overwrite: bool, recipe=None, key: str = "--resume"
) -> RunLock | None:
    """Every rank calls this after the process group exists. Rank 0 takes the lock and checks (or, with
    `overwrite`, clears) the folder, and for a resume compares `recipe` with the run's (llmasr.train.resume); its
    verdict is broadcast, so on a refusal every rank raises RunDirError (only rank 0's is meant to be printed).
    Then every rank checks that it sees the folder rank 0 locked and would start as rank 0 does (`resume`: what
    this rank made of train.resume; llmasr.train.shared_dir). Returns the lock on rank 0, None elsewhere."""
    run_dir = Path(run_dir)
    lock, error, cause, token = None, None, None, None
    if rank == 0:
        try:
            lock = RunLock.acquire(run_dir)
            lock.notes += check_run_start(run_dir, resume, overwrite, recipe, key=key)
            ck.checkpoints_dir(run_dir).mkdir(parents=True, exist_ok=True)
            token = plant_token(run_dir)
        except Exception as err:  # every rank must learn of it, or the others wait in the broadcast
            if lock is not None:
                lock.release()
            lock, error, cause = None, _refusal_text(err, run_dir), err
    error, token = broadcast_object((error, token))
    if error is not None:
        raise RunDirError(error, quiet=rank != 0) from cause  # rank 0 keeps the cause for --debug's traceback
    try:
        check_shared(run_dir, token, rank=rank, resume=resume, all_gather=all_gather_object)
    except ConfigError as err:
        if lock is not None:
            lock.release()
        raise RunDirError(str(err), quiet=rank != 0) from None
    return lock


def _refusal_text(err: Exception, run_dir: Path) -> str:
    if isinstance(err, ConfigError) or (isinstance(err, OSError) and err.errno is None):
        return str(err)  # our own messages name what is at fault
    if isinstance(err, OSError):
        return f"{err.filename or run_dir}: {err.strerror or err}"
    return f"{run_dir}: {type(err).__name__}: {err}"


@dataclass(frozen=True)
class LrCourse:
    """What a checkpoint knows of the lrs its updates used: `since`, the update its schedules took effect at (0, or
    the update a resume continued at, which wrote lr_schedule.csv's rows up to it); `skipped`, the updates after it
    skipped on a non-finite gradient (each held the schedules); `held`, the schedules restored from it."""

    since: int
    skipped: tuple[int, ...]  # ascending
    held: list

    @classmethod
    def of(cls, saved: dict | None, held: list) -> LrCourse | None:
        """From a checkpoint's record (RunCheckpoints.save's `lr_course`; None from before llmasr kept it)."""
        return None if saved is None else cls(int(saved["since"]), tuple(sorted(saved["skipped"])), list(held))

    def lr(self, name: str, row: int, start: int, applied: int) -> float:
        """The lr the update of 0-based `row` (since <= row < start) used, the schedules standing at `applied` at
        update `start`: every update after it that was not skipped moved them on by one."""
        done = applied - (start - row) + len(self.skipped) - bisect.bisect_right(self.skipped, row)
        return next(s for s in self.held if s.name == name).lr(max(done, 0))


def lr_rows(
    csv_path: Path, schedules: list, start: int, total: int, applied: int, course: LrCourse | None = None
) -> dict[str, list[float]]:
    """The lr of every update of a resumed run, for lr_schedule.csv: rows up to the checkpoint's `course.since` as
    the existing file recorded them (that resume wrote them as they were used), or from `schedules` where it does not
    hold them; rows from there to `start` as the checkpoint's course used them (a skipped update had kept its row
    of the plan, and so had the updates after it); rows from `start` from `schedules` (rebuilt or restored), which
    stand at update `applied` there: an update skipped on a non-finite gradient holds the schedules
    (llmasr.train.schedulers), so update `start` + 1 uses lr(applied), not lr(start). Without a `course` (a
    checkpoint from before llmasr recorded it) every row before `start` is the file's."""
    names = [s.name for s in schedules]
    first = start if course is None else min(course.since, start)
    before: dict[str, list[float]] = {}
    if csv_path.is_file():
        lines = csv_path.read_text(encoding="utf-8").splitlines()
        header = lines[0].split(",") if lines else []
        if header[1:] == names and len(lines) - 1 >= first:
            rows = [line.split(",") for line in lines[1 : first + 1]]
            before = {n: [float(r[i + 1]) for r in rows] for i, n in enumerate(names)}
    out = {}
    for s in schedules:
        head = (before.get(s.name) or [s.lr(u) for u in range(first)])[: min(first, total)]
        course_rows = [course.lr(s.name, r, start, applied) for r in range(first, min(start, total))] if course else []
        out[s.name] = head + course_rows + [s.lr(applied + u - start) for u in range(start, total)]
    return out


def write_run_files(
    run_dir: Path, recipe, ds_config: dict, schedules: list, start: int, total: int, applied: int | None = None,
    course: LrCourse | None = None,
) -> None:  # fmt: skip
    """RUN_DIR/recipe.yaml, ds_config.json and lr_schedule.csv/png: rows from update `start` on from `schedules`
    (a fresh run: 0), which stand at update `applied` there (`start` less the skipped updates; default `start`),
    the rows before it as the checkpoint's `course` used them (lr_rows). Rank 0 only; a resumed run calls it once
    it has loaded, so a failed resume leaves them as they were."""
    dump_yaml(recipe, run_dir / ck.RECIPE_FILE)
    ck.write_atomic(run_dir / ck.DS_CONFIG_FILE, json.dumps(ds_config, indent=2))
    write_lr_files(run_dir, schedules, start, total, start if applied is None else applied, course)


def write_lr_files(run_dir: Path, schedules: list, start: int, total: int, applied: int, course=None) -> None:
    """lr_schedule.csv/png as lr_rows makes them (rank 0): at the run's start and resume, and at a save or the run's
    end after updates skipped on a non-finite gradient, whose held schedules move every later row one update on."""
    curves = lr_rows(run_dir / ck.LR_CSV, schedules, start, total, applied, course)
    write_lr_csv(run_dir / ck.LR_CSV, curves)
    plot_lr(curves, run_dir / ck.LR_PNG)
