"""A windowed-sinc resampler: a Kaiser-windowed sinc low-pass applied in the frequency domain (one numpy FFT per
clip, no torch or torchaudio), or in polyphase form for rate pairs whose FFT lengths would have large prime factors.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

LOWPASS_WIDTH = 16  # zero crossings of the sinc on each side (at the lower of the two rates)
ROLLOFF = 0.945  # cutoff as a fraction of the lower Nyquist frequency
KAISER_BETA = 8.6  # ~ -90 dB side lobes
# Overlap-save blocks of about this many input samples stay in cache (one FFT of a whole 10 s clip at 44.1 kHz is
# several times slower); each block sees this many filter half-lengths of context on either side, where the
# kernel's tail is ~1e-5 of its peak: block seams do not show, and a clip's two ends do not leak into each other
# (measured < 4e-7 of full scale).
FFT_BLOCK = 1 << 14
FFT_GUARD = 16
# FFT lengths are multiples of the gcd-reduced rates orig and new, and a frame must span a few times orig. Up to
# this size the FFT path is the faster one (measured with primes up to 4001); past it (e.g. 22051 -> 16000 Hz)
# the frames grow and pocketfft falls back to Bluestein's algorithm, and the polyphase path wins.
FFT_MAX_TERM = FFT_BLOCK // 4
FFT_CALL_SAMPLES = 1 << 17  # input samples per batched transform call: temporaries stay ~1 MB (faster)


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal with a Kaiser-windowed sinc low-pass.

    Output length is ceil(len(x) * new_sr / orig_sr), float32; the signal is taken as zero outside the clip. The
    passband is flat to ~0.8 of the lower Nyquist frequency, -6 dB at 0.945 of it. When the gcd-reduced rates are
    small (all common audio rates, and speed perturbation) the filter's frequency response is applied to FFTs of
    overlapping frames, cut to zero at the lower Nyquist frequency: nothing aliases and, upsampling, no images
    appear. Other ratios (e.g. 22051 -> 16000 Hz) evaluate the same filter in polyphase form, where its stop band
    is about -90 dB. The two agree to ~5e-5 of full scale on content below 0.9 of the lower Nyquist frequency.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal, got shape {tuple(x.shape)}")
    if orig_sr == new_sr:
        return x.copy()
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    n_out = -(-x.shape[0] * new // orig)
    if n_out == 0:
        return np.zeros(0, dtype=np.float32)
    if max(orig, new) <= FFT_MAX_TERM:
        return _resample_fft(x, orig, new, n_out)
    return _resample_polyphase(x, orig, new, n_out)


def _lowpass(orig: int, new: int) -> tuple[float, int]:
    """Cutoff as a fraction of the input Nyquist frequency, and the kernel half-length H in input samples."""
    cutoff = min(orig, new) * ROLLOFF / orig
    return cutoff, int(math.ceil(LOWPASS_WIDTH / cutoff))


def _windowed_sinc(t: np.ndarray, cutoff: float, half: int) -> np.ndarray:
    """The low-pass impulse response at `t` input samples from its centre (zero beyond +-half)."""
    u = np.clip(1.0 - (t / half) ** 2, 0.0, None)
    window = np.where(np.abs(t) <= half, np.i0(KAISER_BETA * np.sqrt(u)) / np.i0(KAISER_BETA), 0.0)
    return np.sinc(t * cutoff) * window * cutoff


# ---------------------------------------------------------------------------------------------------------- FFT path

_GRID = 1 << 14  # response table points per band [0, lower Nyquist]: linear interpolation error 4e-7


@lru_cache(maxsize=32)
def _response_table(orig: int, new: int) -> tuple[np.ndarray, float]:
    """The filter's gain on a fine grid of frequencies (cycles per input sample), and the grid step.

    The gain is the continuous Fourier transform of the windowed sinc (from its samples at a spacing fine enough
    that their spectral images fall in its stop band), times a raised-cosine taper from the -6 dB point to zero
    at the lower Nyquist frequency f_lim. The taper only touches the transition band, where the polyphase form
    would alias, and keeps the response smooth so that its kernel stays short (see FFT_GUARD).
    """
    cutoff, half = _lowpass(orig, new)
    f_lim = min(orig, new) / (2.0 * orig)
    rate = 8.0 * f_lim  # kernel samples per input sample: images of the response land >= 7 f_lim away
    size = 8 * _GRID  # transform length: grid step rate / size = f_lim / _GRID
    taps = np.arange(int(half * rate) + 1)
    h = _windowed_sinc(taps / rate, cutoff, half) / rate
    buf = np.zeros(size)
    buf[: taps.size] = h
    buf[size - taps.size + 1 :] = h[:0:-1]  # even: the transform is real
    step = rate / size
    gain = np.fft.rfft(buf)[: _GRID + 2].real
    f = np.arange(gain.size) * step
    f_pass = ROLLOFF * f_lim
    taper = 0.5 * (1.0 + np.cos(np.pi * np.clip((f - f_pass) / (f_lim - f_pass), 0.0, 1.0)))
    return gain * taper, step


@lru_cache(maxsize=64)
def _bin_gains(orig: int, new: int, blocks: int) -> np.ndarray:
    """Per-bin gain (with the new/orig amplitude scale) for a transform of blocks*orig in, blocks*new out."""
    table, step = _response_table(orig, new)
    n_in, n_out = blocks * orig, blocks * new
    bins = np.arange(min(n_in // 2, n_out // 2) + 1) / n_in
    return np.interp(bins, np.arange(table.size) * step, table, right=0.0) * (new / orig)


def _resample_fft(x: np.ndarray, orig: int, new: int, n_out: int) -> np.ndarray:
    """Overlap-save: frames of blocks*orig input samples overlapping by 2*guard, filtered in the frequency domain.

    Frame b covers input [b*hop - guard, b*hop - guard + blocks*orig) and contributes the outputs for input times
    [b*hop, (b+1)*hop); guard and hop are whole multiples of orig, so every frame's output grid is the clip's.
    """
    n = x.shape[0]
    _, half = _lowpass(orig, new)
    guard = -(-FFT_GUARD * half // orig) * orig
    frames = -(-n // max(FFT_BLOCK - 2 * guard, 2 * guard))
    blocks = _fast_length(-(-(-(-n // frames) + 2 * guard) // orig))  # even frames, each a fast FFT length
    size = blocks * orig
    hop = size - 2 * guard
    frames = -(-n // hop)
    gains = _bin_gains(orig, new, blocks)
    buf = np.zeros(guard + frames * hop + guard, dtype=np.float32)
    buf[guard : guard + n] = x
    out_hop, out_guard = hop * new // orig, guard * new // orig
    y = np.empty((frames, out_hop), dtype=np.float32)
    per_call = max(1, FFT_CALL_SAMPLES // size)
    for f0 in range(0, frames, per_call):
        rows = min(per_call, frames - f0)
        view = np.lib.stride_tricks.as_strided(buf[f0 * hop :], (rows, size), (hop * 4, 4), writeable=False)
        spec = np.fft.rfft(view.astype(np.float64), axis=1)  # numpy's float32 rfft is the slower one
        out = np.zeros((rows, blocks * new // 2 + 1), dtype=np.complex64)  # inverse in single precision
        out[:, : gains.size] = spec[:, : gains.size] * gains
        y[f0 : f0 + rows] = np.fft.irfft(out, blocks * new, axis=1)[:, out_guard : out_guard + out_hop]
    return y.reshape(-1)[:n_out]


def _fast_length(n: int) -> int:
    """The smallest number >= n whose prime factors are all 2, 3, 5 or 7 (fast FFT lengths)."""
    best = 1 << max(0, n - 1).bit_length()
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                m = p3 << max(0, -(-n // p3) - 1).bit_length()  # times the smallest power of two reaching n
                best = min(best, m)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


# ---------------------------------------------------------------------------------------------------- polyphase path


@lru_cache(maxsize=32)
def _polyphase_kernel(orig: int, new: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For the gcd-reduced ratio orig -> new: kernel [new, 2H+2] (float32), per-phase input offsets [new], H.

    Output sample m = q*new + j sits at input time q*orig + j*orig/new; it is the dot product of the kernel row j
    with input samples q*orig + offset[j] - H + (0 .. 2H+1).
    """
    cutoff, half = _lowpass(orig, new)
    pos = np.arange(new, dtype=np.float64) * orig / new
    offset = np.floor(pos).astype(np.int64)
    frac = pos - offset
    k = np.arange(-half, half + 2, dtype=np.float64)
    kernel = _windowed_sinc(frac[:, None] - k[None, :], cutoff, half)  # distance from the output instant to a tap
    return kernel.astype(np.float32), offset, half


def _resample_polyphase(x: np.ndarray, orig: int, new: int, n_out: int) -> np.ndarray:
    """Direct evaluation: each output is the dot product of its phase's 2H+2 taps with the input around it."""
    kernel, offset, half = _polyphase_kernel(orig, new)
    n = x.shape[0]
    n_blocks = -(-n_out // new)
    width = kernel.shape[1]
    padded = np.zeros(half + n_blocks * orig + orig + half + 2, dtype=np.float32)
    padded[half : half + n] = x
    out = np.empty((n_blocks, new), dtype=np.float32)
    taps = np.arange(width)
    step = max(1, (1 << 21) // (new * width))  # blocks per gather, to bound the index array's memory
    for s in range(0, n_blocks, step):
        q = np.arange(s, min(s + step, n_blocks))
        idx = (q[:, None] * orig + offset[None, :])[:, :, None] + taps  # [blocks, new, width]
        out[q] = np.einsum("bjw,jw->bj", padded[idx], kernel)
    return out.reshape(-1)[:n_out]
