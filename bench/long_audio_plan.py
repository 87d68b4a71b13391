"""Cost of placing long-audio windows (llmasr.data.long_audio.plan_windows): milliseconds per hour of audio.

    python bench/long_audio_plan.py [--minutes 10 60] [--limit 20] [--overlap 1] [--repeat 3]

The audio is syllable-like noise bursts with a pause every 4-9 s (16 kHz float32, in memory: reading the file is
the loader's cost, not this). Prints Markdown: audio minutes, windows, median planning time, ms per audio hour.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import print_commit

from llmasr.data.long_audio import plan_windows

SR = 16000


def speech_like(minutes: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wave = (0.003 * rng.standard_normal(int(minutes * 60 * SR))).astype(np.float32)
    t, next_pause = 0, rng.uniform(4, 9) * SR
    while t < wave.size:
        n = int(rng.uniform(0.08, 0.2) * SR)
        wave[t : t + n] += 0.3 * rng.standard_normal(min(n, wave.size - t)).astype(np.float32)
        t += n + int(rng.uniform(0.04, 0.08) * SR)
        if t > next_pause:
            t, next_pause = t + int(rng.uniform(0.3, 0.8) * SR), t + rng.uniform(4, 9) * SR
    return wave


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    ap.add_argument("--limit", type=float, default=20.0)
    ap.add_argument("--overlap", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print("| audio min | windows | overlapped | plan ms (median) | ms per audio hour |")
    print("|---|---|---|---|---|")
    for minutes in args.minutes:
        wave = speech_like(minutes)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            windows = plan_windows(wave, SR, args.limit, args.overlap)
            times.append(time.perf_counter() - t0)
        ms = 1000 * statistics.median(times)
        overlapped = sum(w.overlapped for w in windows)
        print(f"| {minutes:g} | {len(windows)} | {overlapped} | {ms:.1f} | {ms * 60 / minutes:.1f} |")
    print_commit()


if __name__ == "__main__":
    main()
