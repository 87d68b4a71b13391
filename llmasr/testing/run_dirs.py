"""Run directories with real DeepSpeed checkpoints of a tiny SpeechLLM, written by a 1-rank engine in this process
(export/decode tests), and small wav corpora with FunASR manifests.

The layout follows the trainer's contract: RUN_DIR/recipe.yaml, RUN_DIR/checkpoints/<tag>/ from
engine.save_checkpoint(..., save_latest=False, exclude_frozen_parameters=True) plus <tag>/llmasr_meta.json,
RUN_DIR/checkpoints/latest and RUN_DIR/checkpoints/best.json.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import torch

TARGETS = ["zero one two", "three four", "five six seven eight", "nine"]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def init_single_rank() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)


def model_section(llm_dir, encoder_dir, *, encoder_lora: bool = True, ctc: bool = True) -> dict:
    from llmasr.testing.tiny_recipe import tiny_model_section

    section = tiny_model_section(llm_dir, encoder_dir=encoder_dir, ctc_weight=0.3 if ctc else 0.0, freeze_encoder=True)
    section["encoder"]["conf"] = {"dropout_rate": 0.0, "attention_dropout_rate": 0.0, "positional_dropout_rate": 0.0}
    if encoder_lora:
        section["encoder"]["lora"] = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["linear_q_k_v"]}
    return section


def perturb_trainable(model, seed: int) -> None:
    """Give every trainable tensor (LoRA B starts at zero) distinct non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def make_run(
    run_dir: Path,
    section: dict,
    *,
    stage: int,
    steps: int = 0,
    save_at: list[int] | None = None,
    seed: int = 0,
    lr: float = 1e-2,
) -> Path:
    """Write RUN_DIR with checkpoints after the updates in `save_at` (default: [steps]); returns RUN_DIR.

    With steps=0 the checkpoint holds exactly the perturbed initial weights (the same for every ZeRO stage).
    """
    import deepspeed

    import llmasr
    from llmasr.checkpoint_files import hash_share
    from llmasr.models.fingerprint import base_fingerprint
    from llmasr.recipe import load_recipe, save_recipe
    from llmasr.testing.tiny_recipe import random_batch

    init_single_rank()
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(data={"model": section})
    save_recipe(recipe, run_dir / "recipe.yaml")
    torch.manual_seed(seed)
    model = llmasr.build_model(recipe.model)
    perturb_trainable(model, seed + 100)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    fingerprint = base_fingerprint(recipe.model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    config = {
        "train_batch_size": 1,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }
    (run_dir / "ds_config.json").write_text(json.dumps(config))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    save_at = [steps] if save_at is None else list(save_at)
    best = []

    def save(update: int) -> None:
        tag = f"update_{update:08d}"
        engine.save_checkpoint(
            str(run_dir / "checkpoints"),
            tag=tag,
            client_state={"update": update},
            save_latest=False,
            exclude_frozen_parameters=True,
        )
        loss = 1.0 / (1 + update) if update % 2 == 0 else 2.0 + update  # even updates rank best
        meta = {
            "update": update,
            "epoch": 0,
            "world_size": 1,
            "zero_stage": stage,
            "metrics": {"valid_loss": loss},
            "base_fingerprint": fingerprint,
            "trainable": trainable,
            "files": hash_share(run_dir / "checkpoints" / tag),
        }
        (run_dir / "checkpoints" / tag / "llmasr_meta.json").write_text(json.dumps(meta))
        (run_dir / "checkpoints" / "latest").write_text(tag)
        best.append({"tag": tag, "metric": "valid_loss", "value": loss})
        best.sort(key=lambda b: b["value"])
        (run_dir / "checkpoints" / "best.json").write_text(json.dumps(best))

    if 0 in save_at:
        save(0)
    engine.train()
    for step in range(1, steps + 1):
        batch = random_batch(model, TARGETS, seed=step)
        out = engine(batch)
        engine.backward(out.loss)
        engine.step()
        if step in save_at:
            save(step)
    engine.destroy() if hasattr(engine, "destroy") else None
    return run_dir


def write_wav(path: Path, seconds: float, seed: int, sr: int = 16000) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.02 * rng.standard_normal(n)
    sf.write(str(path), x.astype(np.float32), sr, subtype="PCM_16")
    return path


def write_corpus(directory: Path, texts: list[str], *, name: str = "test", extra_lines: list[str] = ()) -> Path:
    """A FunASR jsonl manifest of short wavs with `texts` as targets (+ raw extra lines, e.g. bad ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "wav").mkdir(exist_ok=True)
    lines = []
    for i, text in enumerate(texts):
        dur = 0.5 + 0.1 * (i % 6)  # distinct: any two exceed the longest (1 s), batch_seconds<1 gives singles
        write_wav(directory / "wav" / f"{name}{i}.wav", dur, seed=i)
        lines.append(json.dumps({"key": f"{name}{i:03d}", "source": f"wav/{name}{i}.wav", "target": text}))
    lines += list(extra_lines)
    path = directory / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
