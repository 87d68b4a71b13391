"""`llmasr score` on large transcript files: a reference and two systems' hypotheses ('key text' files) of English
sentences with capitals, punctuation, apostrophes and numbers ("Don't stop, it's 3.5 miles."), or of Chinese with
full-width punctuation, each hypothesis a few percent of its words substituted, dropped or added.

    python bench/score_speed.py                        # 100,000 lines, English
    python bench/score_speed.py --lines 100000 --kind chinese
    python bench/score_speed.py --hotwords 1000         # B-/U-WER under one biasing list of 1,000 phrases

Reported: the seconds of the whole command (reading, scoring both systems, their comparison and bootstrap intervals,
the report; in this process, the faster of --repeats) and its CPU seconds (steadier on a shared machine), the seconds
of text_units.normalize over every reference line, and the report's first rate line (the same before and after a
speed-up).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import emit  # noqa: E402

ENGLISH = ["the", "a", "of", "Paris", "don't", "it's", "3.5", "1,000", "miles", "said", "John's", "OK", "well", "time"]
ENGLISH += [f"word{i}" for i in range(2000)]
PUNCT = ["", "", "", "", ",", ".", "?", "!", ";"]


def sentences(n: int, kind: str, rng) -> list[list[str]]:
    """n sentences as lists of units (English words with their punctuation, or Chinese characters)."""
    if kind == "english":
        words = np.array(ENGLISH)
        return [[str(w) + PUNCT[rng.integers(len(PUNCT))] for w in rng.choice(words, rng.integers(5, 26))]
                for _ in range(n)]  # fmt: skip
    hanzi = np.array([chr(0x4E00 + i) for i in range(3000)] + ["，", "。", "？"])
    return [[str(c) for c in rng.choice(hanzi, rng.integers(8, 31))] for _ in range(n)]


def noisy(units: list[str], p: float, rng, pool: list[str]) -> list[str]:
    out = []
    for u in units:
        x = rng.random()
        if x < p:
            continue
        out.append(pool[rng.integers(len(pool))] if x < 2 * p else u)
        if rng.random() < p / 2:
            out.append(pool[rng.integers(len(pool))])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--kind", choices=("english", "chinese"), default="english")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--hotwords", type=int, default=0, help="a biasing list of N phrases of 1-2 units (--hotwords)")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    from llmasr.commands.score import main as score_main
    from llmasr.text_units import normalize

    rng = np.random.default_rng(0)
    refs = sentences(args.lines, args.kind, rng)
    pool = sorted({u for s in refs[:1000] for u in s})
    sep = " " if args.kind == "english" else ""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, p in (("ref", 0.0), ("hyp_a", 0.04), ("hyp_b", 0.07)):
            files.append(Path(tmp) / f"{name}.txt")
            lines = (f"utt{i:07d} {sep.join(noisy(s, p, rng, pool) if p else s)}\n" for i, s in enumerate(refs))
            files[-1].write_text("".join(lines), encoding="utf-8")
        texts = [sep.join(s) for s in refs]
        flags = []
        if args.hotwords:
            units = sorted({u.strip(",.?!;，。？") for s in refs[:2000] for u in s} - {""})
            picks = rng.choice(len(units), size=(args.hotwords, 2))
            listed = dict.fromkeys(sep.join(units[i] for i in row[: 1 + k % 2]) for k, row in enumerate(picks))
            (Path(tmp) / "hotwords.txt").write_text("".join(f"{p}\n" for p in listed), encoding="utf-8")
            flags = ["--hotwords", str(Path(tmp) / "hotwords.txt")]
        t0 = time.perf_counter()
        for t in texts:
            normalize(t)
        norm_s = time.perf_counter() - t0
        took, cpu, report = float("inf"), float("inf"), ""
        for _ in range(args.repeats):
            buf = io.StringIO()
            t0, c0 = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(buf):
                rc = score_main([str(f) for f in files] + flags)
            took, cpu = min(took, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
            report = buf.getvalue()
            if rc:
                raise SystemExit(f"llmasr score exited {rc}")
    rate = next((line.strip() for line in report.splitlines() if "%" in line), "")
    biased = next((line.strip() for line in report.splitlines() if "B-WER" in line or "B-CER" in line), None)
    rate += f"; {biased}" if biased else ""
    res = {
        "lines": args.lines,
        "kind": args.kind,
        "score_s": took,
        "score_cpu_s": cpu,
        "normalize_s": norm_s,
        "first_rate": rate,
        "hotwords": args.hotwords,
    }
    listed = f", a list of {args.hotwords} phrases" if args.hotwords else ""
    line = f"{args.lines} {args.kind} lines{listed}, 2 systems: llmasr score {took:.2f} s ({cpu:.2f} s of CPU); "
    emit(res, [line + f"normalize of the references {norm_s:.2f} s; {rate}"], args.json_out)


if __name__ == "__main__":
    main()
