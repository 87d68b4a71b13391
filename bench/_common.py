"""Helpers shared by the bench scripts."""

from __future__ import annotations

import shlex


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
