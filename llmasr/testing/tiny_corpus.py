"""A tiny speech corpus of real wav files plus FunASR jsonl manifests, and a whole recipe around it.

Each utterance speaks 1-4 digit words. By default every word is a tone burst with its own pitch (plus a little
noise), so the audio carries the words and a tiny model can learn something; with `espeak=True` and espeak-ng on
the PATH the words are synthesized instead. Nothing here needs the network, and tests never need espeak-ng.

    manifest = write_tiny_corpus(tmp / "corpus", n=24)           # tmp/corpus/{wav/*.wav, data.jsonl}
    recipe = tiny_recipe_dict(llm_dir, train=[manifest], valid=[manifest], output_dir=tmp / "run")
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from llmasr.testing.tiny_recipe import tiny_model_section

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16000


def syllable_bursts(
    seconds: float, gaps=(), *, sample_rate: int = 16000, seed: int = 0, level: float = 0.3, floor: float = 0.003
) -> np.ndarray:
    """Speech-like audio for cut-point tests: noise bursts of syllable rhythm (loud 80-200 ms, dips of 40-80 ms, never
    a pause of 0.2 s) over a noise floor, with true silences (the floor alone) at `gaps` ((start, end) seconds)."""
    rng = np.random.default_rng(seed)
    wave = np.zeros(int(seconds * sample_rate), dtype=np.float32)
    t = 0
    while t < wave.size:
        n = int(rng.uniform(0.08, 0.2) * sample_rate)
        wave[t : t + n] = level * rng.standard_normal(min(n, wave.size - t))
        t += n + int(rng.uniform(0.04, 0.08) * sample_rate)
    for a, b in gaps:
        wave[int(a * sample_rate) : int(b * sample_rate)] = 0.0
    return wave + (floor * rng.standard_normal(wave.size)).astype(np.float32)


def _tone_words(words: list[str], rng: np.random.Generator, sr: int) -> np.ndarray:
    pieces = [np.zeros(int(0.05 * sr), dtype=np.float32)]
    for w in words:
        f0 = 200.0 + 60.0 * WORDS.index(w)
        n = int(rng.uniform(0.12, 0.2) * sr)
        t = np.arange(n) / sr
        env = np.sin(np.pi * np.arange(n) / n) ** 2  # no clicks at the edges
        wave = env * (0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 2 * f0 * t))
        pieces += [wave.astype(np.float32), np.zeros(int(rng.uniform(0.03, 0.08) * sr), dtype=np.float32)]
    audio = np.concatenate(pieces)
    return (audio + 0.01 * rng.standard_normal(audio.size)).astype(np.float32)


def _espeak_words(words: list[str], path: Path, seed: int) -> bool:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return False
    speed = 150 + (seed % 5) * 15
    proc = subprocess.run([exe, "-s", str(speed), "-w", str(path), " ".join(words)], capture_output=True)
    return proc.returncode == 0 and path.is_file()


def write_tiny_corpus(
    out_dir: str | Path,
    n: int = 24,
    *,
    seed: int = 0,
    min_words: int = 1,
    max_words: int = 4,
    espeak: bool = False,
    name: str = "data.jsonl",
    with_duration: bool = True,
) -> Path:
    """Write `n` wav files under out_dir/wav and a FunASR jsonl manifest (relative `source` paths); returns it."""
    import soundfile as sf

    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1)))]
        key = f"utt{seed:02d}_{i:04d}"
        rel = Path("wav") / f"{key}.wav"
        path = out_dir / rel
        if not (espeak and _espeak_words(words, path, seed + i)):
            sf.write(str(path), _tone_words(words, rng, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
        record = {"key": key, "source": str(rel), "target": " ".join(words)}
        if with_duration:
            record["duration"] = round(sf.info(str(path)).duration, 4)
        lines.append(json.dumps(record))
    manifest = out_dir / name
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def tiny_recipe_dict(
    llm_dir,
    *,
    train: list,
    valid: list | None = None,
    output_dir,
    encoder_dir=None,
    ctc_weight: float = 0.0,
    epochs: int = 1,
    grad_accum: int = 2,
    max_seconds: float = 3.0,
    precision: str = "fp32",
    dropout: float | None = 0.0,
    **train_overrides,
) -> dict:
    """A complete recipe (as a dict) training the tiny model on tiny manifests, sized for seconds-long CPU runs."""
    model = tiny_model_section(llm_dir, encoder_dir=encoder_dir, ctc_weight=ctc_weight)
    if dropout is not None:
        conf = model["encoder"].setdefault("conf", {})
        conf.update(dropout_rate=dropout, positional_dropout_rate=dropout, attention_dropout_rate=dropout)
    train_cfg = {
        "epochs": epochs,
        "grad_accum": grad_accum,
        "precision": precision,
        "output_dir": str(output_dir),
        "log_every": 1,
        "seed": 0,
        **train_overrides,
    }
    return {
        "model": model,
        "data": {
            "train": [str(p) for p in train],
            "valid": [str(p) for p in (valid or [])],
            "batching": {"max_seconds": max_seconds, "num_buckets": 2, "shuffle_buffer": 100},
            "num_workers": 0,
            "pin_memory": False,
            "valid_max_utts": 8,
        },
        "optim": {"branches": {"llm": {"lr": 1e-3}, "adaptor": {"lr": 1e-3}, "encoder": {"lr": 1e-3}}},
        "train": train_cfg,
        "decode": {"max_new_tokens": 6},
    }


def recipe_with_targets(tmp_path, llm_dir, planted: dict[str, dict[int, str]]) -> tuple[Path, list[Path]]:
    """recipe.yaml under `tmp_path` training `llm_dir` on a tiny corpus ("train", 20 lines) and validating on another
    ("valid", 6), with the transcripts `planted` names ({"train": {line index: text}, "valid": {...}}) in place of
    theirs; returns the recipe's path and the two manifests."""
    import yaml

    manifests = []
    for name in ("train", "valid"):
        manifest = write_tiny_corpus(tmp_path / name, n=20 if name == "train" else 6, seed=len(name))
        recs = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
        for i, text in planted.get(name, {}).items():
            recs[i]["target"] = text
        manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        manifests.append(manifest)
    recipe = tiny_recipe_dict(
        llm_dir, train=[str(manifests[0])], valid=[str(manifests[1])], output_dir=tmp_path / "run"
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path, manifests
