"""The name of each of several manifests, wherever they are told apart: training's `valid[NAME]` lines and
valid/NAME/* scalars (llmasr.train.valid_sets), and the OUTPUT/NAME/ folder a decode of several writes each into
(llmasr.export.decode_folders.out_dirs), so the folder of a set is the name its validation line had."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

# A manifest's file extensions, which its name leaves out (dev_clean for dev_clean.jsonl.gz, dev for dev.list)
EXTENSIONS = (".gz", ".jsonl", ".json", ".txt", ".list", ".scp")


def set_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A name for each manifest: its file name without extensions (dev_clean for dev_clean.jsonl.gz), with parent
    folders before it where two share it (clean/dev, other/dev), and its place in the list where even the whole
    path does not tell them apart (dev#0 and dev#1 for dev.jsonl beside dev.jsonl.gz: folders both have say
    nothing). Whitespace becomes _ (log lines split on it). Two manifests never share a name; a name's parts are
    never empty, `.` or `..`."""
    tails = [_tail(p) for p in paths]
    depth = [1] * len(tails)
    while True:
        names = ["/".join(t[-d:]) for t, d in zip(tails, depth)]
        clash = [i for i, name in enumerate(names) if names.count(name) > 1]
        # a name grows only while a manifest of another path shares it: a parent folder tells those apart
        grown = [i for i in clash if depth[i] < len(tails[i])
                 and any(names[j] == names[i] and tails[j] != tails[i] for j in clash)]  # fmt: skip
        if not grown:
            break
        for i in grown:
            depth[i] += 1
    return [f"{name}#{i}" if i in clash else name for i, name in enumerate(names)]


def _tail(path: str | os.PathLike) -> list[str]:
    """The path's folders and its file name without extensions, whitespace made _."""
    path = Path(os.path.abspath(path))
    stem = path.name
    while Path(stem).suffix.lower() in EXTENSIONS and Path(stem).stem:
        stem = Path(stem).stem
    parts = [*(p for p in path.parent.parts if p != path.anchor), stem]
    return [re.sub(r"\s+", "_", p) for p in parts]
