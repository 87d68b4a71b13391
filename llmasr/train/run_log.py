"""The llmasr loggers of a training process: records to stderr (INFO on rank 0, warnings on the others) and to
RUN_DIR/train.log on rank 0, the start-up's records held until train.log exists (StartupLog), the progress bar a
terminal shows kept clear of them. The other commands log through command_logging. A record's text after its time
stamp is RECORD_FORMAT's in both; logged_messages reads it back.

A warning that every rank logs alike (made from the same recipe and files by code that does not know its rank, as
the CTC vocabulary's notes and a FunASR directory's) carries `extra=llmasr.errors.EVERY_RANK`: rank 0 alone shows it,
once a run, as it alone reports an error every rank raises alike.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from llmasr.errors import EVERY_RANK, IN_CHECK_REPORT, marked, process_rank


def console_bar(bar, drawn=None) -> None:
    """`bar`: the tqdm bar now drawn on this process's stderr, which records written there clear first and draw
    again below them; None once `drawn` (the bar that was) is closed."""
    if bar is not None:
        _Stderr.bar = (os.getpid(), bar)
    elif _Stderr.bar is not None and _Stderr.bar[1] is drawn:
        _Stderr.bar = None


class SaidOnce(logging.Filter):
    """A handler's records that every rank logs alike (llmasr.errors.EVERY_RANK): on rank 0, each text once a run (a
    FunASR directory's frontend note came three times a rank: the start-up reads the directory three times); on the
    other ranks, none."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank, self.said = rank, set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not marked(record, EVERY_RANK):
            return True
        key = (record.name, record.getMessage())
        if self.rank != 0 or key in self.said:
            return False
        self.said.add(key)
        return True


class _Stderr(logging.StreamHandler):
    """sys.stderr as it is when a record is written: one handler serves every run in a process, and whoever
    replaced sys.stderr in between (pytest's capture) may have closed the one it had at the start."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    bar = None  # (pid, the tqdm bar a Progress draws on this process's stderr), while it is drawn (console_bar)

    def emit(self, record: logging.LogRecord) -> None:
        # the bar is cleared first and drawn again below the record: written over it, the record had run on from the
        # bar's last character ("... ctc 1.2026-12-07 09:00:01 INFO ..."). Not in a forked loader worker: its copy
        # of the bar is not the one on the screen. No tqdm lock: a worker forked while one was held would wait on it.
        pid, bar = _Stderr.bar or (None, None)
        if bar is None or pid != os.getpid():
            return super().emit(record)
        bar.clear(nolock=True)
        super().emit(record)
        bar.refresh(nolock=True)


# a record as a command's stderr writes it, and as train.log and a run's stderr do after their time stamp
RECORD_FORMAT = "%(levelname)s %(name)s: %(message)s"


def logged_messages(text: str, logger: str, level: str = "INFO") -> list[str]:
    """The messages `logger` wrote at `level` in `text` (train.log's lines, as setup_logging's format writes them)."""
    head = RECORD_FORMAT.split("%(message)s")[0] % {"levelname": level, "name": logger}
    return [line.partition(head)[2] for line in text.splitlines() if head in line]


def command_logging(level: int = logging.INFO, *, check_report: bool = False) -> None:
    """The logging of a command other than train (decode, export, check, ...): records at `level` and above to stderr,
    and a warning every rank logs alike said once a process (a command's start-up may read a FunASR directory two or
    three times), by rank 0 alone under a launcher. `check_report`: the records marked IN_CHECK_REPORT are left out,
    the command's report saying them. A process whose logging is set up already (an application that calls a
    command's main, pytest) keeps its own, as logging.basicConfig leaves it."""
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(level=level, format=RECORD_FORMAT)
    for handler in root.handlers:
        handler.addFilter(SaidOnce(process_rank()))
        if check_report:
            handler.addFilter(lambda record: not marked(record, IN_CHECK_REPORT))


def setup_logging(run_dir: Path | None, rank: int, *, run_starts: bool = False) -> logging.Handler | None:
    """llmasr loggers: INFO to stderr on rank 0 (on the others, warnings each rank has of its own), plus
    RUN_DIR/train.log on rank 0. `run_starts`: the notes said once a run may be said again (StartupLog.attach)."""
    root = logging.getLogger("llmasr")
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s {RECORD_FORMAT}", "%Y-%m-%d %H:%M:%S")
    if not any(getattr(h, "_llmasr_console", False) for h in root.handlers):
        console = _Stderr()
        console._llmasr_console = True
        console.setFormatter(fmt)
        root.addHandler(console)
    for h in root.handlers:
        if getattr(h, "_llmasr_console", False):
            h.setLevel(logging.INFO if rank == 0 else logging.WARNING)
            kept = [f for f in h.filters if isinstance(f, SaidOnce)]  # one handler serves every run of a process
            if run_starts or [f.rank for f in kept] != [rank]:
                for old in kept:
                    h.removeFilter(old)
                h.addFilter(SaidOnce(rank))
    if rank != 0 or run_dir is None:
        return None
    handler = logging.FileHandler(Path(run_dir) / "train.log")
    handler.addFilter(SaidOnce(rank))
    handler.setFormatter(fmt)
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


class StartupLog(logging.Handler):
    """Holds the llmasr records logged before RUN_DIR/train.log exists (the data screen, the lines the batching
    filters skip, the update count), so that train.log starts with them: `attach(rank)` first (it also sets up the
    console), `replay(handler)` once the file handler exists. Bounded, and replaced by the next attach() if a run
    fails before its log exists."""

    CAPACITY = 10_000

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.CAPACITY:
            self.records.append(record)

    @classmethod
    def attach(cls, rank: int) -> StartupLog:
        setup_logging(None, rank, run_starts=True)  # the console now, so that these records show as they happen
        root = logging.getLogger("llmasr")
        for old in [h for h in root.handlers if isinstance(h, cls)]:
            root.removeHandler(old)
        handler = cls()
        root.addHandler(handler)
        return handler

    def replay(self, handler: logging.Handler | None) -> None:
        """Detach, and write the held records to `handler` (train.log on rank 0; None elsewhere drops them)."""
        logging.getLogger("llmasr").removeHandler(self)
        if handler is not None:
            for record in self.records:
                if record.levelno >= handler.level:
                    handler.handle(record)
        self.records.clear()
