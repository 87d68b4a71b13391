"""A decoding manifest whose long utterances stand as their windows (llmasr.data.long_audio), so that each window
is read, featurised and batched exactly like an utterance of its own length and batches mix windows with short
utterances.

    windowed = split_long(manifest, indices, sample_rate=16000, max_seconds=20.0, overlap=1.0)
    windowed[j]            the Utterance of item j: its utterance's record with start/end/duration of the window
    windowed.origin[j]     the index in `manifest` of the utterance item j belongs to
    windowed.windows[i]    the Windows utterance i was cut into (one covering it all when it fits)

The audio of every utterance longer than `max_seconds` is read once here, in the main process, to place the cuts
(its energies, or a VAD's segments, decide them); with a VAD gate, every utterance's audio is, and an utterance in
which the VAD finds no speech is in `windowed.silent`: its rows get an empty transcript (utterance_rows). An
utterance whose record or audio cannot be read stays one item: loading it reports the same fault through the
bad-data accounting, once.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from llmasr.data.audio import AudioError, load_audio
from llmasr.data.bad_data import BadDataTracker
from llmasr.data.long_audio import Window, join_texts, join_words, plan_windows, segment_windows, speech_start
from llmasr.data.records import BadRecord

log = logging.getLogger("llmasr.data")
SILENT_ITEM_S = 0.5  # the piece of an utterance without speech that stands for it in the batches


class WindowedManifest:
    """The items of a base manifest with long utterances replaced by their windows (see the module docstring)."""

    def __init__(
        self, base, windows: dict[int, list[Window]], sample_rate: int, lengths: dict[int, int] | None = None,
        silent: set[int] = frozenset(),
    ):  # fmt: skip
        self.base, self.windows, self.sample_rate, self.silent = base, windows, int(sample_rate), set(silent)
        # samples of each windowed utterance (its windows need not reach its end: VAD segments skip the silence)
        self.lengths = lengths if lengths is not None else {i: w[-1].end for i, w in windows.items()}
        self.path = getattr(base, "path", "?")
        origin, part = [], []
        for i in range(len(base)):
            k = len(windows.get(i, [None]))
            origin += [i] * k
            part += list(range(k)) if i in windows else [-1]
        self.origin = np.asarray(origin, dtype=np.int64)
        self.part = np.asarray(part, dtype=np.int64)  # window number, -1: the utterance whole
        base_durations = np.asarray(base.durations(), dtype=np.float64)
        self._durations = base_durations[self.origin]
        for j in np.flatnonzero(self.part >= 0):
            w = self.window(int(j))
            self._durations[j] = (w.end - w.start) / self.sample_rate

    def __len__(self) -> int:
        return int(self.origin.size)

    def window(self, j: int) -> Window | None:
        """The Window item j reads, or None when it is its utterance whole."""
        k = int(self.part[j])
        return None if k < 0 else self.windows[int(self.origin[j])][k]

    def __getitem__(self, j: int):
        utt = self.base[int(self.origin[j])]
        w = self.window(j)
        if w is None:
            return utt
        offset, start, end = float(utt.start or 0.0), w.start / self.sample_rate, w.end / self.sample_rate
        return dataclasses.replace(utt, start=offset + start, end=offset + end, duration=end - start)

    def durations(self) -> np.ndarray:
        return self._durations

    def lineno(self, j: int) -> int:
        return self.base.lineno(int(self.origin[j]))

    def items_of(self, indices) -> np.ndarray:
        """The item indices of the base utterances `indices`."""
        return np.flatnonzero(np.isin(self.origin, np.asarray(indices, dtype=np.int64)))


def split_long(
    manifest, indices, *, sample_rate: int, max_seconds: float, overlap: float, split_pause: float = 0.0,
    from_speech: bool = False, speech_segments=None, gate: bool = False,
) -> WindowedManifest:  # fmt: skip
    """`manifest` with every utterance among `indices` longer than `max_seconds` (by its known duration) replaced by
    its windows; see the module docstring. `from_speech` (decode.trim_leading_silence): the windows cover the audio
    from where its speech starts (long_audio.speech_start), so a leading pause is neither a window of its own (a
    model decoding silence writes words) nor a reason to split audio whose speech fits one window.
    `speech_segments` (decode.vad): waveform -> its speech segments ((start, end) samples); the windows are those
    segments (long_audio.segment_windows). `gate` (decode.vad_gate): every utterance meets the VAD, and one in which
    it finds no speech is `silent` (its first SILENT_ITEM_S seconds stand for it, their text replaced by nothing);
    without the gate such a long recording is cut by energies, with a warning."""
    durations = np.asarray(manifest.durations(), dtype=np.float64)
    windows: dict[int, list[Window]] = {}
    lengths: dict[int, int] = {}
    silent: set[int] = set()
    gate = gate and speech_segments is not None
    for i in np.asarray(indices, dtype=np.int64):
        if not (durations[i] > max_seconds or gate):
            continue
        try:
            utt = manifest[int(i)]
            wave = load_audio(utt.source, sample_rate=sample_rate, start=utt.start, end=utt.end, channel=utt.channel)
        except (BadRecord, AudioError):
            continue  # loading the item reports it
        segments = None if speech_segments is None else speech_segments(wave)
        if gate and not segments:  # its row needs an item; what the model makes of it is dropped, so a short one
            silent.add(int(i))
            windows[int(i)], lengths[int(i)] = [Window(0, min(wave.size, int(SILENT_ITEM_S * sample_rate)))], len(wave)
            continue
        if not durations[i] > max_seconds:
            continue
        planned = _plan(wave, sample_rate, (max_seconds, overlap, split_pause), from_speech, segments,
                        f"{utt.key} (line {manifest.lineno(int(i))})")  # fmt: skip
        if planned is not None:
            windows[int(i)], lengths[int(i)] = planned, len(wave)
    if windows:
        n = sum(len(w) for w in windows.values())
        log.info("long audio: %d utterance(s) longer than %g s are decoded in %d windows", len(windows), max_seconds, n)
    if silent:
        log.info("VAD: no speech in %d utterance(s); their transcripts are empty", len(silent))
    return WindowedManifest(manifest, windows, sample_rate, lengths, silent)


def _plan(wave, sample_rate: int, limits: tuple, from_speech: bool, segments, where: str) -> list | None:
    """The windows of one long recording (split_long's rules), None when it is decoded whole; `limits`: (max_seconds,
    overlap, split_pause); `segments`: the VAD's, or None."""
    if segments is not None:
        planned = segment_windows(wave, sample_rate, segments, *limits)
        if planned:
            return None if [(w.start, w.end) for w in planned] == [(0, len(wave))] else planned
        log.warning("long audio: the VAD finds no speech in %s; it is cut by energies", where)
    skip = speech_start(wave, sample_rate) if from_speech else 0
    planned = plan_windows(wave[skip:], sample_rate, *limits)
    if len(planned) == 1:  # a leading pause alone is the loader's to trim (from_speech)
        return None
    return [dataclasses.replace(w, start=w.start + skip, end=w.end + skip) for w in planned]


