"""Where a run's time goes: the device's peak FLOP/s, the time spent waiting for the loader, and the per-interval
efficiency figures of train.log (tokens/s, audio s/s, MFU, padding, data wait).

MFU is the time the counted model FLOPs (llmasr.train.flops) would take at the ranks' summed peak over the time they
took: each matmul's FLOPs at the peak of the dtype it ran in (train.precision fp32 runs a model.llm.dtype bfloat16
LLM in bf16 beside an fp32 encoder). Dense tensor-core peaks, without sparsity; fp32 is the plain fp32 peak (torch
runs fp32 matmuls without TF32 unless told to). A CPU, or a GPU missing from the table, has no MFU ("n/a") unless
`train.peak_tflops` gives a peak (for every dtype).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

import torch

from llmasr.train.flops import StepCount

log = logging.getLogger("llmasr.train")

# Dense TFLOP/s per device: (name fragment as torch.cuda.get_device_name reports it, bf16, fp16, fp32). A fragment
# matches whole words of the name only ("A100" is not in "RTX A1000", nor "H200" in "GH200"); the first fragment
# found wins, so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float | None, float, float], ...] = (
    ("GB200", 2500.0, 2500.0, 90.0),
    ("B200", 2250.0, 2250.0, 80.0),
    ("GH200", 989.4, 989.4, 66.9),
    ("H200 NVL", 835.0, 835.0, 60.0),
    ("H200", 989.4, 989.4, 66.9),
    ("H100 PCIe", 756.0, 756.0, 51.2),
    ("H100 NVL", 835.0, 835.0, 60.0),
    ("H100", 989.4, 989.4, 66.9),
    ("H800", 989.4, 989.4, 66.9),
    ("H20", 148.0, 148.0, 44.0),
    ("A100", 312.0, 312.0, 19.5),
    ("A800", 312.0, 312.0, 19.5),
    ("L40S", 362.1, 362.1, 91.6),
    ("L40", 181.0, 181.0, 90.5),
    ("L4", 121.0, 121.0, 30.3),
    ("A10G", 70.0, 70.0, 31.2),
    ("A10", 125.0, 125.0, 31.2),
    ("RTX 4090", 165.2, 165.2, 82.6),
    ("RTX 3090", 71.0, 71.0, 35.6),
    ("V100", None, 125.0, 15.7),
)
DTYPE_COLUMN = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}


def table_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of a device by its name for `dtype`, or None when the table does not know it."""
    for row in PEAK_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(row[0])}(?![A-Za-z0-9])", device_name):
            tflops = row[DTYPE_COLUMN[dtype]]
            return None if tflops is None else tflops * 1e12
    return None


def run_peaks(device: torch.device, dtypes, peak_tflops: float | None, world: int) -> tuple[dict, list[str]]:
    """({dtype: the ranks' summed peak FLOP/s, None when unknown} for each of `dtypes`, the lines saying where each
    comes from)."""
    peaks, lines = {}, []
    for dtype in dict.fromkeys(dtypes):
        peak, line = device_peak(device, dtype, peak_tflops)
        peaks[dtype] = peak * world if peak else None
        lines.append(line)
    return peaks, lines


def mfu(count: StepCount, seconds: float, peaks: dict | float | None) -> float | str:
    """The share of `seconds` that the FLOPs of `count` would take at `peaks` ({dtype: FLOP/s}, or one figure for
    every dtype); "n/a" when no peak is known, or none for a dtype that ran."""
    half = {torch.bfloat16: count.bf16_flops, torch.float16: count.fp16_flops}
    rest = count.flops - sum(half.values())  # float32's; of an all-half count only the sum's rounding is left
    parts = {**half, torch.float32: rest if rest > 1e-9 * count.flops else 0.0}
    known = any(peaks.values()) if isinstance(peaks, dict) else bool(peaks)
    ideal = 0.0
    for dtype, flops in parts.items():
        peak = peaks.get(dtype) if isinstance(peaks, dict) else peaks
        if flops > 0:
            if not peak:
                return "n/a"
            ideal += flops / peak
    return ideal / seconds if known else "n/a"


