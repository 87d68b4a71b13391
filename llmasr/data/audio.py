"""Reading audio: header-only duration probes, ranged reads, channel selection, and a windowed-sinc resampler.

Everything goes through soundfile (libsndfile: wav, flac, ogg/vorbis, mp3 where libsndfile >= 1.1 has it). The
resampler is a Kaiser-windowed sinc low-pass applied in the frequency domain (one numpy FFT per clip, no torch or
torchaudio), or in polyphase form for rate pairs whose FFT lengths would have large prime factors.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.text_files import LFS_POINTER


class AudioError(Exception):
    """An audio file that cannot be used: missing, unreadable, corrupt, or empty."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


MP3_FRAME = 1152  # samples an MPEG-1 layer III frame decodes to
MP3_PREROLL = 8 * MP3_FRAME  # more than the bit reservoir can reach back
_WAV_DATA = re.compile(r"^\s*data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# What a writer that streams (not knowing the length) puts in the header: 0xFFFFFFFF, 0x7FFFFFFF, SoX's 0x7FFFF000.
UNKNOWN_SIZE_FROM = 0x7FFF0000
# A segment end this far past its audio's end is refused (its transcript is of audio the file lacks), a smaller one
# trimmed to the end (rounding in the segment times): Kaldi's extract-segments --max-overshoot.
MAX_OVERSHOOT_S = 0.5


def _cut_short(header_log: str) -> str | None:
    """Why a file is cut short, from libsndfile's reading of its header (`extra_info`): a WAV whose data chunk
    declares more bytes than the file holds, as an interrupted copy or download leaves it (libsndfile then reads
    what is there without a word); else None."""
    m = _WAV_DATA.search(header_log or "")
    if not m:
        return None
    declared, present = int(m.group(1)), int(m.group(2))
    if declared >= UNKNOWN_SIZE_FROM or declared - present <= max(1024, present // 100):
        return None
    return f"truncated: its header declares {declared} bytes of audio, the file holds {present} (a copy cut short?)"


def _mp3_length_known(path: str) -> bool:
    """Whether an MP3 states its length (a Xing, Info or VBRI frame after any ID3v2 tag): without one the decoder
    guesses it from the first frame's bitrate (a VBR file that opens on silence reads four times too long), so a
    shortfall there is no sign of a file cut short."""
    with open(path, "rb") as f:
        head = f.read(10)
        skip = 0
        if head[:3] == b"ID3" and len(head) == 10:
            skip = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        f.seek(skip)
        first = f.read(4096)
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))


def missing_audio(path: str | Path) -> AudioError | None:
    """Why `path` is no file to open (missing, or a directory), or None: one stat, no read (cheap enough for every
    line of a manifest at start-up)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return AudioError(path, "file not found")
    except OSError as err:
        return AudioError(path, f"cannot be read ({err.strerror})")
    except ValueError:  # a NUL character: no file system takes the name
        return AudioError(repr(str(path)), "is no file name (it holds a NUL character)")
    return AudioError(path, "is a directory, not an audio file") if stat.S_ISDIR(mode) else None


def _text_line(path: str | Path) -> str | None:
    """The first line of a file that is UTF-8 text (a file list, wav.scp, a manifest), or None: given where audio
    goes, it had been called a format wanting conversion."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"\0" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the end of the read is still text
        if e.start < len(head) - 3:
            return None
        text = head[: e.start].decode("utf-8")
    return next((line.strip() for line in text.splitlines() if line.strip()), None)


def _open_error(path: str | Path, err: Exception) -> AudioError:
    gone = missing_audio(path)
    if gone is None and os.path.getsize(path) == 0:  # libsndfile calls it "Format not recognised"
        gone = AudioError(path, "empty audio (a file of 0 bytes)")
    if gone is None and (line := _text_line(path)) is not None and line.encode().startswith(LFS_POINTER):
        gone = AudioError(path, f"a Git LFS pointer, not the audio (the data set was cloned without LFS): run `git "
                          f"lfs pull` in {Path(path).parent}, or download the file itself")  # fmt: skip
    if gone is None and "Format not recognised" in str(err) and line is not None:
        gone = AudioError(
            path,
            f"unreadable or corrupt audio ({err}): it is text, not audio (its first line "
            f"{line[:80]!r}): a list of audio files or a manifest given where an audio file goes?",
        )
    if gone is None and "Format not recognised" in str(err):  # damaged, or a format it lacks
        gone = AudioError(path, f"unreadable or corrupt audio ({err}): no format libsndfile reads (wav, flac, ogg, "
                          "mp3, ...); one of another (m4a, raw PCM) wants converting, e.g. with ffmpeg")  # fmt: skip
    return gone or AudioError(path, f"unreadable or corrupt audio ({type(err).__name__}: {err})")


