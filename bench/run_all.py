"""Run every benchmark and collect the results: bench/results/<machine>/{results.md, results.json, *.png}.

    python bench/run_all.py                          # everything at full size (CPU: about an hour on 2 cores)
    python bench/run_all.py --quick                  # tiny sizes, minutes (smoke run; numbers mean nothing)
    python bench/run_all.py --only zero_memory       # one benchmark; the others' earlier results are kept
    python bench/run_all.py --render-only            # rebuild results.md / results.json / PNGs from the JSONs

Benchmarks (each a script in bench/ that prints its Markdown and the command that reproduces it):
  train_step     llmasr's forward + backward against FunASR's LLM-ASR formulation; scaling with audio and batch
  data_pipeline  padding efficiency of the batch sampler; loader utterances/s per worker
  zero_memory    per-rank model-state memory under ZeRO 0/1/2/3 at 2 ranks, against the estimators
  gpu_mfu        tokens/s, MFU and peak memory of a Paraformer-large + 1.5B LLM step (needs CUDA; skipped without)
  device_features  fbank + LFR + CMVN audio s/s: per-core loader worker vs batched torch on CPU (and CUDA when present)
Each benchmark's JSON and Markdown are written to the machine's directory as they finish, so an interrupted run
keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import ERROR_CHARS, failure_line, git_commit  # noqa: E402

BENCHES = ("train_step", "data_pipeline", "zero_memory", "gpu_mfu", "device_features")
QUICK_ARGS = {
    "train_step": ["--quick"],
    "data_pipeline": ["--utts", "2000", "--wavs", "12", "--workers", "0", "1"],
    "zero_memory": ["--quick"],
    "gpu_mfu": ["--quick"],
    "device_features": ["--quick"],
}


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def machine_slug() -> str:
    """e.g. cpu-amd-epyc-2c, or nvidia-h100-80gb-hbm3 on a GPU machine."""
    if has_cuda():
        import torch

        name = torch.cuda.get_device_name(0)
    else:
        name = "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = "cpu " + line.split(":", 1)[1]
                    break
        except OSError:
            pass
        name = re.sub(r"\b(\d+-core processor|processor|cpu @.*|\(r\)|\(tm\))", " ", name.lower())
        name = f"{name} {os.cpu_count()}c"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return re.sub(r"-+", "-", slug)[:60]


def parse_tables(text: str) -> list[list[dict]]:
    """Markdown tables in `text` as lists of row dicts keyed by the header cells."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|[-:| ]+\|$", lines[i + 1].strip()):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def data_pipeline_json(text: str, argv: list[str]) -> dict:
    """bench/data_pipeline.py prints Markdown only; its two tables become JSON here."""
    out = {"benchmark": "data_pipeline", "command": "python bench/data_pipeline.py " + " ".join(argv)}
    out["command"] = out["command"].strip()
    found = re.search(r"^Commit: (\S+)$", text, re.M)
    out["commit"] = found.group(1) if found else "not recorded"
    for table in parse_tables(text):
        if table and "padding efficiency" in table[0]:
            out["padding"] = [
                {
                    "batching": r["batching"],
                    "batches": int(r["batches"]),
                    "mean_batch": float(r["mean batch"]),
                    "efficiency": float(r["padding efficiency"]),
                }
                for r in table
            ]
        elif table and "workers" in table[0]:
            out["throughput"] = [
                {
                    "workers": int(r["workers"]),
                    "utterances": int(r["utterances"]),
                    "wall_s": float(r["wall (s)"]),
                    "utt_per_s": float(r["utterances/s"]),
                    "audio_s_per_s": float(r["audio s per s"]),
                    "utt_per_s_per_worker": float(r["utterances/s per worker"]),
                }
                for r in table
            ]
    if "padding" not in out:
        raise RuntimeError(f"bench/data_pipeline.py printed no padding table:\n{text[-2000:]}")
    return out


class BenchFailed(RuntimeError):
    """A benchmark's script failed: the message is its exit status and the line that names its error."""


