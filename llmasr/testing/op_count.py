"""Counting the aten ops a piece of code issues (torch.profiler on the CPU): on a GPU each op costs host time, so
tests pin the count of the ops that should be issued once, not once per layer or per use."""

from __future__ import annotations

from collections import Counter


def aten_ops(fn, *args, **kwargs) -> Counter:
    """How many times each aten op ran (nested ones included) while `fn(*args, **kwargs)` ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        fn(*args, **kwargs)
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
