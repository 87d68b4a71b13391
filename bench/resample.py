"""Speed of llmasr.data.resample.resample: milliseconds per clip, and the first call's cost, per input rate.

    python bench/resample.py [--rates 22050 44100 8000 48000 17600 22051] [--seconds 1.6 10] [--repeat 20]
                             [--torch-threads N]

Each input rate runs in a fresh process (torch already imported there, as in any data loader), so "first call"
is what the first clip at a new rate pays: filter design plus any lazy imports. Steady-state figures are the
median of `--repeat` calls on white noise (the resampler's cost does not depend on content). Prints Markdown.
`--torch-threads 1` sets torch's intra-op threads as a DataLoader worker does (it matters only to a resampler
that runs torch ops; on a busy machine several threads stall each other). 17600 is 1.1x speed perturbation;
22051 is a rate pair without small common factors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from _common import print_commit


def one_rate(orig: int, new: int, seconds: list[float], repeat: int, threads: int | None) -> dict:
    import numpy as np
    import torch  # a data loader has it loaded: keep its import out of the first-call figure

    if threads:
        torch.set_num_threads(threads)

    from llmasr.data.resample import resample

    rng = np.random.default_rng(0)
    clips = {s: (rng.standard_normal(int(round(orig * s))) * 0.1).astype(np.float32) for s in seconds}
    t = time.perf_counter()
    resample(clips[seconds[0]], orig, new)
    first = time.perf_counter() - t
    out = {"orig": orig, "new": new, "first_ms": first * 1e3}
    for s, x in clips.items():
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            resample(x, orig, new)
            times.append(time.perf_counter() - t)
        out[f"{s:g}s_ms"] = statistics.median(times) * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", type=int, nargs="+", default=[22050, 44100, 8000, 48000, 17600, 22051])
    ap.add_argument("--new", type=int, default=16000)
    ap.add_argument("--seconds", type=float, nargs="+", default=[1.6, 10.0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child mode: one input rate
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_rate(args.one, args.new, args.seconds, args.repeat, args.torch_threads)))
        return
    cols = [f"{s:g}s_ms" for s in args.seconds]
    heads = [f"ms per {s:g} s clip" for s in args.seconds] + [f"first call (ms, {args.seconds[0]:g} s)"]
    print(f"| rate | {' | '.join(heads)} |")
    print("|---" * (len(heads) + 1) + "|")
    for rate in args.rates:
        cmd = [sys.executable, __file__, "--one", str(rate), "--new", str(args.new), "--repeat", str(args.repeat)]
        cmd += ["--seconds", *map(str, args.seconds)]
        cmd += ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res = json.loads(done.stdout.strip().splitlines()[-1])
        cells = " | ".join(f"{res[c]:.2f}" for c in cols)
        print(f"| {rate} -> {args.new} | {cells} | {res['first_ms']:.1f} |")
    print_commit()


if __name__ == "__main__":
    main()
