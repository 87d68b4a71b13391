"""The typed batch the model consumes; only `llmasr.data.collate.Collator` makes one.

Rows are utterances. Padded tensors are exactly as wide as their longest row, so a batch of some rows
(`select`) equals collating those items alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class Batch:
    """A padded batch of utterances.

    feats         float [B, T, D]  zero-padded features
    feat_lens     int64 [B]
    text_ids      int64 [B, L]     prompt + target + end token, right-padded with the pad id
    text_lens     int64 [B]
    audio_pos     int64 [B]        index in text_ids where the audio embeddings go
    target_start  int64 [B]        index in text_ids where the labels begin
    ctc_ids       int64 [B, C]     CTC labels padded with 0; [B, 0] when there is no CTC tokenizer
    ctc_lens      int64 [B]        zeros when there is no CTC tokenizer
    ctc_labelled  True when the collator spelled each row's CTC labels (its loader had the CTC tokenizer): a model
                  with a CTC head refuses to train on a batch without them (its loss would teach the head blank)
    durations     float32 [B]      seconds of audio
    keys, targets, indices         per row: utterance key, reference text, dataset index
    hotwords      per row: the biasing phrases rendered into its prompt (after the token cap; [] for none)
    hotwords_dropped  per row: phrases the token cap left out of its list
    leads         per row: seconds of leading silence decoding cut off (decode.trim_leading_silence; 0.0 elsewhere), by
                  which its times (word timestamps) are later than its features'
    languages     per row: its line's language key (llmasr.data.languages; None where it names none): a SenseVoice
                  encoder with queries.language per_line makes it the row's language query
    speech_runs   per row: [K, 2] seconds where its speech runs, in its features' time (decode.timestamps), or None
    n_bad, bad                     bad items dropped from this batch (manifest, line, key, reason, index each)
    empty         True when every item was bad and the rows are the collator's stand-in fallback item
    duplicate     True when the sampler repeats this batch only to keep the ranks in step (its last group's
                  padding): evaluation runs it but counts nothing, so each item is scored once
    wave          float32 [B, N]   features on the device (data.features_on): the zero-padded waveforms fbank
                                   reads (scaled, dithered); feats is then [B, 0, D] and feat_lens the frame counts
                                   the device will compute. [B, 0] when the workers computed feats.
    wave_lens     int64 [B]        samples per row (zeros without waveforms)
    spec_masks    int64 [B, K, 3]  SpecAugment masks (axis, start, width) the device applies; width 0 rows do nothing
    """

    feats: torch.Tensor
    feat_lens: torch.Tensor
    text_ids: torch.Tensor
    text_lens: torch.Tensor
    audio_pos: torch.Tensor
    target_start: torch.Tensor
    ctc_ids: torch.Tensor
    ctc_lens: torch.Tensor
    durations: torch.Tensor
    keys: list[str]
    targets: list[str]
    indices: list[int]
    hotwords: list[list[str]] | None = None  # None: no row has a list ([] each)
    hotwords_dropped: list[int] | None = None
    leads: list[float] | None = None
    speech_runs: list | None = None
    languages: list[str | None] | None = None
    n_bad: int = 0
    bad: list[dict] = field(default_factory=list)
    empty: bool = False
    duplicate: bool = False
    wave: torch.Tensor | None = None
    wave_lens: torch.Tensor | None = None
    spec_masks: torch.Tensor | None = None
    ctc_labelled: bool = False

    def __post_init__(self):
        n = len(self.keys)
        if self.hotwords is None:
            self.hotwords = [[] for _ in range(n)]
        if self.hotwords_dropped is None:
            self.hotwords_dropped = [0] * n
        if self.leads is None:
            self.leads = [0.0] * n
        if self.speech_runs is None:
            self.speech_runs = [None] * n
        if self.languages is None:
            self.languages = [None] * n
        if self.wave is None:
            self.wave = torch.zeros(n, 0)
        if self.wave_lens is None:
            self.wave_lens = torch.zeros(n, dtype=torch.int64)
        if self.spec_masks is None:
            self.spec_masks = torch.zeros(n, 0, 3, dtype=torch.int64)
        for f in fields(self):
            value = getattr(self, f.name)
            if (torch.is_tensor(value) or isinstance(value, list)) and f.name != "bad" and len(value) != n:
                raise ValueError(f"batch field {f.name} has {len(value)} rows but keys has {n}")

    # -- derived values -------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of rows (utterances)."""
        return len(self.keys)

    @property
    def labelled_tokens(self) -> int:
        """Target tokens (target + end token per row), as SpeechLLM's labels count them."""
        return int((self.text_lens - self.target_start).clamp(min=0).sum())

    @property
    def has_waves(self) -> bool:
        """Whether the features are still to be computed from `wave` (data.features_on: device)."""
        return self.wave.shape[1] > 0

    @property
    def feat_slots(self) -> int:
        """Padded feature frames the encoder runs over: rows x the longest row (`feats` is empty until the device
        computes the features, padded to that longest row)."""
        return int(self.feat_lens.shape[0] * int(self.feat_lens.max())) if self.feat_lens.numel() else 0

    @property
    def audio_seconds(self) -> float:
        return float(self.durations.sum())

    # -- moving and slicing -------------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if torch.is_tensor(getattr(self, f.name))}

    def to(self, device, dtype: torch.dtype | None = None, *, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device`; `feats` also cast to `dtype` when given (integer fields stay, and
        so does `wave`: fbank runs in float32 and its output takes the dtype `feats` has)."""
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in self._tensors().items()}
        if dtype is not None:
            moved["feats"] = moved["feats"].to(dtype)
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        """A copy in pinned host memory (torch's DataLoader calls this with pin_memory=True)."""
        return replace(self, **{k: v.pin_memory() for k, v in self._tensors().items()})

    def select(self, rows) -> Batch:
        """A batch of `rows` (indices, in the order given), padded tensors trimmed to the longest of them.

        The dropped bad items are not rows: the selection carries none (n_bad 0), so nothing counts them twice.
        """
        rows = [int(r) for r in rows]
        if not rows:
            raise ValueError("Batch.select: no rows selected")
        bad_rows = [r for r in rows if not -self.size <= r < self.size]
        if bad_rows:
            raise IndexError(f"Batch.select: rows {bad_rows} out of range for a batch of {self.size}")
        idx = torch.tensor(rows, dtype=torch.long)
        out = {k: v.index_select(0, idx.to(v.device)) for k, v in self._tensors().items()}
        out["feats"] = out["feats"][:, : int(out["feat_lens"].max())]
        out["text_ids"] = out["text_ids"][:, : int(out["text_lens"].max())]
        out["ctc_ids"] = out["ctc_ids"][:, : int(out["ctc_lens"].max())]
        out["wave"] = out["wave"][:, : int(out["wave_lens"].max())]
        names = ("keys", "targets", "indices", "hotwords", "hotwords_dropped", "leads", "speech_runs", "languages")
        lists = {name: [getattr(self, name)[r] for r in rows] for name in names}
        return replace(self, **out, **lists, n_bad=0, bad=[])
