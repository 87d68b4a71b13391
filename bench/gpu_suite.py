"""Every GPU measurement the project needs, in one run through the real commands (bench/gpu_suite.sh calls this).

    bash bench/gpu_suite.sh                      # on a lent GPU: results under $OUT (or bench/results/gpu-suite)
    python bench/gpu_suite.py --smoke --out DIR  # tiny shapes on CPU in bf16, 3 updates a run: its own test

Writes the Paraformer-large + Qwen2.5-1.5B shapes with random weights to disk in the real formats and synthetic
audio manifests (bench/_gpu_suite_prepare.py), then runs, each as its own `python -m llmasr ...` process with a
timeout, in this order (a run the time budget no longer allows is reported as skipped, with the reason):

  zero2_bf16        llmasr train, the shipped recipe (LoRA, bf16, grad_accum 2, 240 s of audio per micro batch), zero2
  profile           bench/gpu_profile.py: one update under torch.profiler and one under cProfile (profile.md)
  liger_zero2       zero2_bf16 with model.llm.fused_kernels=liger, when liger_kernel imports (else skipped, saying
                    so), half the updates
  zero2_bf16_cudnn  the same with train.cudnn_attention=true (torch's cuDNN fused attention allowed): the kernel
                    choice measured both ways, half the updates
  zero2_bf16_4x     the same with 4x the audio per micro batch (data.batching.max_seconds 960): how much of the
                    step is a fixed cost per launch, half the updates
  zero3_bf16        the same under zero3 (the LLM loaded partitioned through zero.Init), half the updates
  fp16_zero2        fp16 with dynamic loss scaling, once (half the updates)
  decode            llmasr decode of the first finished run's last checkpoint: real-time factor (random weights never
                    emit EOS and the repetition stop is off, so every utterance runs to the length cap: an upper
                    bound on decoding time; summary.md counts the utterances that did)
  features          bench/device_features.py: fbank on loader workers vs on the device

From each train.log it takes the efficiency lines (tok/s, audio s/s, MFU, TFLOP/s, padding, data wait) after the
first one (start-up and warm-up), their medians, the peak device memory and the first and last loss, and writes
summary.md, summary.json and logs.txt (the tail of every run's output) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import COMMIT_ENV, failure_line, git_commit, reproduce_command  # noqa: E402
from _gpu_suite_report import markdown  # noqa: E402

FIGURES = ("tok/s", "audio_s/s", "utt/s", "mfu", "tflops", "pad_audio", "pad_llm", "data_wait")
LOG_TAIL = 60  # lines of each run's output kept in logs.txt


def train_runs(smoke: bool, liger: str | None) -> list[dict]:
    """The training runs: name, DeepSpeed preset, overrides, share of --updates, and the reason to skip (None: run
    it)."""
    half = "bf16"  # the smoke run's too: DeepSpeed's CPU accelerator runs bf16 (slowly), fp16 alone needs CUDA
    cuda_reason = "needs CUDA (smoke run on CPU)" if smoke else None
    big = 4 * (4.0 if smoke else 240.0)  # the recipe's data.batching.max_seconds (the smoke recipe's), 4x
    run = {"preset": "zero2", "share": 1.0, "skip": None}
    # liger second: the only run never measured on a GPU (cuDNN on is how the last loan measured every run)
    return [
        {**run, "name": f"zero2_{half}", "overrides": [f"train.precision={half}"]},
        {**run, "name": "liger_zero2", "share": 0.5,
         "overrides": [f"train.precision={half}", "model.llm.fused_kernels=liger"], "skip": liger},
        {**run, "name": f"zero2_{half}_cudnn", "share": 0.5,
         "overrides": [f"train.precision={half}", "train.cudnn_attention=true"],
         "skip": cuda_reason and f"cuDNN attention {cuda_reason}"},
        {**run, "name": f"zero2_{half}_4x", "share": 0.5,
         "overrides": [f"train.precision={half}", f"data.batching.max_seconds={big:g}"]},
        {**run, "name": f"zero3_{half}", "preset": "zero3", "share": 0.5, "overrides": [f"train.precision={half}"]},
        {**run, "name": "fp16_zero2", "share": 0.5, "overrides": ["train.precision=fp16"],
         "skip": cuda_reason and f"fp16 mixed precision with loss scaling {cuda_reason}"},
    ]  # fmt: skip


def liger_skip_reason() -> str | None:
    """Why the fused-kernel variant cannot run here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "model.llm.fused_kernels=liger needs CUDA"
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as err:  # ImportError, or triton failing to initialise
        return f"liger_kernel is not importable ({err}); carry it: pip install --target .gpudeps --no-deps liger-kernel"
    return None


