"""The sampler a recipe's data.batching section makes over a frontend's clips (llmasr.data.sampler): the longest clip
training keeps whole and the shortest the encoder takes, the budget decoding grows to its longest item, decoding's
own batching, and the cost augmentation adds to a training clip (llmasr.data.clip_lengths)."""

from __future__ import annotations

import math

import numpy as np

from llmasr.data.clip_lengths import EpochCosts, augmented_costs
from llmasr.data.config import BatchingConfig, DataConfig
from llmasr.data.frontend import FrontendConfig
from llmasr.data.sampler import DynamicBucketSampler


def make_sampler(
    data_cfg: DataConfig,
    durations: np.ndarray,
    target_lens,
    frontend: FrontendConfig,
    *,
    train: bool,
    rank: int,
    world_size: int,
    indices=None,
    epoch_indices=None,
    skip=None,
    keep_every_item: bool = False,
    llm_lens=None,
    llm_new=None,
) -> DynamicBucketSampler:
    """`keep_every_item` (decoding): no item is skipped for its length; the budget grows to the longest item's cost
    (a batch of its own) when it is smaller, and an item past max_llm_tokens alone is batched alone. `llm_lens`: the
    most LLM positions each item can take, which data.batching.max_llm_tokens bounds (llmasr.train.line_positions;
    decoding's: llmasr.train.decode_rows, with `llm_new`, what generation adds); without them that budget is not
    applied."""
    b = data_cfg.batching
    max_duration = b.max_duration if keep_every_item else longest_kept(b, frontend)
    min_item = None
    if frontend.kind == "whisper":  # features are padded/cut to one fixed window: every item costs that much
        min_item = frontend.chunk_seconds
    max_seconds, max_frames = b.budget_seconds, b.max_frames
    if keep_every_item:
        max_seconds, max_frames = _fit_longest(durations, min_item, max_seconds, max_frames, frontend.frame_seconds)
    return DynamicBucketSampler(
        durations,
        target_lens,
        max_seconds=max_seconds,
        max_frames=max_frames,
        frames_per_second=1.0 / frontend.frame_seconds,
        max_target_tokens=b.max_target_tokens,
        llm_lens=llm_lens,
        max_llm_tokens=b.max_llm_tokens if llm_lens is not None else None,
        llm_new=llm_new,
        llm_alone=keep_every_item,
        num_buckets=b.num_buckets,
        shuffle=train and b.shuffle,
        shuffle_buffer=b.shuffle_buffer,
        seed=data_cfg.seed,
        rank=rank,
        world_size=world_size,
        drop_last=train and b.drop_last,  # validation and decoding count every utterance
        # a clip shorter than the encoder takes cannot train: skipped as too short from the start, not when loaded
        min_duration=b.min_duration
        if keep_every_item
        else max(b.min_duration, shortest_kept(data_cfg, frontend, train)),
        max_duration=max_duration,
        max_target_len=b.max_target_len,
        truncate_to_max=b.truncate_to_max,
        min_item_seconds=min_item,
        **(augmented_costs(data_cfg.augment, data_cfg.seed, frontend) if train else {}),
        indices=indices,
        epoch_indices=epoch_indices,
        skip=skip,
        padding_warns=train and not keep_every_item,
    )


def longest_kept(batching, frontend: FrontendConfig) -> float:
    """The longest audio (seconds) training keeps whole: data.batching.max_duration, and at most the window of a
    Whisper frontend (which cuts what passes it); the sampler skips or, with truncate_to_max, the dataset cuts the
    rest there."""
    if frontend.kind == "whisper":
        return min(batching.max_duration, frontend.chunk_seconds)
    return batching.max_duration


def _fit_longest(durations, min_item, max_seconds, max_frames, frame_seconds: float):
    """(max_seconds, max_frames) raised to the longest known duration (at least `min_item`)."""
    known = durations[~np.isnan(durations)]
    longest = float(known.max()) if known.size else 1.0
    if min_item is not None:
        longest = max(longest, min_item)
    if max_seconds is not None:
        return max(float(max_seconds), longest), None
    return None, max(int(max_frames), math.ceil(longest / frame_seconds - 1e-9))


def encoder_shortest(frontend: FrontendConfig) -> float:
    """The shortest clip the frontend and encoder take (FeatureExtractor.shortest_seconds): batching's least
    min_duration, where data.batching.min_duration is shorter."""
    from llmasr.data.features import FeatureExtractor

    return FeatureExtractor(frontend).shortest_seconds()


def shortest_kept(data_cfg: DataConfig, frontend: FrontendConfig, train: bool) -> float:
    """The shortest stated duration batching keeps: the least audio the encoder takes (encoder_shortest), for
    training at the shortest length augmentation gives a clip (its fastest speed factor, less the pauses every clip
    gets): a shorter one would load too short in each epoch that sped it up, a bad item counted against
    data.max_bad_fraction every time, which stopped a run over lines its start-up had passed."""
    shortest = encoder_shortest(frontend)
    costs = EpochCosts.of(data_cfg.augment, data_cfg.seed, frontend) if train else None
    scale, pad = costs.least if costs is not None else (1.0, 0.0)
    if scale >= 1.0:
        return shortest
    return max(shortest, (shortest + 1.5 / frontend.sample_rate - pad) / scale)  # a sample's rounding each way


def decode_batching(batch_seconds: float, n: int, max_llm_tokens: int | None = None) -> BatchingConfig:
    """Decoding's batching of `n` items: one duration-sorted window, no buckets, no shuffling, no length limit."""
    return BatchingConfig(
        max_seconds=float(batch_seconds), num_buckets=1, shuffle=False, shuffle_buffer=max(n, 1), max_duration=math.inf,
        max_llm_tokens=max_llm_tokens,
    )  # fmt: skip
