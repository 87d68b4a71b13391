"""Feature throughput: the per-core CPU worker path against the batched torch path (data.features_on: device).

    python bench/device_features.py                 # CPU paths, and the GPU path when CUDA exists
    python bench/device_features.py --quick         # tiny sizes (smoke run; numbers mean nothing)

Training-mode Paraformer features (Kaldi fbank 80 + dither, LFR 7/6, CMVN) of a batch of synthetic clips
(LibriSpeech-like durations: lognormal, median 12 s, clipped to 1-35 s), in audio seconds per wall second:
  worker            FeatureExtractor item by item (kaldi-native-fbank), one core: a loader worker's rate
  worker, waves     what a worker still does with features on the device (scale + dither draw), one core
  torch cpu         DeviceFeatures on the padded batch, with 1 thread and with every core
  torch cuda        the same on the GPU (waveforms copied from host memory included), when CUDA exists
The last column is each path's rate over what one GPU's training step consumes: bench/gpu_mfu.py's model FLOPs of
a 32 x 15 s Paraformer-large + Qwen2.5-1.5B step (456 s of audio) at 40% MFU of an H100's bf16 peak.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, reproduce_command  # noqa: E402


def step_audio_per_s(mfu: float = 0.4) -> float:
    """Audio s/s one GPU's training step consumes (see the module docstring)."""
    import _speech_model as sm
    from gpu_mfu import step_flops

    from llmasr.train.efficiency import table_peak

    size = sm.SIZES["paraformer-large+qwen2.5-1.5b"]
    sb = sm.make_batch(size, 32, 15.0)
    step_s = step_flops(size, sb.batch)["total"] / (mfu * table_peak("H100", torch.bfloat16))
    return sb.audio_seconds / step_s


def synthetic_clips(n: int, median: float, seed: int, sr: int = 16000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for d in np.clip(rng.lognormal(np.log(median), 0.6, n), 1.0, 35.0):
        t = np.arange(int(d * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(t.size)
        out.append(x.astype(np.float32))
    return out


def paraformer_frontend(tmp: Path):
    from llmasr.data.frontend import FrontendConfig, write_kaldi_cmvn

    rng = np.random.default_rng(0)
    cmvn = tmp / "am.mvn"
    write_kaldi_cmvn(cmvn, rng.normal(-8, 2, 560).astype(np.float32), rng.uniform(0.1, 0.6, 560).astype(np.float32))
    return FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=str(cmvn), dither=1.0)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker_rates(fe, clips: list[np.ndarray], repeat: int) -> tuple[float, float, list[np.ndarray]]:
    """(wall s of the worker path, wall s of the waveform-only worker path, the scaled dithered waveforms)."""
    from llmasr.data.features import FeatureExtractor

    fx = FeatureExtractor(fe)
    full = best_of(
        lambda: [fx(c, train=True, rng=np.random.default_rng([0, 0, i])) for i, c in enumerate(clips)], repeat
    )
    waves: list[np.ndarray] = []

    def scale_only():
        waves.clear()
        waves.extend(
            fx.scaled_wave(c, dither=fe.dither, rng=np.random.default_rng([0, 0, i])) for i, c in enumerate(clips)
        )

    return full, best_of(scale_only, repeat), list(waves)


def batches(waves: list[np.ndarray], budget_s: float, sr: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded batches of length-sorted clips under `budget_s` padded seconds each, as the bucketing sampler cuts."""
    order = sorted(range(len(waves)), key=lambda i: waves[i].size)
    groups, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * waves[i].size > budget_s * sr:
            groups.append(cur)
            cur = []
        cur.append(i)
    groups.append(cur)
    out = []
    for g in groups:
        lens = [waves[i].size for i in g]
        pad = np.zeros((len(g), max(lens)), dtype=np.float32)
        for row, i in enumerate(g):
            pad[row, : waves[i].size] = waves[i]
        out.append((torch.from_numpy(pad), torch.tensor(lens)))
    return out


def torch_rate(fe, padded: list[tuple[torch.Tensor, torch.Tensor]], device: str, repeat: int) -> float:
    from llmasr.data.device_features import DeviceFeatures

    dev = DeviceFeatures(fe)
    cuda = device.startswith("cuda")
    src = [(w.pin_memory() if cuda else w, n) for w, n in padded]

    def run():
        for wave, lens in src:
            dev(wave.to(device, non_blocking=True), lens.to(device))
        if cuda:
            torch.cuda.synchronize()

    run()  # warm-up: constants, FFT plans, CUDA context
    return best_of(run, repeat)


def measure(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fe = paraformer_frontend(Path(tmp))
        clips = synthetic_clips(args.clips, args.median_seconds, args.seed)
        audio = sum(c.size for c in clips) / fe.sample_rate
        torch.set_num_threads(1)
        full, scale_only, waves = worker_rates(fe, clips, args.repeat)
        rows = [
            ("worker (kaldi-native-fbank)", "cpu", 1, full),
            ("worker, waves only (scale + dither)", "cpu", 1, scale_only),
        ]
        padded = batches(waves, args.batch_seconds, fe.sample_rate)
        cores = os.cpu_count() or 1
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            rows.append(("torch batched", "cpu", threads, torch_rate(fe, padded, "cpu", args.repeat)))
        if torch.cuda.is_available() and not args.cpu_only:
            rows.append(
                (
                    "torch batched",
                    f"cuda ({torch.cuda.get_device_name(0)})",
                    None,
                    torch_rate(fe, padded, "cuda", args.repeat),
                )
            )
    need = step_audio_per_s()
    results = [
        {"path": p, "device": d, "threads": t, "seconds": s, "audio_s_per_s": audio / s,
         "per_core": audio / s / t if t else None, "x_step": audio / s / need}
        for p, d, t, s in rows
    ]  # fmt: skip
    return {"clips": len(clips), "audio_seconds": audio, "batches": len(padded),
        "padded_seconds": sum(float(w.numel()) for w, _ in padded) / fe.sample_rate,
            "step_audio_per_s": need, "results": results}  # fmt: skip


def markdown(res: dict) -> list[str]:
    need = res.get("step_audio_per_s", 4500.0)  # results from before it was derived divided by 4,500
    lines = [
        f"{res['clips']} clips, {res['audio_seconds']:.1f} s of audio, in {res['batches']} length-sorted batches "
        f"({res['padded_seconds']:.1f} s padded); "
        "training-mode Paraformer features (fbank 80 + dither, LFR 7/6, CMVN).",
        "",
        f"| path | device | threads | wall s | audio s/s | per core | x a {need:,.0f} s/s step |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        per_core = f"{r['per_core']:,.0f}" if r["per_core"] is not None else "-"
        threads = r["threads"] if r["threads"] is not None else "-"
        lines.append(
            f"| {r['path']} | {r['device']} | {threads} | {r['seconds']:.3f} | {r['audio_s_per_s']:,.0f} | "
            f"{per_core} | {r['x_step']:.2f} |"
        )
    return [*lines, "", f"Reproduce: `{res['command']}`"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--median-seconds", type=float, default=12.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-seconds", type=float, default=120.0, help="padded seconds per batch (data.batching)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-only", action="store_true", help="skip the CUDA path even when CUDA exists")
    ap.add_argument("--quick", action="store_true", help="4 short clips, one repeat: a smoke run")
    ap.add_argument("--json-out", default=None)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.quick:
        args.clips, args.median_seconds, args.repeat = 4, 2.0, 1
    res = measure(args)
    res["command"] = reproduce_command("bench/device_features.py", argv)
    emit(res, markdown(res), args.json_out)
    return res


if __name__ == "__main__":
    main()
