"""Speech manifests read lazily (FunASR jsonl, lhotse CutSet jsonl(.gz)); llmasr.data.mixed_manifest mixes several.

Record formats: see llmasr.data.records. Kaldi data dirs convert with llmasr.data.kaldi.kaldi_to_jsonl.

Memory: a Manifest holds a byte-offset index (int64, one per line + 1) and a float32 duration per line (NaN where
unknown); records are parsed on access. It pickles without its file handle, so DataLoader workers reopen it.
"""

from __future__ import annotations

import array
import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from llmasr.config_paths import file_problem
from llmasr.data.gz_copies import IncompleteGzip, decompressed
from llmasr.data.record_fields import is_cut, json_document
from llmasr.data.record_line import parse_line
from llmasr.data.records import BadRecord, Utterance, audio_reason, is_number
from llmasr.data.stated_duration import FUNASR_FRAMES_PER_SECOND, nano_speech_seconds
from llmasr.text_files import malformed_json, not_utf8, unique_keys

__all__ = ["BadRecord", "EmptyManifest", "Utterance", "Manifest"]


class EmptyManifest(ValueError):
    """A manifest without a single record."""


class BadManifest(ValueError):
    """A manifest file that cannot be read as one (a .gz cut short)."""


_FLAT_FIELD = re.compile(rb'"(duration|source_len|start|end)"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def _line_duration(raw: bytes) -> float:
    """Duration hint for one manifest line without a full JSON parse when the record is flat (FunASR jsonl):
    in JSON text, a quoted field name followed by ':' can only be a real key (quotes inside strings are
    escaped). Nested records (lhotse cuts) and anything unusual are parsed properly. NaN when unknown."""
    if raw.count(b"{") != 1 or b"[" in raw:
        if b'"duration"' in raw or b'"source_len"' in raw or b'"end"' in raw or b'"speech_length"' in raw:
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
        if b"source_len" in fields:  # the file's frames: what `start` leaves of them
            n = float(fields[b"source_len"]) / FUNASR_FRAMES_PER_SECOND - float(fields.get(b"start", 0.0))
            return n if 0 < n < math.inf else math.nan
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
    if is_cut(rec):  # what its one supervision covers, as the full parse cuts it
        sups = rec.get("supervisions")
        sup = sups[0] if isinstance(sups, list) and len(sups) == 1 and isinstance(sups[0], dict) else {}
        a, b = sup.get("start", 0.0), sup.get("duration")
        if not (is_number(d) and d > 0 and is_number(a) and (b is None or is_number(b))):
            return math.nan
        span = (d if b is None else min(d, a + b)) - max(0.0, a)
        return float(span) if span > 0 else math.nan
    if is_number(d) and d > 0:
        return float(d)
    n = rec.get("speech_length")
    if "messages" in rec and is_number(n) and n >= 1:
        return nano_speech_seconds(n)
    s, e = rec.get("start", 0.0), rec.get("end")
    if is_number(e) and is_number(s) and e > s:
        return float(e - s)
    sl = rec.get("source_len")
    if is_number(sl) and sl > 0 and is_number(s) and float(sl) / FUNASR_FRAMES_PER_SECOND > s:
        return float(sl) / FUNASR_FRAMES_PER_SECOND - float(s)
    return math.nan


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # a pair's half, or a lone one


def _lone_surrogate(value, name: str = "") -> str | None:
    """The field of a decoded record (`'target'`, `'messages'[1]['content']`) holding a lone surrogate, or None. JSON
    joins an escaped pair into its character; a lone half stays, and the tokenizer refuses it at loading, or writing
    hyp.txt and ref.txt fails after a whole decode."""
    if isinstance(value, str):
        return name or "value" if any("\ud800" <= c <= "\udfff" for c in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(k, str) and _lone_surrogate(k) is not None:
            return f"{name}[{k!r}] (its name)" if name else f"{k!r} (its name)"
        found = _lone_surrogate(v, f"{name}[{k!r}]" if name else repr(k))
        if found is not None:
            return found
    return None


def _cr_hint(raw: bytes) -> str:
    """What a carriage return inside a line that does not parse most likely means: a file with CR-only line ends
    (classic Mac editors), which reads as one line of several records."""
    if b"\r" not in raw.rstrip(b"\r\n"):
        return ""
    return " (the line holds a carriage return: a file with CR-only line ends reads as one line; convert them to \\n)"


def _repeated_field(path: str, line: int, key: str) -> BadRecord:
    return BadRecord(path, line, f"field {key!r} given twice (JSON would keep the last without a word)")


# ------------------------------------------------------------------------------------------------------ manifest


KALDI_FILES = ("wav.scp", "text", "segments", "utt2spk", "spk2utt", "utt2dur", "reco2dur")


def kaldi_folder_hint(path: Path) -> str:
    """Where `path` is a Kaldi data folder or one of its files (a wav.scp beside it), the command that writes its
    manifest; "" otherwise."""
    folder = path if path.is_dir() else path.parent
    if not (folder / "wav.scp").is_file() or (path != folder and path.name not in KALDI_FILES):
        return ""
    return f"; {folder} is a Kaldi data folder: `llmasr data kaldi {folder} OUT.jsonl` writes its manifest"


def manifest_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is no manifest file to read (config_paths.file_problem: an empty one too), with the command that
    writes one where it is a Kaldi data folder; None when it is a file."""
    why = file_problem(path, "manifest file")
    return None if why is None else why + (kaldi_folder_hint(Path(path)) if os.fspath(path) else "")


class Manifest:
    """A lazily read jsonl manifest (FunASR records and/or lhotse cuts); see the module docstring."""

    def __init__(
        self, path: str | Path, data_path: Path, offsets: np.ndarray, linenos: np.ndarray | None, durations: np.ndarray,
        need_target: bool = True, sha1: str | None = None,
    ):  # fmt: skip
        self.path = str(path)
        self.sha1 = sha1  # of the text read (decompressed): a resume names a manifest edited since its checkpoint
        self.need_target = need_target  # False (decoding): a line without a transcript is an utterance to transcribe
        self._data_path = str(data_path)
        self._base = Path(path).resolve().parent
        self._offsets = offsets  # int64 [N+1]: line i is bytes [offsets[i], offsets[i+1])
        self._linenos = linenos  # int64 [N] 1-based file line numbers, or None when line i is line i+1
        self._durations = durations  # float32 [N], NaN = unknown
        self._fd: int | None = None
        self._fd_pid: int | None = None

    @classmethod
    def open(cls, path: str | Path, *, need_target: bool = True) -> Manifest:
        path = Path(path)
        if path.is_dir():
            raise FileNotFoundError(f"{path}: a directory, not a manifest file{kaldi_folder_hint(path)}")
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        if hint := kaldi_folder_hint(path):
            raise BadManifest(f"manifest {path}: a Kaldi data file, not a jsonl manifest{hint}")
        try:
            data_path = decompressed(path) if path.name.endswith(".gz") else path
        except IncompleteGzip as err:
            raise BadManifest(f"manifest {path}: {err}") from None
        offsets = array.array("q", [0])  # 8 bytes a line while building, not a Python int each
        linenos = array.array("q")
        durations = array.array("f")
        saw_blank = False
        pos = 0
        digest = hashlib.sha1()
        with open(data_path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                digest.update(raw)
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
        if not linenos:  # a wrong path or a failed export upstream, never a set to train on or decode
            raise EmptyManifest(f"manifest {path}: no records (the file is empty or holds only blank lines)")
        with open(data_path, "rb") as f:
            f.seek(offsets[0])
            if why := json_document(f.readline(4096)):
                raise BadManifest(f"manifest {path}: {why}")
        off = np.frombuffer(offsets, dtype=np.int64).copy()
        lines = np.frombuffer(linenos, dtype=np.int64).copy() if saw_blank else None
        durations = np.frombuffer(durations, dtype=np.float32).copy()
        return cls(path, data_path, off, lines, durations, need_target, digest.hexdigest())

    # ------------------------------------------------------------------------------------------ sequence protocol
    def __len__(self) -> int:
        return int(self._offsets.shape[0] - 1)

    def lineno(self, i: int) -> int:
        return int(self._linenos[i]) if self._linenos is not None else int(i) + 1

    def index_of_line(self, line: int) -> int | None:
        """The record on file line `line` (1-based), None where that line is blank or past the end."""
        if self._linenos is None:
            return line - 1 if 1 <= line <= len(self) else None
        i = int(np.searchsorted(self._linenos, line))
        return i if i < len(self) and int(self._linenos[i]) == line else None

    def _read(self, i: int) -> bytes:
        pid = os.getpid()
        if self._fd is None or self._fd_pid != pid:
            self._fd = os.open(self._data_path, os.O_RDONLY)
            self._fd_pid = pid
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return os.pread(self._fd, end - start, start)

    def raw_line(self, i: int) -> bytes:
        """Line `i` as the file holds it, without its line end."""
        return self._read(int(i)).rstrip(b"\r\n")

    def __getitem__(self, i: int) -> Utterance:
        return self.parsed(i)[1]

    def parsed(self, i: int) -> tuple[dict, Utterance]:
        """Line `i` as decoded JSON, and its Utterance (or BadRecord)."""
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.path}: index {i} out of range for {n} records")
        line = self.lineno(i)
        raw = self._read(i)
        refuse = functools.partial(_repeated_field, self.path, line)
        try:  # a field given twice: JSON would keep the last without a word
            rec = json.loads(raw, object_pairs_hook=functools.partial(unique_keys, refuse))
        except UnicodeDecodeError as err:
            raise BadRecord(self.path, line, not_utf8(err, self.path)) from None
        except ValueError as err:
            raise BadRecord(self.path, line, f"{malformed_json(err)}{_cr_hint(raw)}") from None
        if _SURROGATE_ESCAPE.search(raw) and (field := _lone_surrogate(rec)) is not None:
            key = rec.get("key") if isinstance(rec, dict) and field != "'key'" else None
            raise BadRecord(self.path, line, f"field {field} holds a lone surrogate (a \\ud800-\\udfff escape "
                            "without its pair): no text a tokenizer reads or a UTF-8 file holds",
                            key if isinstance(key, str) else None)  # fmt: skip
        return rec, parse_line(rec, manifest=self.path, line=line, base=self._base, need_target=self.need_target)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # ------------------------------------------------------------------------------------------------- durations
    def durations(self) -> np.ndarray:
        """float32 [N] seconds; NaN where the manifest does not say and fill_durations() has not probed."""
        return self._durations

    def line_bytes(self) -> np.ndarray:
        """int64 [N]: each line's length in bytes, from the index (what a line holds is at most that)."""
        return np.diff(self._offsets)

    def fill_durations(self, indices: np.ndarray | None = None) -> list[BadRecord]:
        """Probe the audio header of every record whose duration is unknown (of `indices`, when given), as loading
        reads it (its channel, its span: llmasr.data.audio.probe_span); returns the records that failed (malformed,
        or audio missing, unreadable, empty, without the channel, or not holding the span). Their duration stays
        NaN."""
        from llmasr.data.audio import AudioError, probe_span

        bad: list[BadRecord] = []
        unknown = np.isnan(self._durations)
        if indices is not None:
            asked = np.zeros_like(unknown)
            asked[np.asarray(indices, dtype=np.int64)] = True
            unknown &= asked
        for i in np.flatnonzero(unknown):
            try:
                utt = self[i]
            except BadRecord as err:
                bad.append(err)
                continue
            try:
                _, seconds = probe_span(utt.source, utt.start, utt.end, utt.channel)
            except AudioError as err:  # a missing file says what its path may have meant, as the screen does
                bad.append(BadRecord(self.path, utt.line, audio_reason(err, utt), utt.key))
                continue
            self._durations[i] = seconds
        return bad

    def set_durations(self, indices: np.ndarray, seconds: np.ndarray) -> None:
        """Durations of records `indices` probed elsewhere (another rank's share of the screen)."""
        self._durations[np.asarray(indices, dtype=np.int64)] = seconds

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
