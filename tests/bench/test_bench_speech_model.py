"""The benchmarks' speech model: the reference formulation computes llmasr's objective, the FLOP count matches torch's
counter, the peak-memory probes and the MFU peak table hold. No assertion is about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_device_features_step_need_is_gpu_mfus_step_at_40_percent_of_an_h100():
    """456 s of audio in a 32 x 15 s step of 42.1 TFLOP, 107 ms at 40% of 989.4 TFLOP/s (the README's arithmetic)."""
    import device_features
    import gpu_mfu

    size = sm.SIZES["paraformer-large+qwen2.5-1.5b"]
    sb = sm.make_batch(size, 32, 15.0)
    step_s = gpu_mfu.step_flops(size, sb.batch)["total"] / (0.4 * 989.4e12)
    assert sb.audio_seconds == pytest.approx(456.0) and step_s == pytest.approx(0.1065, abs=5e-4)
    assert device_features.step_audio_per_s() == pytest.approx(456.0 / step_s)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_loss_memory_measures_above_what_is_resident_when_the_loss_starts(dtype):
    """bf16 had measured against the process's all-time peak (the head built in fp32 first): 0 bytes, ratio 0. Each
    variant runs in a fresh process, as the script runs it (in this one, memory freed earlier is reused)."""
    # a head large beside the loss (51 MB in fp32, the loss's logits 4 MB): the old baseline, the set-up's peak, hid
    # the loss entirely. Few positions keep bf16's slow CPU matrix products short; the head's size is what matters.
    vocab, positions = 50000, 1 * (30 + 10)
    sizes = ["--vocab", str(vocab), "--hidden", "256", "--batch", "1", "--audio", "30", "--text", "10", "--cpu"]
    full, labels = (
        json.loads(subprocess.run([sys.executable, str(BENCH / "loss_memory.py"), "--variant", v, "--dtype", dtype,
                                   *sizes], capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        for v in ("full", "labels")
    )  # fmt: skip
    assert full["peak_bytes"] > positions * vocab * 2 and 0 < labels["peak_bytes"] < full["peak_bytes"]


def test_loss_memory_report_names_the_commit_it_measured():
    """The report (both variants, each in its own process, and their ratio) ends with the commit, as every bench
    script's does: the README quotes its numbers."""
    sizes = ["--vocab", "500", "--hidden", "32", "--batch", "1", "--audio", "10", "--text", "4", "--cpu"]
    out = subprocess.run([sys.executable, str(BENCH / "loss_memory.py"), *sizes], capture_output=True, text=True,
                         check=True).stdout.rstrip().splitlines()  # fmt: skip
    assert out[-2].startswith("ratio labels-only / full: ") and out[-1].startswith("Commit: ")
