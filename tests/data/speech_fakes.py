"""Small fakes shared by the data-pipeline tests: prompt builder, CTC tokenizer, wav files and manifests (FunASR jsonl
and lhotse cuts), and the loader tests' settings and builder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf

from llmasr.config_io import from_dict
from llmasr.data.config import DataConfig
from llmasr.data.frontend import FrontendConfig
from llmasr.data.loader import build_dataloader


class FakePromptBuilder:
    """Same interface as llmasr.models.prompt.PromptBuilder.encode / pad_id."""

    pad_id = 0
    end_id = 9

    def encode(self, target, task=None, hotwords=None, system=None):
        before = [1, 2, 3] if task is None else [1, 2, 3, 5]
        before = before + [6] * len(hotwords or [])  # one token a phrase
        after = [4]
        ids = before + after
        target_start = len(ids)
        if target is not None:
            if not isinstance(target, str) or not target.strip():
                raise ValueError(f"empty or non-text transcript: {target!r}")
            ids = ids + [10 + ord(c) % 50 for c in target.strip()] + [self.end_id]
        return SimpleNamespace(
            ids=ids,
            audio_pos=len(before),
            target_start=target_start,
            hotwords=tuple(hotwords or ()),
            hotwords_dropped=0,
        )


class FakeCTCTokenizer:
    """Letters a-z -> 0..25, space -> 26, blank 27; anything else -> 99 (outside the vocabulary)."""

    vocab_size = 28
    blank_id = 27

    def encode(self, text):
        out = []
        for c in text.lower():
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a"))
            elif c == " ":
                out.append(26)
            else:
                out.append(99)
        return out


def write_wav(path: Path, seconds: float, sr: int = 16000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed % 7) * t) + 0.01 * rng.standard_normal(n)
    sf.write(str(path), x.astype(np.float32), sr, subtype="PCM_16")
    return path


def write_manifest(path: Path, records: list) -> Path:
    """records: dicts (written as JSON) or raw strings (written as they are)."""
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def good_corpus(tmp: Path, n: int, *, seed: int = 0, with_duration: bool = True, name: str = "train") -> Path:
    """n good utterances of 0.3-2.0 s with letter-only transcripts."""
    rng = np.random.default_rng(seed)
    wavdir = tmp / f"wav_{name}"
    wavdir.mkdir(parents=True, exist_ok=True)
    recs = []
    words = ["hello", "world", "speech", "model", "data", "batch"]
    for i in range(n):
        dur = float(rng.uniform(0.3, 2.0))
        write_wav(wavdir / f"u{i}.wav", dur, seed=i)
        r = {
            "key": f"{name}{i}",
            "source": f"wav_{name}/u{i}.wav",
            "target": " ".join(rng.choice(words, size=int(rng.integers(1, 4)))),
        }
        if with_duration:
            r["duration"] = round(dur, 4)
        recs.append(r)
    return write_manifest(tmp / f"{name}.jsonl", recs)


def write_tone_wav(path, seconds=1.0, sr=16000, channels=1, freq=440.0):
    """A float wav of `channels` sine tones (channel c at freq * (c + 1)), for the manifest tests."""
    t = np.arange(int(sr * seconds)) / sr
    x = np.stack([0.3 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], axis=1)
    sf.write(path, x.astype(np.float32), sr, subtype="FLOAT")
    return path


def write_shorten_sph(path):
    """WSJ's .wv1: NIST SPHERE whose samples are shorten-compressed, which libsndfile does not decode."""
    head = b"NIST_1A\n   1024\nsample_count -i 8000\nsample_rate -i 16000\nchannel_count -i 1\nsample_n_bytes -i 2\n"
    head += b"sample_coding -s26 pcm,embedded-shorten-v2.00\nsample_byte_format -s2 01\nend_head\n"
    path.write_bytes(head.ljust(1024, b" ") + b"ajkg\x02" + bytes(400))
    return path


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def cut(cut_id, path, *, start=0.0, duration=1.0, channel=0, text="hello", sources=None, sups=None, **extra):
    rec = {
        "id": cut_id,
        "start": start,
        "duration": duration,
        "channel": channel,
        "supervisions": sups
        if sups is not None
        else [
            {
                "id": f"{cut_id}-sup",
                "recording_id": "rec",
                "start": 0.0,
                "duration": duration,
                "channel": channel,
                "text": text,
                "language": "English",
                "speaker": "spk1",
            }
        ],
        "recording": {
            "id": "rec",
            "sources": sources if sources is not None else [{"type": "file", "channels": [0], "source": path}],
            "sampling_rate": 16000,
            "num_samples": 48000,
            "duration": 3.0,
            "channel_ids": [0],
        },
        "type": "MonoCut",
    }
    rec.update(extra)
    return rec


# ------------------------------------------------------------------------- the loader tests' settings and builder
FRONTEND = FrontendConfig(lfr_m=7, lfr_n=6)


def cfg(**kw):
    base = {"batching": {"max_seconds": 6.0, "num_buckets": 4}, "num_workers": 0, "max_bad_fraction": 0.2}
    for k, v in kw.items():
        if k == "batching":
            base["batching"].update(v)
        else:
            base[k] = v
    return from_dict(DataConfig, base, "data")


def build(data_cfg, manifests, **kw):
    kw.setdefault("train", True)
    kw.setdefault("ctc_tokenizer", FakeCTCTokenizer())
    return build_dataloader(data_cfg, manifests, FRONTEND, prompt_builder=FakePromptBuilder(), **kw)


def with_lines(tmp_path, n_good: int, extra: list) -> str:
    path = good_corpus(tmp_path, n_good)
    return str(write_manifest(tmp_path / "m.jsonl", path.read_text().splitlines() + extra))
