"""ZeRO memory: per-rank model-state bytes under the zero0/1/2/3 presets, measured, against two estimates.

    python bench/zero_memory.py                          # 2 CPU ranks (gloo), 67M-parameter MLP, fp32 and bf16
    python bench/zero_memory.py --quick                  # small model, zero0 and zero2 in fp32 (smoke run)
    python bench/zero_memory.py --ranks 2 --width 2048 --depth 16 --precisions fp32 bf16

Each preset runs `deepspeed --num_gpus <ranks> bench/_zero_memory_worker.py` (on a machine without GPUs the
launcher starts CPU ranks that talk over gloo). The worker resolves the preset with llmasr's resolve_ds_config,
initialises the engine with AdamW over every parameter, runs one step, and counts the storage bytes each rank holds
(params, gradients and engine buffers, optimizer states, reduce buckets) after initialize, during backward, after
backward and after the step. The estimates: llmasr.train.zero_memory.estimate_zero_memory (its "device" figure) and
DeepSpeed's estimate_zero2_model_states_mem_needs / estimate_zero3_model_states_mem_needs (no offload,
additional_buffer_factor 1; they exist for stages 2 and 3 and assume 16-bit weights with fp32 Adam).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # sibling helpers when imported from elsewhere

from _common import emit, reproduce_command  # noqa: E402

POINTS = ("after_initialize", "during_backward", "after_backward", "in_optimizer_step", "after_step")
CATEGORIES = ("params", "grads", "optimizer_states", "reduce_buckets")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(preset: str, precision: str, args, out: Path) -> dict:
    exe = shutil.which("deepspeed")
    if exe is None:
        raise RuntimeError("the `deepspeed` launcher is not on PATH (pip install deepspeed)")
    cmd = [
        exe,
        "--num_gpus",
        str(args.ranks),
        "--master_port",
        str(args.master_port or free_port()),
        str(HERE / "_zero_memory_worker.py"),
        "--preset",
        preset,
        "--precision",
        precision,
        "--width",
        str(args.width),
        "--depth",
        str(args.depth),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def estimates(res: dict) -> dict:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from llmasr.train.zero_memory import estimate_zero_memory

    n, w, stage = res["num_params"], res["world_size"], res["stage"]
    ours = estimate_zero_memory(
        n, n, stage, w, precision=res["precision"], largest_layer_params=res["largest_layer_params"]
    )
    ds = None
    if stage == 2:
        _, ds = estimate_zero2_model_states_mem_needs(
            n, num_gpus_per_node=w, cpu_offload=False, additional_buffer_factor=1.0
        )
    elif stage == 3:
        _, ds, _ = estimate_zero3_model_states_mem_needs(
            n,
            res["largest_layer_params"],
            num_gpus_per_node=w,
            cpu_offload=False,
            cpu_offload_params=False,
            additional_buffer_factor=1.0,
        )
    return {"llmasr": ours, "deepspeed_device": ds}


def summarise(res: dict) -> dict:
    """Per preset: the largest rank's bytes at each point, and the model-state peak (buckets excluded)."""
    ranks = res["ranks"]
    row = {
        k: res[k]
        for k in (
            "preset",
            "stage",
            "precision",
            "world_size",
            "num_params",
            "largest_layer_params",
            "reduce_bucket_size",
        )
    }
    row["points"] = {}
    for point in POINTS:
        if all(point in r for r in ranks):
            worst = max(ranks, key=lambda r: r[point]["total"])[point]
            row["points"][point] = {k: worst[k] for k in (*CATEGORIES, "total", "total_without_buckets")}
    row["peak_point"] = max(row["points"], key=lambda k: row["points"][k]["total_without_buckets"])
    row["measured_states_peak"] = row["points"][row["peak_point"]]["total_without_buckets"]
    row["measured_buckets_peak"] = max(p["reduce_buckets"] for p in row["points"].values())
    row["per_rank_peak"] = [max(p["total_without_buckets"] for p in r.values()) for r in ranks]
    row["estimates"] = estimates(res)
    return row


def markdown(rows: list[dict], meta: dict) -> list[str]:
    mib = 2**20
    first = rows[0]
    lines = [
        f"ZeRO model-state memory per rank: {meta['ranks']} CPU ranks (gloo), MLP of {meta['depth']} x "
        f"Linear({meta['width']}, {meta['width']}), {first['num_params'] / 1e6:.1f}M parameters, all trainable, "
        "AdamW; the busiest rank, MiB.",
        "",
        "| preset | precision | params | grads + buffers | optimizer states | measured peak | peak at | "
        "llmasr estimate | DeepSpeed estimator | reduce buckets |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        at = r["points"][r["peak_point"]]
        est = r["estimates"]
        ds = est["deepspeed_device"]
        lines.append(
            f"| {r['preset']} | {r['precision']} | {at['params'] / mib:.0f} | {at['grads'] / mib:.0f} | "
            f"{at['optimizer_states'] / mib:.0f} | {r['measured_states_peak'] / mib:.0f} | "
            f"{r['peak_point'].replace('_', ' ')} | {est['llmasr']['device'] / mib:.0f} | "
            f"{'-' if ds is None else f'{ds / mib:.0f}'} | {r['measured_buckets_peak'] / mib:.0f} |"
        )
    lines += [
        "",
        "Measured in the second (steady-state) training step, at the point where params + grads + optimizer states "
        "peak; grads + buffers counts gradients, gradient partitions and engine buffers other than the reduce "
        "buckets. Reduce buckets are DeepSpeed's contiguous gradient buffers (reduce_bucket_size elements; alive "
        "during backward at stages 1-2, for the engine's life at stage 3), shown apart because their size is a "
        "setting, not a model state. DeepSpeed's estimators assume 16-bit weights, so their fp32 figures are "
        "not like for like.",
        "",
        f"Reproduce: `{meta['command']}`",
    ]
    return lines


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["zero0", "zero1", "zero2", "zero3"])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--master-port", type=int, help="rendezvous port (default: a free one per launch)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per launch")
    p.add_argument("--quick", action="store_true", help="small model, zero0 and zero2, fp32 (smoke run)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.precisions, args.width, args.depth = ["zero0", "zero2"], ["fp32"], 256, 2
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            for preset in args.presets:
                rows.append(summarise(launch(preset, precision, args, Path(tmp) / f"{preset}_{precision}.json")))
    meta = {
        "ranks": args.ranks,
        "width": args.width,
        "depth": args.depth,
        "command": reproduce_command("bench/zero_memory.py", argv),
    }
    res = {"benchmark": "zero_memory", **meta, "rows": rows, "wall_s": time.perf_counter() - t0}
    emit(res, markdown(rows, meta), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
