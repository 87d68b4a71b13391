"""The start-up count of each line's CTC labels against its encoder frames (llmasr.data.ctc_frames), on a large
corpus: the start-up screen of a FunASR jsonl with a character CTC vocabulary (a token list), with the spelling check
as it was (each distinct character asked once) and with the count (each distinct word spelled once where the
vocabulary spells word by word, by the same pass); then the frame count and the warning over every line's duration
for a Conformer under conv2d8. The count alone, for that token list and for `vocab: llm` with a byte-level BPE of
Qwen's pipeline trained on the corpus: every line encoded whole (the count before) against word by word, whose
verdicts and counts must be the same.

    python bench/ctc_frames.py                      # 300k lines a corpus
    python bench/ctc_frames.py --lines 1000000

Reported: the screen's seconds without and with the count (the fastest of three, alternated), the frames pass's
seconds, the lines found unaligned, and the count's seconds each way.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import emit  # noqa: E402
from transcript_text import corpora  # noqa: E402


def write_manifest(lines: list[str], root: Path, rng) -> tuple[Path, list[str]]:
    """A FunASR jsonl of `lines` over a handful of short wavs, durations 1-10 s, and the characters it holds."""
    import soundfile as sf

    wavs = [root / f"w{i}.wav" for i in range(4)]
    for i, w in enumerate(wavs):
        sf.write(str(w), np.zeros(16000 * (i + 1), dtype=np.float32), 16000)
    path = root / "train.jsonl"
    seconds = np.round(rng.uniform(1.0, 10.0, size=len(lines)), 2)
    with open(path, "w") as f:
        for i, text in enumerate(lines):
            rec = {"key": f"u{i}", "source": str(wavs[i % 4]), "duration": float(seconds[i]), "target": text}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path, sorted({c for t in lines for c in t if not c.isspace()})


def screen_seconds(path: Path, rule) -> tuple[float, float, np.ndarray]:
    from llmasr.data.manifest import Manifest
    from llmasr.data.screen import screen

    took, need = [float("inf"), float("inf")], None
    for _ in range(3):
        for k in (0, 1):
            m = Manifest.open(str(path))
            counts = np.zeros(len(m), dtype=np.int64) if k else None
            took[k] = min(took[k], screen(m, rule, ctc_need=counts)[1])
            need = counts if k else need
    return took[0], took[1], need


def count_seconds(rule, texts: list[str]) -> tuple[float, float]:
    """Seconds to count every line's labels whole (ctc_label_ids, then frames_needed) and word by word
    (CTCSpelling's count); the two must give each line the same verdict and count."""
    from llmasr.data.ctc_frames import CTCSpelling, frames_needed

    t0 = time.perf_counter()
    whole = []
    for text in texts:
        ids = rule(text.strip())
        whole.append((ids, 0) if isinstance(ids, str) else (None, frames_needed(ids)))
    t1 = time.perf_counter()
    spell = CTCSpelling(rule, count=True)
    assert spell.words is not None, "the vocabulary is not spelled word by word"
    words = []
    for text in texts:
        words.append((spell(text), spell.need))
    t2 = time.perf_counter()
    assert words == whole, "word by word counted otherwise than whole lines"
    return t1 - t0, t2 - t1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=300_000)
    p.add_argument("--json-out")
    args = p.parse_args(argv)

    from llmasr.data.ctc_frames import unaligned_text
    from llmasr.data.dataset import CTCRule
    from llmasr.data.frontend import FrontendConfig
    from llmasr.data.manifest import Manifest
    from llmasr.models.context import encoder_frames
    from llmasr.models.ctc_token_list import TokenListCTCTokenizer
    from llmasr.models.ctc_vocab import LLMCTCTokenizer
    from llmasr.models.subsampling import subsampled_lengths
    from llmasr.testing.tiny_llm import train_bpe_tokenizer

    # a Conformer under conv2d8: the frontend and the subsampling its output_lengths computes
    subsampling = SimpleNamespace(output_lengths=lambda t: subsampled_lengths(t, "conv2d8"))
    conformer = SimpleNamespace(frontend=FrontendConfig(), encoder=subsampling)
    rows, rng = {}, np.random.default_rng(0)
    texts = corpora(args.lines, 0.0)
    for kind in ("chinese", "english"):
        with tempfile.TemporaryDirectory() as tmp:
            path, chars = write_manifest(texts[kind], Path(tmp), rng)
            vocab = Path(tmp) / "tokens.txt"
            vocab.write_text("\n".join(["<blank>", "<unk>", "<space>", *chars]) + "\n", encoding="utf-8")
            rule = CTCRule(TokenListCTCTokenizer(str(vocab)))
            before, after, need = screen_seconds(path, rule)
            durations = np.asarray(Manifest.open(str(path)).durations(), dtype=np.float64)
            t0 = time.perf_counter()
            lines = np.arange(durations.size)
            said = unaligned_text(need, lines, durations, lambda s: encoder_frames(conformer, s), str, name="train")
            frames_s = time.perf_counter() - t0
            counts = {"token list": count_seconds(rule, texts[kind])}
        bpe = CTCRule(LLMCTCTokenizer(train_bpe_tokenizer(texts[kind][:2000], 2000)))
        counts["llm (byte-level BPE)"] = count_seconds(bpe, texts[kind])
        found = said.split(" lines (")[0].split(": ")[1] if said else "none"
        rows[kind] = {"lines": args.lines, "screen_s": round(before, 2), "screen_with_count_s": round(after, 2),
                      "frames_pass_s": round(frames_s, 2), "unaligned": found,
                      "count_s": {v: {"whole_lines": round(a, 2), "word_by_word": round(b, 2)}
                                  for v, (a, b) in counts.items()}}  # fmt: skip
        print(f"{kind}: {rows[kind]}", flush=True)
    table = ["| transcripts | lines | screen, spelling check only (s) | screen with the count (s) | frames and warning "
             "(s) | unaligned at 12.5 frames/s |", "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for kind, r in rows.items():
        table.append(f"| {kind} | {r['lines']} | {r['screen_s']} | {r['screen_with_count_s']} | {r['frames_pass_s']} | "
                     f"{r['unaligned']} |")  # fmt: skip
    table += [
        "",
        "| transcripts | CTC vocabulary | count, lines whole (s) | count, word by word (s) |",
        "|---|---|---:|---:|",
    ]
    for kind, r in rows.items():
        for vocab, c in r["count_s"].items():
            table.append(f"| {kind} | {vocab} | {c['whole_lines']} | {c['word_by_word']} |")
    emit({"lines": args.lines, "results": rows}, table, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