class Suite:
    """Runs the steps against one deadline and gathers their results."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.deadline = time.monotonic() + args.budget_s
        self.results: dict[str, dict] = {}
        self.logs: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def run(self, name: str, cmd: list[str], timeout: float) -> dict:
        """`cmd` in its own process group, killed as a group at min(timeout, the suite's deadline)."""
        left = self.deadline - time.monotonic()
        if left < 20:
            return {"status": "skipped", "reason": f"the suite's {self.args.budget_s:g} s budget is spent"}
        limit = min(timeout, left)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=limit)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            status = f"timed out after {limit:.0f} s"
        took = time.monotonic() - t0
        tail = output.splitlines()[-LOG_TAIL:]
        self.logs += [f"==== {name}: {status}, {took:.1f} s: {' '.join(cmd)}", *tail, ""]
        res = {"status": status, "wall_s": round(took, 1)}
        if status != "ok":  # summary.md names the cause; logs.txt holds the rest
            res["error"] = failure_line(output)
        return res

    def prepare(self) -> dict:
        from _gpu_suite_prepare import prepare

        t0 = time.monotonic()
        files = prepare(self.work, self.args.smoke)
        files["wall_s"] = round(time.monotonic() - t0, 1)
        return files

    def train(self, run: dict, recipe: str) -> dict:
        if run["skip"]:
            return {"status": "skipped", "reason": run["skip"]}
        a = self.args
        run_dir = self.work / "runs" / run["name"]
        updates = max(round(a.updates * run["share"]), 3)
        cmd = [sys.executable, "-m", "llmasr", "train", "--config", recipe, "--deepspeed", run["preset"],
               "--overwrite", f"train.output_dir={run_dir}", f"train.max_updates={updates}",
               f"train.log_every={a.log_every}", "train.progress_every_s=0", *run["overrides"]]  # fmt: skip
        if a.smoke:
            cmd.append("train.grad_accum=1")
        res = self.run(run["name"], cmd, a.train_timeout_s)
        res.update(run_dir=str(run_dir), **train_figures(run_dir / "train.log"))
        return res

    def decode(self, run_dir: str, manifest: str) -> dict:
        out = self.work / "decode"
        # The repetition stop off: random weights repeat a token and were stopped after a few (all 64 utterances on
        # the lent H200), while a real transcript of these clips runs to about the cap; off, every one runs to it.
        cmd = [sys.executable, "-m", "llmasr", "decode", "--checkpoint", run_dir, "--data", manifest,
               "--output", str(out), "--max-new-tokens", str(self.args.max_new_tokens),
               "--repeat-limit", "0"]  # fmt: skip
        if self.args.smoke:
            cmd += ["--num-workers", "0", "--device", "cpu"]
        res = self.run("decode", cmd, self.args.step_timeout_s)
        summary = out / "wer.json"
        if summary.is_file():
            got = json.loads(summary.read_text())
            keys = ("rtf", "rtf_after_first_batch", "first_batch_seconds", "utts_per_second", "audio_seconds",
                    "decode_seconds", "mode", "max_new_tokens", "truncated", "truncated_by_guard", "utterances",
                    "batch_seconds")  # fmt: skip
            res.update({k: got.get(k) for k in keys})
        return res

    def profile(self) -> dict:
        """bench/gpu_profile.py on the suite's model and audio: OUT/profile.md."""
        cmd = [sys.executable, str(HERE / "gpu_profile.py"), "--out", str(self.out), "--work", str(self.work)]
        if self.args.smoke:
            cmd.append("--smoke")
        res = self.run("profile", cmd, self.args.step_timeout_s + 30)
        res["file"] = "profile.md" if (self.out / "profile.md").is_file() else None
        return res

    def features(self) -> dict:
        out = self.work / "features.json"
        cmd = [sys.executable, str(HERE / "device_features.py"), "--json-out", str(out)]
        if self.args.smoke:
            cmd += ["--quick", "--cpu-only"]
        res = self.run("features", cmd, self.args.step_timeout_s)
        if out.is_file():
            rows = json.loads(out.read_text())["results"]
            keys = ("path", "device", "threads", "audio_s_per_s", "x_step")
            res["paths"] = [{k: r.get(k) for k in keys} for r in rows]
        return res


def train_figures(log: Path) -> dict:
    """Medians of the efficiency figures of the train.log lines after the first, the peak memory over all of them,
    and the first and last loss; {} when the log has no train line."""
    from llmasr.train.progress import parse_log_line

    if not log.is_file():
        return {}
    rows = [parse_log_line(line.split(" train ", 1)[1]) for line in log.read_text().splitlines() if " train " in line]
    rows = [r for r in rows if "update" in r and "loss" in r]
    if not rows:
        return {}
    steady = rows[1:] or rows
    out = {"updates": rows[-1]["update"], "lines": len(rows), "steady_lines": len(steady)}
    for key in FIGURES:
        values = [r[key] for r in steady if isinstance(r.get(key), (int, float))]
        out[key] = statistics.median(values) if values else None
    for key in ("mem/device_peak_gb", "mem/host_peak_gb"):
        values = [r[key] for r in rows if key in r]
        out[key] = max(values) if values else None
    out["loss_first"], out["loss_last"] = rows[0]["loss"], rows[-1]["loss"]
    for key in ("loss_scale", "skipped_steps"):
        out[key] = rows[-1].get(key)
    return out


