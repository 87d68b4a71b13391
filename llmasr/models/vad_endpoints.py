"""Speech segments from a VAD's per-frame scores: the end-point rules of FunASR's FSMN VAD (FsmnVADStreaming), for
a whole recording at once, with the same segments as FunASR's offline `AutoModel(vad_model=...)` call.

Per frame (10 ms): the frame is speech when 1 - p(silence) >= p(silence) ** speech_2_noise_ratio + threshold (and its
energy passes decibel_thres and the running noise SNR passes snr_thres). A 200 ms window of frame decisions turns
silence into speech once 150 ms of it are speech, and speech into silence once no more than 150 ms are. A segment
starts `lookback_time_start_point` before the window that confirmed it (no earlier than the last segment's end), and
ends `lookahead_time_end_point` into a silence of `max_end_silence_time`; a segment reaching
`max_single_segment_time` is ended where it stands, and the recording's last frame ends the segment it is in.

FunASR's offline call reads the recording in 60 s chunks. Unless the caller fixes `max_end_silence_time`, it sets the
silence that ends a segment per chunk from how long the speech has gone on without a segment ending (2 s at the
start, down to 100 ms after minutes of unbroken speech: SILENCE_SCHEDULE) and takes a speech threshold of 0.5 in
place of the configured one; `EndpointDetector.run` reproduces that at the same frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

CHUNK_MS = 60000  # FunASR's offline VAD reads 60 s at a time; the silence schedule steps per chunk
# (speech so far without a segment ending, ms) -> silence that ends a segment (ms): FunASR's offline schedule.
SILENCE_SCHEDULE = (
    (10000, 2000),
    (20000, 1000),
    (30000, 800),
    (40000, 600),
    (50000, 400),
    (60000, 200),
    (math.inf, 100),
)
SCHEDULE_SPEECH_THRES = 0.5  # FunASR's speech threshold while the schedule is on
START, SPEECH, ENDED = 1, 2, 3  # FunASR's VadStateMachine
SINGLE_UTTERANCE = 0  # detect_mode: stop after the first segment (1: every segment)


@dataclass
class VadOptions:
    """FunASR's VADXOptions (config.yaml `model_conf`), the keys that change segments; others are ignored."""

    sample_rate: int = 16000
    detect_mode: int = 1
    max_end_silence_time: int = 800
    max_start_silence_time: int = 3000
    window_size_ms: int = 200
    sil_to_speech_time_thres: int = 150
    speech_to_sil_time_thres: int = 150
    speech_2_noise_ratio: float = 1.0
    do_extend: int = 1
    lookback_time_start_point: int = 200
    lookahead_time_end_point: int = 100
    max_single_segment_time: int = 60000
    snr_thres: float = -100.0
    noise_frame_num_used_for_snr: int = 100
    decibel_thres: float = -100.0
    speech_noise_thres: float = 0.6
    fe_prior_thres: float = 1e-4
    sil_pdf_ids: tuple[int, ...] = (0,)
    frame_in_ms: int = 10
    frame_length_ms: int = 25

    @classmethod
    def from_conf(cls, conf: dict) -> VadOptions:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in conf.items() if k in known}
        if "sil_pdf_ids" in values:
            values["sil_pdf_ids"] = tuple(int(i) for i in values["sil_pdf_ids"])
        return cls(**values)


class _Window:
    """The last window_size_ms of frame decisions, and whether they stand for speech or silence."""

    def __init__(self, opts: VadOptions):
        self.size = int(opts.window_size_ms / opts.frame_in_ms)
        self.to_speech = int(opts.sil_to_speech_time_thres / opts.frame_in_ms)
        self.to_silence = int(opts.speech_to_sil_time_thres / opts.frame_in_ms)
        self.reset()

    def reset(self) -> None:
        self.ring, self.pos, self.total, self.speech = [0] * self.size, 0, 0, False

    def push(self, is_speech: bool) -> str:
        """'sil2speech', 'speech2sil', 'speech' or 'sil': the window's state change at this frame."""
        self.total += int(is_speech) - self.ring[self.pos]
        self.ring[self.pos] = int(is_speech)
        self.pos = (self.pos + 1) % self.size
        if not self.speech and self.total >= self.to_speech:
            self.speech = True
            return "sil2speech"
        if self.speech and self.total <= self.to_silence:
            self.speech = False
            return "speech2sil"
        return "speech" if self.speech else "sil"


