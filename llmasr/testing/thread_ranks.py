"""Ranks as threads of one process, their all_gather_object a barrier: for tests of code that exchanges objects
between ranks (a shared screen, decoding's window plans and prompt counts) without starting processes."""

from __future__ import annotations

import threading


def run_ranks(size: int, work, timeout: float = 120.0) -> list:
    """work(rank, gather) on `size` threads, `gather(obj)` giving every rank's obj in rank order; returns each rank's
    result, or the exception it raised (a rank left waiting in a gather shows as a broken barrier)."""
    barrier, posted, out = threading.Barrier(size, timeout=timeout / 2), [None] * size, [None] * size

    def run(r: int) -> None:
        def gather(obj):
            posted[r] = obj
            barrier.wait()
            everyone = list(posted)
            barrier.wait()
            return everyone

        try:
            out[r] = work(r, gather)
        except Exception as err:
            out[r] = err

    threads = [threading.Thread(target=run, args=(r,), name=f"rank{r}") for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return out


def thread_world(rank: int, size: int, gather):
    """A DecodeWorld (llmasr.export.decode_world) of rank `rank` of `size` ranks that are threads of run_ranks: its
    collectives are `gather`, and it joins no process group."""
    from llmasr.export.decode_world import DecodeWorld

    class ThreadWorld(DecodeWorld):
        def gather(self, obj) -> list:
            return gather(obj)

        def start(self, device) -> None:
            pass  # the threads are the world

    return ThreadWorld(rank, size)


def lines_counted_by_thread(monkeypatch) -> dict[str, list[int]]:
    """The manifest lines whose decode prompts LinePrompts (llmasr.models.line_prompts) counts from now on, by the
    thread that counts them (a rank of run_ranks: rank0, ...); `monkeypatch`: pytest's, which undoes the watch."""
    import threading

    from llmasr.models.line_prompts import LinePrompts

    counted: dict[str, list[int]] = {}
    real = LinePrompts._count

    def count(self, manifest, lines, *rest):
        counted.setdefault(threading.current_thread().name, []).extend(lines)
        return real(self, manifest, lines, *rest)

    monkeypatch.setattr(LinePrompts, "_count", count)
    return counted