def run_bench(name: str, extra: list[str], out_dir: Path) -> dict:
    script = HERE / f"{name}.py"
    json_path = out_dir / f"{name}.json"
    cmd = [sys.executable, str(script), *extra]
    if name != "data_pipeline":
        cmd += ["--json-out", str(json_path)]
    print(f"[run_all] {name}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise BenchFailed(f"exit {proc.returncode}: {failure_line(proc.stderr + proc.stdout)}")
    text = proc.stdout
    if name == "data_pipeline":
        res = data_pipeline_json(text, extra)
        json_path.write_text(json.dumps(res, indent=1))
    res = json.loads(json_path.read_text())
    (out_dir / f"{name}.md").write_text(_markdown_block(text))
    print(f"[run_all] {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return res


def _markdown_block(stdout: str) -> str:
    """The benchmark's own report: from its first line of prose or table, dropping library log lines."""
    keep = [ln for ln in stdout.splitlines() if not re.match(r"^\[\d{4}-\d\d-\d\d |^\[run_all\]", ln)]
    return "\n".join(keep).strip() + "\n"


def report_from_json(name: str, res: dict) -> str | None:
    """The benchmark's Markdown rebuilt from its JSON (None for data_pipeline, whose report is its stdout)."""
    if "command" in res:  # a run started by hand may have recorded where its JSON went
        res["command"] = re.sub(r"\s--json-out(=|\s+)\S+", "", res["command"])
    if name == "train_step":
        from train_step import markdown
    elif name == "gpu_mfu":
        from gpu_mfu import markdown
    elif name == "device_features":
        from device_features import markdown
    elif name == "zero_memory":
        from zero_memory import markdown

        return "\n".join(markdown(res["rows"], res))
    else:
        return None
    return "\n".join(markdown(res))


TITLES = {
    "train_step": "1-2. Training step: llmasr vs FunASR-style formulation, and scaling",
    "data_pipeline": "3. Data pipeline",
    "zero_memory": "4. ZeRO per-rank memory",
    "gpu_mfu": "5. GPU throughput and MFU",
    "device_features": "6. Features: loader workers vs the device (data.features_on)",
}


def render(out_dir: Path, machine: str, skipped: dict[str, str], failed: dict[str, str] | None = None) -> Path:
    """results.md / results.json from the JSONs in `out_dir`; a benchmark in `failed` (this run's failures) shows its
    error, not a result an earlier run left there."""
    sys.path.insert(0, str(HERE))
    from plots import PLOTTERS

    results = {}
    lines = [
        f"# llmasr benchmarks on {machine}",
        "",
        f"Rendered {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} at commit {git_commit()} by "
        "`python bench/run_all.py`; each section names the commit it was measured at.",
    ]
    for name in BENCHES:
        lines += ["", f"## {TITLES[name]}", ""]
        json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
        if name in (failed or {}):
            lines.append(f"Failed in this run ({failed[name]}); the command it ran and its error are in the log.")
            continue
        if not json_path.is_file():
            lines.append(f"Not measured: {skipped.get(name, 'no result in this directory')}.")
            continue
        res = json.loads(json_path.read_text())
        results[name] = res
        report = report_from_json(name, res) or (md_path.read_text().strip() if md_path.is_file() else "")
        report = re.sub(r"\n*^Commit: \S+$", "", report, flags=re.M)  # data_pipeline's stdout names it too
        lines += [report, "", f"Measured at commit {res.get('commit') or 'not recorded'}."]
        plotter = PLOTTERS.get(name)
        if plotter is not None:
            png = plotter(res, out_dir / f"{name}.png")
            if png is not None:
                lines += ["", f"![{name}]({png.name})"]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    summary = {"machine": machine, "commit": git_commit(), "benchmarks": results, "skipped": skipped,
               "failed": failed or {}}  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1))
    return out_dir / "results.md"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (smoke run)")
    p.add_argument("--only", nargs="+", choices=BENCHES, help="run these benchmarks only")
    p.add_argument("--render-only", action="store_true", help="only rebuild results.md/.json and the PNGs")
    p.add_argument("--machine", help="results directory name (default: derived from the CPU or GPU model)")
    p.add_argument("--out-dir", default=str(HERE / "results"), help="parent of the per-machine directories")
    args = p.parse_args(argv)
    machine = args.machine or (machine_slug() + ("-quick" if args.quick else ""))
    out_dir = Path(args.out_dir) / machine
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}  # one benchmark failing leaves the others to run, and says so in results.md
    cuda = has_cuda()
    if not args.render_only:
        for name in args.only or BENCHES:
            if name == "gpu_mfu" and not cuda and not args.quick:
                skipped[name] = "no CUDA device on this machine (`python bench/gpu_mfu.py --quick` is a CPU smoke run)"
                continue
            try:
                run_bench(name, QUICK_ARGS[name] if args.quick else [], out_dir)
            except Exception as err:  # its exit status, or what run_all found wrong in its output
                failed[name] = str(err) if isinstance(err, BenchFailed) else f"{type(err).__name__}: {err}"
                failed[name] = failed[name].splitlines()[0][:ERROR_CHARS]
                print(f"[run_all] {name}: FAILED ({err}); going on with the others", flush=True)
    elif not cuda and not (out_dir / "gpu_mfu.json").is_file():
        skipped["gpu_mfu"] = "no CUDA device on this machine"
    path = render(out_dir, machine, skipped, failed)
    print(f"[run_all] wrote {path} and results.json, PNGs beside it")
    print(f"[run_all] reproduce: python bench/run_all.py {' '.join(shlex.quote(a) for a in argv)}".rstrip())
    if failed:
        print(f"[run_all] failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