class EndpointDetector:
    """One recording's segments from per-frame silence probabilities and frame energies (see the module docstring)."""

    def __init__(self, opts: VadOptions, max_end_silence_ms: int | None = None):
        self.opts = opts
        self.scheduled = max_end_silence_ms is None  # FunASR: a caller's max_end_silence_time turns the schedule off
        end_silence = opts.max_end_silence_time if max_end_silence_ms is None else max_end_silence_ms
        self.end_silence_ms = end_silence - opts.speech_to_sil_time_thres
        self.speech_thres = opts.speech_noise_thres
        self.window = _Window(opts)
        lookback = int(opts.lookback_time_start_point / opts.frame_in_ms) if opts.do_extend else 0
        self.latency = self.window.size + lookback  # frames from a segment's first frame to its confirmation
        self.buf_start = 0  # first frame not yet given to a segment or to silence
        self.noise_db = -100.0
        self.ends_found = 0  # FunASR's number_end_time_detected: an empty decision counts too
        self.closed = 0  # segments ended
        self.segments: list[list[int]] = []  # [start_ms, end_ms]
        self._reset()

    def _reset(self) -> None:
        self.state = START
        self.silence_run = 0
        self.last_speech, self.last_silence = 0, -1
        self.start_frame, self.end_frame = -1, -1
        self.window.reset()

    # -- the whole recording --------------------------------------------------------------------------------------
    def run(self, sil_probs, decibels, chunk_ends: list[int]) -> list[list[int]]:
        """Segments [start_ms, end_ms] of a recording with these per-frame silence probabilities and energies (dB);
        `chunk_ends`: the frame count after each of FunASR's 60 s chunks (its last item is the frame count)."""
        total = len(sil_probs)
        speech_ms, in_speech, frame = 0, False, 0
        for end in chunk_ends:
            if self.scheduled:
                if self.state == SPEECH or in_speech:
                    speech_ms, in_speech = speech_ms + CHUNK_MS, True
                silence = next(s for limit, s in SILENCE_SCHEDULE if speech_ms <= limit)
                self.end_silence_ms = max(silence - self.opts.speech_to_sil_time_thres, 0)
                self.speech_thres = SCHEDULE_SPEECH_THRES
            before = self.closed
            for t in range(frame, end):
                if self.state == ENDED:  # a single-utterance detector that has its segment
                    break
                self._frame(self._is_speech(float(sil_probs[t]), float(decibels[t])), t, t == total - 1)
            frame = end
            if self.closed > before:  # FunASR restarts the schedule once a chunk gives a segment
                speech_ms, in_speech = 0, False
        return [list(s) for s in self.segments]

    def _is_speech(self, sil: float, db: float) -> bool:
        o = self.opts
        if db < o.decibel_thres:
            return False
        snr = db - self.noise_db
        # FunASR's arithmetic (log, then exp) so that a frame on the threshold goes the same way
        noise = math.exp(math.log(sil) * o.speech_2_noise_ratio) if sil > 0.0 else 0.0
        speech = math.exp(math.log(1.0 - sil)) if sil < 1.0 else 0.0
        if speech >= noise + self.speech_thres:
            return snr >= o.snr_thres and math.fabs(1.0) > o.fe_prior_thres  # db passed decibel_thres above
        n = o.noise_frame_num_used_for_snr
        self.noise_db = db if self.noise_db < -99.9 else (db + self.noise_db * (n - 1)) / n
        return False

    # -- FunASR's per-frame rules -----------------------------------------------------------------------------------
    def _frame(self, is_speech: bool, t: int, last: bool) -> None:
        change = self.window.push(is_speech)
        if change == "sil2speech":
            self.silence_run = 0
            if self.state == START:
                start = max(self.buf_start, t - self.latency)
                self._voice_start(start)
                self.state = SPEECH
                for f in range(start + 1, t + 1):
                    self._voice(f)
            elif self.state == SPEECH:
                for f in range(self.last_speech + 1, t):
                    self._voice(f)
                self._in_speech(t, last)
        elif change in ("speech2sil", "speech"):
            self.silence_run = 0
            if self.state == SPEECH:
                self._in_speech(t, last)
        else:
            self.silence_run += 1
            if self.state == START:
                self._silence_before_start(t, last)
            elif self.state == SPEECH:
                self._silence_in_speech(t, last)
        if self.state == ENDED and self.opts.detect_mode != SINGLE_UTTERANCE:
            self._reset()

    def _too_long(self, t: int) -> bool:
        return t - self.start_frame + 1 > self.opts.max_single_segment_time / self.opts.frame_in_ms

    def _in_speech(self, t: int, last: bool) -> None:
        if self._too_long(t):
            self._end(t)
        elif not last:
            self._voice(t)
        else:
            self._end(t)

    def _silence_before_start(self, t: int, last: bool) -> None:
        o = self.opts
        timed_out = o.detect_mode == SINGLE_UTTERANCE and self.silence_run * o.frame_in_ms > o.max_start_silence_time
        if timed_out or (last and self.ends_found == 0):
            for f in range(self.last_silence + 1, t):
                self._silence(f)
            if self.start_frame == -1:  # FunASR's empty decision: no segment, the detector stops
                self.start_frame = 0
            self._end(0, real=False)
        elif t >= self.latency:
            self._silence(t - self.latency)

    def _silence_in_speech(self, t: int, last: bool) -> None:
        o = self.opts
        if self.silence_run * o.frame_in_ms >= self.end_silence_ms:
            back = int(self.end_silence_ms / o.frame_in_ms)
            if o.do_extend:
                back = max(0, back - int(o.lookahead_time_end_point / o.frame_in_ms) - 1)
            self._end(t - back)
        elif self._too_long(t):
            self._end(t)
        elif o.do_extend and not last:
            if self.silence_run <= int(o.lookahead_time_end_point / o.frame_in_ms):
                self._voice(t)
        elif last:
            self._end(t)

    # -- frames into segments ----------------------------------------------------------------------------------------
    def _silence(self, t: int) -> None:
        self.last_silence = t
        if self.state == START:
            self.buf_start = max(self.buf_start, t)

    def _voice_start(self, t: int) -> None:
        if self.start_frame == -1:
            self.start_frame = t
        self._emit(self.start_frame, opens=True)

    def _voice(self, t: int) -> None:
        self.last_speech = t
        self._emit(t)

    def _end(self, t: int, real: bool = True) -> None:
        for f in range(self.last_speech + 1, t):
            self._voice(f)
        if self.end_frame == -1:
            self.end_frame = t
        if real:
            self._emit(self.end_frame)
            self.closed += 1
        self.ends_found += 1
        self.state = ENDED

    def _emit(self, t: int, opens: bool = False) -> None:
        """Frame t joins the open segment (`opens`: starts a new one)."""
        ms = self.opts.frame_in_ms
        self.buf_start = max(self.buf_start, t) + 1
        if opens or not self.segments:
            self.segments.append([t * ms, t * ms])
        self.segments[-1][1] = (t + 1) * ms
