"""How every command fails: one clear message, a non-zero exit status, and the traceback kept where it is wanted.

`@command("llmasr train")` on a command's main(argv) turns every exception into

    llmasr train: error: <what went wrong, naming the file, key or line>

on stderr and an exit status: 2 for bad input (a recipe or configuration error, a missing file, too much bad data),
1 for anything else, 128 + N for a stop signal N. llmasr's own errors already name what is at fault and are printed
as they are; an error from another library (torch, DeepSpeed, transformers) is given with its type, the context
llmasr added to it (`context`), and the line it was raised at. The traceback goes to the run's train.log
(`traceback_to`) and, with LLMASR_DEBUG=1 or `llmasr --debug ...`, to stderr as well.

Under a launcher every rank fails alike on the same recipe, files and checkpoint, so only rank 0 speaks; an error
that can be one rank's alone (inside the training loop: its data, its memory) is marked with `rank_specific` and is
reported by every rank that has it, with its rank. Any other error on a rank > 0 is reported by that rank, with its
rank, when rank 0 runs on without reporting one (asked through the process group's store).
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmasr.config_io import ConfigError

DEBUG_ENV = "LLMASR_DEBUG"
# by class name: no heavy import to recognise them. CheckpointMismatchError: a pretrained file that does not fit the
# model the recipe describes (a wrong directory, or a conf override that disagrees with it); the rest: what a
# command was given (a model folder, an output folder, audio, a Kaldi data folder, a phrase list) refused.
INPUT_ERRORS = frozenset({
    "ConfigError", "TooMuchBadData", "CheckpointError", "CheckpointMismatchError", "ExportError", "ExportedModelError",
    "DecodeError", "TranscribeError", "ConvertError", "PromptError", "AudioError", "KaldiError", "CMVNError",
    "PhraseFileError", "BadManifest", "EmptyManifest", "ScoreInputError",
})  # fmt: skip
_traceback_file: Path | None = None


def debug_enabled(environ=os.environ) -> bool:
    return environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def traceback_to(path: str | Path | None) -> None:
    """Append the traceback of a command's failure to `path` (the run's train.log); None stops it."""
    global _traceback_file
    _traceback_file = Path(path) if path is not None else None


EVERY_RANK = {"every_rank": True}
"""`extra=` of a warning every rank logs alike (from the same recipe and files, by code that does not know its rank):
rank 0 alone shows it, as it alone reports an error marked `every_rank` (llmasr.train.run_log)."""

IN_CHECK_REPORT = {"in_check_report": True}
"""`extra=` of a warning whose finding `llmasr check`'s report gives in its own words: check's stderr leaves it out
(llmasr.train.run_log.command_logging), where it had come twice."""


def marked(obj, mark: dict) -> bool:
    """Whether `obj` (a log record, an error) carries `mark` (EVERY_RANK, IN_CHECK_REPORT)."""
    return all(getattr(obj, key, None) == value for key, value in mark.items())


def rank_specific(err: BaseException, rank: int) -> None:
    """Mark `err` as possibly this rank's alone: every rank that has it reports it. One that says `every_rank` (the
    ranks raised it together, from what they shared) stays rank 0's to report."""
    if not marked(err, EVERY_RANK):
        err.llmasr_rank = rank  # type: ignore[attr-defined]


@contextmanager
def context(what: str) -> Iterator[None]:
    """Any exception from inside is reported as happening `while <what>` (an exception note: type unchanged)."""
    try:
        yield
    except Exception as err:
        err.add_note(f"while {what}")
        raise


# -- describing an error ------------------------------------------------------------------------------------------
PACKAGE_DIR = str(Path(__file__).resolve().parent)


