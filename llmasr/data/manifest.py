"""Speech manifests: FunASR-style jsonl and lhotse CutSet jsonl(.gz), read lazily; Kaldi data-dir conversion;
weighted mixing of several manifests.

FunASR jsonl, one JSON object a line:
    {"key": "utt1", "source": "wav/utt1.wav", "target": "hello world",
     "source_len": 312, "target_len": 2, "prompt": "...", "lang": "en"}
  required: key (str), source (str: audio path, relative paths resolve against the manifest's folder),
            target (non-empty str).
  optional: duration (seconds), source_len, target_len (int), prompt or task (str: task prompt override),
            lang / language / text_language (str), channel (int), start / end (seconds into the file).
  `source_len` follows FunASR's scp2jsonl convention: the number of 10 ms frames of the 16 kHz waveform
  (int(num_samples_16k * 1000 / 16000 / 10)), so a record without `duration` gets duration = source_len / 100 s.
  `duration` wins when both are present. Neither is required: fill_durations() probes file headers.

lhotse CutSet jsonl(.gz), one cut a line (read with json/gzip; lhotse is not imported): MonoCut (or a MultiCut
with one channel; several channels are averaged) with exactly one supervision, whose `text` is the target and
`language` the lang; the audio is the cut's recording `file` source, read from cut.start for cut.duration
seconds, on the cut's channel. Recording transforms other than Resample, URL/command/memory sources,
features-only cuts and MixedCuts are reported as bad records. A .gz manifest is decompressed once into a cache
folder ($LLMASR_CACHE_DIR or ~/.cache/llmasr/manifests) so lines can be read by offset.

Memory: a Manifest holds a byte-offset index (int64, one per line + 1) and a float32 duration per line (NaN where
unknown); records are parsed on access. It pickles without its file handle, so DataLoader workers reopen it.
"""

from __future__ import annotations

import array
import gzip
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FUNASR_FRAMES_PER_SECOND = 100.0  # source_len unit: 10 ms frames


class BadRecord(Exception):
    """One unusable manifest line: where it is, which utterance (if known) and why."""

    def __init__(self, manifest: str, line: int, reason: str, key: str | None = None):
        self.manifest = str(manifest)
        self.line = int(line)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.manifest}:{self.line}: {reason}")

    def __str__(self) -> str:
        return f"{self.manifest}:{self.line}: {self.reason}"

    def __reduce__(self):
        return (BadRecord, (self.manifest, self.line, self.reason, self.key))


@dataclass
class Utterance:
    key: str
    source: str
    target: str
    duration: float | None
    target_len: int | None
    prompt: str | None
    lang: str | None
    manifest: str
    line: int
    channel: int | None
    start: float = 0.0
    end: float | None = None


