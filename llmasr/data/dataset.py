"""Map-style speech dataset, and the accounting of unusable data.

`SpeechDataset[i]` returns either a dict for one utterance or a `BadItem` naming manifest:line and the reason
(missing/unreadable/corrupt/empty audio, empty or non-text transcript, malformed manifest line, wrong field type,
a transcript the CTC vocabulary cannot encode, audio too short for one feature frame). Bad items never raise in
the worker: the collator drops them and puts them in the batch ("n_bad", "bad"), and the main process feeds every
batch to a `BadDataTracker`, which logs them (rate-limited), keeps the first few as examples, and raises
`TooMuchBadData` once the bad fraction passes the recipe's `max_bad_fraction`.

Randomness (dither, augmentation) for item i comes from numpy Generator([seed, epoch, i]), so it does not depend
on which worker loads the item, on the number of workers, or on where a resumed run restarts. An index that a
weighted mix repeats within one epoch gets the same randomness both times.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from torch.utils.data import Dataset

from llmasr.data.frontend import FrontendConfig

log = logging.getLogger("llmasr.data")


@dataclass
class BadItem:
    """Marker returned by SpeechDataset for an unusable item (plain fields, so it pickles across workers)."""

    manifest: str
    line: int
    key: str | None
    reason: str
    index: int = -1

    @classmethod
    def from_record(cls, record, index: int = -1) -> BadItem:
        return cls(
            manifest=str(getattr(record, "manifest", "?")),
            line=int(getattr(record, "line", -1) or -1),
            key=getattr(record, "key", None),
            reason=str(getattr(record, "reason", None) or record),
            index=int(index),
        )

    @property
    def record(self):
        """The same information as a manifest BadRecord."""
        from llmasr.data.manifest import BadRecord

        return BadRecord(self.manifest, self.line, self.reason, self.key)

    def where(self) -> str:
        return f"{self.manifest}:{self.line}"

    def to_dict(self) -> dict:
        return asdict(self)


def as_record_dict(item) -> dict:
    """A BadItem, a manifest BadRecord, or a dict -> dict with manifest, line, key, reason."""
    if isinstance(item, dict):
        return dict(item)
    if isinstance(item, BadItem):
        return item.to_dict()
    return BadItem.from_record(item).to_dict()


class TooMuchBadData(RuntimeError):
    """More than max_bad_fraction of the items seen are unusable."""


# (substring of the reason, category) in priority order; reasons carry paths and details that vary per line.
REASON_CATEGORIES = (
    ("file not found", "audio file not found"),
    ("is a directory", "audio file not found"),
    ("empty audio", "empty audio"),
    ("empty range", "empty audio"),
    ("non-finite samples", "corrupt audio"),
    ("corrupt", "unreadable or corrupt audio"),
    ("unreadable", "unreadable or corrupt audio"),
    ("too short for one feature frame", "audio too short"),
    ("past the end", "segment outside the audio"),
    ("past the audio", "segment outside the audio"),
    ("channel", "bad channel"),
    ("malformed JSON", "malformed line"),
    ("not UTF-8", "malformed line"),
    ("expected a JSON object", "malformed line"),
    ("missing field", "missing field"),
    ("empty target", "empty target"),
    ("is empty", "empty target"),
    ("non-text target", "non-text target"),
    ("is not text", "non-text target"),
    ("must be", "wrong field type or value"),
    ("CTC", "target outside the CTC vocabulary"),
    ("prompt builder", "target rejected by the LLM tokenizer"),
    ("lhotse", "unsupported lhotse record"),
    ("unknown duration", "unknown duration"),
)


def reason_category(reason: str) -> str:
    """A short, stable class of a bad-item reason, for counting."""
    for needle, category in REASON_CATEGORIES:
        if needle in reason:
            return category
    head = re.split(r"[:(]", reason, maxsplit=1)[0]
    head = re.sub(r"\S*[/\\]\S*|\d+(\.\d+)?", "", head).strip()  # drop paths and numbers
    return head or "other"


class BadDataTracker:
    """Counts good and bad items, logs bad ones (rate-limited) and enforces max_bad_fraction.

    The check runs after every update once `min_items` items have been seen, and unconditionally at epoch end
    (`end_epoch`). Counts are per epoch (`new_epoch` resets them); `state_dict` carries them across a resume.
    Each rank keeps its own tracker over its own share of the data.
    """

    def __init__(
        self,
        max_bad_fraction: float = 0.01,
        *,
        min_items: int = 1000,
        keep_examples: int = 20,
        log_first: int = 20,
        log_interval_s: float = 60.0,
        name: str = "train",
        enforce: bool = True,
    ):
        """`enforce`: False counts without ever raising (decoding checks `exceeded` itself, after its outputs are
        written)."""
        self.max_bad_fraction = float(max_bad_fraction)
        self.enforce = bool(enforce)
        self.min_items = int(min_items)
        self.keep_examples = int(keep_examples)
        self.log_first = int(log_first)
        self.log_interval_s = float(log_interval_s)
        self.name = name
        self.good = 0
        self.bad = 0
        self.by_reason: Counter[str] = Counter()
        self.examples: list[dict] = []
        self.static: list[dict] = []  # bad lines found before loading (manifest parse / header probe)
        self._logged = 0
        self._suppressed = 0
        self._last_log = 0.0

    # ------------------------------------------------------------------------------------------------- counting
    @property
    def seen(self) -> int:
        return self.good + self.bad

    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def add_static(self, records, *, quiet: bool = False) -> None:
        """Bad items known up front (never batched: the sampler skips them). They count in every epoch. `quiet`:
        not logged one by one (the caller has reported them)."""
        for rec in records:
            rec = as_record_dict(rec)
            self.static.append(rec)
            self._count_bad(rec)
            if not quiet:
                self._log(rec)

    def new_epoch(self) -> None:
        """Reset the counts for a new epoch (the static bad items are counted again, silently)."""
        self.good = 0
        self.bad = len(self.static)
        self.by_reason = Counter(reason_category(str(r.get("reason", ""))) for r in self.static)

    def add_good(self, n: int = 1) -> None:
        self.good += int(n)

    def add_bad(self, item) -> None:
        """`item`: a BadItem, a BadRecord, or a dict with manifest/line/key/reason."""
        rec = as_record_dict(item)
        self._count_bad(rec)
        self._log(rec)

    def _count_bad(self, rec: dict) -> None:
        self.bad += 1
        self.by_reason[reason_category(str(rec.get("reason", "")))] += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append(rec)

    def _log(self, rec: dict) -> None:
        where = f"{rec.get('manifest')}:{rec.get('line')}"
        if self._logged < self.log_first:
            self._logged += 1
            log.warning("%s: skipping bad item %s (key %s): %s", self.name, where, rec.get("key"), rec.get("reason"))
            if self._logged == self.log_first:
                log.warning("%s: further bad items are summarised at most every %.0f s", self.name, self.log_interval_s)
            self._last_log = time.monotonic()
            return
        self._suppressed += 1
        now = time.monotonic()
        if now - self._last_log >= self.log_interval_s:
            log.warning(
                "%s: %d more bad items (latest %s: %s); %d bad of %d seen (%.3f%%) by reason %s",
                self.name,
                self._suppressed,
                where,
                rec.get("reason"),
                self.bad,
                self.seen,
                100 * self.fraction,
                dict(self.by_reason),
            )
            self._suppressed = 0
            self._last_log = now

    def update(self, batch) -> None:
        """Account one collated Batch (its real items and its dropped bad items), then check the threshold."""
        for rec in batch.bad:
            self.add_bad(rec)
        if not batch.empty:
            self.add_good(batch.size)
        if self.seen >= self.min_items:
            self.check()

    # ------------------------------------------------------------------------------------------------- checking
    @property
    def exceeded(self) -> bool:
        return bool(self.bad) and self.fraction > self.max_bad_fraction

    def check(self, *, final: bool = False) -> None:
        if self.enforce and self.exceeded:
            raise TooMuchBadData(self.message(final=final))

    def end_epoch(self) -> None:
        self.check(final=True)

    def message(self, *, final: bool = False) -> str:
        lines = [
            f"{self.name}: too much bad data: {self.bad} of {self.seen} items ({100 * self.fraction:.2f}%) are "
            f"unusable, above data.max_bad_fraction = {self.max_bad_fraction} ({100 * self.max_bad_fraction:.2f}%)"
            + (" at epoch end" if final else ""),
            "by reason: " + ", ".join(f"{r}: {c}" for r, c in self.by_reason.most_common()),
            f"first {len(self.examples)} bad items:",
        ]
        lines += [f"  {e.get('manifest')}:{e.get('line')} key={e.get('key')}: {e.get('reason')}" for e in self.examples]
        lines.append(
            "Fix or remove these lines (`llmasr data check MANIFEST` lists them all), or raise data.max_bad_fraction."
        )
        return "\n".join(lines)

    def summary(self) -> str:
        if not self.bad:
            return f"{self.name}: no bad items in {self.seen} seen"
        reasons = ", ".join(f"{r}: {c}" for r, c in self.by_reason.most_common())
        return f"{self.name}: {self.bad} bad of {self.seen} items ({100 * self.fraction:.3f}%): {reasons}"

    def state_dict(self) -> dict:
        return {
            "good": self.good,
            "bad": self.bad,
            "by_reason": dict(self.by_reason),
            "examples": list(self.examples),
            "static": list(self.static),
        }

    def load_state_dict(self, state: dict) -> None:
        self.good = int(state["good"])
        self.bad = int(state["bad"])
        self.by_reason = Counter({str(k): int(v) for k, v in state.get("by_reason", {}).items()})
        self.examples = list(state.get("examples", []))[: self.keep_examples]
        self.static = list(state.get("static", self.static))


class SpeechDataset(Dataset):
    """Manifest item -> {key, feats [T, D] float32, target, text_ids, audio_pos, target_start, ctc_ids, duration}.

    `prompt_builder.encode(target, task)` gives the LLM token ids (task = the utterance's own `prompt`, if any);
    `ctc_tokenizer.encode(target)` the CTC labels (checked against its vocabulary). `max_duration_truncate`
    (seconds) cuts longer audio (the transcript is kept whole).
    """

    def __init__(
        self,
        manifest,
        frontend: FrontendConfig,
        *,
        train: bool,
        augment=None,
        prompt_builder,
        ctc_tokenizer=None,
        seed: int = 0,
        max_duration_truncate: float | None = None,
    ):
        self.manifest = manifest
        self.frontend = frontend
        self.train = bool(train)
        self.augment_cfg = augment
        self.prompt_builder = prompt_builder
        self.ctc_tokenizer = ctc_tokenizer
        self.seed = int(seed)
        self.max_duration_truncate = max_duration_truncate
        self.epoch = 0
        self._fx = None
        self._aug = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.manifest)

    # Built on first use, so that a dataset pickled into a spawned worker carries only its settings.
    @property
    def feature_extractor(self):
        if self._fx is None:
            from llmasr.data.features import FeatureExtractor

            self._fx = FeatureExtractor(self.frontend)
        return self._fx

    @property
    def augmenter(self):
        if self._aug is None and self.train and self.augment_cfg is not None:
            from llmasr.data.augment import Augmenter

            aug = Augmenter(self.augment_cfg, self.frontend)
            self._aug = aug if aug.enabled else False
        return self._aug or None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fx"] = None
        state["_aug"] = None
        return state

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int):
        from llmasr.data.manifest import BadRecord

        index = int(index)
        try:
            utt = self.manifest[index]
        except BadRecord as rec:
            return BadItem.from_record(rec, index)
        mf, line, key = str(getattr(utt, "manifest", "?")), int(getattr(utt, "line", -1)), utt.key

        def bad(reason: str) -> BadItem:
            return BadItem(manifest=mf, line=line, key=key, reason=reason, index=index)

        target = utt.target
        if not isinstance(target, str):
            return bad(f"non-text target: {type(target).__name__} {target!r:.80}")
        if not target.strip():
            return bad("empty target")
        target = target.strip()
        task = utt.prompt if isinstance(getattr(utt, "prompt", None), str) and utt.prompt.strip() else None
        try:
            enc = self.prompt_builder.encode(target, task=task)
        except ValueError as err:  # PromptError: text the LLM tokenizer cannot take
            return bad(f"target rejected by the prompt builder: {err}")
        ctc_ids = self._ctc_labels(target) if self.ctc_tokenizer is not None else None
        if isinstance(ctc_ids, str):
            return bad(ctc_ids)

        from llmasr.data.audio import AudioError, load_audio

        sr = int(self.frontend.sample_rate)
        start = float(utt.start) if getattr(utt, "start", None) is not None else 0.0
        end = float(utt.end) if getattr(utt, "end", None) is not None else None
        if self.max_duration_truncate is not None:
            cut = start + float(self.max_duration_truncate)
            end = cut if end is None else min(end, cut)
        try:
            wave = load_audio(utt.source, sample_rate=sr, start=start, end=end, channel=getattr(utt, "channel", None))
        except AudioError as err:
            return bad(f"audio: {err.reason} ({err.path})")
        if wave.size == 0:
            return bad(f"audio: empty audio ({utt.source})")
        duration = wave.size / sr

        feats = self._features(wave, index)
        if isinstance(feats, str):
            return bad(feats)
        return {
            "key": str(key),
            "index": index,
            "feats": feats,
            "target": target,
            "text_ids": np.asarray(enc.ids, dtype=np.int64),
            "audio_pos": int(enc.audio_pos),
            "target_start": int(enc.target_start),
            "ctc_ids": ctc_ids,
            "duration": float(duration),
        }

    def _ctc_labels(self, target: str) -> np.ndarray | str:
        """The CTC label ids of `target`, or why it has none the head can learn."""
        try:
            ids = np.asarray(self.ctc_tokenizer.encode(target), dtype=np.int64)
        except (ValueError, KeyError) as err:
            return f"target not encodable by the CTC vocabulary: {err}"
        if ids.size == 0:
            return "target has no CTC tokens"
        vocab, blank = int(self.ctc_tokenizer.vocab_size), int(self.ctc_tokenizer.blank_id)
        out = (ids < 0) | (ids >= vocab) | (ids == blank)
        if out.any():
            return (
                f"target has CTC ids outside the vocabulary (size {vocab}, blank {blank}): "
                f"{sorted(set(ids[out].tolist()))[:10]}"
            )
        return ids

    def _features(self, wave: np.ndarray, index: int) -> np.ndarray | str:
        """Features of `wave` (augmented in training) as float32 [T, D], or why it gives none."""
        sr = int(self.frontend.sample_rate)
        rng = self.rng(index)
        aug = self.augmenter if self.train else None
        if aug is not None:
            wave = aug.wave(wave, sr, rng)
        fx = self.feature_extractor
        if fx.num_frames(wave.size) == 0:  # decided from the sample count: no feature library is asked
            return (
                f"audio too short for one feature frame ({wave.size} samples = {wave.size / sr:.3f} s; the frontend "
                f"needs at least {fx.min_samples})"
            )
        feats = fx(wave, train=self.train, rng=rng)
        if aug is not None:
            feats = aug.spec(feats, rng)
        return np.ascontiguousarray(feats, dtype=np.float32)
