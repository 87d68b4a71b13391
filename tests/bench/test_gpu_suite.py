"""bench/gpu_suite.sh in its CPU smoke mode: every step runs through the real commands and the summary holds the
figures a GPU run reports. No assertion is about speed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_suite  # noqa: E402


@pytest.mark.slow
def test_smoke_suite_trains_decodes_and_summarises(tmp_path):
    pytest.importorskip("deepspeed")
    skip = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LLMASR_BENCH_COMMIT")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    env["LLMASR_GPU_SUITE_SMOKE"] = "1"
    out = tmp_path / "out"
    cmd = ["bash", str(BENCH / "gpu_suite.sh"), "--out", str(out), "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["logs.txt", "profile.md", "summary.json", "summary.md"]
    res = json.loads((out / "summary.json").read_text())
    assert res["smoke"] is True and res["updates"] == 3
    train = res["train"]
    assert list(train) == ["zero2_bf16", "liger_zero2", "zero2_bf16_cudnn", "zero2_bf16_4x", "zero3_bf16", "fp16_zero2"]
    for name in ("zero2_bf16", "zero2_bf16_4x", "zero3_bf16"):
        r = train[name]
        assert r["status"] == "ok", r
        assert r["updates"] == 3 and r["lines"] == 3 and r["steady_lines"] == 2
        for key in ("tok/s", "audio_s/s", "tflops", "mem/host_peak_gb", "loss_first", "loss_last"):
            assert r[key] > 0, (name, key)
        assert r["mfu"] is None  # "n/a" on a CPU: no peak figure
        assert 0 <= r["pad_llm"] < 1 and 0 <= r["data_wait"] <= 1
    for name in ("zero2_bf16_cudnn", "fp16_zero2", "liger_zero2"):
        assert "needs CUDA" in train[name]["reason"], name
    assert train["zero2_bf16_4x"]["audio_s/s"] > 0  # its larger batches: data.batching.max_seconds took
    d = res["decode"]
    assert d["status"] == "ok" and d["rtf"] > 0 and d["max_new_tokens"] == 48 and d["audio_seconds"] > 0
    assert d["first_batch_seconds"] > 0 and "rtf_after_first_batch" in d
    # random weights repeat a token: the repetition stop had ended every utterance early, not the length cap
    assert d["truncated_by_guard"] == {"max_tokens": 3, "repetition": 0} and d["utterances"] == 3
    paths = [p["path"] for p in res["features"]["paths"]]
    assert paths[0] == "worker (kaldi-native-fbank)" and "torch batched" in paths
    md = (out / "summary.md").read_text()
    assert "| zero2_bf16 | ok |" in md and "| fp16_zero2 | skipped: fp16" in md and "Decoding (ok): RTF" in md
    assert "length cap 48 tokens: 3 of 3 utterances ran to it" in md
    assert "Reproduce: `bash bench/gpu_suite.sh`" in md  # the output paths are not part of it
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True)
    assert res["commit"].removesuffix("+dirty") == head.stdout.strip() and f"at commit {res['commit']}" in md
    logs = (out / "logs.txt").read_text()
    assert "==== zero3_bf16: ok" in logs and "==== decode: ok" in logs and "==== profile: ok" in logs
    assert logs.index("==== profile:") < logs.index("==== zero2_bf16_4x:")  # the shipped recipe's profile first
    assert res["profile"] == {**res["profile"], "status": "ok", "file": "profile.md"}
    assert "Profile (ok)" in md
    prof = (out / "profile.md").read_text()
    # the smoke run's one warm-up update, then one under each profiler
    assert re.search(r"^\| 1 \| timed \|.*\n\| 2 \| torch.profiler \|.*\n\| 3 \| cProfile \|", prof, re.M)
    assert "### cProfile by tottime" in prof and f"; commit {res['commit']}" in prof
    # the GPU run's path: bf16 weights (DeepSpeed's CPU accelerator runs bf16) and fbank in the training step (said
    # as a fact: whether _fbank_group makes cProfile's top rows depends on the machine's load)
    assert "- params torch.bfloat16 trained on cpu" in prof
    assert "- features computed in the training step (waveforms batched)" in prof


def test_train_figures_skip_the_first_line_and_take_the_peak(tmp_path):
    log = tmp_path / "train.log"
    lines = [
        "2026-12-01 10:00:00 INFO llmasr.train: batches: 3 per epoch",
        "2026-12-01 10:00:01 INFO llmasr.train: train update=5 epoch=0 loss=4.0000 tok/s=100.0000 mfu=0.1000 "
        "mem/device_peak_gb=30.0000 loss_scale=65536.0000",
        "2026-12-01 10:00:02 INFO llmasr.train: train update=10 epoch=0 loss=3.0000 tok/s=300.0000 mfu=0.3000 "
        "mem/device_peak_gb=31.0000 loss_scale=32768.0000",
        "2026-12-01 10:00:03 INFO llmasr.train: train update=15 epoch=0 loss=2.0000 tok/s=500.0000 mfu=0.5000 "
        "mem/device_peak_gb=29.0000 loss_scale=32768.0000",
    ]
    log.write_text("\n".join(lines) + "\n")
    got = gpu_suite.train_figures(log)
    assert got["updates"] == 15 and got["lines"] == 3 and got["steady_lines"] == 2
    assert got["tok/s"] == 400.0 and got["mfu"] == pytest.approx(0.4)  # the warm-up line is left out
    assert got["mem/device_peak_gb"] == 31.0 and got["loss_first"] == 4.0 and got["loss_last"] == 2.0
    assert got["loss_scale"] == 32768.0 and got["audio_s/s"] is None
    assert gpu_suite.train_figures(tmp_path / "missing.log") == {}


def test_liger_variant_is_skipped_with_a_reason_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs CUDA" in gpu_suite.liger_skip_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    assert "liger_kernel is not importable" in gpu_suite.liger_skip_reason()


def test_reproduce_command_leaves_out_where_files_go():
    argv = ["--out", "/x", "--updates", "10", "--work=/w"]
    assert gpu_suite.suite_command(argv) == "bash bench/gpu_suite.sh --updates 10"


def test_a_suite_killed_midway_leaves_the_steps_it_finished(tmp_path, monkeypatch):
    """The suite's results had been written only at its end: a run killed by the machine's own time limit left
    nothing. Each finished step is in OUT/partial.json; the final outputs replace it."""

    class Killed(Exception):
        pass

    class StepsThenKill(gpu_suite.Suite):
        def prepare(self):
            return {"recipe": "r.yaml", "decode_manifest": "m.jsonl"}

        def train(self, run, recipe):
            if self.results:
                raise Killed  # the second run never finishes
            self.results[run["name"]] = {"status": "ok", "updates": 3}
            self.logs += [f"==== {run['name']}: ok", "loss 1.0"]
            return self.results[run["name"]]

        def profile(self):  # right after the shipped recipe's run, before the variants
            self.logs += ["==== profile: ok"]
            return {"status": "ok", "file": "profile.md"}

    monkeypatch.setattr(gpu_suite, "Suite", StepsThenKill)
    args = gpu_suite.argparse.Namespace(out=str(tmp_path / "out"), work=str(tmp_path), budget_s=60.0, only=None,
                                        smoke=True)  # fmt: skip
    with pytest.raises(Killed):
        gpu_suite.run_suite(args)
    partial = json.loads((tmp_path / "out" / gpu_suite.PARTIAL).read_text())
    assert partial["train"] == {"zero2_bf16": {"status": "ok", "updates": 3}} and partial["decode"] is None
    assert partial["profile"] == {"status": "ok", "file": "profile.md"}
    logs = (tmp_path / "out" / gpu_suite.LOGS).read_text()
    assert logs == "==== zero2_bf16: ok\nloss 1.0\n==== profile: ok\n"  # to diagnose by


def test_a_dependency_that_does_not_import_is_named_with_its_error(tmp_path):
    """deepspeed needs pydantic, which .gpudeps does not carry: the start-up check names the error, not just
    deepspeed."""
    pytest.importorskip("deepspeed")
    (tmp_path / "pydantic").mkdir()
    (tmp_path / "pydantic" / "__init__.py").write_text('raise ImportError("stand-in: no pydantic here")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(["bash", str(BENCH / "gpu_suite.sh"), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2 and "deepspeed: ImportError: stand-in: no pydantic here" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_step_is_named_with_its_error_in_the_summary(tmp_path):
    """A run that failed read "failed (exit 2)" in summary.md, its cause only in logs.txt among the other steps'
    output: the line that names the error is the step's "error", shown beside its status."""
    args = gpu_suite.argparse.Namespace(out=str(tmp_path / "out"), work=str(tmp_path), budget_s=120.0)
    suite = gpu_suite.Suite(args)
    refusal = "llmasr train: error: train.precision: fp16 is not supported (set by the override 'a|b')"
    script = f"import sys; print('loading'); print({refusal!r}); print('bye', file=sys.stderr); sys.exit(2)"
    res = suite.run("fp16_zero2", [sys.executable, "-c", script], timeout=60)
    assert res["status"] == "failed (exit 2)" and res["error"] == refusal
    crash = "import torch; raise RuntimeError('CUDA error: an illegal memory access was encountered')"
    res2 = suite.run("decode", [sys.executable, "-c", crash], timeout=60)
    assert res2["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "error" not in suite.run("ok", [sys.executable, "-c", "print('fine')"], timeout=60)
    from _gpu_suite_report import status_text

    assert status_text(res) == "failed (exit 2): " + refusal.replace("|", "/")  # one table cell
    assert status_text({"status": "skipped", "reason": "--only"}) == "skipped: --only"


def test_summary_names_why_a_step_did_not_run_and_the_gpu_features_path_has_no_thread_count():
    """The H200's summary read "torch batched on cuda (NVIDIA H200) xNone" (the GPU path has no thread count) and a
    skipped decode read "Decoding (skipped)" without its reason."""
    from _gpu_suite_report import markdown

    res = {
        "device": "NVIDIA H200", "smoke": False, "updates": 16, "wall_s": 400.0, "command": "bash bench/gpu_suite.sh",
        "commit": "abc1234", "prepare": {"wall_s": 20.0},
        "train": {"zero2_bf16": {"status": "timed out after 150 s", "error": "train update=12 loss=7.1", "updates": 12,
                                 "wall_s": 150.0, "loss_first": 10.4, "loss_last": 7.1}},
        "decode": {"status": "skipped", "reason": "the suite's 480 s budget is spent"},
        "features": {"status": "ok", "paths": [
            {"path": "torch batched", "device": "cpu", "threads": 16, "audio_s_per_s": 2988.0, "x_step": 0.7},
            {"path": "torch batched", "device": "cuda (NVIDIA H200)", "threads": None, "audio_s_per_s": 81803.0,
             "x_step": 19.1}]},
        "profile": {"status": "failed (exit 1)", "error": "torch.OutOfMemoryError: CUDA out of memory."},
    }  # fmt: skip
    md = "\n".join(markdown(res))
    assert "| zero2_bf16 | timed out after 150 s: train update=12 loss=7.1 | 150 | 12 |" in md
    assert "Decoding (skipped: the suite's 480 s budget is spent): RTF -" in md
    assert "- torch batched on cpu x16: 2,988 (0.70x)" in md and "- torch batched on cuda (NVIDIA H200): 81,803" in md
    assert "Profile (failed (exit 1): torch.OutOfMemoryError: CUDA out of memory.)" in md
