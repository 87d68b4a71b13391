"""A function over many items in DataLoader worker processes, for the passes that read every recording before
anything is batched (window plans, a VAD's speech over a manifest).

    for result in worker_map(lambda i: plan(i), indices, workers=4):   # in the order of `indices`

Workers are forked, so the function and what it holds (a manifest, a VAD) need no pickling; each runs one torch
thread and leaves stop signals to the main process (llmasr.data.worker_start.worker_init). Without workers, or with
one item, the function runs here. With `hazard` (a decode rank beside others on a Python that can leave a forked
child stuck: worker_start.fork_deadlock_warning) the workers start as an epoch's do there: watched, and started
again when one never reaches its init function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import torch

from llmasr.data.worker_signals import workers_born_blocked
from llmasr.data.worker_start import WorkerStarts, start_workers, worker_init


class _Mapped(torch.utils.data.Dataset):
    def __init__(self, fn: Callable, items: Sequence):
        self.fn, self.items = fn, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        return self.fn(self.items[k])


def _unchanged(result):
    return result


def worker_map(fn: Callable, items: Sequence, workers: int, hazard: bool = False) -> Iterable:
    """fn(item) for every item, in order, computed by `workers` processes (0: in this one)."""
    if workers <= 0 or len(items) < 2:
        return (fn(item) for item in items)
    loader = torch.utils.data.DataLoader(
        _Mapped(fn, items), batch_size=None, num_workers=min(workers, len(items)), collate_fn=_unchanged,
    )  # fmt: skip

    def start(watch: WorkerStarts | None):
        loader.worker_init_fn = functools.partial(worker_init, watch=watch)
        with workers_born_blocked():
            return iter(loader)

    return start_workers(start, loader.num_workers, hazard, restore=lambda: None)  # nothing consumed before a retry
