"""Hotword list cost: the start-up corpus count, one training list per item, and prompt encoding with a list.

    python bench/hotword_lists.py                       # 200k utterances, Zipf vocabulary of 50k words
    python bench/hotword_lists.py --utts 1000000 --tokenizer models/Qwen2.5-1.5B-Instruct
    python bench/hotword_lists.py --quick               # smoke run (numbers mean nothing)

1. CorpusStats.from_manifest over a synthetic FunASR manifest (word and char units): the pass every training run
   with data.hotwords makes at start-up, here on one rank (seconds, and the counter's size; the ranks of a node share
   it: bench/hotword_stats.py).
2. HotwordSampler.pick per item (µs): what a loader worker adds to each item.
3. PromptBuilder.encode with a 10-phrase list against without one (µs): a list makes a prompt of its own (the
   plain prompt is cached), so this is the per-item tokenization it costs. Uses `--tokenizer` (an HF directory),
   else the tiny test tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import print_commit


def write_manifest(path: Path, n: int, vocab: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)])
    ranks = np.minimum(rng.zipf(1.2, size=n * 30), vocab) - 1  # Zipf: a few common words, a long rare tail
    lengths = rng.integers(5, 31, size=n)
    with open(path, "w") as f:
        pos = 0
        for i, k in enumerate(lengths):
            text = " ".join(words[ranks[pos : pos + k]])
            pos += k
            f.write(json.dumps({"key": f"u{i}", "source": "x.wav", "target": text, "duration": 5.0}) + "\n")
    return path


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def tokenizer(path: str | None):
    from llmasr.models.tokenizer import load_tokenizer

    if path:
        return load_tokenizer(path)
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    return load_tokenizer(write_tiny_llm_dir(Path(tempfile.mkdtemp()) / "tiny"))


def corpus_rows(manifest, targets: list[str], items: int, seed: int) -> list[str]:
    """One table row per unit: the start-up count and the per-item draw."""
    from llmasr.config_io import from_dict
    from llmasr.data.hotwords import CorpusStats, HotwordSampler, HotwordsConfig

    rows = ["| unit | corpus count (s) | units counted | pool | pick() per item (µs) |", "|---|---|---|---|---|"]
    for unit, ngram in (("word", [1, 2]), ("char", [2, 4])):
        cfg = from_dict(HotwordsConfig, {"enable": True, "unit": unit, "ngram": ngram}, "hotwords")
        t0 = time.perf_counter()
        stats = CorpusStats.from_manifest(manifest, cfg, seed)
        took = time.perf_counter() - t0
        sampler = HotwordSampler(cfg, stats, seed)
        us = per_call_us(lambda i, s=sampler: s.pick(None, targets[i % len(targets)], i, 0), items)
        rows.append(f"| {unit} | {took:.2f} | {len(stats.counts)} | {len(sampler.pool)} | {us:.0f} |")
    return rows


def prompt_rows(tokenizer_dir: str | None, targets: list[str], items: int) -> list[str]:
    from llmasr.models.prompt import PromptBuilder

    pb = PromptBuilder(tokenizer(tokenizer_dir))
    lists = [[f"phrase {i} {j}" for j in range(10)] for i in range(items)]
    plain = per_call_us(lambda i: pb.encode(targets[i % len(targets)]), items)
    listed = per_call_us(lambda i: pb.encode(targets[i % len(targets)], hotwords=lists[i]), items)
    return ["| prompt encode | µs per item |", "|---|---|", f"| no list (cached prompt) | {plain:.0f} |",
            f"| 10-phrase list | {listed:.0f} |"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--utts", type=int, default=200_000)
    p.add_argument("--vocab", type=int, default=50_000)
    p.add_argument("--items", type=int, default=2000, help="items timed for pick() and encode()")
    p.add_argument("--tokenizer", help="an HF tokenizer directory (default: the tiny test tokenizer)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.utts, args.vocab, args.items = 2000, 2000, 50
    from llmasr.data.manifest import Manifest

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Manifest.open(write_manifest(Path(tmp) / "m.jsonl", args.utts, args.vocab, args.seed))
        targets = [manifest[i].target for i in range(min(args.items, len(manifest)))]
        rows = corpus_rows(manifest, targets, args.items, args.seed)
    rows += [""] + prompt_rows(args.tokenizer, targets, args.items)
    head = [f"# hotword lists: {args.utts} utterances, Zipf vocabulary {args.vocab}", ""]
    command = "python bench/hotword_lists.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print("\n".join([*head, *rows, "", command]))
    print_commit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
