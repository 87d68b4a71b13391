"""Benchmarks: the reference formulation computes llmasr's objective, the FLOP count matches torch's counter, and
each script's --quick mode writes results of the right structure. No assertion is about speed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import _speech_model as sm  # noqa: E402


def _tiny_model():
    return sm.build_model(sm.SIZES["tiny"], seed=0)


def test_reference_formulation_gives_llmasr_loss_and_gradients():
    model = _tiny_model()
    batch = sm.make_batch(sm.SIZES["tiny"], 3, 2.0, seed=1)
    grads = {}
    losses = {}
    for name in ("reference", "llmasr"):
        model.zero_grad(set_to_none=True)
        loss = sm.STEPS[name](model, batch)
        loss.backward()
        losses[name] = float(loss.detach())
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert losses["reference"] == pytest.approx(losses["llmasr"], rel=1e-5)
    assert grads["reference"].keys() == grads["llmasr"].keys()
    for n, g in grads["llmasr"].items():
        torch.testing.assert_close(grads["reference"][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_batch_layouts_agree():
    size = sm.SIZES["tiny"]
    synthetic = sm.make_batch(size, 4, 3.0, seed=2)
    batch, ref = synthetic.batch, synthetic.ref
    from llmasr.models.insert_audio import merge_audio_into_text

    n = batch.size
    audio_lens = torch.tensor(ref.audio_lens)
    merged = merge_audio_into_text(
        torch.zeros(n, batch.text_ids.shape[1], 8),
        batch.text_ids,
        batch.text_lens,
        batch.audio_pos,
        batch.target_start,
        torch.zeros(n, int(audio_lens.max()), 8),
        audio_lens,
    )
    # FunASR's placeholder sequence has the same length, mask and labels as llmasr's merged rows
    assert torch.equal(merged.attention_mask, ref.mask)
    assert torch.equal(merged.labels, ref.labels)
    assert synthetic.audio_seconds == pytest.approx(sum(3.0 * (0.9 + 0.1 * i / 3) for i in range(4)))


def test_step_flops_match_torch_counter_on_matrix_products():
    import gpu_mfu
    from torch.utils.flop_counter import FlopCounterMode

    size = sm.SIZES["tiny"]
    model = _tiny_model()
    batch = sm.make_batch(size, 1, 2.5, seed=3).batch  # one utterance: no padding, so counted work == useful work
    with FlopCounterMode(display=False) as counter:
        model(batch).loss.backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    ours = gpu_mfu.step_flops(size, batch)
    linear = sum(ours[k] for k in ("encoder_linear", "adaptor", "llm_linear", "lora", "output_head"))
    # Which of mm/addmm a linear layer dispatches to varies with state other tests leave (an op absent = 0 FLOPs).
    assert counts.get("aten.mm", 0) + counts.get("aten.addmm", 0) == linear
    assert ours["total"] > linear  # attention and the FSMN convolution on top


def test_peak_memory_probe_sees_an_allocation():
    with sm.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        del x
    assert mem.peak >= 60 * 2**20


def test_mfu_peak_table():
    import gpu_mfu

    # the table train.log's MFU uses (NVIDIA's dense figures)
    assert gpu_mfu.device_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)
    assert gpu_mfu.device_peak_tflops("NVIDIA H200", "bf16") == pytest.approx(989.4)
    assert gpu_mfu.device_peak_tflops("NVIDIA H200 NVL", "bf16") == pytest.approx(835.0)  # not the SXM part's
    assert gpu_mfu.device_peak_tflops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.0)
    assert gpu_mfu.device_peak_tflops("NVIDIA H100 80GB HBM3", "fp32") is None
    assert gpu_mfu.device_peak_tflops("Some Accelerator", "bf16") is None


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


@pytest.mark.slow
def test_run_all_quick_train_step_and_data(tmp_path):
    stdout = _run(
        [
            str(BENCH / "run_all.py"),
            "--quick",
            "--only",
            "train_step",
            "data_pipeline",
            "--out-dir",
            str(tmp_path),
            "--machine",
            "m",
        ]
    )
    out = tmp_path / "m"
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


@pytest.mark.slow
def test_zero_memory_quick_counts_the_states_deepspeed_holds(tmp_path):
    pytest.importorskip("deepspeed")
    from llmasr.testing.launcher import assert_no_shm_left
    from llmasr.train.engine import _free_port

    port = _free_port()
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


def test_device_features_step_need_is_gpu_mfus_step_at_40_percent_of_an_h100():
    """456 s of audio in a 32 x 15 s step of 42.1 TFLOP, 107 ms at 40% of 989.4 TFLOP/s (the README's arithmetic)."""
    import device_features
    import gpu_mfu

    size = sm.SIZES["paraformer-large+qwen2.5-1.5b"]
    sb = sm.make_batch(size, 32, 15.0)
    step_s = gpu_mfu.step_flops(size, sb.batch)["total"] / (0.4 * 989.4e12)
    assert sb.audio_seconds == pytest.approx(456.0) and step_s == pytest.approx(0.1065, abs=5e-4)
    assert device_features.step_audio_per_s() == pytest.approx(456.0 / step_s)


def test_run_all_quick_device_features(tmp_path):
    args = ["--quick", "--only", "device_features", "--out-dir", str(tmp_path), "--machine", "m"]
    _run([str(BENCH / "run_all.py"), *args])
    res = json.loads((tmp_path / "m" / "device_features.json").read_text())
    assert res["command"] == "python bench/device_features.py --quick"
    md = (tmp_path / "m" / "results.md").read_text()
    assert "## 6. Features: loader workers vs the device" in md and "| torch batched | cpu | 1 |" in md


def test_decode_speed_quick_reports_every_mode(tmp_path, capsys):
    import decode_speed

    argv = ["--quick", "--beam", "2", "--json-out", str(tmp_path / "d.json"), "--num-workers", "0"]
    assert decode_speed.main(argv) == 0
    res = json.loads((tmp_path / "d.json").read_text())
    assert [m["mode"] for m in res["modes"]] == ["greedy", "beam 2", "greedy + CTC 0.5", "beam 2 + CTC 0.5"]
    assert [m["search"] for m in res["modes"]][2:] == [
        "greedy + CTC prefix scoring (ctc_weight 0.5)", "beam 2 + CTC prefix scoring (ctc_weight 0.5)",
    ]  # fmt: skip
    for m in res["modes"]:
        assert m["utterances"] == 6 and m["utts_per_second"] > 0 and m["rtf"] > 0 and 0 <= m["truncated"] <= 6
    out = capsys.readouterr().out
    assert "| beam 2 + CTC 0.5 |" in out and "Reproduce: `python bench/decode_speed.py --quick --beam 2" in out


def test_hotword_lists_quick_prints_its_tables(capsys):
    import hotword_lists

    assert hotword_lists.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| word |", "| char |", "| 10-phrase"))]
    assert len(rows) == 3 and out.rstrip().endswith("python bench/hotword_lists.py --quick")


def test_ctc_guidance_cost_quick_decodes_every_row(tmp_path, capsys):
    import ctc_guidance_cost

    assert ctc_guidance_cost.main(["--quick", "--json-out", str(tmp_path / "c.json")]) == 0
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["rows_decoded_right"] == res["rows"] == 2
    assert res["steps"] > res["tokens_per_row"] and res["candidates_per_row_step"] >= 1
    assert "Reproduce: `python bench/ctc_guidance_cost.py --quick`" in capsys.readouterr().out


def test_ctc_tiktoken_times_both_merges_on_the_same_ids(tmp_path, capsys):
    import ctc_tiktoken

    assert ctc_tiktoken.main(["--lengths", "20", "90", "--texts", "2", "--json-out", str(tmp_path / "t.json")]) == 0
    res = json.loads((tmp_path / "t.json").read_text())
    assert [r["chars"] for r in res["rows"]] == [20, 90] and all(r["heap_ms"] > 0 < r["scan_ms"] for r in res["rows"])
    assert res["command"] == "python bench/ctc_tiktoken.py --lengths 20 90 --texts 2"
    assert "Reproduce: `python bench/ctc_tiktoken.py --lengths 20 90 --texts 2`" in capsys.readouterr().out


def test_hotword_boost_chooses_the_lowest_wer_within_the_leak_and_u_wer_limits(tmp_path, capsys):
    import hotword_boost

    def row(boost, wer, u_wer, leaked):
        return {"boost": boost, "wer": wer, "b_wer": 0.5 - boost / 10, "u_wer": u_wer, "leaked": leaked,
                "distractors": 100}  # fmt: skip

    rows = [row(0, 0.050, 0.030, 0), row(1, 0.036, 0.024, 0), row(2, 0.025, 0.023, 1), row(2.5, 0.027, 0.029, 1)]
    assert hotword_boost.choose(rows) == 2  # not 2.5, the lowest B-WER: more errors over all words
    assert hotword_boost.choose([*rows, row(3, 0.020, 0.030, 2)]) == 2  # 2 leaks of 100: over the limit
    assert hotword_boost.choose([*rows, row(3, 0.020, 0.036, 0)]) == 2  # U-WER 0.6 points above boost 0's
    assert hotword_boost.choose([*rows, row(3, 0.025, 0.023, 0)]) == 2  # a tie goes to the smaller boost
    assert hotword_boost.choose([row(1, 0.1, 0.1, 5)]) is None
    assert hotword_boost.main(["--quick", "--boosts", "2", "--json-out", str(tmp_path / "h.json")]) == 0
    res = json.loads((tmp_path / "h.json").read_text())
    # boost 0 is always decoded: its U-WER is the rule's limit (without it the limit had been skipped)
    assert [r["boost"] for r in res["runs"]] == [0, 2] and res["runs"][0]["distractors"] > 0
    assert "Reproduce: `python bench/hotword_boost.py --quick --boosts 2`" in capsys.readouterr().out


def test_timestamps_quick_measures_single_clips_and_joined_ones(tmp_path, capsys):
    import timestamps

    assert timestamps.main(["--quick", "--json-out", str(tmp_path / "t.json")]) == 0
    res = json.loads((tmp_path / "t.json").read_text())
    single, long = res["single"], res["long"]
    assert (
        single["clips"] == 6 and single["unaligned"] + single["first_start"]["n"] + single["other_word"]["first"] == 6
    )
    assert {"median_s", "mean_abs_s", "p90_abs_s"} <= set(single["first_start"]) or single["first_start"]["n"] == 0
    assert single["wer"] >= 0 and single["insertions"] >= 0
    assert long["utterances"] == 1 and long["clips"] == 6 and long["windows"] >= 1
    assert res["command"] == "python bench/timestamps.py --quick"
    assert "first word start - speech onset" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_timestamps_reads_a_noisy_demo_clips_speech_span_off_its_clean_synthesis(tmp_path):
    """At 10 dB SNR the noise floor is within 30 dB of the peak: the span had ended at the clip's last frame, a
    fraction of a second after the speech, and the README's word-end errors measured that."""
    import timestamps

    from llmasr.demo.synth import synthesize_one

    item = {"key": "c0", "target": "seven three nine", "voice": "en-us+m3", "rate": 170, "pitch": 50,
            "noise_seed": 3}  # fmt: skip
    synthesize_one({**item, "snr_db": 10.0}, str(tmp_path / "noisy.wav"))
    synthesize_one({**item, "snr_db": None}, str(tmp_path / "clean.wav"))
    row = {"key": "c0", "source": "noisy.wav", "target": item["target"], "voice": item["voice"], "rate": 170,
           "pitch": 50, "snr_db": 10.0}  # fmt: skip
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    ((wave, text, span, noise),) = timestamps._read(tmp_path / "m.jsonl", 1)
    clean = timestamps.clean_synthesis(row)
    assert text == item["target"] and len(clean) == len(wave)
    assert span == timestamps.speech_span(clean, timestamps.RATE)
    assert span[1] < len(wave) / timestamps.RATE - 0.1  # the speech ends before the noise does
    # the clip's background, to pad it with: the noisy clip less its clean speech, at the level it had in the clip
    tail = wave[int(span[1] * timestamps.RATE) + 160 :]
    assert noise.std() == pytest.approx(tail.std(), rel=0.25) and noise.std() > 20 * 1e-4
    pad = timestamps.padding(noise, 0.7, np.random.default_rng(0))
    assert pad.shape == (int(0.7 * timestamps.RATE),) and pad.std() == pytest.approx(noise.std(), rel=0.25)


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


def test_vad_speed_quick_times_every_part(tmp_path, capsys):
    import vad_speed

    out = tmp_path / "vad.json"
    assert vad_speed.main(["--quick", "--json-out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["audio_seconds"] == 20.0 and res["segments"] >= 1
    assert set(res["llmasr"]) == {"features", "network", "endpoints", "total"}
    assert "x real time" in capsys.readouterr().out


def test_vad_speed_times_funasr_on_the_one_thread_llmasr_runs_on(tmp_path, monkeypatch):
    """FunASR's AutoModel sets torch's threads to its `ncpu` (default 4) as it builds the model
    (funasr/auto/auto_model.py); a stand-in doing the same records the threads its generate ran on."""
    import importlib.machinery
    import types

    import vad_speed

    seen = []

    class AutoModel:
        def __init__(self, **kwargs):
            torch.set_num_threads(kwargs.get("ncpu", 4))

        def generate(self, input):
            seen.append(torch.get_num_threads())
            return [{"value": []}]

    funasr = types.ModuleType("funasr")
    funasr.AutoModel, funasr.__spec__ = AutoModel, importlib.machinery.ModuleSpec("funasr", None)
    monkeypatch.setitem(sys.modules, "funasr", funasr)
    out = tmp_path / "vad.json"
    assert vad_speed.main(["--quick", "--json-out", str(out)]) == 0
    assert seen == [1, 1] and json.loads(out.read_text())["funasr"]["threads"] == 1


def test_vad_gate_plan_quick_makes_one_plan_every_way(tmp_path, capsys):
    import vad_gate_plan

    out = tmp_path / "gate.json"
    assert vad_gate_plan.main(["--quick", "--workers", "0", "2", "--json-out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["same_plan"] and sorted(res["runs"]) == ["0", "2"] and res["audio_seconds"] == 18.0
    assert all(r["seconds"] > 0 for r in res["runs"].values())
    assert "| loader workers | seconds | x real time |" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_loss_memory_measures_above_what_is_resident_when_the_loss_starts(dtype):
    """bf16 had measured against the process's all-time peak (the head built in fp32 first): 0 bytes, ratio 0. Each
    variant runs in a fresh process, as the script runs it (in this one, memory freed earlier is reused)."""
    # a head large beside the loss (200 MB in fp32): the old baseline, the set-up's peak, hid the loss entirely
    sizes = ["--vocab", "50000", "--hidden", "1024", "--batch", "2", "--audio", "100", "--text", "20", "--cpu"]
    full, labels = (
        json.loads(subprocess.run([sys.executable, str(BENCH / "loss_memory.py"), "--variant", v, "--dtype", dtype,
                                   *sizes], capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        for v in ("full", "labels")
    )  # fmt: skip
    assert full["peak_bytes"] > 2 * 120 * 50000 * 2 and 0 < labels["peak_bytes"] < full["peak_bytes"]
