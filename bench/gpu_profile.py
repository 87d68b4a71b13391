"""Where a training update's time goes, through the real `llmasr train` path: the GPU suite's shapes
(bench/_gpu_suite_prepare.py), a few warm-up updates timed one by one, then updates under torch.profiler (device
kernels and host ops) and under cProfile (the Python that launches them).

    python bench/gpu_profile.py --out DIR                       # on a lent GPU (PYTHONPATH=.gpudeps:.)
    python bench/gpu_profile.py --out DIR --timing-only model.llm.gradient_checkpointing=false
    python bench/gpu_profile.py --smoke --out DIR               # tiny shapes on CPU: the script's own test

Writes DIR/profile[_<tag>].md: each update's wall time, the device's busy share of the profiled updates, the ops that
took the most device and host time, the host-device synchronisations, and the Python functions that took the most
time. `--work DIR` keeps the written model and audio for the next call.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import git_commit, train_probed  # noqa: E402

SYNC_OPS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense",
            "aten::item", "aten::nonzero", "cudaMemcpyAsync")  # fmt: skip


class Probe:
    """Wraps the trainer's run_window: times every update (synchronised), profiles some."""

    def __init__(self, inner, warm: int, torch_updates: int, py_updates: int):
        self.inner, self.warm, self.torch_updates, self.py_updates = inner, warm, torch_updates, py_updates
        self.n = 0
        self.walls: list[tuple[int, str, float]] = []
        self.torch_prof = None
        self.py_prof = None
        self.facts: list[str] = []

    def __call__(self, engine, window, *args, **kwargs):
        import torch

        self.n += 1
        if self.n == 1:
            self.facts = model_facts(engine, window)
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        kind = "timed"
        first_torch = self.warm + 1
        first_py = first_torch + self.torch_updates
        sync()
        t0 = time.perf_counter()
        if first_torch <= self.n < first_py:
            kind = "torch.profiler"
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            prof = profile(activities=acts)
            with prof:
                out = self.inner(engine, window, *args, **kwargs)
                sync()
            self.torch_prof = (self.torch_prof or []) + [prof]
        elif first_py <= self.n < first_py + self.py_updates:
            kind = "cProfile"
            self.py_prof = self.py_prof or cProfile.Profile()
            self.py_prof.enable()
            out = self.inner(engine, window, *args, **kwargs)
            sync()
            self.py_prof.disable()
        else:
            out = self.inner(engine, window, *args, **kwargs)
            sync()
        self.walls.append((self.n, kind, time.perf_counter() - t0))
        return out


def model_facts(engine, window) -> list[str]:
    """Dtypes and trainability of the weights, the LLM's attention implementation, the first window's shapes."""
    import torch

    module = engine.module
    by = Counter()
    for p in module.parameters():
        by[(str(p.dtype), p.requires_grad, p.device.type)] += p.numel()
    lines = [f"- params {dtype} {'trained' if rg else 'frozen'} on {dev}: {n:,}" for (dtype, rg, dev), n in by.items()]
    for name, sub in module.named_modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            lines.append(f"- {name or 'model'}: attention implementation {cfg._attn_implementation}")
            break
    ckpt = [n for n, m in module.named_modules() if getattr(m, "gradient_checkpointing", False) is True]
    lines.append(f"- modules with gradient_checkpointing on: {ckpt[:4]}{' ...' if len(ckpt) > 4 else ''}")
    for i, b in enumerate(window):
        lines.append(f"- micro batch {i}: {b.size} utts, {b.audio_seconds:.1f} s audio, {b.feat_slots} feature "
                     f"slots, {b.labelled_tokens} labelled tokens")  # fmt: skip
    on_device = bool(window) and window[0].has_waves  # waveforms in the batch: fbank runs in the training step
    lines.append(f"- features computed {'in the training step (waveforms batched)' if on_device else 'by the loader'}")
    lines.append(f"- cuDNN fused attention allowed: {torch.backends.cuda.cudnn_sdp_enabled()}")
    return lines


