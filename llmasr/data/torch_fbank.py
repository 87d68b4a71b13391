"""Kaldi fbank in torch, batched over a padded waveform batch, on whatever device the tensors are on.

The same computation as kaldi-native-fbank with the options `features.FeatureExtractor.fbank` sets (FunASR's
WavFrontend): per frame, DC removal, pre-emphasis 0.97, the analysis window, zero padding to a power of two, the
power spectrum, Kaldi's triangular mel bank (low edge FBANK_LOW_FREQ_HZ, upper edge Nyquist, no VTLN) and
log(max(energy, FLT_EPSILON)). Frames are cut as Kaldi cuts them: with snip_edges every frame lies inside the clip;
without it frame f is centred on f * shift + shift // 2 and samples outside the clip are reflected (Kaldi's
ExtractWindow). A clip shorter than one window gets one window of its own length (FunASR shrinks the window), so
such rows are computed in groups of equal window length. Window and shift sizes are computed in float32 as the
C++ code computes them, so the shrunk window has the same number of samples.

Frames whose samples are all equal hold nothing but float rounding once the DC offset is removed: on 16-bit PCM
samples (integers after scaling, summed exactly in float32) both give the log floor; on other float samples the
residue depends on the order of summation, so such frames can differ from kaldi-native-fbank (both far below any
sound; with dither, as in training, no frame is constant).

The input is the waveform already scaled by `waveform_scale` and dithered (`FeatureExtractor.scaled_wave`): the
noise is drawn per item in the data worker, so the device path sees the same noise as the CPU path.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from llmasr.data.frontend import FBANK_LOW_FREQ_HZ, FrontendConfig, fbank_min_samples

PREEMPH = 0.97
BLACKMAN_COEFF = 0.42
FLT_EPSILON = float(np.finfo(np.float32).eps)


def samples_of(sample_rate: float, ms: float) -> int:
    """int(samp_freq * 0.001f * ms) in float32, as kaldi-native-fbank's WindowSize/WindowShift compute it."""
    return int(np.float32(np.float32(sample_rate) * np.float32(0.001)) * np.float32(ms))


@lru_cache(maxsize=64)
def window_function(kind: str, length: int) -> np.ndarray:
    """Kaldi's FeatureWindowFunction of `length` samples (float64 maths, stored as float32 as Kaldi stores it)."""
    i = np.arange(length, dtype=np.float64)
    a = 2.0 * math.pi / (length - 1) if length > 1 else 0.0
    if kind == "hanning":
        w = 0.5 - 0.5 * np.cos(a * i)
    elif kind == "hann":  # kaldi-native-fbank's periodic Hann (torch.hann_window's), unlike Kaldi's "hanning"
        w = 0.5 - 0.5 * np.cos(2.0 * math.pi * i / length)
    elif kind == "sine":
        w = np.sin(0.5 * a * i)
    elif kind == "hamming":
        w = 0.54 - 0.46 * np.cos(a * i)
    elif kind == "povey":
        w = np.power(0.5 - 0.5 * np.cos(a * i), 0.85)
    elif kind == "rectangular":
        w = np.ones(length)
    elif kind == "blackman":
        w = BLACKMAN_COEFF - 0.5 * np.cos(a * i) + (0.5 - BLACKMAN_COEFF) * np.cos(2 * a * i)
    else:
        raise ValueError(f"fbank window {kind!r} is not a Kaldi window")
    return w.astype(np.float32)


def _mel32(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float32)
    return np.float32(1127.0) * np.log(np.float32(1.0) + hz / np.float32(700.0))


