"""Shared by the training benchmarks: a SpeechLLM of a given size with random weights, synthetic batches made by
llmasr's collator, the FunASR-style reference step, and peak-memory probes (CPU and CUDA).

Nothing here reads a checkpoint: the benchmarks compare formulations and measure throughput, for which random
weights of the real shapes are enough.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from llmasr.data.batch import Batch
from llmasr.data.collate import Collator

# Paraformer LFR frames are 60 ms; ChatML prompt around the audio, roughly as Qwen's tokenizer renders it.
FRAME_SECONDS = 0.06
PROMPT_BEFORE_AUDIO = 20  # <|im_start|>system ... <|im_end|>\n<|im_start|>user\n
PROMPT_AFTER_AUDIO = 12  # "Transcribe the audio.<|im_end|>\n<|im_start|>assistant\n"
TARGET_TOKENS_PER_SECOND = 3.0  # English read speech in Qwen BPE tokens


@dataclass
class ModelSize:
    enc_blocks: int
    enc_dim: int = 512
    enc_heads: int = 4
    enc_units: int = 2048
    downsample: int = 2
    adaptor_ffn: int = 2048
    llm_layers: int = 2
    llm_hidden: int = 1536
    llm_heads: int = 12
    llm_kv_heads: int = 2
    llm_inter: int = 8960
    vocab: int = 151_936
    tie_embeddings: bool = False
    lora_r: int = 8
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    freeze_encoder: bool = False

    def describe(self) -> str:
        return (
            f"SAN-M encoder {self.enc_blocks} x {self.enc_dim} (ffn {self.enc_units}), "
            f"linear adaptor x{self.downsample}"
            f", Qwen2 LLM {self.llm_layers} x {self.llm_hidden} (ffn {self.llm_inter}, {self.llm_heads}/"
            f"{self.llm_kv_heads} heads), vocab {self.vocab:,}, LoRA r{self.lora_r} on {','.join(self.lora_targets)}"
            f", encoder {'frozen' if self.freeze_encoder else 'trained'}"
        )


SIZES = {
    # CPU comparison: Paraformer-large width with fewer blocks, Qwen2.5-1.5B width with few layers, real vocab.
    "cpu": ModelSize(enc_blocks=8, llm_layers=2),
    # Smoke tests.
    "tiny": ModelSize(
        enc_blocks=1,
        enc_dim=32,
        enc_units=64,
        adaptor_ffn=64,
        llm_layers=1,
        llm_hidden=64,
        llm_heads=4,
        llm_kv_heads=2,
        llm_inter=128,
        vocab=1000,
    ),
    # GPU MFU target: Paraformer-large encoder (50 blocks) + Qwen2.5-1.5B (28 layers, tied embeddings).
    "paraformer-large+qwen2.5-1.5b": ModelSize(enc_blocks=50, llm_layers=28, tie_embeddings=True),
}


def model_section(size: ModelSize, llm_dir) -> dict:
    """The recipe model section of `size` (dropout off everywhere, so two formulations give the same loss)."""
    return {
        "encoder": {
            "type": "paraformer",
            "conf": {
                "output_size": size.enc_dim,
                "attention_heads": size.enc_heads,
                "linear_units": size.enc_units,
                "num_blocks": size.enc_blocks,
                "dropout_rate": 0.0,
                "attention_dropout_rate": 0.0,
            },
            "frontend": {"lfr_m": 7, "lfr_n": 6},
            "freeze": size.freeze_encoder,
        },
        "adaptor": {"type": "linear", "downsample": size.downsample, "ffn_dim": size.adaptor_ffn},
        "llm": {
            "path": str(llm_dir),
            "freeze": True,
            "lora": {"r": size.lora_r, "alpha": 2 * size.lora_r, "dropout": 0.0, "target_modules": size.lora_targets},
        },
    }


def write_llm_config_dir(size: ModelSize, path) -> Path:
    """A Hugging Face directory with the Qwen2 config of `size` and a small tokenizer, and no weights: the builder's
    `weights="random"` reads nothing else."""
    from transformers import Qwen2Config

    from llmasr.testing.tiny_llm import train_bpe_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(["transcribe the audio"], 300)
    Qwen2Config(
        vocab_size=size.vocab,
        hidden_size=size.llm_hidden,
        intermediate_size=size.llm_inter,
        num_hidden_layers=size.llm_layers,
        num_attention_heads=size.llm_heads,
        num_key_value_heads=size.llm_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=size.tie_embeddings,
        attention_dropout=0.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_model(size: ModelSize, *, seed: int = 0, device="cpu", dtype=torch.float32):
    """SpeechLLM of `size` with seeded random weights, built by llmasr's builder (weights="random")."""
    from transformers.utils import logging as hf_logging

    from llmasr.models.builder import build_model as build_speech_llm

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        llm_dir = write_llm_config_dir(size, Path(tmp) / "llm")
        torch.manual_seed(seed)
        model = build_speech_llm(model_section(size, llm_dir), weights="random")
    return model.to(device=device, dtype=dtype).train()


@dataclass
class FunASRReference:
    """What FunASR's dataset prepares for its model: the merged token sequence with placeholder slots where the
    audio goes (`ids`), each slot's start (`audio_beg`) and length from the adaptor's length formula
    (`audio_lens`), `labels` and the attention `mask`."""

    ids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    audio_beg: list[int]
    audio_lens: list[int]

    def to(self, device) -> FunASRReference:
        return replace(self, ids=self.ids.to(device), labels=self.labels.to(device), mask=self.mask.to(device))


