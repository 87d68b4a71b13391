"""Where a decoding manifest's long utterances are cut, and which utterances the VAD gate silences
(llmasr.data.windowed holds the result).

    rules = WindowRules(max_seconds=20.0, overlap=1.0, speech_segments=vad, gate=True)
    windowed = split_long(manifest, indices, sample_rate=16000, rules=rules, share=PlanShare(rank, size, 4, gather))

Every utterance the rules must hear (longer than max_seconds, or any with a VAD gate) has its audio read once, before
batching, and its energies or the VAD's segments place the cuts. That is the slow part of a gated decode (the VAD
reads every recording of the test set), so it is shared: on N decode ranks each rank reads every N-th of those
utterances (longest first, so the shares cost about the same) with `workers` loader processes, and one gather gives
every rank the whole plan. Each utterance's plan depends on its audio alone: the shares and the workers change when
it is made, never what it is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import numpy as np

from llmasr.data.audio import AudioError, load_audio
from llmasr.data.long_audio import Window, plan_windows, segment_windows, speech_start
from llmasr.data.records import BadRecord
from llmasr.data.windowed import SILENT_ITEM_S, WindowedManifest
from llmasr.data.worker_map import worker_map
from llmasr.data.worker_start import fork_deadlock_warning

log = logging.getLogger("llmasr.data")


def _alone(obj) -> list:
    return [obj]


@dataclasses.dataclass(frozen=True)
class WindowRules:
    """How decoding cuts audio: windows of at most `max_seconds` that overlap by `overlap` where no pause lets them
    meet, ended at pauses of `split_pause` seconds (decode.window_split_pause; 0: only at the limit). `from_speech`
    (decode.trim_leading_silence): the windows cover the audio from where its speech starts
    (long_audio.speech_start), so a leading pause is neither decoded (a model decoding silence writes words) nor a
    reason to split audio whose speech fits one window. `speech_segments` (decode.vad): waveform -> its
    speech segments ((start, end) samples), and the windows are those segments (long_audio.segment_windows). `gate`
    (decode.vad_gate): every utterance meets the VAD, and one in which it finds no speech is silent (its first
    SILENT_ITEM_S seconds stand for it, their text replaced by nothing); without the gate such a long recording is cut
    by energies, with a warning. `merge_seconds` (decode.vad_merge_seconds): consecutive segments share a window while
    it spans at most that (long_audio.merge_segments)."""

    max_seconds: float = math.inf
    overlap: float = 0.0
    split_pause: float = 0.0
    from_speech: bool = False
    speech_segments: Callable | None = None
    gate: bool = False
    merge_seconds: float = 0.0

    @property
    def gated(self) -> bool:
        return self.gate and self.speech_segments is not None

    def hears(self, duration: float) -> bool:
        """Whether an utterance of `duration` seconds has its audio read to be planned."""
        return duration > self.max_seconds or self.gated


@dataclasses.dataclass(frozen=True)
class PlanShare:
    """Who reads which audio: this process is `rank` of `size` planners (decode ranks), reads its share with
    `workers` loader processes (0: in this one), and `gather(obj)` gives every rank's obj in rank order."""

    rank: int = 0
    size: int = 1
    workers: int = 0
    gather: Callable[[object], list] = _alone


