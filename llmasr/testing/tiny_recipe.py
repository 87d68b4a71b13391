"""Model sections and batches for tiny stand-in models (tests, demo smoke runs, recipe checks)."""

from __future__ import annotations

import numpy as np
import torch

from llmasr.data.batch import Batch
from llmasr.data.collate import Collator
from llmasr.testing.tiny_funasr import paraformer_frontend_conf, tiny_sanm_conf


def tiny_model_section(
    llm_dir,
    *,
    encoder_dir=None,
    adaptor: str = "linear",
    lora: bool = True,
    ctc_weight: float = 0.0,
    freeze_encoder: bool = False,
) -> dict:
    """A recipe `model:` section: 2-block SAN-M (from `encoder_dir` or fresh), adaptor, tiny LLM with LoRA."""
    encoder = {"type": "paraformer", "freeze": freeze_encoder}
    if encoder_dir is not None:
        encoder["path"] = str(encoder_dir)
    else:
        conf = tiny_sanm_conf()
        conf["input_size"] = 80 * 7
        fe = paraformer_frontend_conf()
        encoder["conf"] = conf
        encoder["frontend"] = {
            "sample_rate": fe["fs"],
            "n_mels": fe["n_mels"],
            "lfr_m": fe["lfr_m"],
            "lfr_n": fe["lfr_n"],
        }
    return {
        "encoder": encoder,
        "adaptor": {"type": adaptor, "downsample": 2, "ffn_dim": 64}
        | ({"n_layer": 1, "n_head": 4} if adaptor in ("transformer", "qformer") else {}),
        "llm": {
            "path": str(llm_dir),
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]} if lora else None,
        },
        "ctc": {"weight": ctc_weight},
    }


def random_batch(model, targets: list[str], *, frames: list[int] | None = None, seed: int = 0) -> Batch:
    """A batch of random features for `targets`, made as training makes one: dataset-like items through the
    Collator (with CTC labels when the model has a CTC tokenizer)."""
    g = torch.Generator().manual_seed(seed)
    frames = frames or [12 + 3 * i for i in range(len(targets))]
    dim = model.frontend.feature_dim
    ctc = model.ctc_tokenizer
    items = []
    for i, (target, t) in enumerate(zip(targets, frames, strict=True)):
        enc = model.prompt.encode(target)
        items.append(
            {
                "key": f"utt{i}",
                "index": i,
                "feats": torch.randn(t, dim, generator=g).numpy(),
                "target": target,
                "text_ids": np.asarray(enc.ids, dtype=np.int64),
                "audio_pos": enc.audio_pos,
                "target_start": enc.target_start,
                "ctc_ids": None if ctc is None else np.asarray(ctc.encode(target), dtype=np.int64),
                "duration": t * model.frontend.frame_seconds,
            }
        )
    return Collator(model.prompt.pad_id, with_ctc=ctc is not None)(items)


def wave_batch(model, targets: list[str], seconds: list[float], *, seed: int = 0) -> Batch:
    """A batch of random waveforms for `targets`, collated as data.features_on: device ships one (`feats` empty,
    the model computes the features)."""
    from llmasr.data.device_features import DeviceFeatures

    rng = np.random.default_rng(seed)
    fx = DeviceFeatures(model.frontend)
    items = []
    for i, (target, length) in enumerate(zip(targets, seconds, strict=True)):
        wave = (rng.standard_normal(int(length * model.frontend.sample_rate)) * 0.1).astype(np.float32)
        enc = model.prompt.encode(target)
        ctc = model.ctc_tokenizer
        items.append({
            "key": f"utt{i}", "index": i, "target": target, "text_ids": np.asarray(enc.ids, dtype=np.int64),
            "audio_pos": enc.audio_pos, "target_start": enc.target_start, "duration": length, "wave": wave,
            "ctc_ids": None if ctc is None else np.asarray(ctc.encode(target), dtype=np.int64),
            "num_frames": fx.num_frames(wave.size), "feat_dim": model.frontend.feature_dim,
            "spec_masks": np.zeros((0, 3), np.int64),
        })  # fmt: skip
    return Collator(model.prompt.pad_id, with_ctc=model.ctc_tokenizer is not None)(items)


def speech_logits(model, batch: Batch) -> torch.Tensor:
    """LLM logits over the merged audio+text sequence of `batch` (what training sees), without gradients."""
    with torch.no_grad():
        _, _, merged = model.embed_batch(batch)
        return model.llm(
            inputs_embeds=merged.inputs_embeds,
            attention_mask=merged.attention_mask,
            position_ids=merged.position_ids,
        ).logits


class OracleCTCHead(torch.nn.Module):
    """A CTC head whose best path spells `by_len[n]` for the utterance of encoder length n (one token a frame, a
    blank between repeated tokens): a head of known output for testing what scores or decodes it."""

    def __init__(self, tokenizer, by_len: dict[int, str]):
        super().__init__()
        self.tok, self.by_len = tokenizer, by_len

    def forward(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        blank = self.tok.blank_id
        logits = torch.zeros(enc.shape[0], enc.shape[1], self.tok.vocab_size)
        logits[..., blank] = 10.0
        for b, n in enumerate(enc_lens.tolist()):
            t, prev = 0, None
            for i in self.tok.encode(self.by_len[n]):
                t += int(i == prev)  # a blank between repeats, or they merge
                logits[b, t, blank], logits[b, t, i] = 0.0, 10.0
                t, prev = t + 1, i
            assert t <= n, f"{self.by_len[n]!r} needs {t} frames, the utterance has {n}"
        return logits.log_softmax(-1)
