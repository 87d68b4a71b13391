"""Training throughput and model-FLOPs utilisation (MFU) of a full llmasr step under DeepSpeed.

    python bench/gpu_mfu.py                                   # on a GPU: Paraformer-large + Qwen2.5-1.5B shapes,
                                                              # LoRA, bf16, ZeRO-2, batch 32 x 15 s
    python bench/gpu_mfu.py --batch 64 --seconds 15
    python bench/gpu_mfu.py --quick                           # tiny model on CPU, fp32 (smoke run)

Random weights of the real shapes: a SAN-M encoder of 50 blocks x 512 (trained), the linear adaptor (trained), and a
Qwen2 LLM of 28 layers x 1536 with tied 151,936-row embeddings, frozen, with LoRA r8 on q/k/v/o. One process, one
rank: `deepspeed.initialize` with the zero2 preset resolved by llmasr, llmasr's per-branch AdamW param groups.
Each timed step is forward + engine.backward + engine.step, timed with torch.cuda.synchronize on both sides.

MFU = model FLOPs per step / step time / the device's dense peak (llmasr.train.efficiency's table, as train.log; bf16:
H100 SXM and H200 989 TFLOP/s, H100 PCIe 756, H100 and H200 NVL 835, A100 312; --peak-tflops for others). Model FLOPs
count the matrix products the step needs, 2 per multiply-add, on each utterance's real lengths (padding is not useful
work): forward once; backward twice for the trained parts (input and weight gradients) and once for frozen weights that
gradients pass through (the LLM body and the output head, whose input gradients reach the audio embeddings); attention
score and value products with the causal half only in the LLM. The output head runs on the labelled positions only, as
llmasr computes it.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # sibling helpers when imported from elsewhere

from _common import emit, reproduce_command  # noqa: E402


def device_peak_tflops(name: str, precision: str) -> float | None:
    """The device's dense bf16 peak from llmasr's own table (the one train.log's MFU uses); None for other
    precisions or an unknown device."""
    import torch

    from llmasr.train.efficiency import table_peak

    peak = table_peak(name, torch.bfloat16) if precision == "bf16" else None
    return None if peak is None else peak / 1e12


def step_flops(size, batch) -> dict:
    """Model FLOPs of one training step (see the module docstring), by part."""
    d, units, k = size.enc_dim, size.enc_units, size.downsample
    h, inter, v = size.llm_hidden, size.llm_inter, size.vocab
    kv = size.llm_kv_heads * (h // size.llm_heads)
    frames = [int(x) for x in batch.feat_lens]
    text = [int(x) for x in batch.text_lens]
    labelled = [t - int(s) for t, s in zip(text, batch.target_start)]
    enc_lin = enc_attn = enc_fsmn = adaptor = llm_lin = llm_attn = lora = head = 0.0
    lora_dims = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    for t_frames, t_text, n_lab in zip(frames, text, labelled):
        feat_dim = 560
        for block in range(size.enc_blocks):
            d_in = feat_dim if block == 0 else d
            enc_lin += 2 * t_frames * (d_in * 3 * d + d * d + 2 * d * units)  # qkv, out, ffn
            enc_fsmn += 2 * t_frames * d * 11  # FSMN depthwise conv, kernel 11
            enc_attn += 2 * 2 * t_frames * t_frames * d  # scores and values, full (bidirectional)
        n_audio = max(t_frames // k, 1)
        adaptor += 2 * n_audio * (d * k * size.adaptor_ffn + size.adaptor_ffn * h)
        seq = n_audio + t_text
        per_layer = 2 * seq * (h * h + 2 * h * kv + h * h + 3 * h * inter)
        llm_lin += size.llm_layers * per_layer
        llm_attn += size.llm_layers * 2 * 2 * (seq * (seq + 1) / 2) * h  # causal half
        lora += size.llm_layers * sum(
            2 * seq * size.lora_r * (a + b) for a, b in (lora_dims[m] for m in size.lora_targets)
        )
        head += 2 * n_lab * h * v  # one hidden state per label (the position before it)
    trained = 1 if size.freeze_encoder else 3
    parts = {
        "encoder_linear": enc_lin * trained,
        "encoder_attention": (enc_attn + enc_fsmn) * trained,
        "adaptor": adaptor * 3,
        "llm_linear": llm_lin * 2,  # frozen: forward + input gradient
        "llm_attention": llm_attn * 3,
        "lora": lora * 3,
        "output_head": head * 2,
    }
    parts["total"] = sum(parts.values())
    return parts


def _single_rank_env() -> None:
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def run(args) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    import _speech_model as sm

    from llmasr.train.config import OptimConfig, TrainConfig
    from llmasr.train.param_groups import build_param_groups

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    size = sm.SIZES[args.size]
    model = sm.build_model(size, device=device, dtype=dtype)
    synthetic = sm.make_batch(size, args.batch, args.seconds, device=device, dtype=dtype)
    batch = synthetic.batch
    groups = build_param_groups(model, OptimConfig())
    optimizer = torch.optim.AdamW(groups)
    if args.zero == "none":
        engine = None
    else:
        import deepspeed

        from llmasr.train.ds_config import resolve_ds_config

        _single_rank_env()
        tcfg = TrainConfig(precision=args.precision, grad_accum=1, micro_batch_per_gpu=args.batch)
        ds = resolve_ds_config(f"zero{args.zero}", tcfg, world_size=1)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds, dist_init_required=True
        )

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if engine is None:
            optimizer.zero_grad(set_to_none=True)
            loss = model(batch).loss
            loss.backward()
            optimizer.step()
        else:
            loss = engine(batch).loss
            engine.backward(loss)
            engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(args.steps)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        name = torch.cuda.get_device_name(device)
    else:
        peak = sm._proc_status_kib("VmHWM") * 1024  # whole process, CPU
        sys.path.insert(0, str(HERE))
        from train_step import device_name

        name = device_name(device)
    t = statistics.median(times)
    flops = step_flops(size, batch)
    llm_positions = sum(int(a) + int(b) for a, b in zip(synthetic.ref.audio_lens, batch.text_lens))
    peak_tflops = args.peak_tflops or (device_peak_tflops(name, args.precision) if device.type == "cuda" else None)
    return {
        "benchmark": "gpu_mfu",
        "device": name,
        "device_type": device.type,
        "model": size.describe(),
        "params": sm.param_counts(model),
        "precision": args.precision,
        "zero": args.zero,
        "batch": args.batch,
        "seconds": args.seconds,
        "audio_seconds": synthetic.audio_seconds,
        "llm_positions": llm_positions,
        "step_times": times,
        "step_s": t,
        "tokens_per_s": llm_positions / t,
        "audio_s_per_s": synthetic.audio_seconds / t,
        "utt_per_s": args.batch / t,
        "flops": flops,
        "achieved_tflops": flops["total"] / t / 1e12,
        "peak_tflops": peak_tflops,
        "mfu": (flops["total"] / t / 1e12 / peak_tflops) if peak_tflops else None,
        "peak_memory_bytes": int(peak),
    }


def markdown(res: dict) -> list[str]:
    p = res["params"]
    mfu = "n/a (no peak figure for this device)" if res["mfu"] is None else f"{100 * res['mfu']:.1f}% (goal 40%)"
    parts = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in res["flops"].items() if k != "total")
    return [
        f"Full training step on {res['device']}: {res['model']}; {res['precision']}, "
        f"ZeRO-{res['zero']}, batch {res['batch']} x {res['seconds']:g} s.",
        "Parameters: "
        + ", ".join(f"{k} {v['total'] / 1e6:.1f}M ({v['trainable'] / 1e6:.2f}M trained)" for k, v in p.items())
        + ".",
        "",
        "| step (s) | LLM tokens/s | audio s/s | utterances/s | model TFLOP/step | achieved TFLOP/s | MFU | "
        "peak memory (GiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {res['step_s']:.3f} | {res['tokens_per_s']:,.0f} | {res['audio_s_per_s']:,.1f} | {res['utt_per_s']:.2f} | "
        f"{res['flops']['total'] / 1e12:.3g} | {res['achieved_tflops']:.3g} | {mfu} | "
        f"{res['peak_memory_bytes'] / 2**30:.2f} |",
        "",
        f"TFLOP per step by part: {parts}.",
        "",
        f"Reproduce: `{res['command']}`",
    ]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="paraformer-large+qwen2.5-1.5b")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--zero", choices=["none", "0", "1", "2", "3"], default="2")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak, when it is not in the table")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    p.add_argument("--quick", action="store_true", help="tiny model, fp32, 2 steps (CPU smoke run)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.seconds, args.precision = "tiny", 2, 2.0, "fp32"
        args.warmup, args.steps = 1, 2
    res = run(args)
    res["command"] = reproduce_command("bench/gpu_mfu.py", argv)
    emit(res, markdown(res), args.json_out)
    return 0


if __name__ == "__main__":
    from llmasr.train.process_group import exit_rank

    exit_rank(main())  # no gloo worker thread may abort the process at exit