def suite_command(argv: list[str]) -> str:
    """bench/gpu_suite.sh with the arguments that change what is measured (not where files go)."""
    return reproduce_command("bench/gpu_suite.sh", argv, drop=("--out", "--work"), runner="bash")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results" / "gpu-suite"))
    p.add_argument("--work", default=None, help="where models, audio and runs go (default: a temporary folder)")
    p.add_argument("--smoke", action="store_true", default=os.environ.get("LLMASR_GPU_SUITE_SMOKE") == "1",
                   help="tiny shapes on CPU, 3 updates a run (also LLMASR_GPU_SUITE_SMOKE=1)")  # fmt: skip
    p.add_argument("--updates", type=int, default=None, help="updates per training run (default 16; smoke 3)")
    p.add_argument("--log-every", type=int, default=None, help="train.log_every (default 4; smoke 1)")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole suite's wall-clock budget")
    p.add_argument("--train-timeout-s", type=float, default=150.0)
    p.add_argument("--step-timeout-s", type=float, default=90.0, help="decode and features timeouts")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--only", nargs="+", help="train run names, decode, features, profile (default: all)")
    args = p.parse_args(argv)
    args.updates = args.updates or (3 if args.smoke else 16)
    args.log_every = args.log_every or (1 if args.smoke else 4)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        args.work = args.work or tmp
        res = run_suite(args)
    res["command"] = suite_command(argv)
    res["commit"] = git_commit()
    if res["commit"] == "unknown":  # a copy of the tree without .git: the caller knows the commit it sent
        print(
            f"gpu_suite: no git checkout here; run with {COMMIT_ENV}=<commit> to name it in the results",
            file=sys.stderr,
        )
    write_outputs(Path(args.out), res, markdown(res))
    steps = [("decode", res["decode"]), ("features", res["features"]), ("profile", res["profile"])]
    failed = [n for n, r in [*res["train"].items(), *steps]
              if r["status"] not in ("ok", "skipped")]  # fmt: skip
    return 1 if failed else 0


def run_suite(args) -> dict:
    import torch

    t0 = time.monotonic()
    suite = Suite(args)
    wanted = set(args.only or [])
    files = suite.prepare()
    train: dict = {}
    decode = features = profile = None

    def done_so_far() -> None:  # a suite killed from outside (the machine's own limit) still leaves its results
        partial = {
            "train": train,
            "decode": decode,
            "features": features,
            "profile": profile,
            "wall_s": time.monotonic() - t0,
        }
        save_partial(Path(args.out), partial, suite.logs)

    runs = train_runs(args.smoke, liger_skip_reason() if not args.smoke else "model.llm.fused_kernels=liger needs CUDA")
    runs = [r for r in runs if not wanted or r["name"] in wanted]
    # In the order of what the project needs most, as the time budget may not reach the last: the shipped recipe,
    # then where its update's time goes, then the variants (the fused kernels first), decoding and features.
    for i, r in enumerate(runs):
        train[r["name"]] = suite.train(r, files["recipe"])
        done_so_far()
        if i == 0:
            profile = (
                suite.profile() if not wanted or "profile" in wanted else {"status": "skipped", "reason": "--only"}
            )
            done_so_far()
    first = next((r for r in train.values() if r["status"] == "ok"), None)
    if wanted and "decode" not in wanted:
        decode = {"status": "skipped", "reason": "not in --only"}
    elif first is None:
        decode = {"status": "skipped", "reason": "no training run finished: no checkpoint to decode"}
    else:
        decode = suite.decode(first["run_dir"], files["decode_manifest"])
    done_so_far()
    features = suite.features() if not wanted or "features" in wanted else {"status": "skipped", "reason": "--only"}
    done_so_far()
    if profile is None:  # no training run was wanted
        profile = suite.profile() if not wanted or "profile" in wanted else {"status": "skipped", "reason": "--only"}
        done_so_far()
    cuda = torch.cuda.is_available() and not args.smoke
    return {
        "benchmark": "gpu_suite",
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if cuda else "CPU",
        "torch": torch.__version__,
        "updates": args.updates,
        "prepare": files,
        "train": train,
        "decode": decode,
        "features": features,
        "profile": profile,
        "wall_s": time.monotonic() - t0,
        "logs": suite.logs,
    }


PARTIAL = "partial.json"
LOGS = "logs.txt"


def save_partial(out: Path, partial: dict, logs: list[str]) -> None:
    """The steps done so far, in OUT/partial.json, and their log tails in OUT/logs.txt (both replaced whole after
    each step; the final outputs remove partial.json): a suite killed midway leaves what it needs diagnosing."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in ((PARTIAL, json.dumps(partial, indent=1, default=str)), (LOGS, "\n".join(logs))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out / name)


def write_outputs(out: Path, res: dict, lines: list[str]) -> None:
    """summary.md, summary.json and logs.txt beside the profile's profile.md (the GPU machine returns at most
    eight files)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL).unlink(missing_ok=True)
    logs = res.pop("logs")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / LOGS).write_text("\n".join(logs) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}/summary.md, summary.json, logs.txt")


if __name__ == "__main__":
    sys.exit(main())
