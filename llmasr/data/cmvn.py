"""Global CMVN statistics over a training set, written as a Kaldi nnet am.mvn (FunASR's format).

Statistics are taken over the features the encoder sees before CMVN, fbank + LFR, written as FunASR's
compute_audio_cmvn writes them: AddShift = -mean, Rescale = 1 / std (population std over all frames), per dimension.
Without dither, although training and FunASR's tool dither: on the demo's corpus, statistics of dithered features
trained a worse model (the closing note of the stop that tried it has the numbers; more seeds would settle it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmasr.data.audio import AudioError, load_audio
from llmasr.data.features import FeatureExtractor
from llmasr.data.frontend import FrontendConfig, write_kaldi_cmvn
from llmasr.data.manifest import BadRecord, Manifest
from llmasr.data.records import audio_reason

log = logging.getLogger(__name__)

VAR_FLOOR = 1e-10  # a variance at most this: the dimension does not vary (a scale of 1e5 or more, or inf)


class CMVNError(RuntimeError):
    """Too many unusable utterances (or none usable) to trust the statistics."""


def compute_global_cmvn(
    manifest_paths: Sequence[str | Path] | str | Path,
    frontend: FrontendConfig,
    out_path: str | Path,
    *,
    max_utts: int | None = None,
    max_bad_fraction: float = 0.05,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Accumulate per-dimension mean/variance of fbank+LFR features; write am.mvn; return (shift, scale).

    `max_utts` caps the number of utterances read (taken in manifest order, spread evenly over the manifests'
    records). Unusable records (bad manifest lines, missing/corrupt/empty audio) are counted and logged; more
    than `max_bad_fraction` of the attempted ones raises CMVNError, as does having no usable frames. `weights`
    (data.train's, w passes over a manifest per epoch) weigh each manifest's frames as training draws them.
    """
    if frontend.kind != "fbank":
        raise ValueError(f"global CMVN applies to fbank frontends, not {frontend.kind!r}")
    if isinstance(manifest_paths, (str, Path)):
        manifest_paths = [manifest_paths]
    extractor = FeatureExtractor(dataclasses.replace(frontend, cmvn_file=None, dither=0.0))
    manifests = [Manifest.open(p) for p in manifest_paths]
    offsets = np.cumsum([0] + [len(m) for m in manifests])
    picks = _picks(int(offsets[-1]), max_utts)

    weights = [1.0] * len(manifests) if weights is None else [float(w) for w in weights]
    if len(weights) != len(manifests):
        raise ValueError(f"{len(manifests)} manifests but {len(weights)} weights")
    dim = frontend.feature_dim
    s1 = np.zeros((len(manifests), dim), dtype=np.float64)
    s2 = np.zeros((len(manifests), dim), dtype=np.float64)
    frames = np.zeros(len(manifests), dtype=np.float64)
    bad: list[str] = []
    owners = np.searchsorted(offsets, picks, side="right") - 1
    for idx, k in zip(picks, owners):
        feats = _features(manifests[k], int(idx - offsets[k]), extractor)
        if isinstance(feats, str):
            bad.append(feats)
            continue
        s1[k] += feats.sum(axis=0)
        s2[k] += np.square(feats).sum(axis=0)
        frames[k] += feats.shape[0]

    _check_usable(bad, len(picks), int(frames.sum()), max_bad_fraction)
    # a manifest's frames stand for its weight x its records (max_utts reads a share of them)
    read = np.bincount(owners, minlength=len(manifests))
    share = np.array(weights) * np.diff(offsets) / np.maximum(read, 1)
    mean = share @ s1 / (share @ frames)
    var = share @ s2 / (share @ frames) - mean * mean
    frames = int(frames.sum())
    _check_varies(var, frames)
    shift = (-mean).astype(np.float32)
    scale = (1.0 / np.sqrt(var)).astype(np.float32)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_kaldi_cmvn(out_path, shift, scale)
    log.info("global CMVN: %d utterances, %d frames, %d dims -> %s", len(picks) - len(bad), frames, dim, out_path)
    return shift, scale


def _picks(total: int, max_utts: int | None) -> np.ndarray:
    """Indices into the concatenated manifests: all of them, or `max_utts` evenly spaced (so a cap still covers
    every manifest)."""
    if max_utts is not None and max_utts < total:
        return np.unique(np.linspace(0, total - 1, num=max(1, max_utts)).round().astype(np.int64))
    return np.arange(total, dtype=np.int64)


def _features(manifest: Manifest, index: int, extractor: FeatureExtractor) -> np.ndarray | str:
    """Float64 features [T, D] of record `index` of `manifest` (no dither), or why it has none."""
    sample_rate = extractor.frontend.sample_rate
    try:
        utt = manifest[index]
        wav = load_audio(utt.source, sample_rate=sample_rate, start=utt.start, end=utt.end, channel=utt.channel)
    except BadRecord as err:
        return str(err)
    except AudioError as err:  # a missing file: what its path may have meant (a corpus written for FunASR)
        return f"{manifest.path}:{utt.line}: {audio_reason(err, utt)}"
    if extractor.num_frames(wav.size) == 0:
        return (
            f"{manifest.path}:{utt.line}: audio too short for one feature frame ({wav.size} samples; the frontend "
            f"needs at least {extractor.min_samples})"
        )
    return extractor(wav, train=False).astype(np.float64)


def _check_varies(var: np.ndarray, frames: int) -> None:
    """Raise CMVNError when some dimension does not vary (one frame, or identical ones): its scale would blow
    every other frame up (Kaldi's cmvn-to-nnet and FunASR's tool write inf there)."""
    flat = np.flatnonzero(var <= VAR_FLOOR)
    if flat.size:
        raise CMVNError(
            f"global CMVN: {flat.size} of {var.size} dimensions (first {flat[:5].tolist()}) do not vary over the "
            f"{frames} frame(s) read: no scale normalises them; give more (or other) audio"
        )


def _check_usable(bad: list[str], attempted: int, frames: int, max_bad_fraction: float) -> None:
    """Log the unusable utterances; raise CMVNError when none gave frames or too many were unusable."""
    if bad:
        log.warning("global CMVN: %d of %d utterances unusable, e.g.:\n  %s", len(bad), attempted, "\n  ".join(bad[:5]))
    if frames == 0:
        raise CMVNError(f"global CMVN: no usable frames in {attempted} utterance(s); first problems: {bad[:3]}")
    if attempted and len(bad) / attempted > max_bad_fraction:
        raise CMVNError(
            f"global CMVN: {len(bad)} of {attempted} utterances unusable (more than {max_bad_fraction:.0%}): fix or "
            f"drop those lines (`llmasr data check` lists them all), or allow more (--max-bad-fraction, or the "
            f"recipe's data.max_bad_fraction); first problems: {bad[:3]}"
        )
