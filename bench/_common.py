"""Helpers shared by the bench scripts."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMIT_ENV = "LLMASR_BENCH_COMMIT"
ERROR_LINE = re.compile(r"^\w*(Error|Exception)\b|\w(Error|Exception): |: error: |out of memory")
ERROR_CHARS = 400  # of a failed step's error line kept in a summary


def git_commit() -> str:
    """The commit a run measures: LLMASR_BENCH_COMMIT when the caller sets it (a copy of the tree without .git, as on
    the lent GPU machine); else HEAD's short hash, with "+dirty" when tracked files differ from it (the numbers then
    come from code no commit holds); else "unknown"."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=HERE.parent, capture_output=True)
            return head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")
    except OSError:
        pass
    return "unknown"


def reproduce_command(script: str, argv: list[str], *, drop=("--json-out",), runner: str = "python") -> str:
    """The command line that reproduces a run, without the options in `drop` (where its files went) and their
    values."""
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        elif not a.startswith(tuple(f"{d}=" for d in drop)):
            keep.append(shlex.quote(a))
    return " ".join([runner, script, *keep])


def print_commit() -> None:
    """The `Commit:` line that closes a report a script prints line by line (emit prints it for the others)."""
    print(f"Commit: {git_commit()}")


def failure_line(output: str) -> str | None:
    """The line of a failed run's output that names its error: the last exception or `error:` line (a traceback's
    last line, llmasr's refusals), else the last line it wrote (where a run that timed out had got to)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ERROR_LINE.search(ln):
            return ln[:ERROR_CHARS]
    return lines[-1][:ERROR_CHARS] if lines else None


def emit(res: dict, lines: list[str], json_out: str | None) -> None:
    """Print a benchmark's markdown lines and the commit it measured; write its results (with the commit) as JSON
    when --json-out was given."""
    res.setdefault("commit", git_commit())
    print("\n".join([*lines, f"Commit: {res['commit']}"]))
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1))


def train_probed(make_probe, recipe: str, run_dir, *, deepspeed: str, updates: int, precision: str, overrides=()):
    """`llmasr train` of `recipe` in this process for `updates` updates, each logged, with the trainer's run_window
    wrapped by make_probe(run_window) (what times or profiles updates): (exit status, seconds, the probe)."""
    import time

    import llmasr.train.trainer as trainer_mod
    from llmasr.commands.train import main

    inner = trainer_mod.run_window
    probe = trainer_mod.run_window = make_probe(inner)
    cmd = ["--config", str(recipe), "--deepspeed", deepspeed, "--overwrite", f"train.output_dir={run_dir}",
           f"train.max_updates={updates}", "train.log_every=1", "train.progress_every_s=0",
           f"train.precision={precision}", *overrides]  # fmt: skip
    t0 = time.perf_counter()
    try:
        rc = main(cmd)
    finally:
        trainer_mod.run_window = inner
    return rc, time.perf_counter() - t0, probe


def decode_bench_parser(doc: str, model: str, data: str) -> argparse.ArgumentParser:
    """A decoding benchmark's arguments: --model (help `model`), --data (help `data`), --quick and --json-out; the
    script adds its own, then parses with parse_decode_bench."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--model", help=model)
    ap.add_argument("--data", help=data)
    ap.add_argument("--quick", action="store_true", help="a tiny random model on synthetic audio (smoke run)")
    ap.add_argument("--json-out", help="also write the results as JSON here")
    return ap


def parse_decode_bench(ap: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """decode_bench_parser's arguments, refused without --model and --data unless --quick."""
    args = ap.parse_args(argv)
    if not args.quick and not (args.model and args.data):
        ap.error("give --model and --data, or --quick")
    return args
