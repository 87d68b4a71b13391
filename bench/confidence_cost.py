"""What the per-utterance confidence (llmasr.models.confidence: one teacher-forced forward after the search) adds to
decoding time, through `llmasr decode`'s own loop (transcribe_loader), with and without it, rounds alternating.

    python bench/confidence_cost.py [--size tiny|qwen0.5b] [--clips 8] [--rounds 3] [--beams 1 4]

Random weights: a hypothesis runs to its cap (tokens_per_second 3, English read speech in Qwen BPE tokens, + 8), so
its length is that of real speech, a little longer. Sizes: `tiny` is the tests' model (llmasr.testing); `qwen0.5b` a
Qwen2.5-0.5B-shaped LLM (24 layers x 896, 151,936 tokens) behind an 8-block SAN-M encoder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, reproduce_command

QWEN_05B = dict(enc_blocks=8, llm_layers=24, llm_hidden=896, llm_heads=14, llm_kv_heads=2, llm_inter=4864)


def setup(size: str, root: Path):
    import llmasr

    if size == "tiny":
        from llmasr.testing.tiny_llm import write_tiny_llm_dir
        from llmasr.testing.tiny_recipe import tiny_model_section

        torch.manual_seed(0)
        return llmasr.build_model(tiny_model_section(write_tiny_llm_dir(root / "llm"))).eval()
    from _speech_model import ModelSize, build_model

    return build_model(ModelSize(**QWEN_05B)).eval()


def corpus(root: Path, clips: int) -> Path:
    """`clips` noise clips of 3 to 10 s (read speech's utterance lengths) in a manifest."""
    import json

    from llmasr.testing.run_dirs import write_wav

    (root / "wav").mkdir(parents=True)
    lines = []
    for i in range(clips):
        write_wav(root / "wav" / f"c{i}.wav", 3.0 + 7.0 * i / max(1, clips - 1), seed=i)
        lines.append(json.dumps({"key": f"c{i}", "source": f"wav/c{i}.wav", "target": "x"}))
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")
    return root / "test.jsonl"


def timed(model, manifest: Path, cfg, confidence: bool) -> float:
    from dataclasses import replace

    from llmasr.export.decode import DecodeOptions, decode_loader, transcribe_loader

    loader = decode_loader(model, manifest, cfg, DecodeOptions(num_workers=0))
    batches = [b for b in loader]  # features made before the clock starts: only the model's time is compared

    class Ready:
        dataset = loader.dataset

        def __iter__(self):
            return iter(batches)

        def __len__(self):  # the decode's progress counts the batches
            return len(batches)

    t0 = time.perf_counter()
    transcribe_loader(model, Ready(), replace(cfg, confidence=confidence), "cpu")
    return time.perf_counter() - t0


def measure(args) -> list[dict]:
    """The best decode time of each search, with and without confidence, rounds alternating."""
    from llmasr.models.decoding import DecodeConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, manifest = setup(args.size, root), corpus(root, args.clips)
        for beams in args.beams:
            cfg = DecodeConfig(num_beams=beams, tokens_per_second=3.0, repeat_limit=0, max_window_seconds=0)
            timed(model, manifest, cfg, True)  # warm-up
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.rounds):
                for on in (False, True):
                    best[on] = min(best[on], timed(model, manifest, cfg, on))
            rows.append({"beams": beams, "without": best[False], "with": best[True]})
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("tiny", "qwen0.5b"), default="tiny")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    quiet = logging.getLogger("llmasr")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # random weights: the context warning of every pass
    try:
        rows = measure(args)
    finally:  # run in-process (the bench tests), a level left at ERROR silenced every later test's llmasr warnings
        quiet.setLevel(level)
    res = {"size": args.size, "clips": args.clips, "threads": torch.get_num_threads(), "modes": rows}
    res["command"] = reproduce_command("bench/confidence_cost.py", argv)
    lines = [f"Confidence cost ({args.size}, {args.clips} clips in one batch, CPU, {res['threads']} threads)", "",
             "| search | decode s | with confidence s | added |", "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        added = r["with"] / r["without"] - 1
        lines.append(f"| beam {r['beams']} | {r['without']:.3f} | {r['with']:.3f} | {100 * added:+.1f}% |")
    emit(res, [*lines, "", f"Reproduce: `{res['command']}`"], args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
