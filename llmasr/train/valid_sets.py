"""Validation's manifests (data.valid), each scored on its own beside their pool.

The pool's metrics are what train.best_metric, early stopping and the best-k checkpoints rank; with two or more
manifests each one's loss, acc and error rate go to train.log (a `valid[NAME]` line after the pool's `valid` line)
and TensorBoard (`valid/NAME/...`), so a dev-clean / dev-other pair, or an in-domain set beside a general one, can
be told apart. NAME is the manifest's file name without its extensions, with as many parent folders as tell two of
the same name apart. data.valid_max_utts keeps its subset of the pool (evenly spaced over the manifests in their
order), so each manifest's share is about its share of the lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_EXTENSIONS = (".gz", ".jsonl", ".json", ".txt", ".list", ".scp")


class ValidSets:
    """The manifests of the validation pool: `names` in data.valid's order, and the set of each pooled index."""

    def __init__(self, names: Sequence[str], sizes: Sequence[int]):
        if len(names) != len(sizes):
            raise ValueError(f"{len(names)} validation set names for {len(sizes)} manifests")
        self.names = list(names)
        self.starts = np.cumsum([0, *sizes]).astype(np.int64)  # the pooled index of each manifest's first line

    @classmethod
    def of(cls, paths: Sequence[str | os.PathLike], manifest) -> ValidSets | None:
        """The sets of the valid loader's `manifest` (opened from `paths`); None for one: its pool is itself."""
        if len(paths) < 2:
            return None
        parts = getattr(manifest, "manifests", None)
        if parts is None or len(parts) != len(paths):
            raise ValueError(f"the validation pool holds {len(parts or [manifest])} manifests, data.valid {len(paths)}")
        return cls(set_names(paths), [len(m) for m in parts])

    @property
    def n(self) -> int:
        return len(self.names)

    def of_rows(self, indices) -> np.ndarray:
        """[rows] int64: the set of each pooled dataset index (a batch's `indices`)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.starts[-1]):
            raise ValueError(f"a validation index outside the pool of {int(self.starts[-1])} lines: {indices.tolist()}")
        return np.searchsorted(self.starts, indices, side="right") - 1


def set_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A name for each manifest: its file name without extensions (dev_clean for dev_clean.jsonl.gz), with parent
    folders before it where two share it (clean/dev, other/dev), and its place in data.valid where even the whole
    path does not tell them apart (dev.jsonl beside dev.jsonl.gz). Whitespace becomes _ (log lines split on it)."""
    tails = [_tail(p) for p in paths]
    depth = [1] * len(tails)
    while True:
        names = ["/".join(t[-d:]) for t, d in zip(tails, depth)]
        clash = [i for i, name in enumerate(names) if names.count(name) > 1]
        grown = [i for i in clash if depth[i] < len(tails[i])]
        if not grown:
            break
        for i in grown:
            depth[i] += 1
    return [f"{name}#{i}" if i in clash else name for i, name in enumerate(names)]


def _tail(path: str | os.PathLike) -> list[str]:
    """The path's folders and its file name without extensions, whitespace made _."""
    path = Path(os.path.abspath(path))
    stem = path.name
    while Path(stem).suffix.lower() in _EXTENSIONS and Path(stem).stem:
        stem = Path(stem).stem
    parts = [*(p for p in path.parent.parts if p != path.anchor), stem]
    return [re.sub(r"\s+", "_", p) for p in parts]
