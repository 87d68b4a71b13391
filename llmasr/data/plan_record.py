"""What a checkpoint's batches were cut from, so that a resume the data no longer lets continue says what changed.

A saved sampler position counts into its epoch's batches (llmasr.data.batch_cut.check_position); when the data now
gives other batches, the position cannot be continued. The sampler's count and hash say only *that* they differ: the
record kept beside each checkpoint (`FILE` in its tag folder) says *which* batch and *which* line. It holds, per
line, what the cut reads (its duration as held, target length, LLM positions, the filter that skips it) and the
saved epoch's batches in cost order with the step and rank each ran at. `explain` compares it with the sampler now:
the first batch that differs, and the lines whose inputs differ with both values, whatever the cause (a manifest
edited, audio probed anew, a tokenizer or an llmasr that counts a clip's tokens otherwise).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmasr.atomic_file import atomic_writer
from llmasr.data.item_filters import reason_text
from llmasr.data.visit_keys import dataset_index

FILE = "batch_plan.npz"
SHOWN = 5  # lines named in an explanation


def record(sampler) -> dict[str, np.ndarray]:
    """The arrays `explain` compares, for the sampler's current epoch."""
    plan = sampler.epoch_plan()
    out = {
        "epoch": np.asarray(sampler.epoch, np.int64),
        "keys": plan.keys.astype(np.int64),
        "offsets": plan.offsets.astype(np.int64),
        "groups": np.asarray(plan.groups, np.int64),
        "durations": sampler.durations.astype(np.float32),
        "reason": sampler.filter_codes.astype(np.int8),
    }
    if sampler.target_lens is not None:
        out["target_lens"] = sampler.target_lens
    if sampler.llm_lens is not None:
        out["llm_lens"] = sampler.llm_lens
    return out


def save(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_writer(path, binary=True) as f:
        f.write(buf.getvalue())


def load(path: str | Path) -> dict[str, np.ndarray] | None:
    """The record at `path`; None where there is none (a checkpoint of an llmasr before it) or it does not read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None


def explainer(tag_dir: str | Path, sampler, manifest=None) -> Callable[[], str | None]:
    """`explain` of the record in checkpoint `tag_dir` against `sampler`, read only when called (a refusal's)."""
    return lambda: None if (saved := load(Path(tag_dir) / FILE)) is None else explain(saved, sampler, manifest)


def _batches(keys: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [keys[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _name(i: int, manifest) -> str:
    if manifest is None:
        return f"item {i}"
    from llmasr.data.screen import where  # screen imports the loaders' modules: only a refusal needs it

    path, line = where(manifest, i)
    return f"{path}:{line}"


def _fields(sampler) -> tuple:
    """(the record's key, the sampler's values now, how a line's two values are worded) of each input a line's
    batching reads, in the order an explanation names them."""
    return (
        ("llm_lens", sampler.llm_lens, lambda a, b: f"LLM positions {int(a)} -> {int(b)}"),
        ("target_lens", sampler.target_lens, lambda a, b: f"target length {int(a)} -> {int(b)}"),
        ("durations", sampler.durations.astype(np.float32), lambda a, b: f"duration {float(a):g} -> {float(b):g} s"),
        ("reason", sampler.filter_codes, lambda a, b: f"{reason_text(int(a))} -> {reason_text(int(b))}"),
    )


def _compared(saved: dict, sampler, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, Callable]]:
    """(values then, values now, which differ, wording) of the first `n` lines, for each input both sides hold; a
    duration unknown (NaN) then and now is no change."""
    out = []
    for key, now, word in _fields(sampler):
        if key in saved and now is not None:
            old, new = saved[key][:n], now[:n]
            out.append((old, new, (old != new) & ~(np.isnan(old) & np.isnan(new)), word))
    return out


def explain(saved: dict, sampler, manifest=None) -> str:
    """What differs between the `saved` record and the batches `sampler` cuts now: the saved epoch's first batch that
    differs (its step and rank in the run, its lines then and now) and the lines whose inputs differ (both values),
    or that none do (the cut itself differs). `manifest` names lines by file and line."""
    epoch = int(saved["epoch"])
    plan = sampler.epoch_plan(epoch)
    old, new = _batches(saved["keys"], saved["offsets"]), _batches(plan.keys, plan.offsets)
    n = min(len(old), len(new))
    first = next((p for p in range(n) if not np.array_equal(old[p], new[p])), n if len(old) != len(new) else None)
    parts = []
    n_items = min(saved["durations"].size, sampler.durations.size)
    if saved["durations"].size != sampler.durations.size:
        parts.append(f"the data holds {sampler.durations.size} lines, the run had {saved['durations'].size}")
    if first is not None:
        steps, ranks = np.nonzero(saved["groups"] == first)
        at = f" (step {int(steps[0])} of rank {int(ranks[0])})" if steps.size else ""
        was = old[first].tolist() if first < len(old) else "none"
        now = new[first].tolist() if first < len(new) else "none"
        parts.append(
            f"epoch {epoch}'s batch {first} of {len(old)} in cost order{at} held items {was}, now {now} "
            f"({len(new)} batches)"
        )
    compared = _compared(saved, sampler, n_items)
    changed = np.flatnonzero(np.logical_or.reduce([differ for _, _, differ, _ in compared])).tolist()
    if first is not None:  # the lines of the differing batch first
        keys = (old[first].tolist() if first < len(old) else []) + (new[first].tolist() if first < len(new) else [])
        near = {dataset_index(k, sampler.durations.size) for k in keys}
        changed.sort(key=lambda i: i not in near)
    budget = f" (data.batching.max_llm_tokens {sampler.max_llm_tokens})" if sampler.max_llm_tokens is not None else ""
    for i in changed[:SHOWN]:
        text = ", ".join(word(then[i], now_[i]) for then, now_, differ, word in compared if differ[i])
        parts.append(f"item {i} ({_name(i, manifest)}): {text}{budget if 'LLM positions' in text else ''}")
    if len(changed) > SHOWN:
        parts.append(f"and {len(changed) - SHOWN} more item(s) with other inputs")
    if not changed and n_items == sampler.durations.size == saved["durations"].size:
        parts.append(
            "every line's duration, target length, LLM positions and filter are as the run had them: this llmasr "
            "cuts them into batches otherwise than the one that wrote the checkpoint"
        )
    return "; ".join(parts)
