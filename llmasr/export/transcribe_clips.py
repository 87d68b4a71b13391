"""The clips a Transcriber call is given, as decode's loader reads them: each path checked, each waveform (numpy,
torch, PCM integers or floats) checked and written as a float wav file, all listed in a manifest of their own."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.config_paths import file_problem

PATHS = (str, os.PathLike)  # a clip that is an audio file
MAX_FLOAT_PEAK = 4.0  # a float waveform louder than this is not in [-1, 1] full scale (a little clipping headroom)
MIN_SAMPLE_RATE = 1000  # Hz; below it, a rate in kHz (sample_rate=16): hours of "audio" decoded into noise
NAMED_PROBLEMS = 10  # a call's error names this many clips, then counts the rest (a list of samples: every one)


class TranscribeError(ValueError):
    """Audio given to a Transcriber that cannot be transcribed (named, with why)."""


def clips_manifest(audio: list, sample_rate, tmp: Path) -> tuple[list[str], Path, dict[int, str], dict[int, str]]:
    """The clips' names, a manifest of them in `tmp` (waveforms written there as float wav files) keyed by
    position, the clips left out of it ({position: why}: a file missing or a directory, a waveform that is not
    one), and the links in `tmp` the manifest reads a clip through ({position: link}). A call's task and language
    are decode's (DecodeOptions), not written into the lines."""
    names, lines, missing, links = [], [], {}, {}
    for i, clip in enumerate(audio):
        if isinstance(clip, PATHS):
            clip = os.fsdecode(clip)  # any os.PathLike (py.path, UPath) is a path, not a waveform
            names.append(clip)
            if why := clip_problem(clip):
                missing[i] = why
                continue
            source = str(Path(clip).resolve())
            if not utf8(source):  # a name in a legacy encoding (GBK from a Windows archive): no manifest holds it
                link = tmp / f"{i}{Path(clip).suffix if utf8(Path(clip).suffix) else ''}"
                link.symlink_to(source)  # so the clip is read under a name a manifest holds, and named as given
                source = links[i] = str(link)
        else:
            names.append(f"waveform {i}")
            source = str(tmp / f"{i}.wav")
            try:
                wave = _waveform(clip, names[-1])
            except TranscribeError as err:  # this clip's fault: with keep_going the others are still transcribed
                missing[i] = str(err).removeprefix(f"{names[-1]}: ")
                continue
            sf.write(source, wave, int(sample_rate), subtype="FLOAT")
        lines.append(json.dumps({"key": str(i), "source": source}))
    path = tmp / "audio.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return names, path, missing, links


def clip_problems(problems: dict[int, str], names: list[str]) -> str:
    """The clips at fault, `name: why` each, the first NAMED_PROBLEMS named and the rest counted: a second of samples
    passed as a list is 16,000 clips, and had been an error of as many clauses."""
    said = [f"{names[i] or repr('')}: {why}" for i, why in list(problems.items())[:NAMED_PROBLEMS]]
    more = len(problems) - len(said)
    tail = f"; and {more} more (transcripts(..., keep_going=True) gives each its row)" if more else ""
    return "; ".join(said) + tail


def clip_problem(path: str) -> str | None:
    """Why `path` is no audio file to transcribe (file_problem's words), or None; a name that is a glob pattern
    matching files (a quoted "*.wav", a pattern in Python) says so: no tool here expands one."""
    why = file_problem(path, "audio file")
    if why and glob.has_magic(path) and not os.path.exists(path) and (found := glob.glob(path)):
        return (f"{why}; a pattern, which {len(found)} files match? expand it: the shell does unquoted, Python with "
                f"sorted(glob.glob({path!r}))")  # fmt: skip
    return why


def check_rate(sample_rate) -> None:
    """A waveform's rate (the call's, None where it has none) in whole Hz, and one audio is recorded at."""
    if sample_rate is None:
        return
    try:
        whole = not isinstance(sample_rate, (bool, str)) and int(sample_rate) == sample_rate
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise TranscribeError(f"sample_rate: a whole number of Hz, got {sample_rate!r}")
    rate = int(sample_rate)
    if rate <= 0:
        raise TranscribeError(f"sample_rate: a positive number of Hz, got {rate}")
    if rate < MIN_SAMPLE_RATE:
        khz = f"; in kHz? {rate} kHz is sample_rate={rate * 1000}" if 8 <= rate <= 192 else ""
        raise TranscribeError(f"sample_rate: {rate} Hz is too low for audio (at least {MIN_SAMPLE_RATE} Hz){khz}")


