"""Validation's manifests (data.valid), each scored on its own beside their pool.

The pool's metrics are what train.best_metric, early stopping and the best-k checkpoints rank; with two or more
manifests each one's loss, acc and error rate go to train.log (a `valid[NAME]` line after the pool's `valid` line)
and TensorBoard (`valid/NAME/...`), so a dev-clean / dev-other pair, or an in-domain set beside a general one, can
be told apart. NAME is llmasr.data.manifest_names.set_names (the file name without its extensions, with as many
parent folders as tell two of the same name apart): the folder `llmasr decode` of the same manifests writes it to.
data.valid_max_utts keeps its subset of the pool (evenly spaced over the manifests in their order), so each
manifest's share is about its share of the lines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from llmasr.data.manifest_names import set_names


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