@dataclass
class SyntheticBatch:
    """llmasr's collated Batch and FunASR's reference layout of the same utterances."""

    batch: Batch
    ref: FunASRReference
    audio_seconds: float


def make_batch(
    size: ModelSize, batch: int, seconds: float, *, seed: int = 0, device="cpu", dtype=torch.float32
) -> SyntheticBatch:
    """A bucketed batch: `batch` utterances of 0.9-1.0 x `seconds`, ChatML-sized prompt, ~3 target tokens/s.

    The llmasr side is collated from dataset-like items by llmasr's Collator; the FunASR side is built beside it.
    """
    g = torch.Generator().manual_seed(seed)
    durations = [seconds * (0.9 + 0.1 * i / max(1, batch - 1)) for i in range(batch)]
    frames = [max(1, round(d / FRAME_SECONDS)) for d in durations]
    n_target = [max(1, round(TARGET_TOKENS_PER_SECOND * d)) + 1 for d in durations]  # + end-of-turn token
    text_lens = [PROMPT_BEFORE_AUDIO + PROMPT_AFTER_AUDIO + t for t in n_target]
    items = []
    for i in range(batch):
        feats = torch.randn(frames[i], 80 * 7, generator=g).numpy()
        text_ids = torch.randint(1, size.vocab, (text_lens[i],), generator=g).numpy()
        items.append(
            {
                "key": f"utt{i}",
                "index": i,
                "feats": feats,
                "target": "",
                "text_ids": text_ids,
                "audio_pos": PROMPT_BEFORE_AUDIO,
                "target_start": PROMPT_BEFORE_AUDIO + PROMPT_AFTER_AUDIO,
                "ctc_ids": None,
                "duration": durations[i],
            }
        )
    collated = Collator(pad_id=0)(items)
    ref = _funasr_reference(collated.text_ids, frames, text_lens, size.downsample)
    return SyntheticBatch(collated.to(device, dtype), ref.to(device), float(sum(durations)))


def _funasr_reference(text_ids: torch.Tensor, frames: list[int], text_lens: list[int], downsample: int):
    """FunASR's side: the audio token count comes from a formula on the data side (here the adaptor's own)."""
    from llmasr.models.losses import IGNORE_INDEX

    batch = len(frames)
    audio_lens = [max(f // downsample, 1) for f in frames]
    total = [a + t for a, t in zip(audio_lens, text_lens)]
    ref_ids = torch.zeros(batch, max(total), dtype=torch.long)
    ref_labels = torch.full((batch, max(total)), IGNORE_INDEX, dtype=torch.long)
    ref_mask = torch.zeros(batch, max(total), dtype=torch.long)
    p = PROMPT_BEFORE_AUDIO
    for i in range(batch):
        a, t = audio_lens[i], text_lens[i]
        ref_ids[i, :p] = text_ids[i, :p]
        ref_ids[i, p + a : a + t] = text_ids[i, p:t]
        ts = a + PROMPT_BEFORE_AUDIO + PROMPT_AFTER_AUDIO
        ref_labels[i, ts : a + t] = ref_ids[i, ts : a + t]
        ref_mask[i, : a + t] = 1
    return FunASRReference(ref_ids, ref_labels, ref_mask, [p] * batch, audio_lens)


def llmasr_step(model, sb: SyntheticBatch) -> torch.Tensor:
    """llmasr: vectorised audio insertion, labels-only loss (SpeechLLM.forward)."""
    return model(sb.batch).loss


def reference_step(model, sb: SyntheticBatch) -> torch.Tensor:
    """FunASR LLM-ASR formulation: embed the placeholder sequence, copy each utterance's audio embeddings into its
    slots in a Python loop, then `llm(inputs_embeds=..., labels=...)`: full-vocabulary logits and the model's loss."""
    _, _, audio, audio_lens = model.encode_audio(sb.batch.feats, sb.batch.feat_lens, sb.batch.languages)
    llm = model.llm
    ref = sb.ref
    embeds = llm.get_input_embeddings()(ref.ids)
    if embeds.is_leaf and embeds.requires_grad:  # HF's checkpointing hook on the frozen embedding made it a leaf
        embeds = embeds.clone()
    for i, (beg, n) in enumerate(zip(ref.audio_beg, ref.audio_lens)):
        n = min(n, int(audio_lens[i]))
        embeds[i, beg : beg + n] = audio[i, :n]
    out = llm(inputs_embeds=embeds, attention_mask=ref.mask, labels=ref.labels, use_cache=False)
    return out.loss


STEPS = {"llmasr": llmasr_step, "reference": reference_step}


# --- peak memory ---------------------------------------------------------------------------------------------------


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+)", f.read(), re.M).group(1))


class PeakMemory:
    """Peak memory of a region above its start: torch.cuda.max_memory_allocated on CUDA; on CPU the resident-set
    high-water mark (VmHWM, reset through /proc/self/clear_refs so model construction does not hide the step)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _proc_status_kib("VmHWM") * 1024 - self.base
        return False


def size_dict(size: ModelSize) -> dict:
    return asdict(size)


def param_counts(model) -> dict:
    out = {}
    for name in ("encoder", "adaptor", "llm"):
        params = list(getattr(model, name).parameters())
        out[name] = {
            "total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
        }
    return out
