"""The start-up pass that names what is wrong with the text of the transcripts (llmasr.data.transcript_text: tags,
whitespace other than one space between words, text not in NFC, spaces between Chinese characters), on a large
corpus: the pass as the screen runs it (a few C-level scans a line, a closer look only at a line that fails one),
against the tags-only pass it replaced and a plain pass that normalises every line and compares; and the whole
start-up screen of a FunASR jsonl manifest with and without it.

    python bench/transcript_text.py                   # 300k lines a corpus, 1% of them holding a tab or an accent
    python bench/transcript_text.py --lines 1000000 --odd 0.1

Reported: seconds for each pass and corpus, lines found by each (the cheap and the plain pass must agree), and the
screen's seconds.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import emit  # noqa: E402

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def corpora(n: int, odd: float, seed: int = 0) -> dict[str, list[str]]:
    """kind -> n transcripts: English words (5-25 a line), unsegmented Chinese (8-30 characters, a Latin word
    spaced in one line of ten) and AISHELL-style segmented Chinese (words of 1-3 characters, spaced); `odd` of the
    lines hold a tab, and as many a decomposed "é"."""
    rng = np.random.default_rng(seed)
    hanzi = np.array([chr(0x4E00 + i) for i in range(3000)])
    out = {}
    for kind in ("english", "chinese", "segmented"):
        lines = []
        for _ in range(n):
            if kind == "english":
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 26))))
            elif kind == "chinese":
                text = "".join(rng.choice(hanzi, size=int(rng.integers(8, 31))))
                if rng.random() < 0.1:
                    text = f"{text[:4]} iPhone {text[4:]}"
            else:
                words = ["".join(rng.choice(hanzi, size=int(rng.integers(1, 4)))) for _ in range(rng.integers(4, 12))]
                text = " ".join(words)
            r = rng.random()
            if r < odd:
                text = text.replace(" ", "\t", 1) if " " in text else text + "\t" + text
            elif r < 2 * odd:
                text += " cafe\u0301"
            lines.append(text)
        out[kind] = lines
    return out


_TAG = re.compile(r"<\|[^|<>\s]{1,40}\|>")
_CJK = re.compile("[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff] +[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")


def tags_only(lines: list[str]) -> dict:
    """The pass before: special-token tags alone."""
    found: dict = {}
    for i, text in enumerate(lines):
        for tag in dict.fromkeys(_TAG.findall(text)) if "<|" in text else ():
            found.setdefault(tag, [0, i])[0] += 1
    return found


def plain(lines: list[str]) -> dict:
    """Every line normalised and compared: the whitespace collapsed, NFC, the spaced-CJK search."""
    found = {"whitespace": 0, "not NFC": 0, "spaced CJK": 0}
    for text in lines:
        inner = text.strip()
        found["whitespace"] += " ".join(inner.split()) != inner
        found["not NFC"] += unicodedata.normalize("NFC", text) != text
        found["spaced CJK"] += _CJK.search(text) is not None
    return found


def timed(fn, *args) -> tuple[float, object]:
    best, got = float("inf"), None
    for _ in range(2):  # the faster of two
        t0 = time.perf_counter()
        got = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, got


def screen_seconds(lines: list[str], root: Path) -> tuple[float, float]:
    """The start-up screen of a FunASR jsonl of `lines` (audio: a handful of short wavs), with the text pass and with
    it a no-op."""
    import json

    import soundfile as sf

    import llmasr.data.screen as screen_mod
    from llmasr.data.manifest import Manifest

    wavs = [root / f"w{i}.wav" for i in range(4)]
    for i, w in enumerate(wavs):
        sf.write(str(w), np.zeros(16000 * (i + 1), dtype=np.float32), 16000)
    path = root / "train.jsonl"
    with open(path, "w") as f:
        for i, text in enumerate(lines):
            rec = {"key": f"u{i}", "source": str(wavs[i % 4]), "duration": float(i % 4 + 1), "target": text}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    real = screen_mod.gather_text
    took = [float("inf"), float("inf")]
    for _ in range(3):  # alternated, the fastest of three each
        for k, gather in enumerate((real, lambda found, text, where: None)):
            screen_mod.gather_text = gather
            try:
                took[k] = min(took[k], screen_mod.screen(Manifest.open(str(path)), text={})[1])
            finally:
                screen_mod.gather_text = real
    return took[0], took[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=300_000)
    p.add_argument("--odd", type=float, default=0.01, help="share of lines holding a tab (and as many an accent)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)

    from llmasr.data.transcript_text import CJK_SPACED, DECOMPOSED, WHITESPACE, gather_text

    def cheap(lines: list[str]) -> dict:
        found: dict = {}
        for i, text in enumerate(lines):
            gather_text(found, text, i)
        return found

    rows = {}
    texts = corpora(args.lines, args.odd)
    for kind, lines in texts.items():
        t_cheap, found = timed(cheap, lines)
        t_tags, _ = timed(tags_only, lines)
        t_plain, plain_found = timed(plain, lines)
        counts = {k: found.get(k, [0])[0] for k in (WHITESPACE, DECOMPOSED, CJK_SPACED)}
        rows[kind] = {"lines": len(lines), "found": counts, "same": counts == plain_found,
                      "text_pass_s": round(t_cheap, 3), "tags_only_s": round(t_tags, 3),
                      "plain_s": round(t_plain, 3)}  # fmt: skip
        print(f"{kind}: {rows[kind]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        with_pass, without = screen_seconds(texts["english"], Path(tmp))
    rows["screen"] = {"with_text_pass_s": round(with_pass, 2), "without_s": round(without, 2)}
    print(f"screen: {rows['screen']}", flush=True)
    table = ["| transcripts | lines | whitespace / not NFC / spaced CJK lines | same as the plain pass | text pass s | "
             "tags only (before) s | plain pass s |", "|---|---:|---|---|---:|---:|---:|"]  # fmt: skip
    for kind in texts:
        r = rows[kind]
        f = r["found"]
        table.append(f"| {kind} | {r['lines']} | {f[WHITESPACE]} / {f[DECOMPOSED]} / {f[CJK_SPACED]} | {r['same']} | "
                     f"{r['text_pass_s']} | {r['tags_only_s']} | {r['plain_s']} |")  # fmt: skip
    s = rows["screen"]
    table.append(f"Start-up screen of the English FunASR jsonl ({args.lines} lines): {s['with_text_pass_s']} s with "
                 f"the text pass, {s['without_s']} s with it a no-op")  # fmt: skip
    emit({"lines": args.lines, "odd": args.odd, "results": rows}, table, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