# -- back from items to utterances -------------------------------------------------------------------------------
def utterance_rows(items: dict[int, dict], manifest, overlap: float) -> list[dict]:
    """Decoded rows by item index ({key, ref, hyp, ctc_hyp, truncated, duration, ...}) -> one row per utterance in
    manifest order, with `windows` (how many it was decoded in): the windows' texts joined (join_texts) and, when
    rows have `timestamps`, their word times in the utterance's time (join_words), the first guard that ended one of
    them, the utterance's own duration, the rest as its first window has them. An utterance missing a window (the
    window was bad data) has no row: utterance_tracker counts it."""
    if not isinstance(manifest, WindowedManifest):
        return [{**items[j], "windows": 1} for j in sorted(items)]
    rows = []
    for i, row in _joined_rows(items, manifest, overlap):
        if i in manifest.silent:
            row.update(hyp="", ctc_hyp=None if row["ctc_hyp"] is None else "", truncated=None, no_speech=True)
            if "timestamps" in row:
                row["timestamps"] = []
        rows.append(row)
    return rows


def _joined_rows(items: dict[int, dict], manifest: WindowedManifest, overlap: float) -> list[tuple[int, dict]]:
    """(utterance index, its row) in manifest order (see utterance_rows)."""
    groups: dict[int, list[int]] = {}
    for j in sorted(items):
        groups.setdefault(int(manifest.origin[j]), []).append(j)
    rows = []
    for i, parts in sorted(groups.items()):
        windows = manifest.windows.get(i)
        if windows is None:
            rows.append((i, {**items[parts[0]], "windows": 1}))
            continue
        if len(parts) < len(windows):
            continue
        got = [items[j] for j in parts]  # item order is window order
        flags = [w.overlapped for w in windows]
        ctc = None if got[0]["ctc_hyp"] is None else join_texts([g["ctc_hyp"] for g in got], flags, overlap)
        if "timestamps" in got[0]:  # each window's times from its own start, then cut where the texts are cut
            starts = [w.start / manifest.sample_rate for w in windows]  # in the utterance's time
            timed = join_words([g["hyp"] for g in got], [g["timestamps"] for g in got], starts, flags, overlap)
            got[0] = {**got[0], "timestamps": timed}
        rows.append((i, {
            **got[0], "hyp": join_texts([g["hyp"] for g in got], flags, overlap), "ctc_hyp": ctc,
            "truncated": next((g["truncated"] for g in got if g["truncated"]), None),
            "duration": manifest.lengths[i] / manifest.sample_rate, "windows": len(windows),
        }))  # fmt: skip
    return rows


def utterance_tracker(tracker: BadDataTracker, manifest, decoded: int) -> BadDataTracker:
    """`tracker`'s bad-data accounting in utterances: the bad windows of one utterance count once, as that
    utterance, and `decoded` utterances are the good ones. Without windows, `tracker` itself."""
    if not isinstance(manifest, WindowedManifest):
        return tracker
    out = BadDataTracker(tracker.max_bad_fraction, name=tracker.name, keep_examples=len(manifest) + 1, enforce=False)
    seen = set()
    for rec in tracker.examples:  # every bad item (the decode loader keeps them all), in the order found
        index = int(rec.get("index", -1))
        if index >= 0:  # a loaded item: named by its utterance's index in the manifest
            rec = {**rec, "index": int(manifest.origin[index])}
        where = (rec.get("manifest"), rec.get("line"), rec.get("index"))
        if where not in seen:
            seen.add(where)
            out.add_static([rec], quiet=True)
    out.add_good(decoded)
    return out
