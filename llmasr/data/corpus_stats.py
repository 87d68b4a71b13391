"""The training texts' unit counts and a sample of their n-grams (corpus distractors), counted once at start-up for
the hotword list sampler (llmasr.data.hotwords), by the ranks of a node together where they share the start-up pass
(llmasr.data.screen_share: local rank r of L counts its part of the lines, and one exchange combines the parts).

The pool is a bottom-k sample: each n-gram occurrence, line i's s-th span in ngrams()'s order, gets a 64-bit key
hashed from (seed, i, s) alone, and the pool is the `pool_size` occurrences of smallest key, in key order. No key
depends on the lines counted before it (a sequential stream of draws, as a reservoir uses, would), so a part keeps
the smallest keys of its lines, the smallest of all parts' are the smallest of the whole, and one rank and any
split of the lines between ranks build the same pool; the keys being independent and uniform, so is the sample
(without replacement) of the occurrences. Counts add up and `longest` is the largest part's, so every CorpusStats
field is the same at any split. A part sends its counts and its pool, never anything a line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from llmasr.data.hotword_units import glued_units, join_units, ngram_count, ngram_span
from llmasr.data.records import BadRecord

log = logging.getLogger("llmasr.data")

POOL_STREAM = 0x706F6F6C  # "pool": the pool's keys, apart from every Generator stream of the lists
CHUNK = 8192  # lines keyed together: an occurrence of a chunk pushed out by a later one of it is never joined
_MASK = (1 << 64) - 1
_M1, _M2, _GOLDEN = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15


def _mix(z):
    """splitmix64's finalizer, on Python ints or uint64 arrays: a bijection of 64-bit words that scatters every bit
    (arrays wrap around silently; ints are masked)."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * _M1) & _MASK
        z = ((z ^ (z >> 27)) * _M2) & _MASK
        return z ^ (z >> 31)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def occurrence_keys(seed: int, lines: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """The key of each n-gram occurrence (`lines`[j], `spans`[j]): a counter-based hash, the same wherever it is
    computed; two spans of one line never share a key (the finalizer is a bijection)."""
    base = _mix((int(seed) * _GOLDEN + POOL_STREAM) & _MASK)
    per_line = _mix(lines.astype(np.uint64) ^ np.uint64(base))
    return _mix(per_line + spans.astype(np.uint64) * np.uint64(_GOLDEN))


class BottomK:
    """The `k` occurrences of smallest (key, line, span) offered so far, with their text."""

    def __init__(self, k: int):
        self.k = int(k)
        self.keys = np.empty(0, dtype=np.uint64)
        self.lines = np.empty(0, dtype=np.int64)
        self.spans = np.empty(0, dtype=np.int64)
        self.texts = np.empty(0, dtype=object)

    def offer(self, keys: np.ndarray, lines: np.ndarray, spans: np.ndarray, text_of) -> None:
        """Occurrences with their keys; text_of(j) gives offered occurrence j's text, asked of those kept only."""
        offered = np.arange(keys.size)
        if self.keys.size == self.k and self.k:  # full: only a key up to the largest kept can enter
            offered = np.flatnonzero(keys <= self.keys.max())
        if offered.size == 0:
            return
        all_keys = np.concatenate([self.keys, keys[offered]])
        all_lines = np.concatenate([self.lines, lines[offered]])
        all_spans = np.concatenate([self.spans, spans[offered]])
        keep = _smallest(all_keys, all_lines, all_spans, self.k)
        held = self.keys.size
        old, new = keep[keep < held], keep[keep >= held]
        texts = np.empty(new.size, dtype=object)
        texts[:] = [text_of(int(j)) for j in offered[new - held]]
        keep = np.concatenate([old, new])  # the kept ones first, as their texts are
        self.texts = np.concatenate([self.texts[old], texts])
        self.keys, self.lines, self.spans = all_keys[keep], all_lines[keep], all_spans[keep]

    def state(self) -> dict:
        """What a part sends: its kept occurrences (at most k), not its lines."""
        return {"keys": self.keys, "lines": self.lines, "spans": self.spans, "texts": self.texts}

    def merge(self, state: dict) -> None:
        self.offer(state["keys"], state["lines"], state["spans"], lambda j: state["texts"][j])

    def pool(self) -> list[str]:
        """The texts in (key, line, span) order."""
        return self.texts[np.lexsort((self.spans, self.lines, self.keys))].tolist()


def _smallest(keys: np.ndarray, lines: np.ndarray, spans: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` smallest (key, line, span) triples (ascending index order is not promised)."""
    if keys.size <= k:
        return np.arange(keys.size)
    kth = np.partition(keys, k - 1)[k - 1]
    below, tied = np.flatnonzero(keys < kth), np.flatnonzero(keys == kth)
    need = k - below.size  # keys equal to the k-th: their line and span decide, as the pool's order does
    tied = tied[np.lexsort((spans[tied], lines[tied]))][:need]
    return np.concatenate([below, tied])


@dataclass
class CorpusStats:
    """Unit counts of the training texts (lower-cased) and a uniform sample of their n-grams, built once at
    start-up (see the module docstring)."""

    counts: Counter
    pool: list[str]
    longest: int = 0  # a reference phrase (an n-gram of the texts) is never longer, in UTF-8 bytes

    @classmethod
    def from_manifest(cls, manifest, cfg, seed: int, share=None) -> CorpusStats:
        """Count every parseable line's units (bad lines are the screen's to report) and keep `cfg.pool_size` of
        its n-gram occurrences for corpus distractors (`cfg`: a HotwordsConfig). `share` (a ScreenShare): this rank
        counts its part of the lines and the ranks of its node exchange their parts."""
        t0, n = time.perf_counter(), len(manifest)
        parts = None
        if share is not None:
            mine = share.indices(n)
            parts = share.exchange(lambda: count_part(manifest, mine, cfg, seed))
            if parts is None and share.part == 0:
                log.warning("hotwords: the ranks of this node are not LOCAL_RANK 0..%d once each: every rank counts "
                            "every line of the training texts", share.parts - 1)  # fmt: skip
        if parts is None:
            parts = [count_part(manifest, np.arange(n, dtype=np.int64), cfg, seed)]
        stats = combine(parts, cfg.pool_size)
        if share is not None and len(parts) > 1 and share.part == 0:
            log.info("hotwords: %d lines counted in %.1f s, shared by the %d ranks of this node", n,
                     time.perf_counter() - t0, share.parts)  # fmt: skip
        return stats

    def weight(self, keys, rarity: float) -> float:
        """count(the rarest unit) ** -rarity (a unit the corpus lacks counts once)."""
        return float(min(self.counts.get(k, 1) for k in keys) or 1) ** -rarity if keys else 0.0


def count_part(manifest, lines: np.ndarray, cfg, seed: int) -> dict:
    """The counts, longest phrase bound and kept occurrences of dataset indices `lines`."""
    lo, hi = cfg.ngram
    raw: Counter = Counter()  # units as written: lower-cased once each at the end, not at every occurrence
    pool = BottomK(cfg.pool_size)
    longest = 0
    chunk: list[tuple[int, list[str], list[bool]]] = []  # line, its units, which are written onto the one before

    def flush() -> None:
        sizes = np.array([ngram_count(len(p), lo, hi) for _, p, _ in chunk], dtype=np.int64)
        which = np.repeat(np.arange(len(chunk)), sizes)
        spans = np.arange(which.size, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        at = np.array([i for i, _, _ in chunk], dtype=np.int64)[which]

        def text_of(j: int) -> str:
            _, p, glued = chunk[which[j]]
            a, b = ngram_span(len(p), int(spans[j]), lo)
            return join_units(p[a:b], cfg.unit, glued[a:b])

        pool.offer(occurrence_keys(seed, at, spans), at, spans, text_of)
        chunk.clear()

    for i in lines.tolist():
        try:
            target = manifest[i].target
        except BadRecord:
            continue
        parts, glued = glued_units(target, cfg.unit)
        raw.update(parts)
        k = min(len(parts), hi)  # at most its k longest units, a space apart
        if k:
            longest = max(longest, sum(sorted(len(p.encode()) for p in parts)[len(parts) - k :]) + k - 1)
        if len(parts) >= lo:
            chunk.append((i, parts, glued))
            if len(chunk) == CHUNK:
                flush()
    if chunk:
        flush()
    counts: Counter = Counter()
    for unit, c in raw.items():
        counts[unit.lower()] += c
    return {"counts": counts, "longest": longest, "pool": pool.state()}


def combine(parts: list[dict], pool_size: int) -> CorpusStats:
    """One CorpusStats of the parts' count_part results: counts summed, the smallest keys of all, the longest."""
    counts: Counter = Counter()
    pool = BottomK(pool_size)
    for part in parts:
        counts.update(part["counts"])
        pool.merge(part["pool"])
    return CorpusStats(counts, pool.pool(), max((p["longest"] for p in parts), default=0))