def torch_tables(profs) -> list[str]:
    import torch

    lines = []
    for i, prof in enumerate(profs):
        ka = prof.key_averages()
        dev_key = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
        dev_total = sum(getattr(e, dev_key, 0) for e in ka)
        cpu_total = sum(e.self_cpu_time_total for e in ka)
        syncs = {e.key: (e.count, e.self_cpu_time_total / 1e3) for e in ka if e.key in SYNC_OPS}
        attention = {e.key: (e.count, e.self_cpu_time_total / 1e3) for e in ka
                     if e.key.startswith("aten::_") and "attention" in e.key}  # fmt: skip
        lines += [
            f"### profiled update {i + 1}",
            "",
            f"device self time summed over ops and kernels: {dev_total / 1e3:.1f} ms; host self time "
            f"{cpu_total / 1e3:.1f} ms (the tables' totals: kernels counted once)",
            "",
            "host-device synchronising calls (count, host ms): " + listed(syncs),
            "",
            "attention kernels (count, host ms): " + listed(attention),
            "",
        ]
        if torch.cuda.is_available():
            lines += ["```", ka.table(sort_by=dev_key, row_limit=30, max_name_column_width=60), "```", ""]
        lines += ["```", ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60), "```", ""]
    return lines


def listed(ops: dict) -> str:
    return ", ".join(f"{k} {c} ({t:.1f})" for k, (c, t) in sorted(ops.items())) or "none"


def py_tables(prof) -> list[str]:
    lines = []
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(35)
        lines += [f"### cProfile by {key}", "", "```", buf.getvalue().strip()[-9000:], "```", ""]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None, help="where the model and audio go (kept; reused when already there)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--preset", default="zero2")
    p.add_argument("--warm", type=int, help="updates timed before the profiled ones (default 4; smoke 1)")
    p.add_argument("--timing-only", action="store_true", help="time updates, profile none")
    p.add_argument("--tag", default="", help="suffix of the output file")
    p.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = p.parse_args(argv)
    if args.warm is None:  # the smoke run's numbers mean nothing: one update takes the start-up costs
        args.warm = 1 if args.smoke else 4

    import tempfile

    from _gpu_suite_prepare import prepare

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_profile_"))
    recipe = work / "recipe.yaml"
    t0 = time.perf_counter()
    files = prepare(work, args.smoke) if not recipe.is_file() else {"recipe": str(recipe)}
    prep_s = time.perf_counter() - t0
    torch_n, py_n = (0, 0) if args.timing_only else (1, 1)
    rc, run_s, probe = train_probed(
        lambda inner: Probe(inner, args.warm, torch_n, py_n), files["recipe"], work / "run", deepspeed=args.preset,
        updates=args.warm + torch_n + py_n + (0 if args.timing_only else 1), precision="bf16",
        overrides=[*(["train.grad_accum=1"] if args.smoke else []), *args.overrides],
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    what = "CPU smoke run" if args.smoke else "GPU suite shapes"
    overrides = " ".join(args.overrides) or "(none)"
    lines = [
        f"# Training-update profile ({what}), preset {args.preset}",
        "",
        f"overrides: {overrides}; exit {rc}; prepare {prep_s:.0f} s, train command {run_s:.0f} s; "
        f"commit {git_commit()}",
        "",
        *probe.facts,
        "",
        "| update | how | wall s |",
        "|---:|---|---:|",
        *(f"| {n} | {kind} | {w:.3f} |" for n, kind, w in probe.walls),
        "",
    ]
    if probe.torch_prof:
        lines += torch_tables(probe.torch_prof)
    if probe.py_prof:
        lines += py_tables(probe.py_prof)
    name = f"profile{'_' + args.tag if args.tag else ''}.md"
    (out / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 12 + len(probe.walls)]))
    print(f"wrote {out / name}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