# ------------------------------------------------------------------------------------------------------ parsing


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Parser:
    def __init__(self, manifest: str, line: int, base: Path):
        self.manifest, self.line, self.base = manifest, line, base
        self.key: str | None = None

    def bad(self, reason: str) -> BadRecord:
        return BadRecord(self.manifest, self.line, reason, self.key)

    def resolve(self, source: str) -> str:
        p = Path(os.path.expanduser(source))
        return str(p if p.is_absolute() else self.base / p)

    def opt_str(self, rec: dict, *names: str) -> str | None:
        for name in names:
            if name in rec and rec[name] is not None:
                v = rec[name]
                if not isinstance(v, str):
                    raise self.bad(f"field '{name}' must be a string, got {type(v).__name__} {v!r:.60}")
                return v
        return None

    def opt_num(self, rec: dict, name: str, *, integer: bool = False, minimum: float = 0.0) -> float | None:
        if name not in rec or rec[name] is None:
            return None
        v = rec[name]
        if not _is_number(v) or (integer and isinstance(v, float) and not v.is_integer()):
            kind = "an integer" if integer else "a number"
            raise self.bad(f"field '{name}' must be {kind}, got {type(v).__name__} {v!r:.60}")
        if v < minimum:
            raise self.bad(f"field '{name}' must be >= {minimum:g}, got {v}")
        return v

    def target(self, value, name: str) -> str:
        if not isinstance(value, str):
            raise self.bad(f"field '{name}' is not text: got {type(value).__name__} {value!r:.60}")
        if not value.strip():
            raise self.bad(f"field '{name}' is empty")
        return value

    # FunASR jsonl ------------------------------------------------------------------------------------------
    def funasr(self, rec: dict) -> Utterance:
        for name in ("key", "source", "target"):
            if name not in rec:
                raise self.bad(f"missing field '{name}' (a FunASR jsonl record needs key, source, target)")
        key = rec["key"]
        if not isinstance(key, str) or not key:
            raise self.bad(f"field 'key' must be a non-empty string, got {type(key).__name__} {key!r:.60}")
        self.key = key
        source = rec["source"]
        if not isinstance(source, str) or not source.strip():
            raise self.bad(f"field 'source' must be an audio path (string), got {type(source).__name__} {source!r:.60}")
        target = self.target(rec["target"], "target")
        start = self.opt_num(rec, "start") or 0.0
        end = self.opt_num(rec, "end")
        if end is not None and end <= start:
            raise self.bad(f"'end' ({end}) must be after 'start' ({start})")
        duration = self.opt_num(rec, "duration")
        source_len = self.opt_num(rec, "source_len")
        if duration is None and end is not None:
            duration = end - start
        if duration is None and source_len is not None and source_len > 0:
            duration = source_len / FUNASR_FRAMES_PER_SECOND
        target_len = self.opt_num(rec, "target_len", integer=True)
        channel = self.opt_num(rec, "channel", integer=True)
        return Utterance(
            key=key,
            source=self.resolve(source),
            target=target,
            duration=float(duration) if duration is not None else None,
            target_len=int(target_len) if target_len is not None else None,
            prompt=self.opt_str(rec, "prompt", "task"),
            lang=self.opt_str(rec, "lang", "language", "text_language"),
            manifest=self.manifest,
            line=self.line,
            channel=int(channel) if channel is not None else None,
            start=float(start),
            end=float(end) if end is not None else None,
        )

    # lhotse cut --------------------------------------------------------------------------------------------
    def cut(self, rec: dict) -> Utterance:
        cut_id = rec.get("id")
        if not isinstance(cut_id, str) or not cut_id:
            raise self.bad(f"lhotse cut: field 'id' must be a non-empty string, got {cut_id!r:.60}")
        self.key = cut_id
        kind = rec.get("type", "MonoCut")
        if kind not in ("MonoCut", "MultiCut", "Cut", "DataCut"):
            raise self.bad(f"lhotse cut: type {kind!r} is not supported (only MonoCut / single-channel MultiCut)")
        sups = rec.get("supervisions")
        if not isinstance(sups, list):
            raise self.bad("lhotse cut: field 'supervisions' must be a list")
        if len(sups) != 1:
            raise self.bad(f"lhotse cut has {len(sups)} supervisions; expected exactly one")
        sup = sups[0]
        if not isinstance(sup, dict):
            raise self.bad("lhotse cut: the supervision is not an object")
        if "text" not in sup or sup["text"] is None:
            raise self.bad("lhotse cut: missing field 'supervisions[0].text'")
        target = self.target(sup["text"], "supervisions[0].text")
        recording = rec.get("recording")
        if not isinstance(recording, dict):
            raise self.bad("lhotse cut has no 'recording' (features-only cuts are not supported)")
        start = self.opt_num(rec, "start") or 0.0
        duration = self.opt_num(rec, "duration")
        if duration is None or duration <= 0:
            raise self.bad(f"lhotse cut: field 'duration' must be a positive number, got {rec.get('duration')!r}")
        for tr in recording.get("transforms") or []:
            name = tr.get("name") if isinstance(tr, dict) else tr
            if name != "Resample":  # resampling happens anyway, to the model's rate
                raise self.bad(f"lhotse recording transform {name!r} is not supported")
        channel = rec.get("channel", 0)
        if isinstance(channel, list):
            channel = channel[0] if len(channel) == 1 else None
        if channel is not None and not (isinstance(channel, int) and not isinstance(channel, bool)):
            raise self.bad(f"lhotse cut: field 'channel' must be an integer or list, got {channel!r:.60}")
        sources = recording.get("sources")
        if not isinstance(sources, list) or not sources:
            raise self.bad("lhotse recording has no 'sources'")
        chosen, file_channel = None, None
        for src in sources:
            if not isinstance(src, dict):
                raise self.bad("lhotse recording source is not an object")
            chans = src.get("channels") or [0]
            if channel is None or channel in chans:
                chosen = src
                if channel is not None and len(chans) > 1:
                    file_channel = chans.index(channel)
                elif channel is None and len(sources) > 1:
                    raise self.bad("lhotse cut mixes several channels spread over several files; not supported")
                break
        if chosen is None:
            raise self.bad(f"lhotse recording has no source for channel {channel}")
        if chosen.get("type") != "file":
            raise self.bad(f"lhotse recording source type {chosen.get('type')!r} is not supported (only 'file')")
        path = chosen.get("source")
        if not isinstance(path, str) or not path:
            raise self.bad("lhotse recording source has no file path")
        lang = sup.get("language")
        custom = sup.get("custom") if isinstance(sup.get("custom"), dict) else {}
        prompt = custom.get("prompt")
        return Utterance(
            key=cut_id,
            source=self.resolve(path),
            target=target,
            duration=float(duration),
            target_len=None,
            prompt=prompt if isinstance(prompt, str) else None,
            lang=lang if isinstance(lang, str) else None,
            manifest=self.manifest,
            line=self.line,
            channel=file_channel,
            start=float(start),
            end=float(start + duration),
        )


