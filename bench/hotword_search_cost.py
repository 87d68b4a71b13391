"""What the hotword boost costs the search per step, for phrases matched on bytes (Chinese) and on token ids.

    python bench/hotword_search_cost.py            # a byte-level BPE of 30k tokens trained on synthetic Chinese
    python bench/hotword_search_cost.py --tokenizer models/Qwen2.5-1.5B-Instruct
    python bench/hotword_search_cost.py --quick    # smoke run (numbers mean nothing)

For lists of 10, 100 and 1,000 phrases (Chinese words of 2-4 characters drawn from the corpus, as many of them
behind a Latin brand name, "Brand7手机", and as many English names), a HotwordBoost steps 8 rows through tokenized
sentences that hold listed phrases, as a greedy search of 8 utterances would: the first list's set-up (the
tokenizer's byte table and index, once per tokenizer; the list's trie, once per list) and the mean time of a step
(what the processor adds to each of the 8 rows over the whole vocabulary).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np
import torch
from _common import print_commit

COMMON = 3000  # the CJK characters the synthetic text draws from


def chinese_words(rng, n: int) -> list[str]:
    chars = [chr(0x4E00 + int(i)) for i in rng.choice(0x5200, size=COMMON, replace=False)]
    return ["".join(rng.choice(chars, size=int(rng.integers(1, 5)))) for _ in range(n)]


def sentences(rng, words: list[str], n: int) -> list[str]:
    ranks = np.minimum(rng.zipf(1.3, size=(n, 12)), len(words)) - 1
    return ["".join(words[r] for r in row[: int(rng.integers(4, 13))]) for row in ranks]


def trained_tokenizer(texts: list[str], size: int):
    from llmasr.testing.tiny_llm import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size=size)


def step_cost(boost, tok, texts: list[str], rows: int, steps: int) -> float:
    """Mean seconds of one processor call over `rows` rows, each row a sentence stepped token by token."""
    vocab = len(tok)
    seqs = [tok.encode(t, add_special_tokens=False) for t in texts[:rows]]
    width = min(steps, min(len(s) for s in seqs))
    # the set-up's objects collected first: a full collection landing inside these few steps (where the set-up's
    # allocations happen to trigger it) had doubled the mean, a cost a long decode pays once, not per step
    gc.collect()
    took = 0.0
    for k in range(width):
        ids = torch.tensor([s[:k] for s in seqs], dtype=torch.long).reshape(rows, k)
        t0 = time.perf_counter()
        boost(ids, torch.zeros(rows, vocab))
        took += time.perf_counter() - t0
    return took / max(1, width)


def main(argv: list[str] | None = None) -> int:
    from llmasr.models.hotword_boost import HotwordBoost

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", help="an HF tokenizer directory (default: a BPE trained on synthetic Chinese)")
    p.add_argument("--vocab", type=int, default=30_000, help="the trained tokenizer's size")
    p.add_argument("--sentences", type=int, default=60_000, help="synthetic sentences the tokenizer is trained on")
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="phrases per list")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.sentences, args.sizes, args.steps = 600, 2000, [10], 4
    rng = np.random.default_rng(args.seed)
    words = chinese_words(rng, 20_000)
    texts = sentences(rng, words, args.sentences)
    t0 = time.perf_counter()
    if args.tokenizer:
        from llmasr.models.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    else:
        tok = trained_tokenizer(texts, args.vocab)
    trained = time.perf_counter() - t0
    end = tok.eos_token_id
    rows = [
        "| phrases | matched on | first list's set-up (s) | step, 8 rows (ms) |",
        "|---|---|---|---|",
    ]
    for size in args.sizes:
        listed = [w for w in dict.fromkeys(words[50:]) if 2 <= len(w) <= 4][:size]
        names = [f"Name{i} Surname{i}" for i in range(size)]
        holding = [listed[i % len(listed)].join(texts[i : i + 2]) for i in range(args.rows)]
        english = [f"we met {names[i % size]} today and {names[(i + 1) % size]} said hello" for i in range(args.rows)]
        brands = [f"Brand{i}{w}" for i, w in enumerate(listed)]  # ASCII start, Chinese end: bytes, with word rules
        mixed = [brands[i % len(brands)].join(texts[i : i + 2]) for i in range(args.rows)]
        for kind, phrases, said in (
            ("bytes (Chinese)", listed, holding),
            ("bytes (Latin + Chinese)", brands, mixed),
            ("token ids (English)", names, english),
        ):
            t0 = time.perf_counter()
            boost = HotwordBoost([phrases] * args.rows, tok, 2.0, end, 1)
            setup = time.perf_counter() - t0
            cost = step_cost(boost, tok, said, args.rows, args.steps)
            rows.append(f"| {size} | {kind} | {setup:.2f} | {cost * 1e3:.1f} |")
    head = [f"# hotword boost cost per search step: tokenizer of {len(tok)} tokens"
            + ("" if args.tokenizer else f" (trained in {trained:.0f} s)"), ""]  # fmt: skip
    command = "python bench/hotword_search_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print("\n".join([*head, *rows, "", command]))
    print_commit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
