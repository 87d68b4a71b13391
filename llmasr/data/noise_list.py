"""The noise list of data.augment.noise (a jsonl of {"key", "source"} records or lhotse recordings or cuts, one
recording a line): read and checked at start-up, then drawn from and mixed into clips in the loader's workers."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from llmasr.config_io import ConfigError
from llmasr.data.lhotse_cut import CutRecord
from llmasr.data.record_fields import is_cut, missing_text
from llmasr.data.records import BadRecord, LineParser, missing_hint
from llmasr.text_files import json_lines

log = logging.getLogger(__name__)


# What a noise list's line may be, said where one is none of them
FORMS = 'a noise list holds one {"source": AUDIO PATH} a line, or lhotse recordings or cuts (file sources)'


def read_noise_list(path: str | Path, *, must_exist: bool = False) -> list[str]:
    """Audio paths from a noise jsonl(.gz): {"key", "source"} a line (a relative path against the list's folder), or
    lhotse recordings or cuts (one file source each; a relative path from the working directory, as lhotse opens it,
    else beside the list). `must_exist` (the check before training starts): a listed file that is not there, or whose
    header does not read as audio with samples, is refused, not skipped: the workers would leave it out, and with
    every file left out train without noise, saying so only in their logs."""
    from llmasr.data.audio import AudioError, probe_header  # read when a list is, not where the config is

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a directory, not a noise list ({FORMS})")
    base = path.resolve().parent
    out, missing = [], []
    try:
        for lineno, rec in json_lines(path, ConfigError, forms=FORMS):
            out.append(_listed_file(rec, LineParser(str(path), lineno, base)))
            if not must_exist:
                continue
            if Path(out[-1]).is_dir():
                missing.append(f"{path}:{lineno}: a directory, not an audio file: {out[-1]}")
            elif not Path(out[-1]).is_file():  # with what a path from the working directory would have meant
                missing.append(f"{path}:{lineno}: not found: {out[-1]}{missing_hint(out[-1], str(path))}")
            else:
                try:
                    probe_header(out[-1])
                except AudioError as err:
                    missing.append(f"{path}:{lineno}: {err}")
    except BadRecord as err:
        raise ConfigError(str(err)) from None
    if not out:
        raise ConfigError(f"{path}: no noise files listed")
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(out)} noise files not found or not usable audio:\n  " + "\n  ".join(missing[:10])
        )
    return out


def noise_problem(noise) -> str | None:
    """Why training refuses the noise list of `noise` (data.augment.noise, enabled): a list that does not parse, names
    files not there or files whose header does not read as audio; None where it is fine or noise is off. Checked at
    start-up (the workers read it at their first noisy clip, after the model loads) and by llmasr data check."""
    if not noise.enable:
        return None
    try:
        read_noise_list(noise.manifest, must_exist=True)
    except (ConfigError, OSError) as err:  # OSError: the list itself gone since the recipe was read (a node)
        return f"data.augment.noise.manifest: {err}"
    return None


def _listed_file(rec, p: LineParser) -> str:
    """The audio path of one noise list record, as a manifest line's would be read (`p`: its parser)."""
    if not isinstance(rec, dict):
        raise p.bad(f"a noise record must be a JSON object, got {type(rec).__name__} ({FORMS})")
    if "source" in rec:
        if not isinstance(rec["source"], str) or not rec["source"]:
            raise p.bad(f"field 'source' must be an audio path, got {rec['source']!r:.60}")
        return p.resolve(rec["source"])
    recording = rec.get("recording") if is_cut(rec) else rec
    if isinstance(recording, dict) and "sources" in recording:  # lhotse: opened as a cut's recording is
        cut = CutRecord(p)
        cut.untransformed(recording)  # a Volume or Speed transform would not be heard
        return p.resolve(cut.cut_source(recording, None, commands=False)[0]["source"], working_dir_first=True)
    raise p.bad(f"{missing_text(rec, 'source', 'an audio path')} ({FORMS})")


class NoiseDraws:
    """One worker's draws from a noise list (`cfg`: data.augment.noise, its `manifest` and `snr_db`). Start-up
    checked that every file's header reads, not that it decodes or holds sound: a file found to fail, or to be
    digital silence throughout, is named once and drawn past from then on."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.files: list[str] | None = None  # read at the first draw
        self.distinct = 0  # how many files the list names (one listed twice is one)
        self.bad: set[str] = set()  # files that failed to read, or that hold no sound at all
        self.heard: set[str] = set()  # files with sound somewhere (a silent stretch of one is noise too)

    def mix(self, x: np.ndarray, sr: int, rng: np.random.Generator, speech: slice) -> np.ndarray:
        """`x` with a drawn stretch of a drawn file mixed in at a drawn SNR over `x[speech]`'s power; `x` itself
        once every file is known bad."""
        from llmasr.data.audio import AudioError, load_audio, probe_duration

        if self.files is None:  # once: a clip's draw must not rebuild a set of the list
            self.files = read_noise_list(self.cfg.manifest)
            self.distinct = len(set(self.files))
        files = self.distinct
        # Every draw takes the same numbers whether this worker knew the file was bad or learns it now, so a clip's
        # noise depends on its own draw only (any worker count repeats it). The draws come from a stream of their
        # own, one number of `rng`'s taken for it: how many files a clip draws past (none once this worker knows
        # every file fails) never shifts the draws after noise (gain).
        rng = np.random.default_rng(int(rng.integers(2**63)))
        while len(self.bad) < files:
            path = self.files[int(rng.integers(len(self.files)))]
            snr = rng.uniform(self.cfg.snr_db[0], self.cfg.snr_db[1])
            offset_u = rng.random()
            if path in self.bad:
                continue
            try:
                total = probe_duration(path)
                need = x.shape[0] / sr
                start = offset_u * max(0.0, total - need)
                noise = load_audio(path, sample_rate=sr, start=start, end=start + need if total > need else None)
                if not noise.any() and self._all_silent(path, sr):
                    raise AudioError(path, "every sample is 0 (digital silence): it would add nothing")
            except AudioError as err:
                self.bad.add(path)
                left = files - len(self.bad)
                log.warning("noise augmentation: a file left out of the noise list (%d files left%s): %s", left,
                            "" if left else ": noise augmentation is off", err)  # fmt: skip
                continue
            return mix_at_snr(x, noise, snr, speech)
        return x

    def _all_silent(self, path: str, sr: int) -> bool:
        """Whether `path` holds no sound anywhere, read the first time a stretch drawn from it is silent (start-up
        reads headers only: decoding every file of a long list there would take minutes)."""
        from llmasr.data.audio import load_audio, probe_duration

        if path not in self.heard:
            total, block = probe_duration(path), 60.0  # a block at a time: an hour of noise need not sit in memory
            starts = [k * block for k in range(max(1, math.ceil(total / block)))]
            if not any(load_audio(path, sample_rate=sr, start=a, end=min(a + block, total)).any() for a in starts):
                return True
            self.heard.add(path)
        return False


def mix_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float, speech: slice = slice(None)) -> np.ndarray:
    """x + noise scaled to the given signal-to-noise ratio (noise tiled/cropped to len(x)); clipped to [-1, 1]. The
    signal's power is that of x[speech]: the pauses augmentation put around a clip would dilute it (and the noise
    with it) by their share of the clip."""
    n = x.shape[0]
    if noise.shape[0] == 0 or n == 0:
        return x
    if noise.shape[0] < n:
        noise = np.tile(noise, -(-n // noise.shape[0]))
    noise = noise[:n]
    p_sig = float(np.mean(np.square(x[speech], dtype=np.float64)))
    p_noise = float(np.mean(np.square(noise, dtype=np.float64)))
    if p_sig <= 0.0 or p_noise <= 0.0:
        return x
    gain = math.sqrt(p_sig / (p_noise * 10.0 ** (snr_db / 10.0)))
    return np.clip(x + np.float32(gain) * noise.astype(np.float32), -1.0, 1.0)
