"""The training and data benchmarks (run_all, train_step, zero_memory, gpu_mfu, data_pipeline, manifest_scale,
device_features, augmented_batching, check_cost): each --quick mode writes results of the right structure. No
assertion is about speed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


def test_data_pipeline_output_parsed_into_json():
    import data_pipeline
    import run_all

    argv = ["--utts", "400", "--wavs", "3", "--workers", "0"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        data_pipeline.main(argv)
    res = run_all.data_pipeline_json(out.getvalue(), argv)
    assert [r["batching"].split(" (")[0] for r in res["padding"]] == [
        "DynamicBucketSampler",
        "DynamicBucketSampler",
        "shuffled fixed-size batches",
    ]
    assert all(0 < r["efficiency"] <= 1 for r in res["padding"])
    assert [r["workers"] for r in res["throughput"]] == [0]
    assert res["throughput"][0]["utterances"] == 3
    assert res["command"] == "python bench/data_pipeline.py --utts 400 --wavs 3 --workers 0"
    with pytest.raises(RuntimeError, match="no padding table"):
        run_all.data_pipeline_json("nothing here", [])


def test_manifest_scale_reports_every_stage_and_the_workers_memory():
    import manifest_scale

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        manifest_scale.main(["--lines", "300", "--format", "cuts", "--workers", "1", "--batches", "40"])
    text = out.getvalue()
    for stage in (
        "Manifest.open",
        "screen",
        "build_dataloader",
        "epoch plan, world size 8",
        "epoch plan, world size 64",
    ):
        assert f"| {stage}" in text
    assert "| 40 | " in text and "worker 0 USS / PSS" in text
    assert text.rstrip().splitlines()[-1].startswith("Commit: ")  # the commit it measured
    assert "| epoch plan, world size | held (MiB) |" in text and "| 64 | " in text


def test_reproduce_command_drops_the_json_path():
    import train_step

    cmd = train_step.reproduce_command("bench/train_step.py", ["--quick", "--json-out", "/tmp/x.json", "--batch", "2"])
    assert cmd == "python bench/train_step.py --quick --batch 2"


def _run(args, timeout=900):
    # Another test in this process may have made a process group whose rendezvous variables would leak into the
    # child (its port is still held here): the child picks its own.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def run_all_quick(tmp_path_factory):
    """One `run_all.py --quick` of the benchmarks the tests below read (each section's own process either way; one
    run_all start-up and render instead of two): (its stdout, the results directory)."""
    tmp = tmp_path_factory.mktemp("run_all")
    only = ["train_step", "data_pipeline", "device_features"]
    stdout = _run([str(BENCH / "run_all.py"), "--quick", "--only", *only, "--out-dir", str(tmp), "--machine", "m"])
    return stdout, tmp / "m"


@pytest.mark.slow
def test_run_all_quick_train_step_and_data(run_all_quick):
    stdout, out = run_all_quick
    assert "wrote" in stdout
    for name in ("results.md", "results.json", "train_step.json", "train_step.png", "data_pipeline.png"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    ts = res["benchmarks"]["train_step"]
    assert ts["command"] == "python bench/train_step.py --quick"
    h = ts["headline"]
    for v in ("reference", "llmasr"):
        assert h[v]["step_s"] > 0 and h[v]["peak_bytes"] > 0 and len(h[v]["times"]) == 1
        assert h[v]["utt_per_s"] == pytest.approx(h["batch"] / h[v]["step_s"])
    assert h["reference"]["loss"] == pytest.approx(h["llmasr"]["loss"], rel=1e-5)
    assert h["speedup"] == pytest.approx(h["reference"]["step_s"] / h["llmasr"]["step_s"])
    assert [r["seconds"] for r in ts["sweep_seconds"]] == [1.0, 2.0]
    assert [r["batch"] for r in ts["sweep_batch"]] == [1, 2]
    assert ts["sweep_seconds"][0]["llmasr"]["time_vs_linear"] == pytest.approx(1.0)
    md = (out / "results.md").read_text()
    assert "## 1-2. Training step" in md and "## 3. Data pipeline" in md and "![train_step](train_step.png)" in md
    assert "## 4. ZeRO per-rank memory" in md  # present, reported as not measured
    assert res["benchmarks"]["data_pipeline"]["padding"]


def test_run_all_goes_on_past_a_failed_benchmark_and_names_it(tmp_path, monkeypatch, capsys):
    """One benchmark failing (a CUDA error on the lent GPU) had stopped run_all there: the benchmarks after it never
    ran and no results.md was written. Each failure is named, the others run, and run_all exits 1."""
    import run_all

    scripts = tmp_path / "bench"
    scripts.mkdir()
    for name, error in (("data_pipeline", "ValueError: first"), ("device_features", "RuntimeError: second")):
        kind, text = error.split(": ")
        (scripts / f"{name}.py").write_text(f"print('working'); raise {kind}({text!r})\n")
    out = tmp_path / "results" / "m"
    out.mkdir(parents=True)
    (out / "data_pipeline.json").write_text(json.dumps({"commit": "old"}))  # an earlier run's result, not this one's
    (out / "data_pipeline.md").write_text("stale table\n")
    monkeypatch.setattr(run_all, "HERE", scripts)
    monkeypatch.setattr(sys, "path", list(sys.path))  # render puts HERE first: the stand-ins must not stay importable
    argv = ["--quick", "--only", "data_pipeline", "device_features", "--out-dir", str(tmp_path / "results")]
    assert run_all.main([*argv, "--machine", "m"]) == 1
    assert "[run_all] failed: data_pipeline, device_features" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["failed"] == {
        "data_pipeline": "exit 1: ValueError: first",
        "device_features": "exit 1: RuntimeError: second",
    }
    md = (out / "results.md").read_text()
    assert "Failed in this run (exit 1: ValueError: first)" in md and "stale table" not in md
    assert "Failed in this run (exit 1: RuntimeError: second)" in md


@pytest.mark.slow
def test_zero_memory_quick_counts_the_states_deepspeed_holds(tmp_path):
    pytest.importorskip("deepspeed")
    from llmasr.testing.launcher import assert_no_shm_left
    from llmasr.train.process_group import free_port

    port = free_port()
    _run([str(BENCH / "zero_memory.py"), "--quick", "--master-port", str(port), "--json-out", str(tmp_path / "z.json")])
    assert_no_shm_left(port)  # the ranks start as `llmasr train` does: no shared-memory all-reduce buffers
    res = json.loads((tmp_path / "z.json").read_text())
    rows = {r["preset"]: r for r in res["rows"]}
    assert set(rows) == {"zero0", "zero2"}
    for r in rows.values():
        n = r["num_params"]
        after = r["points"]["after_step"]
        assert after["params"] == 4 * n  # fp32 weights, whole on every rank below stage 3
        assert r["estimates"]["llmasr"]["params"] == 4 * n
    # zero0: Adam moments of everything; zero2: fp32 master copy + moments of one half (2 ranks)
    n = rows["zero0"]["num_params"]
    assert rows["zero0"]["points"]["after_step"]["optimizer_states"] == pytest.approx(8 * n, rel=0.01)
    assert rows["zero2"]["points"]["after_step"]["optimizer_states"] == pytest.approx(12 * n / 2, rel=0.01)
    assert rows["zero2"]["measured_buckets_peak"] > 0  # the contiguous reduce bucket exists during backward
    assert rows["zero2"]["estimates"]["deepspeed_device"] is not None
    assert rows["zero0"]["estimates"]["deepspeed_device"] is None


@pytest.mark.slow
def test_gpu_mfu_quick_runs_a_deepspeed_step(tmp_path):
    pytest.importorskip("deepspeed")
    stdout = _run([str(BENCH / "gpu_mfu.py"), "--quick", "--cpu", "--json-out", str(tmp_path / "g.json")])
    res = json.loads((tmp_path / "g.json").read_text())
    assert res["zero"] == "2" and res["precision"] == "fp32" and len(res["step_times"]) == 2
    assert res["tokens_per_s"] == pytest.approx(res["llm_positions"] / res["step_s"])
    assert res["flops"]["total"] == pytest.approx(sum(v for k, v in res["flops"].items() if k != "total"))
    assert res["mfu"] is None  # no peak figure for a CPU
    assert "Reproduce: `python bench/gpu_mfu.py --quick --cpu`" in stdout


def test_device_features_quick_measures_every_path(tmp_path):
    import device_features

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        res = device_features.main(["--quick", "--cpu-only", "--json-out", str(tmp_path / "f.json")])
    assert json.loads((tmp_path / "f.json").read_text()) == json.loads(json.dumps(res))
    paths = [(r["path"], r["device"], r["threads"]) for r in res["results"]]
    assert paths[:3] == [
        ("worker (kaldi-native-fbank)", "cpu", 1),
        ("worker, waves only (scale + dither)", "cpu", 1),
        ("torch batched", "cpu", 1),
    ]
    for r in res["results"]:
        assert r["audio_s_per_s"] == pytest.approx(res["audio_seconds"] / r["seconds"])
        assert r["x_step"] == pytest.approx(r["audio_s_per_s"] / res["step_audio_per_s"])
    assert res["clips"] == 4 and res["padded_seconds"] >= res["audio_seconds"] > 0
    assert "Reproduce: `python bench/device_features.py --quick --cpu-only`" in out.getvalue()


@pytest.mark.slow  # shares the train_step run above
def test_run_all_quick_device_features(run_all_quick):
    _, out = run_all_quick
    res = json.loads((out / "device_features.json").read_text())
    assert res["command"] == "python bench/device_features.py --quick"
    md = (out / "results.md").read_text()
    assert "## 6. Features: loader workers vs the device" in md and "| torch batched | cpu | 1 |" in md


def test_augmented_batching_measures_both_costings_on_the_audio_batches_get(tmp_path, capsys):
    import augmented_batching

    out = tmp_path / "a.json"
    assert (
        augmented_batching.main(["--lines", "600", "--max-seconds", "40", "--epochs", "2", "--json-out", str(out)]) == 0
    )
    res = json.loads(out.read_text())
    assert res["command"] == "python bench/augmented_batching.py --lines 600 --max-seconds 40 --epochs 2"
    rows = res["rows"]
    assert [(r["augment"], r["costed"]) for r in rows] == [
        (a, c) for a in ("speed", "speed+pauses") for c in ("worst case", "each clip's draw")
    ]
    assert all(r["over_budget"] == 0 and 0 < r["padding"] <= 1 for r in rows)
    for worst, drawn in zip(rows[::2], rows[1::2]):
        assert drawn["padding"] > worst["padding"] and drawn["batches"] < worst["batches"]
    assert "Reproduce: `python bench/augmented_batching.py --lines 600" in capsys.readouterr().out


def test_check_cost_quick_builds_in_every_mode(tmp_path, capsys):
    import check_cost

    out = tmp_path / "c.json"
    assert check_cost.main(["--quick", "--repeats", "1", "--work", str(tmp_path), "--json-out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert sorted(res["modes"]) == ["meta", "pretrained", "shapes"]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in res["modes"].values())
    assert "Reproduce: `python bench/check_cost.py --quick --repeats 1 --work" in capsys.readouterr().out


def test_host_ops_charges_backward_ops_to_the_branch_whose_forward_made_them():
    """bench/host_ops.py: an op inside a module's range is that branch's; a backward op is charged through the
    profiler's sequence numbers to the branch of the forward op that made its autograd node, recomputation of a
    checkpointed module included; gradient accumulation nodes have their own row, the rest is the trainer's."""
    import torch
    from host_ops import Ranges, attribute
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    enc, llm = torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    ranges = Ranges()
    ranges.hook(enc, "encoder")
    ranges.hook(llm, "llm")
    x = torch.randn(3, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = checkpoint(llm, enc(x), use_reentrant=False).sum()
        y.backward()
        x.add(1)
    by_name, by_row, top_row, all_ops, top_ops = attribute(prof.events())
    assert all_ops["encoder"]["aten::addmm"] == 1 and all_ops["encoder"]["aten::mm"] == 1  # forward; weight grad
    assert all_ops["llm"]["aten::addmm"] == 2  # forward and recomputation
    assert all_ops["llm"]["aten::threshold_backward"] == 1
    assert top_row["grad accumulation + ZeRO hooks"] == 4  # one detach per AccumulateGrad of the 4 parameters
    assert all_ops["trainer"]["aten::add"] == 1 and all_ops["trainer"]["aten::sum"] == 1
    assert sum(by_row.values()) == sum(by_name.values())
    for handle in ranges.handles:
        handle.remove()
