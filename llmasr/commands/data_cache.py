"""`llmasr data cache [--prune | --clear]`: the decompressed copies of .gz manifests, listed or removed."""

from __future__ import annotations

import argparse
import sys

from llmasr.command_run import command
from llmasr.data import gz_copies

STATES = {
    "current": "its .gz is unchanged",
    "changed": "a copy of an earlier version: the .gz has changed since",
    "gone": "no file at the .gz's path now (moved, renamed or deleted)",
    "unrecorded": "made by an llmasr that did not record its .gz, and not read since (a read records it)",
    "partial": "left half-written by a process stopped while it decompressed",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmasr data cache",
        description="List the decompressed copies of .gz manifests (in $LLMASR_CACHE_DIR/manifests, else "
        "~/.cache/llmasr/manifests), or remove them. A copy a running process reads is never removed: each process "
        "that reads one holds a lock on it until it exits.",
        epilog="states:\n" + "\n".join(f"  {k:<11} {v}" for k, v in STATES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prune", action="store_true", help="remove the copies that are not current (below)")
    what.add_argument("--clear", action="store_true", help="remove every copy no running process reads")
    p.add_argument("--dry-run", action="store_true", help="with --prune or --clear: say what would go, remove nothing")
    return p


@command("llmasr data cache")
def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.dry_run and not (args.prune or args.clear):
        p.error("--dry-run goes with --prune or --clear")
    folder = gz_copies.cache_folder()
    copies = gz_copies.cached_copies(folder)
    if not copies:
        print(f"{folder}: no decompressed copies")
        return 0
    print(f"{folder}: {len(copies)} file(s), {_size(sum(c.size for c in copies))}")
    for c in copies:
        state = c.state + (", in use" if c.in_use else "")
        print(f"  {state:<20} {_size(c.size):>9}  {c.path.name}" + (f"  <- {c.source}" if c.source else ""))
    chosen = [c for c in copies if args.clear or (args.prune and c.stale)]
    if not (args.prune or args.clear):
        stale = [c for c in copies if c.stale]
        if stale:
            size = _size(sum(c.size for c in stale))
            print(f"`llmasr data cache --prune` removes the {len(stale)} not current ({size}) but those in use")
        return 0
    if chosen and (no_locks := gz_copies.why_locks_fail(folder)):  # in use or not cannot be told: nothing removed
        print(f"llmasr data cache: error: {folder}: {no_locks}, so a copy a running process reads cannot be told from "
              "one none reads: nothing removed. Delete them by hand while no run reads them, or set LLMASR_CACHE_DIR "
              "to a folder on a file system with locks", file=sys.stderr)  # fmt: skip
        return 1
    kept = [c for c in chosen if c.in_use]
    gone = [c for c in chosen if not c.in_use and (args.dry_run or gz_copies.remove(c))]
    kept += [c for c in chosen if not c.in_use and c not in gone]  # taken by a run after the listing
    if not args.dry_run:
        gz_copies.remove_orphan_records(folder)
    said = f"{'would remove' if args.dry_run else 'removed'} {len(gone)} file(s), {_size(sum(c.size for c in gone))}"
    if kept:
        said += f"; kept {len(kept)} that a running process reads: {', '.join(c.path.name for c in kept)}"
    print(said)
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