def device_peak(device: torch.device, dtype: torch.dtype, peak_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s of one rank's device, a line saying where it comes from); the peak is None when unknown."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    dtype_name = str(dtype).removeprefix("torch.")
    if peak_tflops is not None:
        return peak_tflops * 1e12, f"MFU against train.peak_tflops={peak_tflops:g} per rank ({name}, {dtype_name})"
    peak = table_peak(name, dtype) if device.type == "cuda" else None
    if peak is None:
        return None, f"MFU n/a: no peak FLOP/s known for {name} in {dtype_name} (set train.peak_tflops to give one)"
    return peak, f"MFU against the {name} {dtype_name} peak of {peak / 1e12:g} TFLOP/s per rank"


class WaitClock:
    """Time spent inside the loader's next(): `wrap(loader)` yields its items, `take()` returns and resets the
    seconds waited since the last take."""

    def __init__(self):
        self.waited = 0.0

    def wrap(self, iterable):
        it = iter(iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.waited += time.perf_counter() - start
                return
            self.waited += time.perf_counter() - start
            yield item

    def take(self) -> float:
        out, self.waited = self.waited, 0.0
        return out


@dataclass
class Interval:
    """Sums since the last logged line; `figures()` turns them into the logged rates and shares over the training
    time in it (validation and checkpoint saving set aside)."""

    start: float = field(default_factory=time.monotonic)
    count: StepCount = field(default_factory=StepCount)
    utts: float = 0.0
    audio_seconds: float = 0.0
    wait_s: float = 0.0
    aside_s: float = 0.0  # validation and checkpoint saving: not training time
    hotword_lists: int = 0  # utterances trained with a biasing list
    hotwords_dropped: int = 0  # phrases the prompt's token cap dropped from them
    ctc_unaligned: int = 0  # utterances whose CTC labels outnumber their encoder frames (their CTC loss is 0)

    def add(self, stats: dict, wait_s: float) -> None:
        if "count" in stats:
            self.count.add(stats["count"])
        self.utts += stats.get("n_utts", 0)
        self.audio_seconds += stats.get("audio_seconds", 0.0)
        self.hotword_lists += stats.get("hotword_lists", 0)
        self.hotwords_dropped += stats.get("hotwords_dropped", 0)
        self.ctc_unaligned += stats.get("ctc_unaligned", 0)
        self.wait_s += wait_s

    def figures(self, peak_total: dict | float | None) -> dict:
        """utt/s, audio_s/s, tok/s (LLM positions, audio + text), mfu ("n/a" without a peak), padding shares of
        audio frames and LLM positions, and the share of the interval spent waiting for data (each update's wait on
        its slowest rank's loader); with biasing lists in the interval, how many utterances had one (hw_lists) and the
        phrases the token cap dropped (hw_dropped); with utterances the CTC head had no path for, how many
        (ctc_unaligned)."""
        dt = max(time.monotonic() - self.start - self.aside_s, 1e-9)
        c = self.count
        hot = {"hw_lists": self.hotword_lists, "hw_dropped": self.hotwords_dropped} if self.hotword_lists else {}
        if self.ctc_unaligned:
            hot["ctc_unaligned"] = self.ctc_unaligned
        return {
            "utt/s": self.utts / dt,
            "audio_s/s": self.audio_seconds / dt,
            "tok/s": c.llm_tokens / dt,
            "mfu": mfu(c, dt, peak_total),
            "tflops": c.flops / dt / 1e12,
            "pad_audio": 1.0 - c.audio_frames / c.audio_slots if c.audio_slots else 0.0,
            "pad_llm": 1.0 - c.llm_tokens / c.llm_slots if c.llm_slots else 0.0,
            "data_wait": min(self.wait_s / dt, 1.0),
            **hot,
        }