@lru_cache(maxsize=64)
def kaldi_mel_banks(n_mels: int, padded: int, sample_rate: float) -> np.ndarray:
    """Kaldi's MelBanks weights [padded // 2, n_mels] (float32 maths as in mel-computations.cc); the Nyquist bin
    has no weight in Kaldi and is left out."""
    nyquist = np.float32(0.5) * np.float32(sample_rate)
    lo, hi = _mel32(np.float32(FBANK_LOW_FREQ_HZ)), _mel32(nyquist)
    delta = (hi - lo) / np.float32(n_mels + 1)
    bin_width = np.float32(sample_rate) / np.float32(padded)
    mel = _mel32(bin_width * np.arange(padded // 2, dtype=np.float32))[:, None]
    b = np.arange(n_mels, dtype=np.float32)[None, :]
    left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    w = np.where(mel <= centre, up, down)
    return np.where((mel > left) & (mel < right), w, np.float32(0.0)).astype(np.float32)


class TorchFbank:
    """Batched Kaldi fbank: (scaled waveforms [B, N], lengths [B]) -> (log-mel [B, T, n_mels], frames [B]).

    Frames past a row's count are 0. Rows too short for a frame with every mel bin filled give 0 frames, as
    `FeatureExtractor.fbank` gives none."""

    def __init__(self, frontend: FrontendConfig):
        if frontend.kind != "fbank":
            raise ValueError(f"TorchFbank computes Kaldi fbank features, not {frontend.kind!r}")
        self.fe = frontend
        self.window = samples_of(frontend.sample_rate, frontend.frame_length_ms)
        self.shift = samples_of(frontend.sample_rate, frontend.frame_shift_ms)
        full = fbank_min_samples(frontend)
        if full is None or self.shift < 1:
            raise ValueError(f"fbank options give no frame: {frontend}")
        centred = 0 if frontend.snip_edges else self.shift - self.shift // 2
        self.min_samples = max(full, centred)
        self._consts: dict = {}

    # ---------------------------------------------------------------------------------------------- frame layout
    def window_for(self, n: int) -> int:
        """Analysis window of a clip of n samples: the full window, or FunASR's shrunk one for a shorter clip."""
        if n >= self.window:
            return self.window
        ms = min(float(self.fe.frame_length_ms), n / float(self.fe.sample_rate) * 1000.0)
        return samples_of(self.fe.sample_rate, ms)

    def num_frames(self, n: int) -> int:
        if n < self.min_samples:
            return 0
        if self.fe.snip_edges:
            w = self.window_for(n)
            return 1 + (n - w) // self.shift if n >= w else 0
        return (n + self.shift // 2) // self.shift

    def _const(self, device, window: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        key = (str(device), window)
        if key not in self._consts:
            padded = 1 << max(window - 1, 0).bit_length()
            win = torch.from_numpy(window_function(self.fe.window, window)).to(device)
            mel = torch.from_numpy(kaldi_mel_banks(int(self.fe.n_mels), padded, float(self.fe.sample_rate)))
            self._consts[key] = (win, mel.double().to(device), padded)  # Kaldi's float32 weights, float64 sums
        return self._consts[key]

    # ---------------------------------------------------------------------------------------------------- compute
    @torch.no_grad()
    def __call__(self, wave: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.dim() != 2 or lens.dim() != 1 or lens.shape[0] != wave.shape[0]:
            raise ValueError(f"expected waveforms [B, N] and lengths [B], got {tuple(wave.shape)}, {tuple(lens.shape)}")
        n_list = [int(n) for n in lens.tolist()]
        if any(n > wave.shape[1] or n < 0 for n in n_list):
            raise ValueError(f"waveform lengths {n_list} do not fit waveforms of {wave.shape[1]} samples")
        counts = [self.num_frames(n) for n in n_list]
        out = wave.new_zeros(len(n_list), max(counts, default=0), int(self.fe.n_mels), dtype=torch.float32)
        groups: dict[int, list[int]] = {}
        for row, (n, t) in enumerate(zip(n_list, counts)):
            if t > 0:
                groups.setdefault(self.window_for(n), []).append(row)
        for win, rows in groups.items():
            if len(rows) == len(n_list):  # the usual batch: every row a full window, no gather
                t_max = out.shape[1]
                out[:, :t_max] = self._fbank_group(wave.float(), lens.to(wave.device), win, t_max)
                continue
            idx = torch.tensor(rows, device=wave.device)
            t_max = max(counts[r] for r in rows)
            rows_lens = lens.to(wave.device).index_select(0, idx)
            out[idx, :t_max] = self._fbank_group(wave.index_select(0, idx).float(), rows_lens, win, t_max)
        frames = torch.tensor(counts, dtype=torch.int64, device=wave.device)
        out.masked_fill_(torch.arange(out.shape[1], device=wave.device)[None, :, None] >= frames[:, None, None], 0.0)
        return out, frames

    def _frames(self, wave: torch.Tensor, lens: torch.Tensor, win: int, t_max: int) -> torch.Tensor:
        """[B, t_max, win] analysis frames, samples outside each clip reflected as Kaldi reflects them."""
        if self.fe.snip_edges and (t_max - 1) * self.shift + win <= wave.shape[1]:
            return wave.unfold(1, win, self.shift)[:, :t_max]  # a view; frames past a row's count are masked later
        off = 0 if self.fe.snip_edges else self.shift // 2 - win // 2
        span = (t_max - 1) * self.shift + win
        s = torch.arange(span, device=wave.device)[None, :] + off  # sample position of each extended column
        n = lens.clamp(min=1)[:, None]
        s = torch.remainder(s, 2 * n)
        s = torch.where(s >= n, 2 * n - 1 - s, s)  # Kaldi: -s - 1 left of 0, 2N - 1 - s right of N, repeated
        ext = torch.gather(wave, 1, s)
        return ext.unfold(1, win, self.shift)

    def _fbank_group(self, wave: torch.Tensor, lens: torch.Tensor, win: int, t_max: int) -> torch.Tensor:
        window, mel, padded = self._const(wave.device, win)
        x = self._frames(wave, lens, win, t_max)
        x = x - x.mean(dim=-1, keepdim=True)
        x = torch.cat([x[..., :1] * (1.0 - PREEMPH), x[..., 1:] - PREEMPH * x[..., :-1]], dim=-1)
        # The spectrum in float64: in float32 the FFT's rounding, relative to a frame's loudest bins, reaches quiet
        # mel bands five orders of magnitude below them by more than 1e-3 in log energy, by an amount that depends
        # on the FFT's code path (CPU type); in float64 the result is that of the exact maths on Kaldi's float32 frame.
        spec = torch.fft.rfft((x * window).double(), n=padded)
        power = spec.real.square() + spec.imag.square()
        # The mel projection in float64 too: a float32 matmul follows process-wide settings (TF32, bf16 on CPU
        # oneDNN) that would lose the 1e-3 parity; float64 ignores them, so the result does not depend on them.
        energies = (power[..., : padded // 2] @ mel).float()
        return torch.clamp(energies, min=FLT_EPSILON).log()
