"""Reading audio: header-only duration probes, ranged reads, channel selection, and resampling to the model's rate
(llmasr.data.resample).

Everything goes through soundfile (libsndfile: wav, flac, ogg/vorbis, mp3 where libsndfile >= 1.1 has it).
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.data.resample import resample
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


def sample_index(seconds: float, sample_rate: int) -> int:
    """The sample at `seconds`, rounded half up as Kaldi's extract-segments and lhotse do (Python's round() takes an
    exact half to the even sample); rounded to 8 places first so that float error (0.3 * 16000) does not decide."""
    return math.floor(round(seconds * sample_rate, 8) + 0.5)


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


def _first_text_line(path: str | Path) -> str | None:
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


_SPHERE_CODING = re.compile(rb"^sample_coding -s[0-9]+ (\S+)", re.MULTILINE)


def _sphere_shorten(path: str | Path) -> str | None:
    """A NIST SPHERE file's sample_coding where its samples are shorten-compressed (WSJ's .wv1, some LDC corpora),
    which libsndfile does not decode; else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    m = _SPHERE_CODING.search(head) if head.startswith(b"NIST_1A") else None
    return m.group(1).decode("ascii", "replace") if m and b"shorten" in m.group(1) else None


def _open_error(path: str | Path, err: Exception) -> AudioError:
    gone = missing_audio(path)
    if gone is None and (coding := _sphere_shorten(path)) is not None:
        gone = AudioError(path, f"NIST SPHERE audio compressed with shorten (sample_coding {coding!r}), which "
                          "libsndfile does not decode: decompress it (`sph2pipe -f wav F > F.wav`)")  # fmt: skip
    if gone is None and os.path.getsize(path) == 0:  # libsndfile calls it "Format not recognised"
        gone = AudioError(path, "empty audio (a file of 0 bytes)")
    if gone is None and (line := _first_text_line(path)) is not None and line.encode().startswith(LFS_POINTER):
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
    """What a file's header says (no decode): its seconds, sample rate, channel count and libsndfile's names of its
    format ("WAV", "FLAC", "NIST", ...) and sample coding ("PCM_16", "ULAW", ...)."""

    seconds: float
    sample_rate: int
    channels: int
    format: str = ""
    subtype: str = ""


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
    seconds = float(info.frames) / float(info.samplerate)
    return AudioHeader(seconds, int(info.samplerate), int(info.channels), str(info.format), str(info.subtype))


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
        first = max(0, sample_index(start, sr))
        last = total if end is None else min(total, sample_index(end, sr))
        if limit is not None:
            last = min(last, first + sample_index(limit, sr))
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
    if channel is None and data.shape[1] > 1:
        _refuse_cancelled(path, data, wav)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if not np.all(np.isfinite(wav)):
        raise AudioError(path, "corrupt audio: non-finite samples")
    if sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    return wav


# The average of a file's channels this far below the channels themselves: they cancel (one is stored inverted, a
# phone line wired in anti-phase). Independent channels average about 3 dB below, one silent side 3 dB below too.
CANCELLED_DB = -20.0


def _refuse_cancelled(path: str, data: np.ndarray, mix: np.ndarray) -> None:
    """Refuse a mix of channels that cancel: it trains and decodes as near silence however loud each is. Powers are
    taken about each signal's mean: opposite DC offsets (a sound card's) that the average drops cancel no voice."""

    def power(x: np.ndarray) -> float:  # one channel at a time: no copy of a long recording's every channel
        x = x - x.mean()
        return float(np.dot(x, x)) / x.size

    channels = sum(power(data[:, j]) for j in range(data.shape[1])) / data.shape[1]
    if channels < 1e-8:  # below -80 dBFS: a silent file, nothing to cancel
        return
    db = 10.0 * np.log10(max(power(mix), 1e-30) / channels)
    if db < CANCELLED_DB:
        raise AudioError(
            path, f"its {data.shape[1]} channels cancel when averaged (the mix is {db:.0f} dB below them: one is "
            f"inverted, anti-phase); give the line a `channel` (0-{data.shape[1] - 1}) to read one of them"
        )  # fmt: skip