def nearest_hint(key: str, known) -> str:
    """The hint "; did you mean 'K'?" for the known key K nearest a misspelt `key` ("" when none is near)."""
    near = difflib.get_close_matches(str(key), sorted(map(str, known)), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


def _ours(err: BaseException) -> bool:
    """An llmasr error class, or an error a `raise` statement of llmasr raised: its message was written to be read
    as it is. (A builtin's error at an llmasr line, a TypeError of sorted() or a KeyError, is a bug: its type and
    line are what tells it.)"""
    if type(err).__module__.split(".")[0] == "llmasr":
        return True
    frames = traceback.extract_tb(err.__traceback__)
    if not frames or not str(Path(frames[-1].filename).resolve()).startswith(PACKAGE_DIR):
        return False
    return (frames[-1].line or "").lstrip().startswith("raise")


def _raised_at(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{last.filename}:{last.lineno} ({last.name})"


OSERROR_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission",
    errno.EPERM: "no permission",
}


def describe(err: BaseException) -> str:
    """The message for `err`: what it says, with the file an OSError names, the context notes, and (for another
    library's error) its type and where it was raised."""
    notes = [n for n in getattr(err, "__notes__", []) if n.startswith("while ")]
    if isinstance(err, OSError) and err.filename is not None:
        target = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        text = f"{target}: {err.strerror or err}"
        hint = OSERROR_HINTS.get(err.errno or 0)
        if hint and hint not in text:
            text += f" ({hint})"
    elif _ours(err) or isinstance(err, ConfigError):
        text = str(err)
    else:
        where = _raised_at(err)
        text = f"{type(err).__name__}: {err}" + (f"\n  raised at {where}" if where else "")
    return f"{'; '.join(notes)}:\n  {text}" if notes else text


def exit_status(err: BaseException) -> int:
    """2 for bad input, 1 otherwise; an error that carries its own `exit_code` (llmasr.rank_verdict.RankFailure: the
    status of the rank that failed, so that every rank of a launch exits alike) exits with it."""
    own = getattr(err, "exit_code", None)
    if isinstance(own, int) and not isinstance(own, bool) and own in (1, 2):
        return own
    names = {c.__name__ for c in type(err).__mro__}
    return 2 if names & INPUT_ERRORS or isinstance(err, FileNotFoundError) else 1


# -- disk full ----------------------------------------------------------------------------------------------------
def free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return None


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


SHORT_WRITE_MARKERS = ("unexpected pos", "file write failed")  # torch's PyTorchStreamWriter on a short write
NEARLY_FULL_BYTES = 64 * 2**20
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def write_error(path: Path, err: BaseException) -> OSError | None:
    """An OSError naming `path` when `err` (a failed write of a file or folder there) comes from a full disk or
    quota: torch reports a short write as "unexpected pos 8576 vs 8468", without the errno. None otherwise."""
    code = next((e.errno for e in _chain(err) if isinstance(e, OSError) and e.errno in FULL_ERRNOS), None)
    if code is None:  # Rust libraries (safetensors) carry the errno only in their text: "... (os error 28)"
        found = (re.search(r"\(os error (\d+)\)", str(e)) for e in _chain(err))
        code = next((int(m[1]) for m in found if m and int(m[1]) in FULL_ERRNOS), None)
    if code is None and any(m in str(e) for e in _chain(err) for m in SHORT_WRITE_MARKERS):
        free = free_bytes(path)
        code = errno.ENOSPC if free is not None and free < NEARLY_FULL_BYTES else None
        if code is None:
            why = f"a write was cut short ({_free_text(path)}: a disk quota, or a file size limit?)"
            return OSError(errno.EIO, why, str(path))
    if code is None:
        return None
    return OSError(code, f"{os.strerror(code)} while writing it ({_free_text(path)})", str(path))


def _free_text(path: Path) -> str:
    free = free_bytes(path)
    return "free space unknown" if free is None else f"{free / 2**20:.1f} MiB free there"


# -- stop signals (training's preemption raises Interrupted; every command reports it here) ------------------------
class Interrupted(KeyboardInterrupt):
    """A stop signal that arrived where nothing could be saved: before training started, or after it ended."""

    def __init__(self, signum: int, when: str = "before training started"):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.when = when


# SIGINT raises KeyboardInterrupt already; these end a process at once by default, with no cleanup and no word: a
# scheduler's time limit or `kill` (SIGTERM), and SLURM's notice before it (`--signal=USR1@SECONDS`, which batch
# scripts set for training and send to every process of the job, a decode's or an export's as well)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


doing: list[str] = []  # the `when` of each stop_signals_raise block the main thread is in, innermost last
stops_handled: list[int] = []  # the stop signals whose Interrupted the main thread raised


@contextmanager
def stop_signals_raise(when: str) -> Iterator[None]:
    """SIGTERM and SIGUSR1 raise Interrupted inside the block, as Ctrl-C raises KeyboardInterrupt, so the block
    cleans up as for Ctrl-C and the command names the signal. Main thread only: Python allows handlers nowhere else."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        stops_handled.append(signum)  # the main thread took it (llmasr.stop_watch waits for that)
        raise Interrupted(signum, when)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    doing.append(when)
    try:
        yield
    finally:
        doing.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def signal_status(signum: int) -> int:
    """The shell's status for a process stopped by `signum` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


# -- running a command --------------------------------------------------------------------------------------------
def process_rank() -> int:
    """This process's rank under a launcher (RANK; 0 without one)."""
    return int(os.environ.get("RANK", "0") or 0)


REPORTED_KEY = "llmasr/rank0_reported"
RANK0_WAIT_S = 3.0


def _store():
    """The process group's key-value store (rank 0 hosts it), or None outside an initialised process group."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: behave as without a process group
        pass
    return None


def _rank0_reports(store) -> bool:
    """Whether rank 0 reports an error too: it set REPORTED_KEY, sets it within RANK0_WAIT_S, or is gone with its
    store (it failed and said why, or was stopped). False when rank 0 runs on and said nothing: the error is this
    rank's alone (a file only this node lacks, its memory), and only this rank can say it."""
    import datetime

    try:
        store.wait([REPORTED_KEY], datetime.timedelta(seconds=RANK0_WAIT_S))
        return True
    except Exception as err:  # noqa: BLE001 - a timeout means rank 0 is alive and silent; anything else, gone
        return "timeout" not in str(err).lower()


# What a collective raises on a rank whose peer is gone (gloo, NCCL): that rank's error is the other one's.
PEER_GONE = ("connection closed by peer", "remote worker crashing", "connection reset by peer",
             "remote process exited", "communicator was aborted")  # fmt: skip
# Such a rank waits this long before it exits: the launcher reports the first rank to exit, whose status should be
# the failing rank's (it closes its connections while it is still exiting).
PEER_EXIT_WAIT_S = 5.0


def _peer_gone(err: BaseException) -> bool:
    return any(marker in str(e).lower() for e in _chain(err) for marker in PEER_GONE)


def report(prog: str, err: BaseException) -> None:
    """The one message for `err` (rank 0, or the rank that alone has it); traceback to the log. A rank whose
    collective failed because another rank left says only that, not as the run's error: the other rank's message
    (if it could give one) is the cause."""
    rank = process_rank()
    own = getattr(err, "llmasr_rank", None)
    tb = "".join(traceback.format_exception(err))
    store = _store()
    if store is not None and _peer_gone(err):
        # said in the log too: a stop signal's "saving a checkpoint" may stand above it there, and no save followed
        said = (f"{prog}: rank {rank} stopped: another rank left the run first (its message, if it gave one, says "
                "why); nothing was saved on the way out")  # fmt: skip
        _to_log(said, rank, tb)
        print(said, file=sys.stderr, flush=True)
        time.sleep(PEER_EXIT_WAIT_S)
        return
    if rank == 0 and store is not None:
        try:
            store.set(REPORTED_KEY, "1")
        except Exception:  # noqa: BLE001 - the other ranks then report their own errors themselves
            pass
    if rank != 0 and own is None:
        if store is None or _rank0_reports(store):
            return  # rank 0 has the same error and reports it
        own = rank
    prefix = f"{prog}: error" + (f" on rank {rank}" if own is not None and rank != 0 else "")
    _to_log(prefix, rank, tb)
    lines = [f"{prefix}: {describe(err)}"]
    if debug_enabled():
        lines.insert(0, tb.rstrip())
    elif not _ours(err) and not isinstance(err, (ConfigError, OSError)):
        where = f"in {_traceback_file}" if _traceback_file is not None else f"with {DEBUG_ENV}=1"
        lines.append(f"  (the traceback: {where})")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _to_log(prefix: str, rank: int, tb: str) -> None:
    if _traceback_file is not None:
        try:
            with open(_traceback_file, "a", encoding="utf-8") as f:
                f.write(f"{prefix}: traceback (rank {rank}):\n{tb}")
        except OSError:
            pass  # the log may be what failed (disk full); the message still goes out
