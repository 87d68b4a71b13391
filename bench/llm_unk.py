"""The start-up pass that names the transcripts the LLM's tokenizer spells as its unk token (llmasr.data.llm_unk), on
a large corpus: each distinct word (a WordLevel vocabulary) or character (a SentencePiece-style Unigram) asked once
and only the lines holding a refused one tokenized whole, against tokenizing every line whole (one call a line, as
the screen goes; and one batched call, the fastest the tokenizer itself manages). A byte-level tokenizer skips it.

    python bench/llm_unk.py                       # 300k lines, 1% of them holding something the tokenizer lacks
    python bench/llm_unk.py --lines 1000000 --unk 0.1

Reported: seconds for each, lines found, and whether the cheap pass found exactly the lines the whole pass found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import emit  # noqa: E402


def corpora(n: int, unk: float, seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """kind -> (training texts of the tokenizer, n transcripts): English-like words (5,000 of them, 4-20 a line)
    and Chinese-like characters (3,000, 8-30 a line), `unk` of the lines holding one the tokenizer never saw."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, size=int(rng.integers(2, 9)))) for _ in range(6000)})[:5000]
    hanzi = [chr(0x4E00 + i) for i in range(3000)]
    out = {}
    for kind, units, sep, lo, hi, stranger in (("word", words, " ", 4, 21, "zzqxv"), ("char", hanzi, "", 8, 31, "龘")):
        lines = []
        for _ in range(n):
            picked = [units[int(j)] for j in rng.integers(0, len(units), size=int(rng.integers(lo, hi)))]
            if rng.random() < unk:
                picked[int(rng.integers(0, len(picked)))] = stranger
            lines.append(sep.join(picked))
        train = [sep.join(units[i : i + 50]) for i in range(0, len(units), 50)]
        out[kind] = (train, lines)
    return out


def tokenizer_dir(kind: str, train: list[str], root: Path) -> Path:
    from llmasr.testing.tiny_llm import train_unigram_tokenizer, train_word_level_tokenizer, write_unk_llm_dir

    tok = train_word_level_tokenizer(train) if kind == "word" else train_unigram_tokenizer(train, vocab_size=4000)
    return write_unk_llm_dir(root / kind, tok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=300_000)
    p.add_argument("--unk", type=float, default=0.01, help="share of lines holding what the tokenizer lacks")
    p.add_argument("--json-out")
    args = p.parse_args(argv)

    from llmasr.data.llm_unk import LLMUnk
    from llmasr.models.tokenizer import load_tokenizer
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (train, lines) in corpora(args.lines, args.unk).items():
            tok = load_tokenizer(tokenizer_dir(kind, train, Path(tmp)))
            unk = tok.unk_token_id
            t0 = time.perf_counter()
            asker = LLMUnk.of(tok)
            cheap = [i for i, line in enumerate(lines) if asker.unknown(line)]
            t_cheap = time.perf_counter() - t0
            t0 = time.perf_counter()
            whole = [i for i, line in enumerate(lines) if unk in asker._ids(line)]
            t_each = time.perf_counter() - t0
            t0 = time.perf_counter()
            batch = tok(lines, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            t_batch = time.perf_counter() - t0
            assert [i for i, ids in enumerate(batch) if unk in ids] == whole
            rows[kind] = {"mode": asker.mode, "lines": len(lines), "found": len(cheap), "same": cheap == whole,
                          "asked_units": len(asker._units), "cheap_s": round(t_cheap, 3),
                          "whole_each_s": round(t_each, 3), "whole_batched_s": round(t_batch, 3)}  # fmt: skip
            print(f"{kind}: {rows[kind]}", flush=True)
        byte_level = load_tokenizer(write_tiny_llm_dir(Path(tmp) / "bl"))
        t0 = time.perf_counter()
        skipped = LLMUnk.of(byte_level) is None
        rows["byte_level"] = {"skipped": skipped, "seconds": round(time.perf_counter() - t0, 4)}
        print(f"byte_level: {rows['byte_level']}", flush=True)
    table = ["| tokenizer | asked by | lines | found | same lines | units asked | cheap pass s | whole, a call a line s"
             " | whole, batched s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind in ("word", "char"):
        r = rows[kind]
        table.append(f"| {kind} | {r['mode']} | {r['lines']} | {r['found']} | {r['same']} | {r['asked_units']} | "
                     f"{r['cheap_s']} | {r['whole_each_s']} | {r['whole_batched_s']} |")  # fmt: skip
    table.append(f"byte-level tokenizer: pass skipped {rows['byte_level']['skipped']} "
                 f"({rows['byte_level']['seconds']} s to decide)")  # fmt: skip
    emit({"lines": args.lines, "unk": args.unk, "results": rows}, table, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
