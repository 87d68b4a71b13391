"""What bench/gpu_suite.py trains on, written to disk in the formats a user's files have: a FunASR Paraformer
directory (config.yaml, model.pt, am.mvn, tokens.json) with the SAN-M encoder of Paraformer-large's shape, a
Hugging Face directory (config.json, safetensors, tokenizer) of Qwen2.5-1.5B's shape, both with random weights,
wav files of synthetic audio with FunASR jsonl manifests, and the shipped recipe
recipes/paraformer-large_qwen2.5-1.5b_lora_zero2.yaml pointed at them.

Random weights and synthetic audio are enough for throughput: the work per step depends on the shapes and lengths,
not on the values. `smoke` writes tiny shapes (a CPU smoke run of the whole suite).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "paraformer-large_qwen2.5-1.5b_lora_zero2.yaml"
SAMPLE_RATE = 16000
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS_PER_SECOND = 2.5  # read speech

# speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404's encoder_conf (config.yaml)
PARAFORMER_LARGE = {
    "output_size": 512,
    "attention_heads": 4,
    "linear_units": 2048,
    "num_blocks": 50,
    "dropout_rate": 0.1,
    "positional_dropout_rate": 0.1,
    "attention_dropout_rate": 0.1,
    "input_layer": "pe",
    "pos_enc_class": "SinusoidalPositionEncoder",
    "normalize_before": True,
    "kernel_size": 11,
    "sanm_shfit": 0,
    "selfattention_layer_type": "sanm",
}
# Qwen2.5-1.5B-Instruct's config.json (the shape; ids come from the small tokenizer written beside it)
QWEN25_15B = {
    "vocab_size": 151_936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": True,
}


@dataclass
class Sizes:
    """How much the suite writes and trains: real shapes on a GPU, tiny ones for the smoke run."""

    smoke: bool
    wav_files: int  # distinct wav files; manifest lines reuse them under their own keys
    train_utts: int
    decode_utts: int
    min_seconds: float
    max_seconds: float

    @classmethod
    def make(cls, smoke: bool) -> Sizes:
        if smoke:
            return cls(True, wav_files=4, train_utts=24, decode_utts=3, min_seconds=0.8, max_seconds=1.6)
        return cls(False, wav_files=48, train_utts=2400, decode_utts=64, min_seconds=6.0, max_seconds=16.0)


def write_encoder_dir(path: Path, smoke: bool) -> Path:
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir

    conf = tiny_sanm_conf() if smoke else PARAFORMER_LARGE
    return write_funasr_dir(path, model="Paraformer", encoder_conf=conf, seed=0)


def write_llm_dir(path: Path, smoke: bool) -> Path:
    """Qwen2.5-1.5B's shape with random weights (bf16 safetensors, made on the GPU when there is one: a CPU takes
    minutes to initialise 1.5B parameters) and a small byte-level BPE tokenizer with the Qwen chat template."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from llmasr.testing.tiny_llm import train_bpe_tokenizer, write_tiny_llm_dir

    texts = [" ".join(WORDS), "transcribe the audio", "you are a helpful assistant"]
    if smoke:
        return write_tiny_llm_dir(path, texts=texts, vocab_size=300)
    tok = train_bpe_tokenizer(texts, 300)
    config = Qwen2Config(
        **QWEN25_15B,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return write_tiny_llm_dir(path, tokenizer=tok, model=model)


def sweep(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A sine sweep between two random pitches with noise: speech-like levels, no silence for VAD-free fbank."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0, f1 = rng.uniform(120, 400), rng.uniform(400, 3000)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    wave = 0.3 * np.sin(phase) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def write_corpus(out: Path, sizes: Sizes, seed: int = 0) -> dict[str, Path]:
    """wav/*.wav and train.jsonl / decode.jsonl; each line a wav file under its own key with a digit-word target
    as long as read speech of that duration. Returns {"train": path, "decode": path}."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(sizes.wav_files):
        seconds = float(rng.uniform(sizes.min_seconds, sizes.max_seconds))
        rel = f"wav/sweep{i:03d}.wav"
        wave = sweep(seconds, rng)
        sf.write(str(out / rel), wave, SAMPLE_RATE, subtype="PCM_16")
        files.append((rel, round(wave.size / SAMPLE_RATE, 4)))
    manifests = {}
    for name, n in (("train", sizes.train_utts), ("decode", sizes.decode_utts)):
        lines = []
        for i in range(n):
            rel, duration = files[int(rng.integers(len(files)))]
            words = rng.choice(WORDS, size=max(1, round(duration * WORDS_PER_SECOND)))
            record = {"key": f"{name}{i:05d}", "source": rel, "target": " ".join(words), "duration": duration}
            lines.append(json.dumps(record))
        manifests[name] = out / f"{name}.jsonl"
        manifests[name].write_text("\n".join(lines) + "\n")
    return manifests


def write_recipe(work: Path, encoder: Path, llm: Path, smoke: bool) -> Path:
    """The shipped Paraformer-large + Qwen2.5-1.5B recipe with its model and data paths pointed at `work`; the
    smoke run also drops the workers and SpecAugment's speed perturbation (fewer moving parts on 2 cores) and puts
    the features where a GPU run's data.features_on auto puts them (in the training step)."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["model"]["encoder"]["path"] = str(encoder)
    recipe["model"]["llm"]["path"] = str(llm)
    data = recipe["data"]
    data["train"], data["valid"] = [str(work / "corpus" / "train.jsonl")], []
    data["num_workers"] = 0 if smoke else 8
    if smoke:
        data["batching"]["max_seconds"] = 4.0
        data["augment"]["speed_perturb"] = {"enable": False}
        data["features_on"] = "device"  # what auto is on a GPU: fbank in the training step, batched
    recipe["train"].update(best_metric="loss", best_k=0, valid_every_updates=0, save_every_updates=0)
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def prepare(work: Path, smoke: bool) -> dict:
    """Everything the runs need under `work`; returns their paths and the shapes written."""
    work.mkdir(parents=True, exist_ok=True)
    sizes = Sizes.make(smoke)
    encoder = write_encoder_dir(work / "paraformer-large", smoke)
    llm = write_llm_dir(work / "qwen2.5-1.5b", smoke)
    manifests = write_corpus(work / "corpus", sizes)
    recipe = write_recipe(work, encoder, llm, smoke)
    return {
        "recipe": str(recipe),
        "encoder_dir": str(encoder),
        "llm_dir": str(llm),
        "train_manifest": str(manifests["train"]),
        "decode_manifest": str(manifests["decode"]),
        "encoder_conf": "tiny SAN-M (smoke)" if smoke else "Paraformer-large SAN-M: 50 blocks x 512, ffn 2048",
        "llm_conf": "tiny Qwen2 (smoke)" if smoke else "Qwen2.5-1.5B: 28 layers x 1536, ffn 8960, 12/2 heads, tied",
        "utterances": {"train": sizes.train_utts, "decode": sizes.decode_utts, "wav_files": sizes.wav_files},
    }
