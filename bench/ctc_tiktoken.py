"""Encoding speed of the tiktoken CTC vocabulary (Fun-ASR-Nano's CTC branch) on text written without spaces, where a
whole sentence is one pre-tokenized piece: llmasr's heap-ordered merge against the pairwise scan it replaced.

    python bench/ctc_tiktoken.py [--lengths 30 200 1000] [--texts 20] [--json-out FILE]

The vocabulary is synthetic (no download here): the 256 bytes, the two-byte prefix and the whole of 3,000 CJK
characters, and 3,000 two-character words among the 500 most used, in that rank order. Texts are random strings of
those characters; each is encoded with an empty piece cache, so every piece is merged.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, reproduce_command

from llmasr.models.ctc_tiktoken import write_ranks


def synthetic_vocabulary(path: Path, rng: random.Random) -> list[str]:
    chars = [chr(0x4E00 + i) for i in range(3000)]
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    words = [c.encode()[:2] for c in chars] + [c.encode() for c in chars]
    words += [(rng.choice(chars[:500]) + rng.choice(chars[:500])).encode() for _ in range(3000)]
    for token in words:
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    write_ranks(path, tokens)
    return chars


def pairwise_scan(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """The merge as first written: scan every adjacent pair for the lowest rank, join it, repeat."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, at = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best):
                best, at = rank, i
        if best is None:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return [ranks[p] for p in parts]


def ms_per_text(tok, texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        tok._cache.clear()
        tok.encode(text)
    return (time.perf_counter() - start) / len(texts) * 1000


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[30, 200, 1000], help="characters per text")
    ap.add_argument("--texts", type=int, default=20, help="texts per length")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    import llmasr.models.ctc_tiktoken as ct

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        chars = synthetic_vocabulary(Path(tmp) / "v.tiktoken", rng)
        tok = ct.TiktokenCTCTokenizer(str(Path(tmp) / "v.tiktoken"))
    rows = []
    for n in args.lengths:
        texts = ["".join(rng.choice(chars) for _ in range(n)) for _ in range(args.texts)]
        heap = ms_per_text(tok, texts)
        ids = [tok.encode(t) for t in texts]
        merge, ct.merge = ct.merge, pairwise_scan
        try:
            scan = ms_per_text(tok, texts)
            assert [tok.encode(t) for t in texts] == ids, "the two merges disagree"
        finally:
            ct.merge = merge
        rows.append({"chars": n, "tokens": sum(map(len, ids)) / len(ids), "heap_ms": round(heap, 3),
                     "scan_ms": round(scan, 3)})  # fmt: skip
    lines = [f"tiktoken CTC vocabulary ({len(tok.ranks)} tokens, synthetic CJK), ms to encode one text", "",
             "| characters | tokens | heap merge (ms) | pairwise scan (ms) |", "|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['chars']} | {r['tokens']:.0f} | {r['heap_ms']:.2f} | {r['scan_ms']:.2f} |" for r in rows]
    command = reproduce_command("bench/ctc_tiktoken.py", argv)
    lines += ["", f"Reproduce: `{command}`"]
    emit({"benchmark": "ctc_tiktoken", "command": command, "vocabulary": len(tok.ranks), "rows": rows}, lines,
         args.json_out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
