"""Batch assembly: pad a list of SpeechDataset items into a `Batch` (llmasr.data.batch lists its fields).

Every field is always present, so all ranks see the same structure.

Bad items (`BadItem`) are removed and reported through n_bad/bad; the main process aggregates them in a
BadDataTracker (SpeechDataLoader does this). When every item of a batch is bad, the batch cannot simply vanish:
the other ranks would wait for this one at the next collective (a hang under DDP/ZeRO). The collator then emits
a batch made of one known-good `fallback` item (loaded once when the loader is built) with `empty` True. The
trainer runs it through the same forward/backward as any batch, keeping every rank in step, and should multiply
its loss by 0 (the fallback is a real utterance, so a trainer that ignores the flag just sees one repeated
utterance; nothing breaks). Without a fallback an all-bad batch raises, naming the bad items.
"""

from __future__ import annotations

import numpy as np
import torch

from llmasr.data.bad_data import BadItem
from llmasr.data.batch import Batch


class EmptyBatchError(RuntimeError):
    """Every item of a batch was bad and the collator has no fallback item."""


class Collator:
    def __init__(self, pad_id: int, *, with_ctc: bool = False, fallback: dict | None = None, no_rows: bool = False):
        """`no_rows`: an all-bad batch becomes a batch of no rows that still reports its bad items (decoding, where
        no rank waits on another); otherwise it takes the `fallback` item or raises."""
        self.pad_id = int(pad_id)
        self.with_ctc = bool(with_ctc)
        if fallback is not None and isinstance(fallback, BadItem):
            raise ValueError(f"the fallback item is itself bad: {fallback}")
        if fallback is not None and no_rows:
            raise ValueError("a collator takes either a fallback item or no_rows, not both")
        self.fallback = fallback
        self.no_rows = bool(no_rows)

    def __call__(self, items: list) -> Batch:
        good = [it for it in items if not isinstance(it, BadItem)]
        bad = [it.to_dict() for it in items if isinstance(it, BadItem)]
        empty = not good
        if empty and not self.no_rows:
            if self.fallback is None:
                where = ", ".join(f"{b['manifest']}:{b['line']} ({b['reason']})" for b in bad[:5])
                raise EmptyBatchError(f"every item of the batch is bad and there is no fallback item: {where}")
            good = [self.fallback]
        return Batch(**self._pad(good), n_bad=len(bad), bad=bad, empty=empty, ctc_labelled=self.with_ctc)

    def _pad(self, items: list[dict]) -> dict:
        """The padded tensor and per-row fields of `items` (all good), as Batch keyword arguments."""
        b = len(items)
        on_device = [("wave" in it) for it in items]
        if any(on_device) and not all(on_device):
            raise ValueError("a batch mixes items with features and items with waveforms (features_on differs)")
        if any(on_device):
            return {**self._pad_waves(items), **self._pad_text(items)}
        feat_lens = [int(it["feats"].shape[0]) for it in items]
        dim = int(items[0]["feats"].shape[1]) if items else 0
        for it in items:
            if it["feats"].shape[1] != dim:
                raise ValueError(f"feature dims differ within a batch: {it['feats'].shape[1]} vs {dim} ({it['key']})")
        feats = np.zeros((b, max(feat_lens, default=0), dim), dtype=np.float32)
        for i, it in enumerate(items):
            feats[i, : feat_lens[i]] = it["feats"]
        feat_fields = {"feats": torch.from_numpy(feats), "feat_lens": torch.tensor(feat_lens, dtype=torch.int64)}
        return {**feat_fields, **self._pad_text(items)}

    @staticmethod
    def _pad_waves(items: list[dict]) -> dict:
        """Features on the device: the waveforms padded with zeros, the frame counts the device will produce,
        SpecAugment's masks padded with no-op (0, 0, 0) rows, and `feats` [B, 0, D]."""
        b, dim = len(items), int(items[0]["feat_dim"])
        for it in items:
            if int(it["feat_dim"]) != dim:
                raise ValueError(f"feature dims differ within a batch: {it['feat_dim']} vs {dim} ({it['key']})")
        wave_lens = [int(it["wave"].shape[0]) for it in items]
        wave = np.zeros((b, max(wave_lens)), dtype=np.float32)
        n_masks = max(int(it["spec_masks"].shape[0]) for it in items)
        masks = np.zeros((b, n_masks, 3), dtype=np.int64)
        for i, it in enumerate(items):
            wave[i, : wave_lens[i]] = it["wave"]
            masks[i, : it["spec_masks"].shape[0]] = it["spec_masks"]
        return {
            "feats": torch.zeros(b, 0, dim),
            "feat_lens": torch.tensor([int(it["num_frames"]) for it in items], dtype=torch.int64),
            "wave": torch.from_numpy(wave),
            "wave_lens": torch.tensor(wave_lens, dtype=torch.int64),
            "spec_masks": torch.from_numpy(masks),
        }

    def _pad_text(self, items: list[dict]) -> dict:
        b = len(items)
        text_lens = [len(it["text_ids"]) for it in items]
        text_ids = np.full((b, max(text_lens, default=0)), self.pad_id, dtype=np.int64)
        for i, it in enumerate(items):
            text_ids[i, : text_lens[i]] = it["text_ids"]
        if self.with_ctc:
            for it in items:
                if it.get("ctc_ids") is None:
                    raise ValueError(f"item {it['key']} has no ctc_ids but the collator expects CTC labels")
            ctc_lens = [len(it["ctc_ids"]) for it in items]
            ctc_ids = np.zeros((b, max(ctc_lens, default=0)), dtype=np.int64)
            for i, it in enumerate(items):
                ctc_ids[i, : ctc_lens[i]] = it["ctc_ids"]
        else:
            ctc_lens = [0] * b
            ctc_ids = np.zeros((b, 0), dtype=np.int64)
        return {
            "text_ids": torch.from_numpy(text_ids),
            "text_lens": torch.tensor(text_lens, dtype=torch.int64),
            "audio_pos": torch.tensor([int(it["audio_pos"]) for it in items], dtype=torch.int64),
            "target_start": torch.tensor([int(it["target_start"]) for it in items], dtype=torch.int64),
            "ctc_ids": torch.from_numpy(ctc_ids),
            "ctc_lens": torch.tensor(ctc_lens, dtype=torch.int64),
            "keys": [str(it["key"]) for it in items],
            "targets": [None if it["target"] is None else str(it["target"]) for it in items],  # None: untranscribed
            "durations": torch.tensor([float(it["duration"]) for it in items], dtype=torch.float32),
            "indices": [int(it["index"]) for it in items],
            "hotwords": [list(it.get("hotwords") or []) for it in items],
            "hotwords_dropped": [int(it.get("hotwords_dropped", 0)) for it in items],
            "leads": [float(it.get("lead", 0.0)) for it in items],
            "speech_runs": [it.get("speech_runs") for it in items],
            "languages": [it.get("lang") for it in items],
        }