def _overshoot(path: str | Path, start: float, end: float | None, total: float) -> AudioError | None:
    """Why [start, end) cannot be read from audio `total` seconds long (a start at or past its end, an end
    MAX_OVERSHOOT_S or more past it), or None."""
    if start >= total:
        return AudioError(path, f"start {start:.3f}s is at or past the end of the audio ({total:.3f}s)")
    if end is not None and end - total >= MAX_OVERSHOOT_S:
        return AudioError(
            path, f"segment end {end:.3f}s is past the end of the audio ({total:.3f}s) by {end - total:.3f}s (at "
            f"least {MAX_OVERSHOOT_S:g}s: its transcript runs past the audio; a smaller overshoot is trimmed)"
        )  # fmt: skip
    return None


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header says (no decode): its seconds, sample rate and channel count."""

    seconds: float
    sample_rate: int
    channels: int


def probe_header(path: str | Path, channel: int | None = None) -> AudioHeader:
    """The file's header; `channel`: one the file must have, as load_audio requires. Raises AudioError."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise _open_error(path, err) from err
    if info.samplerate <= 0:
        raise AudioError(path, f"header has sample rate {info.samplerate}")
    short = _cut_short(info.extra_info)
    if short:
        raise AudioError(path, short)
    if info.frames <= 0:
        raise AudioError(path, "empty audio (0 samples)")
    if channel is not None and not 0 <= channel < info.channels:
        raise AudioError(path, f"channel {channel} requested but the file has {info.channels} channel(s)")
    return AudioHeader(float(info.frames) / float(info.samplerate), int(info.samplerate), int(info.channels))


def probe_duration(path: str | Path, channel: int | None = None) -> float:
    """Duration in seconds from the file header (no decode); `channel` as probe_header. Raises AudioError."""
    return probe_header(path, channel).seconds


def probe_span(
    path: str | Path, start: float = 0.0, end: float | None = None, channel: int | None = None
) -> tuple[AudioHeader, float]:
    """(header, the seconds load_audio reads of [start, end)); raises AudioError as probe_header and load_audio."""
    header = probe_header(path, channel)
    err = _overshoot(path, start, end, header.seconds)
    if err is not None:
        raise err
    return header, (header.seconds if end is None else min(end, header.seconds)) - start


def load_audio(
    path: str | Path,
    *,
    sample_rate: int,
    start: float = 0.0,
    end: float | None = None,
    channel: int | None = None,
    limit: float | None = None,
) -> np.ndarray:
    """Read [start, end) seconds of `path` as float32 mono in [-1, 1] at `sample_rate`.

    Only the requested frames are read from the file. `channel` picks one channel (0-based); None averages all
    channels. An `end` past the audio's end by less than MAX_OVERSHOOT_S is trimmed to it. `limit`: read at most
    this many seconds from `start` (a length cap, which unlike `end` may pass the audio's end). Raises AudioError
    for a missing, unreadable, corrupt or empty file, a bad channel, an empty range, or a start past the audio's
    end or an end MAX_OVERSHOOT_S or more past it.
    """
    path = str(path)
    try:
        f = sf.SoundFile(path)
    except Exception as err:
        raise _open_error(path, err) from err
    with f:
        sr = int(f.samplerate)
        total = int(f.frames)
        if total <= 0:
            raise AudioError(path, "empty audio (0 samples)")
        first = max(0, int(round(start * sr)))
        last = total if end is None else min(total, int(round(end * sr)))
        if limit is not None:
            last = min(last, first + int(round(limit * sr)))
        err = _overshoot(path, start, end, total / sr)
        if err is not None:
            raise err
        if last <= first:
            raise AudioError(path, f"empty range [{start:.3f}s, {end}s)")
        if channel is not None and not 0 <= channel < f.channels:
            raise AudioError(path, f"channel {channel} requested but the file has {f.channels} channel(s)")
        short = _cut_short(f.extra_info)
        if short:
            raise AudioError(path, short)
        # an MP3 frame decodes from the bit reservoir of the frames before it: decoding from a seek point gives
        # silence or garbage for its first tens of milliseconds, so the read starts that much earlier
        is_mp3 = f.format == "MP3"
        lead = min(first, MP3_PREROLL) if is_mp3 else 0
        try:
            if first:
                f.seek(first - lead)
            data = f.read(last - first + lead, dtype="float32", always_2d=True)[lead:]
        except Exception as err:
            raise AudioError(path, f"corrupt audio: decoding failed ({type(err).__name__}: {err})") from err
    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples decoded)")
    # (an MP3's length from its header can be off by a frame or two, or by a tag at its end)
    short = data.shape[0] < last - first - max(2 * MP3_FRAME, (last - first) // 100)
    if short and (not is_mp3 or _mp3_length_known(path)):
        raise AudioError(
            path, f"truncated: {data.shape[0]} of the {last - first} samples its header declares decode (a copy or "
            "download cut short?)"
        )  # fmt: skip
    wav = data[:, channel] if channel is not None else data.mean(axis=1)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if not np.all(np.isfinite(wav)):
        raise AudioError(path, "corrupt audio: non-finite samples")
    if sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    return wav


# --------------------------------------------------------------------------------------------------------- resampling

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
