"""`llmasr decode` start-up on a large manifest whose lines carry their own biasing lists, with decode.max_llm_tokens.

    python bench/decode_startup.py                      # 20k and 100k lines
    python bench/decode_startup.py --lines 300000 --json-out startup.json
    python bench/decode_startup.py --quick              # smoke run (numbers mean nothing)

Before its first batch, decode reads the manifest for two things: the longest prompt a line renders (the window that
fits the LLM's context: llmasr.models.context.decoding_prompt) and each item's prompt in its LLM positions for the
budget (llmasr.train.decode_rows.DecodeRows). Stages, each timed alone on the tiny test model (its byte-level BPE
tokenizer and ChatML template), µs per manifest line: Manifest.open (the index), decoding_prompt, DecodeRows, and the
whole start-up as decode_manifest runs it, up to the moment it would decode its first batch (every rank pays it).
Lines: a 1-7 s duration each (no audio is read) and a list of 3-9 two-word phrases of their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import emit, reproduce_command  # noqa: E402


class _FirstBatch(Exception):
    """Raised where decode_manifest would start decoding: the start-up is over."""


def write_manifest(path: Path, lines: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    words = np.asarray([f"word{i}" for i in range(5000)])  # an array: choice() would convert a list each call
    picks = rng.integers(0, words.size, size=(lines, 9, 2))
    sizes = rng.integers(3, 10, size=lines)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            listed = [f"{words[a]} {words[b]}" for a, b in picks[i, : sizes[i]].tolist()]
            rec = {"key": f"u{i}", "source": "a.wav", "duration": float(1 + i % 7), "hotwords": listed}
            f.write(json.dumps(rec) + "\n")
    return path


def startup_seconds(model, path: Path, cfg, opts, out: Path) -> float:
    """decode_manifest's seconds until it would decode its first batch."""
    import llmasr.export.decode as decode

    def stop(*args, **kwargs):
        raise _FirstBatch

    real, decode.transcribe_loader = decode.transcribe_loader, stop
    t0 = time.perf_counter()
    try:
        decode.decode_manifest(model, path, out, cfg, opts)
    except _FirstBatch:
        return time.perf_counter() - t0
    finally:
        decode.transcribe_loader = real
    raise RuntimeError("decode_manifest returned without decoding a batch")


def measure(model, root: Path, lines: int, seed: int) -> dict:
    from llmasr.data.config import DataConfig
    from llmasr.data.loader import decode_batching
    from llmasr.data.manifest import Manifest
    from llmasr.export.decode import DecodeOptions
    from llmasr.models.context import decoding_prompt
    from llmasr.models.decoding import DecodeConfig
    from llmasr.train.decode_rows import DecodeRows

    path = write_manifest(root / f"m{lines}.jsonl", lines, seed)
    cfg = DecodeConfig(max_llm_tokens=4000, max_window_seconds=0)
    seconds = {}
    t0 = time.perf_counter()
    manifest = Manifest.open(path, need_target=False)
    seconds["Manifest.open"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoding_prompt(model.prompt, None, manifest)
    seconds["decoding_prompt"] = time.perf_counter() - t0
    durations = np.asarray(manifest.durations(), dtype=np.float64)
    data_cfg = DataConfig(batching=decode_batching(cfg.batch_seconds, len(durations), cfg.max_llm_tokens))
    t0 = time.perf_counter()
    DecodeRows(model, cfg)(manifest, durations, data_cfg)
    seconds["DecodeRows"] = time.perf_counter() - t0
    seconds["decode start-up"] = startup_seconds(model, path, cfg, DecodeOptions(num_workers=0), root / "out")
    return {"lines": lines, "seconds": seconds, "us_per_line": {k: v / lines * 1e6 for k, v in seconds.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, nargs="+", default=[20000, 100000], help="manifest sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="200 lines (the suite's smoke run)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    import torch

    import llmasr
    from llmasr.testing.run_dirs import write_wav
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import tiny_model_section

    sizes = [200] if args.quick else args.lines
    res = {"command": reproduce_command("bench/decode_startup.py", list(argv if argv is not None else sys.argv[1:]))}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(args.seed)
        model = llmasr.build_model(tiny_model_section(write_tiny_llm_dir(root / "llm"))).eval()
        write_wav(root / "a.wav", 1.0, seed=0)
        res["runs"] = [measure(model, root, n, args.seed) for n in sizes]
    stages = list(res["runs"][0]["seconds"])
    lines = [
        "| lines | " + " | ".join(f"{s} s (µs/line)" for s in stages) + " |",
        "|---:|" + "---:|" * len(stages),
        *(
            f"| {r['lines']} | "
            + " | ".join(f"{r['seconds'][s]:.2f} ({r['us_per_line'][s]:.0f})" for s in stages)
            + " |"
            for r in res["runs"]
        ),
        f"Reproduce: `{res['command']}`",
    ]
    emit(res, lines, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
