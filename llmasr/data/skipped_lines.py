"""What batching leaves out of training, in words and in seconds: `describe_skipped` names the lines its filters
drop (max_duration, min_duration, max_target_len, a batch budget too small for one item) with examples, for the start
of train.log; `longest_kept_text` words the longest line kept; `longest_trained` is the longest audio a run trains on,
which decoding's windows and every checkpoint's meta take."""

from __future__ import annotations

import logging

import numpy as np

from llmasr.data.augment import cost_text
from llmasr.data.item_costs import as_held
from llmasr.data.manifest import Manifest
from llmasr.data.screen import EXAMPLES, where

log = logging.getLogger("llmasr.data")


def longest_kept_text(max_duration: float, kept: float) -> str:
    """The longest line batching keeps, `kept` seconds, as the recipe's data.batching.max_duration and the Whisper
    window that caps it below that: the one wording of train.log's skipped lines and `llmasr data check`'s."""
    said = f"data.batching.max_duration = {max_duration:g} s"
    return said + (f" (the Whisper window, {kept:g} s, caps it)" if kept < max_duration else "")


def describe_skipped(sampler, manifest, batching, name: str) -> str | None:
    """A warning of the lines batching filters drop every epoch (for each filter: count, the setting, the first lines),
    of the ones truncate_to_max cuts, and of the ones it drops in some epochs (fits_sometimes), or None."""
    limits = {
        "too_long": f"longer than {longest_kept_text(batching.max_duration, sampler.max_duration)}",
        "too_short": f"shorter than data.batching.min_duration = {batching.min_duration:g} s"
        if sampler.min_duration <= batching.min_duration
        else f"shorter than {sampler.min_duration:.4g} s, the least audio the encoder takes (its frontend and "
        f"subsampling{_sped_up(sampler)}; data.batching.min_duration = {batching.min_duration:g} s is below it)",
        "target_too_long": f"with target_len above data.batching.max_target_len = {batching.max_target_len}",
        "over_batch_budget": "too large for a batch of one under the batch budget ("
        + budgets_passed(sampler, sampler.skipped_indices("over_batch_budget"))
        + ")",
    }
    parts, count = [], 0
    for reason, text in limits.items():
        idx = sampler.skipped_indices(reason)
        if idx.size:
            parts.append(f"{idx.size} {text} (first: {_first(manifest, idx)})")
            count += int(idx.size)
    pool = sampler.base_indices if sampler.epoch_indices is None else np.arange(sampler.durations.size)
    # of the lines drawn from: a subset (validation's data.valid_max_utts) counts its own lines, not the manifest's
    whole = f"{pool.size} lines" + (
        f" (a subset of {sampler.durations.size})" if pool.size < sampler.durations.size else ""
    )
    said = [f"{name}: {count} of {whole} are skipped every epoch: " + "; ".join(parts)]
    cut = pool[sampler.truncated_mask[pool]]
    if cut.size:  # batched, but not whole: the audio past the limit is never heard, its words still the target
        said.append(
            f"{name}: {cut.size} lines longer than {sampler.max_duration:g} s have their audio cut there "
            f"(data.batching.truncate_to_max; their transcripts are kept whole) (first: {_first(manifest, cut)})"
        )
    sometimes = sampler.fits_sometimes
    if sometimes.size:  # only with lengths drawn per epoch
        said.append(
            f"{name}: {sometimes.size} lines fit the batch budget only at some of augmentation's lengths (at most "
            f"{cost_text(sampler.cost)}): each epoch skips those its draws put over it (first: "
            f"{_first(manifest, sometimes)})"
        )
    return "\n".join(said[bool(not parts) :]) or None


def _sped_up(sampler) -> str:
    """What the least audio the encoder takes is measured at, where augmentation shortens a clip."""
    draws = sampler.costs.epoch_costs or sampler.costs.heard_costs  # (a Whisper window's: what its clips hold)
    scale, _ = getattr(draws, "least", None) or (1.0, 0.0)
    return f", at data.augment.speed_perturb's fastest factor {1 / scale:.3g}" if scale < 1.0 else ""


def budgets_passed(sampler, idx: np.ndarray) -> str:
    """How many of `idx` (lines no batch can hold) pass each budget on their own, by its recipe key: the four had been
    named together, leaving a recipe with max_target_tokens to guess which one its lines passed."""
    audio = "max_frames" if sampler.max_frames is not None else "max_seconds"
    unit = " frames" if sampler.max_frames is not None else " s"
    said = f"data.batching.{audio} = {sampler.budget:g}{unit}"
    scale, pad = getattr(sampler.costs.epoch_costs, "least", None) or sampler.cost
    if (scale, pad) != (1.0, 0.0):
        said += f", even at augmentation's shortest length (its duration x {scale:.3g} + {pad:g} s)"
    passed = [(sampler.costs.least[idx] > sampler.budget, said)]
    if sampler.target_lens is not None and sampler.max_target_tokens is not None:
        over = sampler.target_lens[idx] > sampler.max_target_tokens
        passed.append((over, f"data.batching.max_target_tokens = {sampler.max_target_tokens} (its target_len)"))
    if sampler.llm_lens is not None and sampler.max_llm_tokens is not None and not sampler.llm_alone:
        rows = sampler.llm_lens[idx] + (0 if sampler.llm_new is None else sampler.llm_new[idx])
        passed.append((rows > sampler.max_llm_tokens, f"data.batching.max_llm_tokens = {sampler.max_llm_tokens} "
                                                      "(its LLM positions)"))  # fmt: skip
    return "; ".join(f"{int(over.sum())} past {text}" for over, text in passed if over.any())


def _first(manifest, indices) -> str:
    return ", ".join("{}:{}".format(*where(manifest, int(i))) for i in indices[:EXAMPLES])


def longest_trained(data_cfg, durations=None) -> float | None:
    """The longest audio (seconds) a run with this data section trains on, None when unlimited: its longest
    training utterance that data.batching.max_duration keeps (or truncates to it), stretched by the slowest speed
    perturbation. Read from the manifests' durations without probing audio (`durations`: the training manifests'
    as opened already, as training has them); when a manifest cannot be opened or a duration is unknown,
    max_duration itself. Decoding splits longer utterances into windows no longer than this; training records it in
    every checkpoint's meta (`training.longest_seconds`)."""
    b = data_cfg.batching
    limit = float(b.max_duration)
    try:
        if durations is None:
            opened = [Manifest.open(spec.path).durations() for spec in data_cfg.train_manifests]
            durations = np.concatenate([np.asarray(d, dtype=np.float64) for d in opened]) if opened else np.zeros(0)
        durations = np.asarray(durations, dtype=np.float64)
    except (OSError, ValueError) as err:
        log.warning("the longest training utterance is unknown (%s); taking data.batching.max_duration", err)
        durations = np.full(1, np.nan)
    if durations.size == 0 or np.isnan(durations).any():
        longest = limit
    else:
        kept = np.minimum(durations, limit) if b.truncate_to_max else durations[durations <= as_held(limit)]
        longest = float(kept.max()) if kept.size else limit
    longest *= data_cfg.augment.stretch
    return round(float(longest), 4) if np.isfinite(longest) else None  # manifests keep float32 durations