def _is_cut(rec: dict) -> bool:
    return "supervisions" in rec or "recording" in rec or str(rec.get("type", "")).endswith("Cut")


def parse_record(rec, *, manifest: str, line: int, base: Path) -> Utterance:
    """One decoded JSON value -> Utterance (FunASR record or lhotse cut), or BadRecord."""
    p = _Parser(manifest, line, base)
    if not isinstance(rec, dict):
        raise p.bad(f"expected a JSON object, got {type(rec).__name__}")
    if _is_cut(rec):
        return p.cut(rec)
    if "sources" in rec and "sampling_rate" in rec:
        raise p.bad("this is a lhotse recordings manifest; pass a cuts manifest (CutSet) instead")
    if "recording_id" in rec and "key" not in rec:
        raise p.bad("this is a lhotse supervisions manifest; pass a cuts manifest (CutSet) instead")
    return p.funasr(rec)


_FLAT_FIELD = re.compile(rb'"(duration|source_len|start|end)"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def _line_duration(raw: bytes) -> float:
    """Duration hint for one manifest line without a full JSON parse when the record is flat (FunASR jsonl):
    in JSON text, a quoted field name followed by ':' can only be a real key (quotes inside strings are
    escaped). Nested records (lhotse cuts) and anything unusual are parsed properly. NaN when unknown."""
    if raw.count(b"{") != 1 or b"[" in raw:
        if b'"duration"' in raw or b'"source_len"' in raw or b'"end"' in raw:
            return _record_duration(_loads_or_none(raw))
        return math.nan
    fields = dict(_FLAT_FIELD.findall(raw))
    try:
        if b"duration" in fields:
            d = float(fields[b"duration"])
            if 0 < d < math.inf:
                return d
        if b"end" in fields:
            e, s = float(fields[b"end"]), float(fields.get(b"start", 0.0))
            if s < e < math.inf:
                return e - s
        if b"source_len" in fields:
            n = float(fields[b"source_len"])
            return n / FUNASR_FRAMES_PER_SECOND if 0 < n < math.inf else math.nan
    except ValueError:
        return _record_duration(_loads_or_none(raw))
    if b'"duration"' in raw and b"duration" not in fields:  # not a plain number: let the full parse decide
        return _record_duration(_loads_or_none(raw))
    return math.nan


def _loads_or_none(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _record_duration(rec) -> float:
    """Cheap duration hint from a decoded record (NaN if unknown or malformed)."""
    if not isinstance(rec, dict):
        return math.nan
    d = rec.get("duration")
    if _is_number(d) and d > 0:
        return float(d)
    if _is_cut(rec):
        return math.nan
    s, e = rec.get("start", 0.0), rec.get("end")
    if _is_number(e) and _is_number(s) and e > s:
        return float(e - s)
    sl = rec.get("source_len")
    if _is_number(sl) and sl > 0:
        return float(sl) / FUNASR_FRAMES_PER_SECOND
    return math.nan


# ------------------------------------------------------------------------------------------------------ manifest


def _cache_dir() -> Path:
    return Path(os.environ.get("LLMASR_CACHE_DIR") or Path.home() / ".cache" / "llmasr") / "manifests"


def _decompressed(path: Path) -> Path:
    st = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = _cache_dir() / f"{path.name[:-3]}.{tag}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as dst, gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out)  # atomic: concurrent ranks all end with the same complete file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


class Manifest:
    """A lazily read jsonl manifest (FunASR records and/or lhotse cuts); see the module docstring."""

    def __init__(
        self, path: str | Path, data_path: Path, offsets: np.ndarray, linenos: np.ndarray | None, durations: np.ndarray
    ):
        self.path = str(path)
        self._data_path = str(data_path)
        self._base = Path(path).resolve().parent
        self._offsets = offsets  # int64 [N+1]: line i is bytes [offsets[i], offsets[i+1])
        self._linenos = linenos  # int64 [N] 1-based file line numbers, or None when line i is line i+1
        self._durations = durations  # float32 [N], NaN = unknown
        self._fd: int | None = None
        self._fd_pid: int | None = None

    @classmethod
    def open(cls, path: str | Path) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        data_path = _decompressed(path) if path.name.endswith(".gz") else path
        offsets = array.array("q", [0])  # 8 bytes a line while building, not a Python int each
        linenos = array.array("q")
        durations = array.array("f")
        saw_blank = False
        pos = 0
        with open(data_path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                stripped = raw.strip()
                if not stripped:
                    saw_blank = True
                    pos += len(raw)
                    if linenos:
                        offsets[-1] = pos  # trailing whitespace joins the previous line's span
                    else:
                        offsets[0] = pos
                    continue
                linenos.append(lineno)
                durations.append(_line_duration(stripped))
                pos += len(raw)
                offsets.append(pos)
        off = np.frombuffer(offsets, dtype=np.int64).copy()
        lines = np.frombuffer(linenos, dtype=np.int64).copy() if saw_blank else None
        return cls(path, data_path, off, lines, np.frombuffer(durations, dtype=np.float32).copy())

    # ------------------------------------------------------------------------------------------ sequence protocol
    def __len__(self) -> int:
        return int(self._offsets.shape[0] - 1)

    def lineno(self, i: int) -> int:
        return int(self._linenos[i]) if self._linenos is not None else int(i) + 1

    def _read(self, i: int) -> bytes:
        pid = os.getpid()
        if self._fd is None or self._fd_pid != pid:
            self._fd = os.open(self._data_path, os.O_RDONLY)
            self._fd_pid = pid
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return os.pread(self._fd, end - start, start)

    def __getitem__(self, i: int) -> Utterance:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.path}: index {i} out of range for {n} records")
        line = self.lineno(i)
        raw = self._read(i)
        try:
            rec = json.loads(raw)
        except UnicodeDecodeError as err:
            raise BadRecord(self.path, line, f"not UTF-8 text: {err}") from None
        except ValueError as err:
            raise BadRecord(self.path, line, f"malformed JSON: {err}") from None
        return parse_record(rec, manifest=self.path, line=line, base=self._base)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # ------------------------------------------------------------------------------------------------- durations
    def durations(self) -> np.ndarray:
        """float32 [N] seconds; NaN where the manifest does not say and fill_durations() has not probed."""
        return self._durations

    def fill_durations(self, probe: Callable[[str], float] | None = None) -> list[BadRecord]:
        """Probe the audio header of every record whose duration is unknown; returns the records that failed
        (malformed, or audio missing/unreadable/empty). Their duration stays NaN."""
        from llmasr.data.audio import AudioError, probe_duration

        probe = probe or probe_duration
        bad: list[BadRecord] = []
        for i in np.flatnonzero(np.isnan(self._durations)):
            try:
                utt = self[i]
            except BadRecord as err:
                bad.append(err)
                continue
            try:
                total = float(probe(utt.source))
            except AudioError as err:
                bad.append(BadRecord(self.path, utt.line, f"audio {err.path}: {err.reason}", utt.key))
                continue
            end = total if utt.end is None else min(utt.end, total)
            if end <= utt.start:
                bad.append(
                    BadRecord(
                        self.path, utt.line, f"start {utt.start}s is past the audio's end ({total:.3f}s)", utt.key
                    )
                )
                continue
            self._durations[i] = end - utt.start
        return bad

    def scan(self) -> list[BadRecord]:
        """Parse every record (no audio access); returns the bad ones."""
        bad = []
        for i in range(len(self)):
            try:
                self[i]
            except BadRecord as err:
                bad.append(err)
        return bad

    def epoch_indices(self, epoch: int, seed: int) -> np.ndarray:
        """Every index once (same interface as MixedManifest)."""
        return np.arange(len(self), dtype=np.int64)

    # ----------------------------------------------------------------------------------------------------- pickle
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_fd_pid"] = None
        return state

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None and self._fd_pid == os.getpid():
            try:
                os.close(fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"Manifest({self.path!r}, {len(self)} records)"


# ------------------------------------------------------------------------------------------------------- mixing


class MixedManifest:
    """Several manifests behind one index space, sampled with weights.

    Index space: manifest k's record j is index offsets[k] + j (len() = total records). `epoch_indices(epoch,
    seed)` gives the indices to visit in an epoch (grouped by manifest, not shuffled: the sampler shuffles).
    Weight w means w passes over that manifest per epoch in expectation: floor(w) full passes, plus a random
    subset of round(frac(w) * len) distinct records drawn afresh each epoch. So [1.0, 3.0] visits the second
    manifest three times per epoch, [1.0, 0.5] half of the second. Deterministic for (seed, epoch).
    """

    def __init__(self, manifests: Sequence[Manifest], weights: Sequence[float] | None = None):
        if not manifests:
            raise ValueError("MixedManifest needs at least one manifest")
        weights = [1.0] * len(manifests) if weights is None else [float(w) for w in weights]
        if len(weights) != len(manifests):
            raise ValueError(f"{len(manifests)} manifests but {len(weights)} weights")
        for w in weights:
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"manifest weights must be finite and >= 0, got {weights}")
        if sum(weights) <= 0:
            raise ValueError("at least one manifest weight must be > 0")
        self.manifests = list(manifests)
        self.weights = weights
        self.offsets = np.cumsum([0] + [len(m) for m in self.manifests]).astype(np.int64)
        self.path = ",".join(m.path for m in self.manifests)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Virtual index -> (manifest number, index in it)."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, i - int(self.offsets[k])

    def __getitem__(self, i: int) -> Utterance:
        k, j = self.locate(i)
        return self.manifests[k][j]

    def durations(self) -> np.ndarray:
        return np.concatenate([m.durations() for m in self.manifests]).astype(np.float32, copy=False)

    def fill_durations(self, probe: Callable[[str], float] | None = None) -> list[BadRecord]:
        bad: list[BadRecord] = []
        for m in self.manifests:
            bad.extend(m.fill_durations(probe))
        return bad

    def epoch_indices(self, epoch: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, 0x6D6978])
        parts = []
        for k, (m, w) in enumerate(zip(self.manifests, self.weights)):
            n = len(m)
            if n == 0 or w == 0:
                continue
            base = np.arange(n, dtype=np.int64) + self.offsets[k]
            full = int(math.floor(w))
            parts.extend([base] * full)
            extra = int(round((w - full) * n))
            if extra:
                parts.append(np.sort(rng.choice(base, size=extra, replace=False)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def __repr__(self) -> str:
        return f"MixedManifest({len(self.manifests)} manifests, {len(self)} records, weights={self.weights})"


# ---------------------------------------------------------------------------------------------- Kaldi data dirs


def _read_kaldi_table(path: Path, what: str, dups: list[BadRecord]) -> dict[str, tuple[int, str]]:
    table: dict[str, tuple[int, str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            key, value = parts[0], (parts[1].strip() if len(parts) > 1 else "")
            if key in table:
                dups.append(
                    BadRecord(
                        str(path),
                        lineno,
                        f"duplicate_keys: {what} key {key!r} repeated "
                        f"(first seen on line {table[key][0]}, which is kept)",
                        key,
                    )
                )
                continue
            table[key] = (lineno, value)
    return table


def kaldi_to_jsonl(
    wav_scp: str | Path,
    text: str | Path,
    out_jsonl: str | Path,
    *,
    segments: str | Path | None = None,
    base_dir: str | Path | None = None,
) -> dict:
    """Convert a Kaldi data dir (wav.scp + text [+ segments]) to FunASR-style jsonl.

    Relative audio paths in wav.scp are resolved against `base_dir` (default: the current directory, Kaldi's
    convention of running from the recipe folder) and written absolute. With `segments`, each segment becomes a
    record with start/end/duration (seconds into its recording; an end of -1 means "to the end of the file").

    Nothing is dropped silently. The returned dict has `written` and, for each reason a key is skipped, a count
    and the first five keys (`<reason>` and `<reason>_keys`):
      missing_text   audio (wav.scp / segments) but no transcript in `text`
      missing_audio  a transcript (or segment) whose audio key is not in wav.scp (or segments)
      empty_text     a transcript line with no words
      unsupported    wav.scp entries that are pipe commands (`... |`) or ark offsets, not plain paths
      bad_segments   segments lines that do not parse
      duplicate_keys a key repeated within one file (the first is kept)
    plus `problems`: the first 20 BadRecords (file:line: reason). Every reason is also logged once as a warning.
    """
    wav_scp, text, out_jsonl = Path(wav_scp), Path(text), Path(out_jsonl)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    problems: list[BadRecord] = []
    reasons = ("missing_text", "missing_audio", "empty_text", "unsupported", "bad_segments", "duplicate_keys")
    skipped: dict[str, list[str]] = {r: [] for r in reasons}

    def skip(reason: str, file: Path, lineno: int, key: str, detail: str) -> None:
        skipped[reason].append(key)
        problems.append(BadRecord(str(file), lineno, f"{reason}: {detail}", key))

    dups: list[BadRecord] = []
    wavs = _read_kaldi_table(wav_scp, "wav.scp", dups)
    texts = _read_kaldi_table(text, "text", dups)
    segs = _read_kaldi_table(Path(segments), "segments", dups) if segments is not None else {}
    problems.extend(dups)
    skipped["duplicate_keys"].extend(bad.key or "" for bad in dups)

    sources: dict[str, str] = {}
    for key, (lineno, value) in wavs.items():
        if not value:
            skip("unsupported", wav_scp, lineno, key, f"{key}: no audio path")
        elif value.endswith("|"):
            skip(
                "unsupported",
                wav_scp,
                lineno,
                key,
                f"{key}: pipe command {value[:60]!r} is not supported; convert the audio to files first",
            )
        elif ".ark:" in value or value.endswith(".ark"):
            skip("unsupported", wav_scp, lineno, key, f"{key}: Kaldi ark offsets are not supported")
        else:
            p = Path(os.path.expanduser(value))
            sources[key] = str(p if p.is_absolute() else (base / p).resolve())

    records: list[dict] = []
    if segments is None:
        for key, (lineno, _) in wavs.items():
            if key not in sources:
                continue
            if key not in texts:
                skip("missing_text", wav_scp, lineno, key, f"{key}: in wav.scp but not in {text.name}")
                continue
            records.append({"key": key, "source": sources[key]})
        for key, (lineno, _) in texts.items():
            if key not in wavs:
                skip("missing_audio", text, lineno, key, f"{key}: in {text.name} but not in wav.scp")
    else:
        segments = Path(segments)
        for seg, (lineno, value) in segs.items():
            parts = value.split()
            try:
                if len(parts) != 3:
                    raise ValueError
                rec_id, start, end = parts[0], float(parts[1]), float(parts[2])
                if start < 0 or (end != -1 and end <= start):
                    raise ValueError
            except ValueError:
                skip("bad_segments", segments, lineno, seg, f"{seg}: expected '<segment> <recording> <start> <end>'")
                continue
            if rec_id not in wavs:
                skip("missing_audio", segments, lineno, seg, f"{seg}: recording {rec_id!r} is not in wav.scp")
            elif rec_id not in sources:
                skip("unsupported", segments, lineno, seg, f"{seg}: recording {rec_id!r} has no readable path")
            elif seg not in texts:
                skip("missing_text", segments, lineno, seg, f"{seg}: in segments but not in {text.name}")
            else:
                r = {"key": seg, "source": sources[rec_id], "start": start}
                if end != -1:
                    r["end"] = end
                    r["duration"] = round(end - start, 6)
                records.append(r)
        for key, (lineno, _) in texts.items():
            if key not in segs:
                skip("missing_audio", text, lineno, key, f"{key}: in {text.name} but not in segments")

    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out_jsonl, "w", encoding="utf-8") as f:
        for r in records:
            lineno, target = texts[r["key"]]
            if not target.strip():
                skip("empty_text", text, lineno, r["key"], f"{r['key']}: empty transcript")
                continue
            rec = {"key": r.pop("key"), "source": r.pop("source"), "target": target, **r}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            written += 1

    counts: dict = {"written": written}
    for reason in reasons:
        keys = skipped[reason]
        counts[reason] = len(keys)
        counts[f"{reason}_keys"] = keys[:5]
        if keys:
            log.warning(
                "kaldi_to_jsonl: skipped %d key(s): %s (e.g. %s)",
                len(keys),
                reason.replace("_", " "),
                ", ".join(keys[:5]),
            )
    counts["problems"] = problems[:20]
    return counts
