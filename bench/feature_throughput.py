"""Throughput of the data front half on this machine: manifest indexing, audio resampling, features.

    python bench/feature_throughput.py [--seconds 10] [--records 200000]

Prints real-time factors (seconds of audio processed per second of wall time, single process).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import print_commit


def best(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def read_seconds(manifest, max_reads: int = 20_000) -> float:
    """Mean seconds to read one record, over every k-th record (at most about `max_reads` of them)."""
    step = max(1, len(manifest) // max_reads)
    indices = range(0, len(manifest), step)
    t = time.perf_counter()
    for i in indices:
        manifest[i]
    return (time.perf_counter() - t) / len(indices)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--records", type=int, default=200_000)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    from llmasr.data.features import FeatureExtractor
    from llmasr.data.frontend import FrontendConfig
    from llmasr.data.manifest import Manifest
    from llmasr.data.resample import resample

    rng = np.random.default_rng(0)
    secs = args.seconds
    for sr in (8000, 22050, 44100, 48000):
        x = (rng.standard_normal(int(sr * secs)) * 0.1).astype(np.float32)
        t = best(lambda x=x, sr=sr: resample(x, sr, 16000))
        print(f"resample {sr:>5} -> 16000: {secs / t:8.0f}x real time")
    x = (rng.standard_normal(int(16000 * secs)) * 0.1).astype(np.float32)
    for name, fe in [
        ("fbank 80 + LFR 7/6", FrontendConfig(lfr_m=7, lfr_n=6)),
        ("fbank 80 (train, dither)", FrontendConfig()),
        ("whisper log-mel 80", FrontendConfig(kind="whisper", dither=0.0)),  # OpenAI's: no dither
        ("whisper log-mel 128", FrontendConfig(kind="whisper", n_mels=128, dither=0.0)),
    ]:
        ext = FeatureExtractor(fe)
        train = "train" in name
        t = best(lambda ext=ext, train=train: ext(x, train=train, rng=rng))
        print(f"{name:<26}: {secs / t:8.0f}x real time")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.jsonl"
        with open(path, "w") as f:
            for i in range(args.records):
                f.write(
                    json.dumps({"key": f"u{i}", "source": f"w/{i}.wav", "target": "a few words", "source_len": 300})
                    + "\n"
                )
        t = time.perf_counter()
        m = Manifest.open(path)
        t_open = time.perf_counter() - t
        t_get = read_seconds(m)
        print(f"manifest open: {args.records / t_open:,.0f} records/s; record read: {t_get * 1e6:.1f} us")
    print_commit()


if __name__ == "__main__":
    main()
