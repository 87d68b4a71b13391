"""Helpers shared by the bench scripts."""

from __future__ import annotations

import json
import shlex
from pathlib import Path


def reproduce_command(script: str, argv: list[str]) -> str:
    """The command line that reproduces a run, without where its JSON went."""
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--json-out":
            skip = True
        elif not a.startswith("--json-out="):
            keep.append(shlex.quote(a))
    return " ".join(["python", script, *keep])


def emit(res: dict, lines: list[str], json_out: str | None) -> None:
    """Print a benchmark's markdown lines; write its results as JSON when --json-out was given."""
    print("\n".join(lines))
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1))