def split_long(manifest, indices, *, sample_rate: int, rules: WindowRules, share: PlanShare = PlanShare()):
    """`manifest` as a WindowedManifest: every utterance among `indices` that `rules` cut replaced by its windows, the
    ones the gate silences marked; see the module docstring. An utterance whose record or audio cannot be read stays
    one item: loading it reports the same fault through the bad-data accounting, once."""
    durations = np.asarray(manifest.durations(), dtype=np.float64)
    heard = [int(i) for i in np.asarray(indices, dtype=np.int64) if rules.hears(durations[i])]
    plans: dict[int, tuple] = {}
    if heard:
        order = sorted(heard, key=lambda i: (-durations[i], i))
        mine = order[share.rank :: share.size]
        t0 = time.perf_counter()
        hazard = fork_deadlock_warning(share.size, share.workers) is not None
        own = dict(_read(manifest, mine, sample_rate, rules, share.workers, hazard))
        for part in share.gather(own) if share.size > 1 else [own]:
            plans.update(part)
        what = "for the VAD gate" if rules.gated else "to place the windows"
        here = f"{len(mine)} on this rank, " if share.size > 1 else ""
        log.info("read the audio of %d utterance(s) %s (%s%d worker(s)) in %.1f s", len(heard), what, here,
                 share.workers, time.perf_counter() - t0)  # fmt: skip
    windows = {i: p[0] for i, p in plans.items() if p is not None}
    lengths = {i: p[1] for i, p in plans.items() if p is not None}
    silent = {i for i, p in plans.items() if p is not None and p[2]}
    if windows.keys() - silent:
        n = sum(len(windows[i]) for i in windows.keys() - silent)
        log.info("long audio: %d utterance(s) longer than %g s are decoded in %d windows", len(windows) - len(silent),
                 rules.max_seconds, n)  # fmt: skip
    if silent:
        log.info("VAD: no speech in %d utterance(s); their transcripts are empty", len(silent))
    return WindowedManifest(manifest, windows, sample_rate, lengths, silent)


def _read(manifest, indices: list[int], sample_rate: int, rules: WindowRules, workers: int, hazard: bool):
    def plan(i: int) -> tuple[int, tuple | None]:
        return i, plan_utterance(manifest, i, sample_rate, rules)

    return worker_map(plan, indices, workers, hazard)


def plan_utterance(manifest, i: int, sample_rate: int, rules: WindowRules) -> tuple | None:
    """Utterance i's plan: (its windows, its length in samples, whether the gate silences it), or None when it is
    decoded whole (its audio fits max_seconds, or its record or audio cannot be read). The audio's own length
    decides, not the manifest's duration: a gated utterance is read whatever its line says."""
    try:
        utt = manifest[i]
        wave = load_audio(utt.source, sample_rate=sample_rate, start=utt.start, end=utt.end, channel=utt.channel)
    except (BadRecord, AudioError):
        return None  # loading the item reports it
    segments = None if rules.speech_segments is None else rules.speech_segments(wave)
    if rules.gated and not segments:  # its row needs an item; what the model makes of it is dropped: a short one
        return [Window(0, min(wave.size, int(SILENT_ITEM_S * sample_rate)))], len(wave), True
    if not len(wave) > rules.max_seconds * sample_rate:
        return None
    planned = _plan(wave, sample_rate, rules, segments, f"{utt.key} (line {manifest.lineno(i)})")
    return None if planned is None else (planned, len(wave), False)


def _plan(wave, sample_rate: int, rules: WindowRules, segments, where: str) -> list | None:
    """The windows of one long recording, None when it is decoded whole; `segments`: the VAD's, or None."""
    limits = (rules.max_seconds, rules.overlap, rules.split_pause)
    if segments is not None:
        planned = segment_windows(wave, sample_rate, segments, *limits, merge_seconds=rules.merge_seconds)
        if planned:
            return None if [(w.start, w.end) for w in planned] == [(0, len(wave))] else planned
        log.warning("long audio: the VAD finds no speech in %s; it is cut by energies", where)
    skip = speech_start(wave, sample_rate) if rules.from_speech else 0
    planned = plan_windows(wave[skip:], sample_rate, *limits)
    # one window to the end: a leading pause alone is the loader's to trim (from_speech); one that ends before it
    # leaves out a pause that runs to the end, which decoded whole would be heard past the limit (words into silence)
    if len(planned) == 1 and planned[0].end == len(wave) - skip:
        return None
    return [dataclasses.replace(w, start=w.start + skip, end=w.end + skip) for w in planned]
