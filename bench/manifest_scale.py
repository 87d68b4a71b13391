"""Start-up and worker memory on a manifest of millions of lines: what a corpus of thousands of hours costs.

    python bench/manifest_scale.py                                  # 1M FunASR lines, 2 workers, 3000 batches
    python bench/manifest_scale.py --lines 3000000 --format cuts --batches 0

The manifest's lines point at a handful of short wav files (`--wavs`), durations given in the lines (FunASR's
source_len, or a lhotse cut's duration), so what is measured is the manifest, not the audio. Stages, in one process:
indexing (Manifest.open), the start-up screen (every line parsed, every audio file stat'ed), build_dataloader as
training runs it, one epoch's plan at world sizes 8 and 64 (rank 0 of fake ranks) and the memory that plan holds
(every rank's batches: each rank holds them all) and needs while it is made, then the DataLoader workers' own
memory over `--batches` batches: USS (pages only that worker holds: what it copied from the rank on write) and PSS,
from /proc/<pid>/smaps_rollup. A manifest held as Python objects in the rank shows as USS growing with the batches
(refcounts touched in forked workers); one held in numpy arrays stays flat. Peak RSS is the process's so far.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_commit  # noqa: E402
from data_pipeline import BenchPromptBuilder  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog and then some more words here".split()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plan_memory(sampler) -> tuple[float, float]:
    """MiB an epoch's plan holds once made and at most while it is made (tracemalloc: Python objects and numpy
    arrays; the sampler made beforehand, so its per-item arrays do not count)."""
    tracemalloc.start()
    len(sampler)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return held / 2**20, peak / 2**20


def write_corpus(root: Path, lines: int, wavs: int, fmt: str, seed: int) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    durs = [1.5 + 0.7 * i for i in range(wavs)]
    for i, d in enumerate(durs):
        t = np.arange(int(d * 16000)) / 16000
        sf.write(str(root / f"w{i}.wav"), (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
    path = root / ("cuts.jsonl" if fmt == "cuts" else "train.jsonl")
    with open(path, "w") as f:
        for i in range(lines):
            w, text = i % wavs, " ".join(rng.choice(WORDS, size=int(rng.integers(5, 25))))
            src, d = str(root / f"w{w}.wav"), durs[w]
            if fmt == "cuts":
                sup = {"id": f"s{i}", "recording_id": f"r{i}", "start": 0.0, "duration": d, "channel": 0, "text": text}
                rec = {"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": src}],
                       "sampling_rate": 16000, "num_samples": int(d * 16000), "duration": d,
                       "channel_ids": [0]}  # fmt: skip
                line = {"id": f"c{i}", "start": 0.0, "duration": d, "channel": 0, "supervisions": [sup],
                        "recording": rec, "type": "MonoCut"}  # fmt: skip
            else:
                line = {"key": f"u{i}", "source": src, "source_len": int(d * 100), "target": text}
            f.write(json.dumps(line) + "\n")
    return path


def memory(pid: int) -> dict[str, float]:
    """USS and PSS of a process, MiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for row in f:
            parts = row.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return {"uss": fields["Private_Clean"] + fields["Private_Dirty"], "pss": fields["Pss"]}


def children() -> list[int]:
    pids = []
    for task in os.listdir("/proc/self/task"):
        pids += [int(p) for p in Path(f"/proc/self/task/{task}/children").read_text().split()]
    return pids


def run(args) -> list[str]:
    from llmasr.config_io import from_dict
    from llmasr.data.config import DataConfig
    from llmasr.data.frontend import FrontendConfig
    from llmasr.data.loader import build_dataloader
    from llmasr.data.manifest import Manifest
    from llmasr.data.screen import screen

    rows = []

    def stage(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t0, peak_mb()))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        path = write_corpus(Path(tmp), args.lines, args.wavs, args.format, args.seed)
        opened = stage("Manifest.open", lambda: Manifest.open(path))
        stage("screen (parse + stat every line)", lambda: screen(opened))
        cfg = from_dict(
            DataConfig,
            {"batching": {"max_seconds": args.max_seconds}, "num_workers": args.workers, "pin_memory": False},
            "data",
        )
        loader, sampler = stage(
            "build_dataloader (train)",
            lambda: build_dataloader(
                cfg, [str(path)], FrontendConfig(), prompt_builder=BenchPromptBuilder(), train=True
            ),
        )

        def make(ws: int):
            return type(sampler)(sampler.durations, max_seconds=args.max_seconds, world_size=ws, seed=args.seed)

        for ws in (8, 64):
            planned = make(ws)
            t0 = time.perf_counter()
            n = len(planned)
            rows.append((f"epoch plan, world size {ws} ({n} batches a rank)", time.perf_counter() - t0, peak_mb()))
        del planned
        held = [(ws, *plan_memory(make(ws))) for ws in (8, 64)]  # after the timings: tracemalloc slows and costs
        out = [
            f"{args.lines} {args.format} lines over {args.wavs} wav files, {os.cpu_count()} CPU cores",
            "",
            "| stage | seconds | peak RSS so far (MiB) |",
            "|---|---:|---:|",
        ]
        out += [f"| {n} | {t:.2f} | {p:.0f} |" for n, t, p in rows]
        out += ["", "| epoch plan, world size | held (MiB) | peak while planning (MiB) |", "|---:|---:|---:|"]
        out += [f"| {ws} | {h:.1f} | {p:.1f} |" for ws, h, p in held]
        if args.batches and args.workers:
            out += ["", f"| batches | {' | '.join(f'worker {w} USS / PSS (MiB)' for w in range(args.workers))} |"]
            out.append("|---:|" + "---:|" * args.workers)
            marks = {10, args.batches // 4, args.batches // 2, args.batches}
            for n, _ in enumerate(loader, 1):
                if n in marks:
                    mems = [memory(pid) for pid in children()][: args.workers]
                    out.append(f"| {n} | " + " | ".join(f"{x['uss']:.0f} / {x['pss']:.0f}" for x in mems) + " |")
                if n >= args.batches:
                    break
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--format", choices=("funasr", "cuts"), default="funasr")
    p.add_argument("--wavs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=3000, help="batches read to watch the workers' memory (0: none)")
    p.add_argument("--max-seconds", type=float, default=8.0, help="batch budget: small, for many batches")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lines = run(args)
    lines += [
        "",
        "Reproduce: `python bench/manifest_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
    ]
    print("\n".join(lines))
    print_commit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
