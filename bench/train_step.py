"""Training step: llmasr's forward + backward against FunASR's LLM-ASR formulation, and how both scale with work.

    python bench/train_step.py                       # CPU size (see _speech_model.SIZES["cpu"]), batch 8 x 10 s
    python bench/train_step.py --quick               # tiny model, smoke run (seconds)
    python bench/train_step.py --size paraformer-large+qwen2.5-1.5b --dtype bf16    # on a GPU
    python bench/train_step.py --real-depth --batch 2 --seconds 10   # 28 layers, with the levers (_real_depth.py)

Both formulations run on the same model (same seeded random weights) and the same batch:
- llmasr: SpeechLLM.forward: audio embeddings written into the text embeddings with two index_puts for the whole
  batch, loss from the output head applied to the labelled positions only.
- reference (FunASR LLM-ASR): the dataset reserves placeholder slots sized by a formula; the model embeds the
  placeholder sequence, copies each utterance's audio embeddings into its slots in a Python loop, and calls
  `llm(inputs_embeds=..., attention_mask=..., labels=...)`, which computes full-vocabulary logits for every position.
Step times are measured in one process, the two formulations alternating, so machine load hits both alike; each
peak memory is measured in a fresh process (resident-set high-water mark above the start of the step on CPU,
torch.cuda.max_memory_allocated on CUDA). The scaling sweeps repeat both over audio length and batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # sibling helpers when imported from elsewhere

from _common import emit, reproduce_command  # noqa: E402

VARIANTS = ("reference", "llmasr")


def _setup(args):
    import torch

    sys.path.insert(0, str(HERE))
    import _speech_model as sm

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch, sm, device, dtype


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


# --- workers (each in its own process) -----------------------------------------------------------------------------


def timing_worker(args, points: list[tuple[int, float, int]]) -> dict:
    """Times both formulations at each (batch, seconds, timed repeats) point after one warm-up step each."""
    torch, sm, device, dtype = _setup(args)
    size = sm.SIZES[args.size]
    model = sm.build_model(size, device=device, dtype=dtype)

    def step(variant, batch) -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = sm.STEPS[variant](model, batch)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, float(loss.detach())

    out = []
    for n, seconds, repeats in points:
        batch = sm.make_batch(size, n, seconds, device=device, dtype=dtype)
        rec = {"batch": n, "seconds": seconds, "audio_seconds": batch.audio_seconds}
        for variant in VARIANTS:
            _, loss = step(variant, batch)  # warm-up
            rec[variant] = {"times": [], "loss": loss}
        for _ in range(repeats):
            for variant in VARIANTS:
                dt, _ = step(variant, batch)
                rec[variant]["times"].append(dt)
        out.append(rec)
    return {"points": out, "params": sm.param_counts(model), "device": device_name(device)}


def memory_worker(args, variant: str, points: list[tuple[int, float]]) -> list[dict]:
    """Peak memory of one step of `variant` at each point, in this process (one point per process unless the
    driver runs with --memory-isolation variant, where freed memory is returned to the OS between points)."""
    import ctypes
    import gc

    torch, sm, device, dtype = _setup(args)
    size = sm.SIZES[args.size]
    model = sm.build_model(size, device=device, dtype=dtype)
    out = []
    for n, seconds in points:
        model.zero_grad(set_to_none=True)
        batch = sm.make_batch(size, n, seconds, device=device, dtype=dtype)
        gc.collect()
        if device.type == "cpu":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        with sm.PeakMemory(device) as mem:
            loss = sm.STEPS[variant](model, batch)
            loss.backward()
        del loss, batch
        out.append({"variant": variant, "batch": n, "seconds": seconds, "peak_bytes": int(mem.peak)})
    return out


# --- driver --------------------------------------------------------------------------------------------------------


def _run_worker(args, spec: dict) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        json.dumps(spec),
        "--size",
        args.size,
        "--dtype",
        args.dtype,
        "--device",
        args.device,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def point_summary(rec: dict, mem: dict) -> dict:
    row = {"batch": rec["batch"], "seconds": rec["seconds"], "audio_seconds": rec["audio_seconds"]}
    for v in VARIANTS:
        t = min(rec[v]["times"])  # the machine may be shared: the fastest step is the least disturbed
        row[v] = {
            "step_s": t,
            "times": rec[v]["times"],
            "utt_per_s": rec["batch"] / t,
            "audio_s_per_s": rec["audio_seconds"] / t,
            "peak_bytes": mem[(v, rec["batch"], rec["seconds"])],
            "loss": rec[v]["loss"],
        }
    row["speedup"] = row["reference"]["step_s"] / row["llmasr"]["step_s"]
    row["memory_ratio"] = row["llmasr"]["peak_bytes"] / row["reference"]["peak_bytes"]
    return row


def add_linearity(rows: list[dict]) -> None:
    """cost(point) / cost(first point), divided by the work ratio (audio seconds in the batch): 1 = linear."""
    base = rows[0]
    for row in rows:
        work = row["audio_seconds"] / base["audio_seconds"]
        for v in VARIANTS:
            row[v]["time_vs_linear"] = row[v]["step_s"] / base[v]["step_s"] / work
            row[v]["memory_vs_linear"] = row[v]["peak_bytes"] / base[v]["peak_bytes"] / work


def markdown(res: dict) -> list[str]:
    mib = 2**20
    h = res["headline"]
    lines = [
        f"Training step (forward + backward), {res['model']}; {res['dtype']} on {res['device']}.",
        f"Parameters: {res['params_summary']}.",
        "",
        f"Batch {h['batch']} x {h['seconds']:g} s (0.9-1.0 x, {h['audio_seconds']:.0f} s of audio), "
        f"fastest of {len(h['llmasr']['times'])} timed steps after a warm-up (formulations alternating):",
        "",
        "| formulation | step (s) | utterances/s | audio s/s | peak memory (MiB) | loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"reference": "FunASR-style (loop insert, full logits)", "llmasr": "llmasr (index_put, labels-only)"}
    for v in VARIANTS:
        r = h[v]
        lines.append(
            f"| {names[v]} | {r['step_s']:.2f} | {r['utt_per_s']:.3f} | {r['audio_s_per_s']:.2f} | "
            f"{r['peak_bytes'] / mib:,.0f} | {r['loss']:.5f} |"
        )
    lines += [
        "",
        f"Speed-up {h['speedup']:.2f}x (goal >= 1.3x); peak memory ratio {h['memory_ratio']:.3f} (goal <= 0.5).",
    ]
    for key, title in (("sweep_seconds", "audio length"), ("sweep_batch", "batch size")):
        rows = res.get(key) or []
        if not rows:
            continue
        lines += [
            "",
            f"Scaling with {title} (time/memory vs linear: cost relative to the first row divided by the audio "
            "ratio; > 1 grows faster than linearly):",
            "",
            "| batch | audio s | llmasr step (s) | reference step (s) | speed-up | llmasr MiB | reference MiB | "
            "memory ratio | llmasr time vs linear | llmasr memory vs linear | reference memory vs linear |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            a, b = r["llmasr"], r["reference"]
            lines.append(
                f"| {r['batch']} | {r['seconds']:g} | {a['step_s']:.2f} | {b['step_s']:.2f} | {r['speedup']:.2f} | "
                f"{a['peak_bytes'] / mib:,.0f} | {b['peak_bytes'] / mib:,.0f} | {r['memory_ratio']:.3f} | "
                f"{a['time_vs_linear']:.2f} | {a['memory_vs_linear']:.2f} | {b['memory_vs_linear']:.2f} |"
            )
    lines += ["", f"Reproduce: `{res['command']}`"]
    return lines


def reused_memory(path: str, size: str, dtype: str) -> dict:
    """Peak memory of an earlier run (same model size and dtype), keyed like the fresh measurements."""
    prev = json.loads(Path(path).read_text())
    sys.path.insert(0, str(HERE))
    import _speech_model as sm

    if prev.get("size") != sm.size_dict(sm.SIZES[size]) or prev.get("dtype") != dtype:
        raise ValueError(
            f"--reuse-memory {path}: measured with another model size or dtype than --size {size} --dtype {dtype}"
        )
    rows = [prev["headline"], *prev.get("sweep_seconds", []), *prev.get("sweep_batch", [])]
    return {(v, r["batch"], r["seconds"]): r[v]["peak_bytes"] for r in rows for v in VARIANTS}


def run(args, argv: list[str]) -> dict:
    headline = (args.batch, args.seconds)
    seconds_pts = [(args.sweep_seconds_batch, s) for s in args.sweep_seconds]
    batch_pts = [(b, args.sweep_batch_seconds) for b in args.sweep_batch]
    points = [headline] + [p for p in dict.fromkeys(seconds_pts + batch_pts) if p != headline]
    spec = [(n, s, args.repeats if (n, s) == headline else args.sweep_repeats) for n, s in points]
    t0 = time.perf_counter()
    timing = _run_worker(args, {"kind": "timing", "points": spec})
    mem = {}
    if args.reuse_memory:
        mem = reused_memory(args.reuse_memory, args.size, args.dtype)
    todo = [pt for pt in points if any((v, *pt) not in mem for v in VARIANTS)]
    groups = [todo] if args.memory_isolation == "variant" else [[pt] for pt in todo]
    for group in groups:
        for v in VARIANTS:
            for r in _run_worker(args, {"kind": "memory", "variant": v, "points": group}):
                mem[(v, r["batch"], r["seconds"])] = r["peak_bytes"]
    rows = {(r["batch"], r["seconds"]): point_summary(r, mem) for r in timing["points"]}
    sweep_s = [rows[p] for p in seconds_pts]
    sweep_b = [rows[p] for p in batch_pts]
    for series in (sweep_s, sweep_b):
        if series:
            add_linearity(series)
    sys.path.insert(0, str(HERE))
    import _speech_model as sm

    size = sm.SIZES[args.size]
    p = timing["params"]
    res = {
        "benchmark": "train_step",
        "command": reproduce_command("bench/train_step.py", argv),
        "model": size.describe(),
        "size": sm.size_dict(size),
        "params": p,
        "params_summary": ", ".join(
            f"{k} {v['total'] / 1e6:.1f}M ({v['trainable'] / 1e6:.2f}M trained)" for k, v in p.items()
        ),
        "device": timing["device"],
        "dtype": args.dtype,
        "headline": rows[headline],
        "sweep_seconds": sweep_s,
        "sweep_batch": sweep_b,
        "wall_s": time.perf_counter() - t0,
    }
    return res


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size", default="cpu", help="a key of _speech_model.SIZES: cpu, tiny, paraformer-large+qwen2.5-1.5b"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument(
        "--repeats", type=int, default=None,
        help="timed steps per formulation at the headline point (default 3; --real-depth: 1)",
    )  # fmt: skip
    p.add_argument("--sweep-seconds", type=float, nargs="*", default=[5, 10, 20, 30])
    p.add_argument("--sweep-seconds-batch", type=int, default=4)
    p.add_argument("--sweep-batch", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--sweep-batch-seconds", type=float, default=10.0)
    p.add_argument("--sweep-repeats", type=int, default=1)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument(
        "--memory-isolation",
        choices=["point", "variant"],
        default="point",
        help="fresh process per measured point (default) or one per formulation (faster, for smoke runs)",
    )
    p.add_argument(
        "--reuse-memory", help="JSON of an earlier run: take its peak-memory figures, re-measure only the timings"
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="tiny model and short sweeps (smoke run)")
    p.add_argument(
        "--real-depth", action="store_true",
        help="28 LLM layers + 50 encoder blocks, fp32 CPU, variants with the levers (bench/_real_depth.py)",
    )  # fmt: skip
    p.add_argument("--variants", nargs="+", help="--real-depth: which variants (default: all)")
    p.add_argument("--train-encoder", action="store_true", help="--real-depth: train the encoder (default frozen)")
    p.add_argument("--json-out", help="write the results here as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec["kind"] == "timing":
            out = timing_worker(args, [tuple(x) for x in spec["points"]])
        else:
            out = memory_worker(args, spec["variant"], [tuple(x) for x in spec["points"]])
        print(json.dumps(out))
        return 0
    if args.real_depth:
        import _real_depth

        args.variants = args.variants or list(_real_depth.VARIANTS)
        if args.quick:
            args.batch, args.seconds = 2, 2.0
        args.repeats = 1 if args.repeats is None else args.repeats
        res = _real_depth.run(args, argv)
        emit(res, _real_depth.markdown(res), args.json_out)
        return 0
    args.repeats = 3 if args.repeats is None else args.repeats
    if args.quick:
        args.size, args.batch, args.seconds, args.repeats = "tiny", 2, 2.0, 1
        args.sweep_seconds, args.sweep_seconds_batch = [1.0, 2.0], 2
        args.sweep_batch, args.sweep_batch_seconds = [1, 2], 2.0
        args.memory_isolation = "variant"
    res = run(args, argv)
    emit(res, markdown(res), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
