"""`llmasr data pseudo-label DECODE_DIR --output M.jsonl [--min-avg-logprob X]`: a decode's transcripts as a
training manifest (llmasr.export.pseudo_labels)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from llmasr.data.manifest import BadManifest, EmptyManifest
from llmasr.export.pseudo_labels import RESULTS, LabelFilter, PseudoLabelError, pseudo_labels


def _logprob(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value > 0:
        raise argparse.ArgumentTypeError(f"a log-probability is a finite number <= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmasr data pseudo-label",
        description="write a decode's transcripts as a FunASR jsonl training manifest: the decoded lines with the "
        "LLM's text as target (a line a window of a recording decoded in windows), less those a gate found no "
        "speech in, empty ones, those a guard cut, those holding control or invisible characters, and with "
        "--min-avg-logprob the unsure ones",
    )
    p.add_argument("decoded", help=f"the output folder of `llmasr decode` (its {RESULTS} and wer.json)")
    p.add_argument("--output", required=True, help="the manifest to write")
    p.add_argument("--manifest", help="the manifest that was decoded (default: the one the folder's wer.json names)")
    p.add_argument(
        "--min-avg-logprob", type=_logprob,
        help="keep a line (a window of a long recording) only where its avg_logprob is at least this (the decode "
        "needs --confidence); wer.txt's confidence line on a labelled dev set says what a threshold buys",
    )  # fmt: skip
    p.add_argument("--keep-truncated", action="store_true", help="keep transcripts the length cap or repetition cut")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    decoded = Path(args.decoded)
    filt = LabelFilter(min_avg_logprob=args.min_avg_logprob, keep_truncated=args.keep_truncated)
    try:
        got = pseudo_labels(decoded, output, filt, Path(args.manifest) if args.manifest else None)
    except (PseudoLabelError, FileNotFoundError, BadManifest, EmptyManifest) as err:
        print(f"llmasr data pseudo-label: error: {err}", file=sys.stderr)
        return 2
    print(got.report(filt))
    return 0
