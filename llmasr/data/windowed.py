"""A decoding manifest whose long utterances stand as their windows (llmasr.data.long_audio), so that each window
is read, featurised and batched exactly like an utterance of its own length and batches mix windows with short
utterances; and the way back, from decoded items to one row per utterance.

    windowed = split_long(manifest, indices, sample_rate=16000, rules=WindowRules(20.0, 1.0))  # data.window_plan
    windowed[j]            the Utterance of item j: its utterance's record with start/end/duration of the window
    windowed.origin[j]     the index in `manifest` of the utterance item j belongs to
    windowed.windows[i]    the Windows utterance i was cut into (one covering it all when it fits)

An utterance in which a VAD gate finds no speech is in `windowed.silent`: its rows get an empty transcript
(utterance_rows), marked `no_speech`; one whose every window the CTC gate emptied (models.ctc_gate) is marked
`no_speech` and `ctc_gated`, one with only some emptied (or, the gate off, that it would empty) counts them. An
utterance whose record or audio cannot be read stays one item: loading it reports the same fault through the
bad-data accounting, once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from llmasr.data.bad_data import BadDataTracker
from llmasr.data.long_audio import Window
from llmasr.data.window_join import join_texts, join_words, last_ms

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


# -- back from items to utterances -------------------------------------------------------------------------------
def utterance_rows(items: dict[int, dict], manifest, overlap: float) -> list[dict]:
    """Decoded rows by item index ({key, ref, hyp, ctc_hyp, truncated, duration, ...}) -> one row per utterance in
    manifest order, with `windows` (how many it was decoded in): the windows' texts joined (join_texts) and, when
    rows have `timestamps`, their word times in the utterance's time (join_words), where they have `logprob` (the
    LLM's log-probability of the text, over `logprob_tokens` tokens) the windows' sums, the first guard that ended one
    of them, the utterance's own duration, the rest as its first window has them. An utterance missing a window (the
    window was bad data) has no row: utterance_tracker counts it."""
    if not isinstance(manifest, WindowedManifest):
        return [{**items[j], "windows": 1} for j in sorted(items)]
    rows = []
    for i, row in _joined_rows(items, manifest, overlap):
        if i in manifest.silent:  # the VAD's gate, whatever the CTC gate made of the piece that stood for it
            for key in ("ctc_gated", "ctc_gated_windows", "ctc_empty_windows", "hyp_ctc_gated"):
                row.pop(key, None)
            row.update(hyp="", ctc_hyp=None if row["ctc_hyp"] is None else "", truncated=None, no_speech=True)
            if "timestamps" in row:
                row["timestamps"] = []
            if "logprob" in row:  # no text the LLM wrote: none to be sure of
                row.update(logprob=None, logprob_tokens=0)
            row.pop("window_parts", None)
        rows.append(row)
    return rows


def cut_to_one_window(rows: list[dict], manifest) -> int:
    """How many of utterance_rows' `rows` were decoded in one window that leaves part of their audio out: a long
    utterance whose speech fits the limit, the pause past it (to its end, or the VAD's non-speech) not decoded
    (llmasr.data.window_plan). A row's `index` is its first item's."""
    if not isinstance(manifest, WindowedManifest):
        return 0
    return sum(r["windows"] == 1 and not r.get("no_speech") and manifest.window(r["index"]) is not None for r in rows)


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
        seconds = manifest.lengths[i] / manifest.sample_rate
        ctc = None if got[0]["ctc_hyp"] is None else join_texts([g["ctc_hyp"] for g in got], flags, overlap)
        if "timestamps" in got[0]:  # each window's times from its own start, then cut where the texts are cut
            starts = [w.start / manifest.sample_rate for w in windows]  # in the utterance's time
            timed = join_words([g["hyp"] for g in got], [g["timestamps"] for g in got], starts, flags, overlap, seconds)
            got[0] = {**got[0], "timestamps": timed}
        parts = _window_parts(windows, got, manifest.sample_rate, seconds) if len(got) > 1 else None
        if "logprob" in got[0]:  # every window's tokens as written (the join's cuts in overlaps not taken out)
            sums = [g["logprob"] for g in got if g["logprob"] is not None]  # None: a window the CTC gate emptied
            total = sum(g["logprob_tokens"] for g in got)
            got[0] = {**got[0], "logprob": sum(sums) if sums else None, "logprob_tokens": total}
        if parts:
            got[0]["window_parts"] = parts
        emptied = all(g.get("ctc_gated") for g in got)  # the CTC gate emptied every window: the utterance as one
        got[0] = {k: v for k, v in got[0].items() if k not in ("no_speech", "ctc_gated")}
        if emptied:
            got[0].update(no_speech=True, ctc_gated=True)
        got[0].update(_gated_windows(got, flags, overlap, emptied))
        rows.append((i, {
            **got[0], "hyp": join_texts([g["hyp"] for g in got], flags, overlap), "ctc_hyp": ctc,
            "truncated": next((g["truncated"] for g in got if g["truncated"]), None),
            "duration": manifest.lengths[i] / manifest.sample_rate, "windows": len(windows),
        }))  # fmt: skip
    return rows


def _window_parts(windows: list, got: list[dict], sample_rate: int, seconds: float) -> list[dict]:
    """Each window's own decode, in the utterance's time (seconds to the millisecond, none past its `seconds`: a
    window's span as results.jsonl states it lies in the audio): its texts, the guard that ended it, whether the CTC
    gate emptied it, its log-probability where computed, and `cut_in_speech` where a neighbour overlaps it (cut
    without a pause: a word at that edge may be heard in part). One unsure window is lost in an hour's mean, and a
    long recording becomes training lines a window each (llmasr.export.pseudo_labels)."""
    parts, cap = [], last_ms(seconds)
    for k, (w, g) in enumerate(zip(windows, got)):
        cut = w.overlapped or (k + 1 < len(windows) and windows[k + 1].overlapped)
        start, end = (min(round(t / sample_rate, 3), cap) for t in (w.start, w.end))
        part = {"start": start, "end": end, "hyp": g["hyp"], "ctc_hyp": g["ctc_hyp"],
                "truncated": g["truncated"], "ctc_gated": bool(g.get("ctc_gated")), "cut_in_speech": cut}  # fmt: skip
        if "logprob" in g:
            part.update(logprob=g["logprob"], logprob_tokens=g["logprob_tokens"])
        parts.append(part)
    return parts


def window_texts(parts: list[dict], hyp_key: str) -> list[dict]:
    """results.jsonl's `window_texts` of a row decoded in windows (its `window_parts`): each window's start and end
    (s), its text of the branch written (`hyp_key`), and what pseudo-labels judge a window by."""
    rows = []
    for p in parts:
        row = {"start": round(p["start"], 3), "end": round(p["end"], 3), "hyp": p[hyp_key]}
        if hyp_key == "hyp":
            row.update(truncated=p["truncated"], ctc_gated=p["ctc_gated"])
        row["cut_in_speech"] = p["cut_in_speech"]
        rows.append(row)
    return rows


def _gated_windows(got: list[dict], flags: list, overlap: float, emptied: bool) -> dict:
    """What the CTC gate did, or would do, to some of an utterance's windows, the rest heard (decode_gate counts it):
    `ctc_gated_windows`, those it emptied; with the gate off `ctc_empty_windows`, those whose CTC best path is empty
    while the LLM wrote words there, and `hyp_ctc_gated`, the utterance's text with them emptied."""
    gated = sum(bool(g.get("ctc_gated")) for g in got)
    if gated and not emptied:
        return {"ctc_gated_windows": gated}
    silent = [g["ctc_hyp"] is not None and not g["ctc_hyp"].strip() for g in got]
    would = [s and bool(g["hyp"].strip()) for s, g in zip(silent, got)]
    if gated or not any(would) or all(silent):  # all silent: the utterance's own CTC text is empty, counted as one
        return {}
    texts = ["" if w else g["hyp"] for w, g in zip(would, got)]
    return {"ctc_empty_windows": sum(would), "hyp_ctc_gated": join_texts(texts, flags, overlap)}


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
