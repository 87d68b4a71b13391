"""Data pipeline benchmark: padding efficiency of the batch sampler, and loading throughput.

    python bench/data_pipeline.py                      # defaults below; prints Markdown tables
    python bench/data_pipeline.py --utts 281241 --wavs 400 --workers 0 1 2

1. Padding efficiency (real audio / padded audio, summed over an epoch) on a synthetic LibriSpeech-like duration
   mix: lognormal (median 12 s, sigma 0.6) clipped to 1-35 s. DynamicBucketSampler with the recipe defaults
   (120 padded seconds per batch, 30 buckets, sort pool 2000; and without the sort pool) against shuffled
   fixed-size batches of the same mean size. Also: batches per epoch and the time to plan one epoch.
2. Throughput: `--wavs` synthetic 16 kHz wav files (harmonic tones with a syllable-rate envelope and noise;
   durations lognormal, median 4 s, clipped to 1-15 s) read through SpeechDataset + Collator with training-mode
   Paraformer features (fbank 80 + dither, LFR 7/6, CMVN) in a DataLoader with 0, 1, 2 ... workers. Workers = 0
   is one process doing everything: its rate is the per-worker rate.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_commit  # noqa: E402


def librispeech_like(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(12.0), 0.6, n), 1.0, 35.0)


def efficiency(batches, d) -> tuple[float, float]:
    real = sum(float(d[b].sum()) for b in batches)
    padded = sum(len(b) * float(d[b].max()) for b in batches)
    worst = max(len(b) * float(d[b].max()) for b in batches)
    return real / padded, worst


def padding_table(args) -> list[str]:
    from llmasr.data.sampler import DynamicBucketSampler

    d = librispeech_like(args.utts, args.seed)
    rows = []
    mean_bs = None
    for name, kw in (
        (f"DynamicBucketSampler (30 buckets, sort pool {args.sort_pool})", {"shuffle_buffer": args.sort_pool}),
        ("DynamicBucketSampler (30 buckets, no sort pool)", {"shuffle_buffer": 0}),
    ):
        t0 = time.perf_counter()
        s = DynamicBucketSampler(d, max_seconds=args.max_seconds, num_buckets=30, seed=args.seed, **kw)
        batches = list(s)
        plan = time.perf_counter() - t0
        eff, worst = efficiency(batches, d)
        mean_bs = mean_bs or d.size / len(batches)
        rows.append((name, len(batches), d.size / len(batches), eff, worst, plan))
    bs = max(1, int(round(mean_bs)))
    perm = np.random.default_rng(args.seed).permutation(d.size)
    fixed = [perm[i : i + bs] for i in range(0, d.size, bs)]
    eff, worst = efficiency(fixed, d)
    rows.append((f"shuffled fixed-size batches (B={bs})", len(fixed), d.size / len(fixed), eff, worst, 0.0))
    out = [
        f"Padding on {args.utts} utterances, {d.sum() / 3600:.0f} h (lognormal median 12 s, clipped 1-35 s), "
        f"budget {args.max_seconds:g} padded seconds per batch",
        "",
        "| batching | batches | mean batch | padding efficiency | largest padded batch (s) | epoch plan (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    out += [f"| {n} | {nb} | {mb:.2f} | {e:.4f} | {w:.1f} | {p:.2f} |" for n, nb, mb, e, w, p in rows]
    return out


def synth_wavs(root: Path, n: int, seed: int) -> tuple[Path, float]:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    sr = 16000
    durs = np.clip(rng.lognormal(np.log(4.0), 0.5, n), 1.0, 15.0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    lines = []
    for i, dur in enumerate(durs):
        t = np.arange(int(dur * sr)) / sr
        f0 = rng.uniform(90, 220)
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t))  # syllable-rate envelope
        x = 0.2 * x * env + 0.005 * rng.standard_normal(t.size)
        sf.write(str(root / f"u{i}.wav"), x.astype(np.float32), sr, subtype="PCM_16")
        text = " ".join(rng.choice(words, size=max(1, int(dur * 2))))
        lines.append(f'{{"key": "u{i}", "source": "u{i}.wav", "target": "{text}", "duration": {dur:.4f}}}')
    manifest = root / "bench.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, float(durs.sum())


class BenchPromptBuilder:
    pad_id = 0

    def encode(self, target, task=None, hotwords=None, system=None):  # PromptBuilder.encode's; no lists here
        ids = [1, 2, 3, 4] + [10 + ord(c) % 200 for c in target] + [5]
        return SimpleNamespace(ids=ids, audio_pos=3, target_start=4, hotwords=(), hotwords_dropped=0)


def throughput_table(args) -> list[str]:
    from llmasr.config_io import from_dict
    from llmasr.data.config import DataConfig
    from llmasr.data.frontend import FrontendConfig, write_kaldi_cmvn
    from llmasr.data.loader import build_dataloader

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        manifest, audio_s = synth_wavs(root, args.wavs, args.seed)
        synth = time.perf_counter() - t0
        write_kaldi_cmvn(root / "am.mvn", np.zeros(560, np.float32), np.ones(560, np.float32))
        frontend = FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=str(root / "am.mvn"))
        for workers in args.workers:
            cfg = from_dict(
                DataConfig,
                {"batching": {"max_seconds": args.max_seconds}, "num_workers": workers, "pin_memory": False},
                "data",
            )
            loader, _ = build_dataloader(
                cfg, [str(manifest)], frontend, prompt_builder=BenchPromptBuilder(), ctc_tokenizer=None, train=True
            )
            t0 = time.perf_counter()
            n = frames = 0
            for batch in loader:
                n += batch.size
                frames += int(batch.feat_lens.sum())
            dt = time.perf_counter() - t0
            per_worker = n / dt / max(1, workers)
            rows.append((workers, n, dt, n / dt, audio_s / dt, per_worker))
    out = [
        f"Throughput: {args.wavs} synthetic wavs, {audio_s / 60:.1f} min of 16 kHz audio (synthesis {synth:.1f} s), "
        f"fbank 80 + dither + LFR 7/6 + CMVN, batches of {args.max_seconds:g} padded s, {os.cpu_count()} CPU cores",
        "",
        "| workers | utterances | wall (s) | utterances/s | audio s per s | utterances/s per worker |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    out += [f"| {w} | {n} | {dt:.2f} | {u:.1f} | {a:.0f} | {p:.1f} |" for w, n, dt, u, a, p in rows]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utts", type=int, default=100_000, help="utterances in the padding benchmark")
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--sort-pool", type=int, default=2000)
    p.add_argument("--wavs", type=int, default=300, help="wav files in the throughput benchmark (0: skip)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lines = padding_table(args)
    if args.wavs > 0:
        lines += [""] + throughput_table(args)
    cmd = "python bench/data_pipeline.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    lines += ["", f"Reproduce: `{cmd.strip()}`", f"Commit: {git_commit()}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