def not_audio(clip) -> str | None:
    """Why `clip`, not a path, is no waveform either (None when it may be one): named as such, not as a waveform
    missing its sample rate."""
    if isinstance(clip, (bytes, bytearray, memoryview)) or hasattr(clip, "read"):
        what = "bytes" if isinstance(clip, (bytes, bytearray, memoryview)) else type(clip).__name__
        return (
            f"expected an audio file path (str, Path) or a waveform, got {what}: a file's contents? read them with "
            "soundfile.read(io.BytesIO(data)) and pass the samples with their sample_rate; a file name in bytes? "
            "os.fsdecode(name)"
        )
    if clip is None or isinstance(clip, (dict, set)) or hasattr(clip, "__next__"):
        return f"expected an audio file path (str, Path) or a waveform, got {clip!r:.60}"
    if isinstance(clip, np.ndarray) and clip.dtype.kind in "SU":
        return (
            f"expected an audio file path or a waveform, got an array of text ({clip.dtype}): file names? pass a list"
        )
    return None


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the bytes of a name that is not UTF-8, as Python decodes it
        return False
    return True


def _channels_hint(shape: tuple[int, int]) -> str:
    """How to pass an array of several channels. None is guessed: a file's header says how many channels it has
    (load_audio averages them), an array does not say which axis holds them, and torchaudio.load's [channels,
    frames] looks as a batch of clips [clips, samples] does, which averaged would be one wrong transcript."""
    n = min(shape)
    if shape[1] == n:  # [frames, channels], as soundfile.read gives them
        pick, mean, clips = "wave[:, 0]", "wave.mean(axis=1)", ""
    else:
        pick, mean, clips = "wave[0]", "wave.mean(axis=0)", f"; {n} clips? pass them as a list, list(wave)"
    return (
        f" (several channels: average them as a file of {n} channels is read, {mean}, or pick one, {pick}{clips}. "
        "An array, unlike a file, does not say which axis holds channels: torchaudio.load's [channels, frames] "
        "looks as a batch of clips [clips, samples] does, so none is guessed)"
    )


def _waveform(clip, name: str) -> np.ndarray:
    if why := not_audio(clip):
        raise TranscribeError(f"{name}: {why}")
    if hasattr(clip, "detach"):  # a torch tensor; numpy has no bfloat16
        if clip.is_meta:  # a shape without samples (a model's tensor built on the meta device)
            raise TranscribeError(f"{name}: a tensor on the meta device, which holds no samples")
        clip = clip.detach().cpu()
        clip = clip.float() if clip.is_floating_point() else clip
    wave = np.asarray(clip)
    if wave.ndim == 2 and min(wave.shape) == 1:  # one channel, first or last: torchaudio.load's mono is [1, N]
        wave = wave.reshape(-1)
    if wave.ndim != 1 or wave.size == 0:
        hint = _channels_hint(wave.shape) if wave.ndim == 2 and min(wave.shape) <= 8 else ""
        if wave.ndim == 0 and wave.dtype.kind not in "biuf":  # None, bytes: neither a path nor samples
            raise TranscribeError(f"{name}: expected an audio file path (str, Path) or a waveform, got {clip!r:.60}")
        if wave.ndim == 0:  # a list is a list of clips: a plain list of samples gives one number per clip
            hint = " (one number: samples in a list? pass them as one array, np.asarray(samples))"
        raise TranscribeError(
            f"{name}: expected a non-empty mono waveform (1-D), got shape {tuple(wave.shape)}{hint}"
        )  # fmt: skip
    if wave.dtype.kind in "iu":  # PCM samples (soundfile's dtype="int16", a wav read raw): full scale is 1.0
        info = np.iinfo(wave.dtype)
        peak = int(np.abs(wave.astype(np.int64)).max())
        for bits in (16, 32):  # narrower PCM in a wider array (np.array of a list, torch.tensor: int64) would be
            if info.bits > bits and peak <= 1 << (bits - 1):  # scaled by that type's range into near-silence
                raise TranscribeError(
                    f"{name}: {wave.dtype} samples that never pass {bits}-bit full scale (peak {peak}): {bits}-bit "
                    f"PCM in a wider array? pass it as int{bits} (.astype(np.int{bits})), or as floats divided by "
                    f"{1 << (bits - 1)}"
                )
        offset = (int(info.max) + 1) // 2 if wave.dtype.kind == "u" else 0
        return ((wave.astype(np.float64) - offset) / (int(info.max) + 1 - offset)).astype(np.float32)
    if wave.dtype.kind not in "f":
        raise TranscribeError(f"{name}: expected numeric samples, got dtype {wave.dtype}")
    wave = wave.astype(np.float32)
    if not np.isfinite(wave).all():
        raise TranscribeError(f"{name}: the waveform holds NaN or infinite samples")
    peak = float(np.abs(wave).max())
    if peak > MAX_FLOAT_PEAK:  # integer PCM values in a float array would be scaled twice and decode as noise
        raise TranscribeError(
            f"{name}: float samples reach {peak:g}, expected full scale 1.0; integer PCM values as floats? "
            "divide them by 32768 (16-bit), or pass the integer array itself"
        )
    return wave
