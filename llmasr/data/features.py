"""Waveform -> encoder input features, exactly as the encoder was trained on.

kind "fbank" (FunASR WavFrontend): Kaldi fbank (kaldi-native-fbank) on the waveform scaled by
`waveform_scale`, then low-frame-rate stacking (LFR m/n), then CMVN (x + shift) * scale from `cmvn_file`.
kind "whisper": Whisper's log-mel spectrogram, unpadded (the encoder pads to 30 s itself): the frames whose n_fft
window, centred on frame t's t * hop, reaches the clip (`num_frames`: ceil((N + n_fft // 2) / hop), at most the
window's). transformers' WhisperFeatureExtractor computes them over the clip zero-padded to the window, so the one or
two frames after ceil(N / hop) still hold the clip's last samples; every frame after them is the silence floor the
encoder pads with (WhisperAudioEncoder.prepare_features), and Whisper has no padding mask to ignore a difference.

LFR follows FunASR's `apply_lfr`: the first fbank frame is repeated (m-1)//2 times on the left, output frame i
stacks padded frames [i*n, i*n + m), frames past the end repeat the last fbank frame, and there are
ceil(T / n) output frames for T fbank frames.

Short clips (fbank): FunASR shrinks the window to a clip shorter than one window, and the FFT size is that window
rounded up to a power of two. A clip whose FFT leaves some mel bin without an FFT bin gives no frame here
(`num_frames` is 0 and the dataset reports the item as bad): recent kaldi-native-fbank releases refuse such options
and older ones fill the empty bins with log(epsilon). The limit follows from the options alone
(`frontend.fbank_min_samples`: 257 samples for 80 bins at 16 kHz).

Dither: Gaussian noise of standard deviation `dither` is added to the waveform before extraction. Fbank: in the
scaled, int16-like domain, with the library's own dither at 0; Kaldi draws fresh noise per frame, adding it once per
sample gives the same per-frame noise level (overlapping frames then share their noise). Whisper: in [-1, 1], on the
zero-padded waveform before the STFT, as transformers' WhisperFeatureExtractor adds its `dither`
(preprocessor_config.json's, 0 when absent); the frames after the clip stay the encoder's silence floor, not
dithered noise as transformers' are (the start-up says so: llmasr.models.start_notes.whisper_dither_note). Training
draws it from the caller's numpy Generator (a seeded run is reproducible). Validation and decoding dither too, as
FunASR's frontend does: without it a digitally silent frame reads log(epsilon), far below anything training showed
the model. Their noise is drawn from the audio itself (`content_rng`), so the same audio gives the same features
whatever batch, rank or position it comes in. (CMVN statistics are taken without dither: llmasr.data.cmvn.)
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from llmasr.data.frontend import FBANK_LOW_FREQ_HZ, FrontendConfig, fbank_min_samples, fbank_problem, read_kaldi_cmvn


def content_rng(waveform: np.ndarray) -> np.random.Generator:
    """The dither generator of audio heard outside training: seeded by the samples themselves."""
    return np.random.default_rng([0x11A5, zlib.crc32(np.ascontiguousarray(waveform, dtype=np.float32).data)])


def float_wave(waveform) -> np.ndarray:
    """`waveform` as float32, refused unless it holds floats: integer PCM would be scaled by waveform_scale a
    second time (int16 samples read 32768 times too loud)."""
    waveform = np.asarray(waveform)
    if not np.issubdtype(waveform.dtype, np.floating):
        raise TypeError(
            f"expected a float waveform in [-1, 1], got dtype {waveform.dtype}; pass float32 samples in [-1, 1] "
            "(integer PCM divided by its full scale, e.g. int16 / 32768)"
        )
    return np.asarray(waveform, dtype=np.float32)


@lru_cache(maxsize=8)
def _cached_cmvn(path: str) -> tuple[np.ndarray, np.ndarray]:
    shift, scale = read_kaldi_cmvn(path)
    shift.setflags(write=False)
    scale.setflags(write=False)
    return shift, scale


def apply_lfr(feats: np.ndarray, m: int, n: int) -> np.ndarray:
    """Low frame rate: [T, D] -> [ceil(T/n), m*D] (FunASR's padding convention, see the module docstring)."""
    if m == 1 and n == 1:
        return feats
    t, d = feats.shape
    if t == 0:
        return np.zeros((0, m * d), dtype=feats.dtype)
    left = (m - 1) // 2
    t_out = -(-t // n)
    # Row r of the left-padded sequence is feats[clip(r - left, 0, T-1)]: left pad repeats the first frame,
    # rows past the end repeat the last one.
    rows = np.arange(t_out)[:, None] * n + np.arange(m)[None, :] - left
    np.clip(rows, 0, t - 1, out=rows)
    return feats[rows].reshape(t_out, m * d)


def lfr_num_frames(t: int, n: int) -> int:
    return -(-t // n) if t > 0 else 0


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    mel = 3.0 * f / 200.0
    logstep = 27.0 / np.log(6.4)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * logstep, mel)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f = 200.0 * mel / 3.0
    logstep = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(logstep * (mel - 15.0)), f)


@lru_cache(maxsize=8)
def whisper_mel_filters(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters [n_fft//2+1, n_mels] over 0 .. sample_rate/2 Hz
    (the same filters as Whisper / transformers' WhisperFeatureExtractor)."""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(sample_rate / 2), n_mels + 2)
    hz_pts = _mel_to_hz_slaney(mel_pts)
    diff = np.diff(hz_pts)
    slopes = hz_pts[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (hz_pts[2 : n_mels + 2] - hz_pts[:n_mels])
    return filters.astype(np.float32)


class FeatureExtractor:
    """Callable: float32 waveform in [-1, 1] at `frontend.sample_rate` -> float32 [T, frontend.feature_dim]."""

    def __init__(self, frontend: FrontendConfig):
        if frontend.kind not in ("fbank", "whisper"):
            raise ValueError(f"unknown frontend kind {frontend.kind!r}")
        problem = fbank_problem(frontend) if frontend.kind == "fbank" else None
        if problem is not None:  # checked here too: kaldi-native-fbank would raise per clip, or exit the process
            raise ValueError(f"fbank {problem[0]} {problem[1]}")
        self.frontend = frontend
        self.window_samples = int(frontend.sample_rate * frontend.frame_length_ms / 1000)
        self.shift_samples = int(frontend.sample_rate * frontend.frame_shift_ms / 1000)
        if frontend.kind == "whisper":
            # Whisper's STFT: n_fft-sample periodic Hann window, hop = frame_shift (160 at 16 kHz).
            self.window_samples = frontend.n_fft
            # The window the encoder pads to, and the frames it holds (those centred inside it).
            self.chunk_samples = int(round(frontend.chunk_seconds * frontend.sample_rate))
            self.chunk_frames = -(-self.chunk_samples // self.shift_samples)
        # Shortest clip that gives a frame: one whose every mel bin is filled (fbank_min_samples) and, without
        # snip_edges, that reaches the middle of the first frame shift. Any clip gives a Whisper frame.
        self.min_samples = 1
        if frontend.kind == "fbank":
            centred = 0 if frontend.snip_edges else self.shift_samples - self.shift_samples // 2
            self.min_samples = max(fbank_min_samples(frontend), centred)
        self._cmvn: tuple[np.ndarray, np.ndarray] | None = None
        if frontend.kind == "fbank" and frontend.cmvn_file is not None:
            self._cmvn = _cached_cmvn(str(frontend.cmvn_file))
            if self._cmvn[0].size != frontend.feature_dim:
                raise ValueError(
                    f"{frontend.cmvn_file}: CMVN has {self._cmvn[0].size} dims, features have {frontend.feature_dim}"
                )

    # ------------------------------------------------------------------------------------------------ frame counts
    def num_fbank_frames(self, num_samples: int) -> int:
        """Frames before LFR (fbank) or before nothing (whisper)."""
        fe = self.frontend
        if num_samples < self.min_samples:
            return 0
        if fe.kind == "whisper":
            # Every frame whose window (samples [t * hop - n_fft // 2, t * hop + n_fft // 2)) reaches the clip, within
            # the window: ceil(N / hop) left the last one or two of them to the silence floor. A clip longer than
            # the window counts on past it, and the encoder refuses it naming both counts.
            t = -(-(num_samples + fe.n_fft // 2) // self.shift_samples)
            return min(t, self.chunk_frames) if num_samples <= self.chunk_samples else t
        if fe.snip_edges:
            # FunASR shrinks the window to the whole clip when the clip is shorter than one window.
            if num_samples < self.window_samples:
                return 1
            return 1 + (num_samples - self.window_samples) // self.shift_samples
        return (num_samples + self.shift_samples // 2) // self.shift_samples

    def shortest_seconds(self) -> float:
        """The shortest audio the encoder can take: the fewest samples giving frontend.min_frames frames (its
        subsampling's need) less half a sample, so a stated duration rounded from that length passes."""
        need, lo, hi = max(1, self.frontend.min_frames), 1, self.min_samples
        while self.num_frames(hi) < need:
            hi *= 2
        while lo < hi:  # the frame count grows with the samples
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if self.num_frames(mid) < need else (lo, mid)
        return (lo - 0.5) / self.frontend.sample_rate

    def num_frames(self, num_samples: int) -> int:
        """Exact number of output frames for a waveform of `num_samples` samples (no features computed)."""
        t = self.num_fbank_frames(num_samples)
        if self.frontend.kind == "fbank":
            return lfr_num_frames(t, self.frontend.lfr_n)
        return t

    def too_short(self, num_samples: int, sped: str = "") -> str | None:
        """Why a clip of `num_samples` samples (at the frontend's rate) gives the encoder too few frames, or None:
        the one wording of `llmasr data check` and of loading. `sped`: what shortened it (speed perturbation)."""
        t, seconds = self.num_frames(num_samples), num_samples / self.frontend.sample_rate
        if t == 0:
            return (
                f"audio too short for one feature frame ({num_samples} samples = {seconds:.3f} s{sped}; the frontend "
                f"needs at least {self.min_samples})"
            )
        if t < self.frontend.min_frames:
            return (
                f"audio too short for the encoder ({t} feature frames = {seconds:.3f} s{sped}; its subsampling needs "
                f"at least {self.frontend.min_frames})"
            )
        return None

    # ---------------------------------------------------------------------------------------------------- features
    def __call__(self, waveform: np.ndarray, *, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
        """Features of `waveform`, dithered from `rng` in training, else from the audio itself (content_rng)."""
        waveform = float_wave(waveform)
        if waveform.ndim != 1:
            raise ValueError(f"expected a mono 1-D waveform, got shape {waveform.shape}")
        rng = rng if train else content_rng(waveform)
        if self.frontend.kind == "whisper":
            return self.whisper_logmel(waveform, dither=self.frontend.dither, rng=rng)
        feats = self.fbank(waveform, dither=self.frontend.dither, rng=rng)
        feats = apply_lfr(feats, self.frontend.lfr_m, self.frontend.lfr_n)
        if self._cmvn is not None:
            shift, scale = self._cmvn
            feats = (feats + shift) * scale
        return np.ascontiguousarray(feats, dtype=np.float32)

    def scaled_wave(
        self, waveform: np.ndarray, *, dither: float = 0.0, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """The waveform fbank reads: scaled by waveform_scale, plus `dither` times Gaussian noise from `rng`."""
        x = float_wave(waveform) * np.float32(self.frontend.waveform_scale)
        if dither > 0.0:
            gen = rng if rng is not None else np.random.default_rng()
            x = x + np.float32(dither) * gen.standard_normal(x.shape[0], dtype=np.float32)
        return x

    def fbank(self, waveform: np.ndarray, *, dither: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
        """Kaldi fbank [T, n_mels] (before LFR and CMVN)."""
        import kaldi_native_fbank as knf

        fe = self.frontend
        n = int(waveform.shape[0])
        if n < self.min_samples:  # too short for a frame with every mel bin filled: no frame at all
            return np.zeros((0, fe.n_mels), dtype=np.float32)
        x = self.scaled_wave(waveform, dither=dither, rng=rng)
        opts = knf.FbankOptions()
        fo = opts.frame_opts
        fo.samp_freq = float(fe.sample_rate)
        fo.frame_shift_ms = float(fe.frame_shift_ms)
        # FunASR: frame_length = min(frame_length, clip length), so a clip shorter than a window still gives a frame.
        fo.frame_length_ms = float(min(fe.frame_length_ms, n / fe.sample_rate * 1000))
        fo.dither = 0.0
        fo.window_type = fe.window
        fo.snip_edges = bool(fe.snip_edges)
        fo.preemph_coeff = 0.97
        fo.remove_dc_offset = True
        fo.round_to_power_of_two = True
        opts.mel_opts.num_bins = int(fe.n_mels)
        opts.mel_opts.low_freq = FBANK_LOW_FREQ_HZ
        opts.mel_opts.high_freq = 0.0
        opts.energy_floor = 0.0
        opts.use_energy = False
        opts.raw_energy = True
        opts.use_log_fbank = True
        opts.use_power = True
        fb = knf.OnlineFbank(opts)
        fb.accept_waveform(float(fe.sample_rate), x)
        fb.input_finished()
        t = fb.num_frames_ready
        if t == 0:
            return np.zeros((0, fe.n_mels), dtype=np.float32)
        out = np.empty((t, fe.n_mels), dtype=np.float32)
        for i in range(t):
            out[i] = fb.get_frame(i)
        return out

    def whisper_logmel(
        self, waveform: np.ndarray, *, dither: float = 0.0, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Whisper log-mel [num_frames(N), n_mels] for the unpadded waveform, plus `dither` times Gaussian noise
        from `rng` on the zero-padded waveform (transformers adds it to the padded audio before the STFT).

        Equal to the first num_frames(N) frames of transformers' WhisperFeatureExtractor output (which pads the
        audio with zeros to the window first): the audio is zero-padded on the right here too, so the frames at the
        end see the same zeros (for audio that nearly fills the window, the window's own end), and the max used for the
        8-decade dynamic-range floor is taken over the same values (not over the STFT's last frame, which
        transformers drops).
        """
        import torch

        fe = self.frontend
        n_fft, hop = fe.n_fft, self.shift_samples
        n = int(waveform.shape[0])
        t_out = self.num_frames(n)
        if n == 0:
            return np.zeros((0, fe.n_mels), dtype=np.float32)
        pad = n_fft + hop  # covers every frame that touches the audio, plus at least one all-zero frame
        window = self.chunk_samples
        # transformers pads to the window alone, and the last frames reflect that end: audio within `pad` of it too
        size = window if window - pad < n <= window else n + pad
        x = np.zeros(size, dtype=np.float32)
        x[:n] = waveform
        if dither > 0.0:
            gen = rng if rng is not None else np.random.default_rng()
            x += np.float32(dither) * gen.standard_normal(size, dtype=np.float32)
        with torch.no_grad():
            spec = torch.stft(
                torch.from_numpy(x),
                n_fft,
                hop,
                window=torch.hann_window(n_fft),
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            # transformers drops the STFT's last frame, the one centred on the window's end: not in the max either
            kept = spec.shape[-1] if n > window else self.chunk_frames
            power = spec[:, :kept].abs() ** 2  # [n_fft//2+1, frames]
            filters = torch.from_numpy(whisper_mel_filters(fe.n_mels, n_fft, fe.sample_rate))
            mel = filters.T @ power
            logmel = torch.clamp(mel, min=1e-10).log10()
            logmel = torch.maximum(logmel, logmel.max() - 8.0)
            logmel = (logmel + 4.0) / 4.0
        return np.ascontiguousarray(logmel[:, :t_out].T.numpy(), dtype=np.float32)
