"""Behind `llmasr data check --vad DIR`: where a manifest's transcripts and its audio disagree, as a VAD hears them.

Every usable line's audio goes through the VAD (`speech_segments`: waveform -> (start, end) samples), in loader
worker processes (llmasr.data.worker_map). Two findings come out, listed for review, not counted as bad lines (a VAD
misses whispered or distant speech, and a fast talker is no fault):
- a transcript over audio in which the VAD finds no speech: a wrong file, a silent recording, a label without its
  audio;
- a speaking rate far from the manifest's: characters of transcript (spaces left out) per second of speech more
  than RATE_FACTOR times the median or less than its 1/RATE_FACTOR: audio cut short or a transcript of something
  else. A line with less than MIN_SPEECH_S of speech has no rate.
The report also gives the share of the audio that is speech. A line without a transcript (a manifest to decode,
`--decode`) is heard too, apart: where the VAD finds no speech in it, `llmasr decode --vad` leaves its text empty
(its gate), which is listed, so that what the decode and its pseudo-labels will leave out is known before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmasr.data.audio import AudioError, load_audio
from llmasr.data.manifest import BadRecord, Manifest
from llmasr.data.worker_map import worker_map

RATE_FACTOR = 3.0
MIN_SPEECH_S = 0.3


@dataclass
class SpeechFindings:
    vad: str
    lines: int = 0  # lines heard (usable records whose audio loads)
    audio_seconds: float = 0.0
    speech_seconds: float = 0.0
    median_rate: float = math.nan  # characters per second of speech
    no_speech: list[dict] = field(default_factory=list)  # manifest, line, key, target
    # lines without a transcript (audio to decode): how many, their audio and speech seconds, those without speech
    untranscribed: int = 0
    untranscribed_audio_seconds: float = 0.0
    untranscribed_speech_seconds: float = 0.0
    silent: list[dict] = field(default_factory=list)  # manifest, line, key
    rate_outliers: list[dict] = field(default_factory=list)  # manifest, line, key, rate, speech_s, target

    def lines_of_report(self, max_examples: int) -> list[str]:
        share = self.speech_seconds / self.audio_seconds if self.audio_seconds else 0.0
        out = ["", f"## speech (the VAD {self.vad})"]
        rate = "n/a" if math.isnan(self.median_rate) else f"{self.median_rate:.1f} characters a second of speech"
        out.append(
            f"{self.lines} lines with a transcript heard: {self.speech_seconds / 3600:.2f} h of speech in "
            f"{self.audio_seconds / 3600:.2f} h of audio ({100 * share:.1f}%); median rate {rate}"
        )
        if self.untranscribed:
            audio = self.untranscribed_audio_seconds
            part = self.untranscribed_speech_seconds / audio if audio else 0.0
            out.append(
                f"{self.untranscribed} lines without a transcript heard: {self.untranscribed_speech_seconds / 3600:.2f}"
                f" h of speech in {self.untranscribed_audio_seconds / 3600:.2f} h of audio ({100 * part:.1f}%); "
                f"without speech, transcribed empty by `llmasr decode --vad` (its gate): {len(self.silent)}"
            )
            out += [f"  {f['manifest']}:{f['line']} key={f['key']}" for f in self.silent[:max_examples]]
        out.append(f"transcripts over audio without speech: {len(self.no_speech)}")
        out += [
            f"  {f['manifest']}:{f['line']} key={f['key']}: {f['target'][:60]!r}" for f in self.no_speech[:max_examples]
        ]
        out.append(
            f"speaking rates over {RATE_FACTOR:g}x or under 1/{RATE_FACTOR:g} of the median: {len(self.rate_outliers)}"
        )
        out += [
            f"  {f['manifest']}:{f['line']} key={f['key']}: {f['rate']:.1f} characters/s over {f['speech_s']:.2f} s of "
            f"speech: {f['target'][:60]!r}"
            for f in self.rate_outliers[:max_examples]
        ]
        return out


def hear_speech(
    manifest_paths: list[str], speech_segments: Callable, sample_rate: int, *, vad: str, workers: int = 0
) -> SpeechFindings:
    """The findings over every usable line of `manifest_paths`, those without a transcript apart (see the module
    docstring)."""
    found = SpeechFindings(vad=vad)
    heard = []  # (manifest, line, key, target, audio_s, speech_s)
    for path in manifest_paths:
        try:
            m = Manifest.open(path, need_target=False)
        except (OSError, ValueError):
            continue  # the check reports a manifest it cannot open

        def listen(i: int, m=m):
            try:
                utt = m[i]
                if isinstance(utt.target, str) and not utt.target.strip():
                    return None  # an empty reference: nothing to bear out
                wave = load_audio(
                    utt.source, sample_rate=sample_rate, start=utt.start, end=utt.end, channel=utt.channel
                )
            except (BadRecord, AudioError):
                return None  # a bad line: the check lists it
            speech = sum(b - a for a, b in speech_segments(wave)) / sample_rate
            return m.lineno(i), utt.key, utt.target, wave.size / sample_rate, speech

        for result in worker_map(listen, range(len(m)), workers):
            if result is not None:
                heard.append((path, *result))
    untranscribed = [h for h in heard if h[3] is None]
    found.untranscribed = len(untranscribed)
    found.untranscribed_audio_seconds = float(sum(h[4] for h in untranscribed))
    found.untranscribed_speech_seconds = float(sum(h[5] for h in untranscribed))
    found.silent = [{"manifest": h[0], "line": h[1], "key": h[2]} for h in untranscribed if h[5] == 0]
    heard = [h for h in heard if h[3] is not None]
    found.lines = len(heard)
    found.audio_seconds = float(sum(h[4] for h in heard))
    found.speech_seconds = float(sum(h[5] for h in heard))
    rates = {k: len("".join(h[3].split())) / h[5] for k, h in enumerate(heard) if h[5] >= MIN_SPEECH_S}
    found.median_rate = float(np.median(list(rates.values()))) if rates else math.nan
    for k, (path, line, key, target, _, speech) in enumerate(heard):
        where = {"manifest": path, "line": line, "key": key, "target": target}
        if speech == 0:
            found.no_speech.append(where)
        elif k in rates and not found.median_rate / RATE_FACTOR <= rates[k] <= found.median_rate * RATE_FACTOR:
            found.rate_outliers.append({**where, "rate": rates[k], "speech_s": speech})
    return found
