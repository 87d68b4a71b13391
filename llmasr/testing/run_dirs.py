"""Run directories written by the real trainer (one rank, in this process) on a tiny wav corpus, and small wav
corpora with FunASR manifests, for the export and decode tests.

    corpus = write_tiny_corpus(tmp / "corpus", n=12)                       # llmasr.testing.tiny_corpus
    run = train_run(tmp / "run", model_section(llm_dir, encoder_dir), corpus, preset="zero2", updates=2)
    run.run_dir           RUN_DIR as `llmasr train` leaves it (recipe.yaml, checkpoints/, latest, best.json)
    run.reference_model() the trainer's own model after its last update, rebuilt without the checkpoint reader
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmasr.models.builder import build_model
from llmasr.recipe import Recipe, load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict
from llmasr.testing.tiny_recipe import tiny_model_section
from llmasr.train.preemption import Preemption
from llmasr.train.trainer import Run

TARGETS = ["zero one two", "three four", "five six seven eight", "nine"]
# the decode tests' corpus: TARGETS and two more
TEXTS = ["zero one two", "three four", "five six seven eight", "nine", "hello world", "the quick brown fox"]


def model_section(llm_dir, encoder_dir, *, encoder_lora: bool = True, ctc: bool = True) -> dict:
    """Frozen SAN-M from `encoder_dir` (LoRA on it unless `encoder_lora` is False), adaptor, tiny LLM with LoRA,
    a CTC head unless `ctc` is False; no dropout, so a rebuilt model computes exactly what the trainer's did."""
    section = tiny_model_section(llm_dir, encoder_dir=encoder_dir, ctc_weight=0.3 if ctc else 0.0, freeze_encoder=True)
    section["encoder"]["conf"] = {"dropout_rate": 0.0, "attention_dropout_rate": 0.0, "positional_dropout_rate": 0.0}
    if encoder_lora:
        section["encoder"]["lora"] = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["linear_q_k_v"]}
    return section


@dataclass
class TrainedRun:
    run_dir: Path
    recipe: Recipe
    history: list[dict]  # what train() returns per update
    trained: dict[str, torch.Tensor]  # the trainer's model after its last update: trainable parameters and buffers
    # The fp32 master weights a ZeRO-0 bf16/fp16 optimizer keeps apart from the model's low-precision copies, by
    # parameter name (empty when it keeps none: fp32, or ZeRO-1+, whose partitions `trained` does not need).
    masters: dict[str, torch.Tensor] = field(default_factory=dict)

    def reference_model(self):
        """The model the trainer ended with: built from the run's recipe (the same base weights), its trained
        tensors copied in by name (no checkpoint file involved), float32, eval mode."""
        model = build_model(self.recipe.model)
        targets = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        missing = sorted(set(self.trained) - set(targets))
        if missing:
            raise KeyError(f"the trainer's tensors {missing[:5]} are not in the rebuilt model")
        with torch.no_grad():
            for name, value in self.trained.items():
                targets[name].copy_(value)
        return model.eval()


def _trained_tensors(run: Run) -> dict[str, torch.Tensor]:
    model = run.engine.module
    with run.engine.gathered_params():  # ZeRO-3: every parameter whole while it is read
        out = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}
        out.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return out


def _masters(run: Run) -> dict[str, torch.Tensor]:
    optimizer = run.engine.optimizer
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if not (isinstance(low, list) and isinstance(high, list) and all(isinstance(g, list) for g in low + high)):
        return {}
    names = {id(p): n for n, p in run.engine.module.named_parameters()}
    return {names[id(p)]: m.detach().clone() for lg, hg in zip(low, high) for p, m in zip(lg, hg)}


def train_run(
    run_dir, model: dict, corpus: Path, *, preset: str = "zero0", updates: int = 1, valid: Path | None = None,
    data: dict | None = None, **train,
) -> TrainedRun:  # fmt: skip
    """Train `model` (a recipe's model section) on the manifest `corpus` for `updates` updates with the real
    training loop (`llmasr train`'s, one rank in this process, fp32, no dropout) and return the run. `train`:
    recipe train.* keys (save_every_updates, keep_last, ...); `valid`: a dev manifest (validation metrics, best.json);
    `data`: recipe data.* keys set over the defaults (features_on, augment, ...).
    """
    recipe_dict = tiny_recipe_dict(
        model["llm"]["path"], train=[corpus], valid=[valid] if valid else None, output_dir=run_dir, dropout=None,
        grad_accum=1, max_updates=updates, **train,
    )  # fmt: skip
    recipe_dict["model"] = model
    recipe_dict["data"]["valid_max_utts"] = 2
    recipe_dict["data"]["batching"]["max_seconds"] = 2.0  # a few utterances a batch: many updates from a small corpus
    recipe_dict["data"].update(data or {})
    recipe = load_recipe(data=recipe_dict)
    with Preemption(0) as preemption:
        run = Run(recipe, preset)
        try:
            result = run.fit(None, preemption)
            trained, masters = _trained_tensors(run), _masters(run)
        finally:
            run.close()
    if len(result["history"]) != updates:
        raise RuntimeError(f"{run_dir}: trained {len(result['history'])} updates, wanted {updates}; a bigger corpus?")
    if hasattr(run.engine.engine, "destroy"):
        run.engine.engine.destroy()
    del run
    gc.collect()  # ZeRO-3's HfDeepSpeedConfig must be gone before the next model is built
    return TrainedRun(Path(run_dir), recipe, result["history"], trained, masters)


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
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_joined_recording(directory: Path, texts: list[str], *, name: str = "test", gap_s: float = 0.5):
    """One recording of write_corpus's clips back to back, `gap_s` of silence after each (long audio, decoded in
    windows), and its manifest `long.jsonl` (key "long", the texts joined); returns (manifest, seconds)."""
    import soundfile as sf

    waves = [sf.read(directory / "wav" / f"{name}{i}.wav", dtype="float32")[0] for i in range(len(texts))]
    gap = np.zeros(int(round(gap_s * 16000)), dtype=np.float32)
    joined = np.concatenate([w for wave in waves for w in (wave, gap)])
    sf.write(directory / "long.wav", joined, 16000, subtype="FLOAT")
    path = directory / "long.jsonl"
    path.write_text(
        json.dumps({"key": "long", "source": "long.wav", "target": " ".join(texts)}) + "\n", encoding="utf-8"
    )
    return path, len(joined) / 16000


def read_lines(path):
    """The lines of a text file (hyp.txt, ref.txt, ...) without their newlines."""
    return [line.rstrip("\n") for line in open(path, encoding="utf-8")]


def file_arrives_after(monkeypatch, module, name: str, path: Path, text: str = "mine") -> None:
    """`module.name` patched to write `path` once it has run: a file reaching an output folder while an export or a
    conversion writes the model."""
    original = getattr(module, name)

    def then_the_file(*args, **kwargs):
        result = original(*args, **kwargs)
        Path(path).write_text(text, encoding="utf-8")
        return result

    monkeypatch.setattr(module, name, then_the_file)


def older_position(**changes) -> dict:
    """A sampler position saved mid-epoch as an llmasr before `batches_sha1` and `unusable` wrote it (epoch 2, batch
    8 of 16 of a 300-line manifest, rank 0 of 2), with `changes`."""
    position = {"epoch": 2, "batches_yielded": 8, "seed": 0, "world_size": 2, "rank": 0, "num_items": 300,
                "num_batches": 16, "history": [], "plan": 2}  # fmt: skip
    return {**position, **changes}
