"""bench/train_step.py --real-depth: the training step at Qwen2.5-1.5B's full depth (28 layers) with the
Paraformer-large encoder (50 blocks), llmasr against FunASR's formulation, and the levers that pay at that depth.

One process builds the model once (random weights, fp32) and runs every variant on it; a variant is a formulation
plus settings that do not change the shared weights:

  reference            FunASR LLM-ASR: per-utterance placeholder copy, full-vocabulary logits (HF labels= loss)
  reference+ckpt       the same with activation checkpointing on the encoder and every LLM layer
  llmasr               SpeechLLM.forward: index_put insertion, output head on the labelled positions only
  llmasr+ckpt          + checkpointing on the encoder and every LLM layer (the shipped recipe's setting)
  llmasr+ctc           CTC compression (adaptor.ctc_compress avg_no_blank, downsample 1, CTC weight 0.3 over an
                       8,404-token vocabulary, Paraformer-large's): the LLM reads one vector per CTC token
  llmasr+ctc+ckpt/2    + checkpointing on the encoder and every second LLM layer (model.llm.checkpoint_every: 2)
  llmasr+ctc+ckpt      + checkpointing on the encoder and every LLM layer

The CTC head is a real Linear (its matmul, loss and gradients are in the step) whose best path is pinned to
TOKENS_PER_SECOND tokens a second, evenly spaced: random weights segment nothing, and a trained head's peaks come at
the rate of the text, which is what sets the compressed length. Each variant's step is forward, backward and an
AdamW step over llmasr's param groups: adaptor, CTC head and LoRA r16 on every LLM projection, the encoder frozen as
FunASR's LLM-ASR recipes keep it (--train-encoder: trained too, as the shipped Paraformer-large recipe does; then
its gradients and AdamW states, 2.2 GB in fp32, dominate the peak at a CPU-sized batch). Its first step runs with a
fresh optimizer and measures the peak resident memory above the start of the step: activations, gradients and the
optimizer states it creates (weights excluded: the same for all). The AdamW steps run at learning rate 0, so every
variant sees the same weights (the losses of one model configuration agree; the CTC variants' include 0.3 x the CTC
loss). Timing runs in a second process with the default allocator: rounds of one step per variant, the variants
alternating, so load from other jobs hits all alike; a variant's time is its fastest step.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _speech_model as sm  # noqa: E402

CTC_VOCAB = 8404  # Paraformer-large's tokens.json
TOKENS_PER_SECOND = sm.TARGET_TOKENS_PER_SECOND
# FunASR's LLM-ASR recipes' split: encoder frozen, adaptor trained, LLM frozen with LoRA (here r16 on every
# projection, as the shipped Paraformer-large recipe); --train-encoder trains the encoder too.
SIZE = replace(
    sm.SIZES["paraformer-large+qwen2.5-1.5b"],
    lora_r=16,
    lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    freeze_encoder=True,
)
TINY = replace(sm.SIZES["tiny"], enc_blocks=2, llm_layers=2)
# name -> (formulation, CTC compression, encoder checkpointing, checkpoint every n-th LLM layer (0: none))
VARIANTS = {
    "reference": ("reference", False, False, 0),
    "reference+ckpt": ("reference", False, True, 1),
    "llmasr": ("llmasr", False, False, 0),
    "llmasr+ckpt": ("llmasr", False, True, 1),
    "llmasr+ctc": ("llmasr", True, False, 0),
    "llmasr+ctc+ckpt/2": ("llmasr", True, True, 2),
    "llmasr+ctc+ckpt": ("llmasr", True, True, 1),
}


class PinnedCTCHead(torch.nn.Module):
    """llmasr's CTCHead (Linear to the vocabulary, log-softmax) plus a fixed offset that puts the best path's tokens
    `tokens_per_second` apart and blanks between them, as a trained head's peaks are."""

    def __init__(self, head, frame_seconds: float, tokens_per_second: float):
        super().__init__()
        self.head, self.frame_seconds, self.rate = head, frame_seconds, tokens_per_second

    def forward(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        logits = self.head.proj(enc).float()
        offset = torch.zeros_like(logits)
        offset[..., 0] = 50.0  # blank (id 0 in the token list)
        for b, n in enumerate(enc_lens.tolist()):
            k = max(1, round(n * self.frame_seconds * self.rate))
            for j, t in enumerate(((np.arange(k) + 0.5) * n / k).astype(int).tolist()):
                offset[b, t, 1 + j % (logits.shape[-1] - 1)] = 100.0
        return (logits + offset).log_softmax(-1)


def build(size, tmp: Path, ctc_vocab: int):
    """(plain SpeechLLM, the CTC-compressing one) sharing encoder and LLM: same weights for every variant."""
    from llmasr.models.adaptors import build_adaptor
    from llmasr.models.config import AdaptorConfig
    from llmasr.models.ctc import CTCHead
    from llmasr.models.ctc_token_list import TokenListCTCTokenizer
    from llmasr.models.speech_llm import SpeechLLM

    plain = sm.build_model(size)
    vocab = tmp / "tokens.txt"
    vocab.write_text("\n".join(["<blank>", *(f"t{i}" for i in range(1, ctc_vocab))]) + "\n")
    tok = TokenListCTCTokenizer(str(vocab))
    torch.manual_seed(1)
    cfg = AdaptorConfig(type="linear", downsample=1, ffn_dim=size.adaptor_ffn, ctc_compress="avg_no_blank")
    adaptor = build_adaptor(cfg, size.enc_dim, size.llm_hidden)
    head = PinnedCTCHead(CTCHead(size.enc_dim, tok.vocab_size), sm.FRAME_SECONDS, TOKENS_PER_SECOND)
    compress = SpeechLLM(plain.encoder, adaptor, plain.llm, plain.prompt, plain.frontend, ctc_head=head,
                         ctc_tokenizer=tok, ctc_weight=0.3, ctc_compress="avg_no_blank")  # fmt: skip
    return plain, compress.train()


def ctc_batch(sb: sm.SyntheticBatch, vocab_size: int) -> sm.SyntheticBatch:
    """`sb` with CTC targets: the tokens the pinned best path emits (so the CTC loss is that of a head that has
    learnt its alignment, not thousands of nats)."""
    lens = [max(1, round(int(f) * sm.FRAME_SECONDS * TOKENS_PER_SECOND)) for f in sb.batch.feat_lens]
    ids = torch.zeros(len(lens), max(lens), dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, :n] = 1 + torch.arange(n) % (vocab_size - 1)
    batch = replace(sb.batch, ctc_ids=ids, ctc_lens=torch.tensor(lens), ctc_labelled=True)
    return replace(sb, batch=batch)


def configure(models, name: str):
    """Set the shared model up for variant `name`; returns (model, batch key, step function)."""
    from llmasr.models.llm_checkpointing import set_activation_checkpointing

    formulation, compress, enc_ckpt, every = VARIANTS[name]
    plain, ctc = models
    plain.encoder.gradient_checkpointing = enc_ckpt
    set_activation_checkpointing(plain.llm.get_base_model(), every)
    model = ctc if compress else plain
    return model, ("ctc" if compress else "plain"), sm.STEPS[formulation]


def fresh_step(model, step, sb, param_groups, optim_cfg) -> tuple[float, float, float]:
    """(wall seconds, loss, CPU seconds of all the process's threads) of forward, backward and the first AdamW step
    of a new optimizer (it creates its states in the step, as a real run's first step does); gradients and states
    are freed before it returns."""
    groups = param_groups(model, optim_cfg)
    for g in groups:
        g["lr"] = 0.0  # the full AdamW step's work, but the weights every variant shares stay as they are
    optimizer = torch.optim.AdamW(groups)
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step(model, sb)
    loss.backward()
    optimizer.step()
    took, cpu, value = time.perf_counter() - t0, time.process_time() - c0, float(loss.detach())
    optimizer.zero_grad(set_to_none=True)
    del optimizer, loss
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return took, value, cpu


def run_variants(*, mode: str, names: list[str], batch: int, seconds: float, repeats: int, tiny: bool,
                 train_encoder: bool) -> dict:  # fmt: skip
    """mode "memory": one step per variant with its peak memory, loss and LLM positions; mode "timing": `repeats`
    rounds of one step per variant."""
    from llmasr.train.config import OptimConfig
    from llmasr.train.param_groups import build_param_groups

    size = replace(TINY if tiny else SIZE, freeze_encoder=not train_encoder)
    with tempfile.TemporaryDirectory() as tmp:
        models = build(size, Path(tmp), 50 if tiny else CTC_VOCAB)  # the CTC vocabulary file is read here
    plain_sb = sm.make_batch(size, batch, seconds)
    batches = {"plain": plain_sb, "ctc": ctc_batch(plain_sb, models[1].ctc_tokenizer.vocab_size)}
    rows = {name: {"times": []} for name in names}
    for name in names if mode == "memory" else []:  # the first step with a fresh optimizer, alone in its measurement
        model, key, step = configure(models, name)
        with LLMPositions(model) as positions, sm.PeakMemory(torch.device("cpu")) as mem:
            dt, loss, _ = fresh_step(model, step, batches[key], build_param_groups, OptimConfig())
        rows[name] = {"first_step_s": dt, "loss": loss, "peak_bytes": int(mem.peak), "llm_positions": positions.count}
        print(json.dumps({"variant": name, **rows[name]}), file=sys.stderr, flush=True)
    for _ in range(repeats if mode == "timing" else 0):  # the variants alternating
        for name in names:
            model, key, step = configure(models, name)
            dt, _, cpu = fresh_step(model, step, batches[key], build_param_groups, OptimConfig())
            rows[name]["times"].append(dt)
            rows[name].setdefault("cpu_times", []).append(cpu)
            print(json.dumps({"variant": name, "time": dt, "cpu": cpu}), file=sys.stderr, flush=True)
    params = sm.param_counts(models[0])
    return {"rows": rows, "params": params, "audio_seconds": plain_sb.audio_seconds, "size": sm.size_dict(size)}


class LLMPositions:
    """Counts the real (unpadded) positions the LLM's decoder stack reads while active: audio vectors + text."""

    def __init__(self, model):
        from llmasr.models.llm import causal_lm_parts

        self.decoder = causal_lm_parts(model.llm)[1]
        self.count = 0

    def _hook(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if torch.is_tensor(mask) and not self.count:  # the first call: the recomputed forward repeats it
            self.count = int(mask.sum())

    def __enter__(self):
        self.handle = self.decoder.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def summarise(res: dict) -> dict:
    """Per variant: fastest step, memory, positions, and the ratios against FunASR's formulation."""
    rows = res["rows"]
    for r in rows.values():
        r["step_s"] = min(r["times"])
        r["cpu_s"] = min(r["cpu_times"]) if r.get("cpu_times") else None
    ref = rows.get("reference")
    for r in rows.values():
        r["speedup"] = ref["step_s"] / r["step_s"] if ref else None
        r["cpu_speedup"] = ref["cpu_s"] / r["cpu_s"] if ref and ref["cpu_s"] and r["cpu_s"] else None
        r["memory_ratio"] = r["peak_bytes"] / ref["peak_bytes"] if ref else None
    return res


def markdown(res: dict) -> list[str]:
    gib = 2**30
    p = res["params"]
    lines = [
        f"Training step at full depth (forward, backward, AdamW step), {res['model']}; {res['dtype']} on "
        f"{res['device']}. Batch {res['batch']} x {res['seconds']:g} s ({res['audio_seconds']:.0f} s of audio).",
        "Parameters: "
        + ", ".join(f"{k} {v['total'] / 1e6:.1f}M ({v['trainable'] / 1e6:.2f}M trained)" for k, v in p.items())
        + ".",  # fmt: skip
        "",
        "| variant | step (s) | vs FunASR time | CPU s (all threads) | vs FunASR CPU time | peak memory above "
        "weights (GiB) | vs FunASR memory | LLM positions | loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["rows"].items():
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        memory = "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.3f}"
        cpu = "-" if r["cpu_s"] is None else f"{r['cpu_s']:.1f}"
        cpu_x = "-" if r["cpu_speedup"] is None else f"{r['cpu_speedup']:.2f}x"
        lines.append(
            f"| {name} | {r['step_s']:.1f} | {speedup} | {cpu} | {cpu_x} | {r['peak_bytes'] / gib:.2f} | {memory} | "
            f"{r['llm_positions']} | {r['loss']:.3f} |"
        )
    lines += ["", "Goal at 28 layers: >= 1.5x FunASR's time and <= 0.6x its memory (optimizer included).", ""]
    lines += [f"Reproduce: `{res['command']}`"]
    return lines


def _worker(spec: dict, env: dict) -> dict:
    cmd = [sys.executable, str(HERE / "_real_depth.py"), json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # stderr: progress, one line a step
    if proc.returncode != 0:
        raise RuntimeError(f"real-depth {spec['mode']} worker failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reused_memory(path: str, spec: dict) -> dict:
    prev = json.loads(Path(path).read_text())
    for key in ("batch", "seconds"):
        if prev.get(key) != spec[key]:
            raise ValueError(f"--reuse-memory {path}: {key} {prev.get(key)} there, {spec[key]} here")
    missing = [n for n in spec["names"] if n not in prev["rows"]]
    if missing or prev["size"]["freeze_encoder"] == spec["train_encoder"]:
        raise ValueError(f"--reuse-memory {path}: measured another configuration (missing variants: {missing})")
    keep = ("first_step_s", "loss", "peak_bytes", "llm_positions")
    rows = {n: {k: prev["rows"][n][k] for k in keep} for n in spec["names"]}
    return {**{k: prev[k] for k in ("params", "audio_seconds", "size")}, "rows": rows, "memory_from": path}


def run(args, argv: list[str]) -> dict:
    """Memory in one worker process, where glibc returns every freed block of 64 KiB or more to the system at once
    (each variant's resident peak then starts from what the previous one left); timing in another with the default
    allocator (returning blocks at once makes every step pay page faults for its temporaries). Then summarise."""
    from _common import reproduce_command

    spec = {"names": args.variants, "batch": args.batch, "seconds": args.seconds, "repeats": args.repeats,
            "tiny": args.quick, "train_encoder": args.train_encoder}  # fmt: skip
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    t0 = time.perf_counter()
    if args.reuse_memory:  # an earlier run's memory figures (the same variants, shapes and batch): timing only
        res = reused_memory(args.reuse_memory, spec)
    else:
        res = _worker({**spec, "mode": "memory"}, {**env, "MALLOC_MMAP_THRESHOLD_": "65536"})
    timing = _worker({**spec, "mode": "timing"}, env)
    for name, row in res["rows"].items():
        row["times"], row["cpu_times"] = timing["rows"][name]["times"], timing["rows"][name].get("cpu_times", [])
    from train_step import device_name

    res.update(
        benchmark="train_step_real_depth", command=reproduce_command("bench/train_step.py", argv),
        model=replace(TINY if args.quick else SIZE, freeze_encoder=not args.train_encoder).describe(),
        dtype="fp32", device=_threads_said(device_name(torch.device("cpu")), args.threads),
        batch=args.batch, seconds=args.seconds, wall_s=time.perf_counter() - t0,
    )  # fmt: skip
    return summarise(res)


def _threads_said(device: str, threads: int | None) -> str:
    """The device line with the torch threads the timed workers ran (--threads sets theirs, not this process's)."""
    if not threads:
        return device
    return re.sub(r"torch threads \d+", f"torch threads {threads}", device) if "torch threads" in device else (
        f"{device}, torch threads {threads}")  # fmt: skip


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    out = run_variants(**spec)
    print(json.dumps(out))
