"""What rank 0 does once every rank has saved a checkpoint (meta, best list, `latest`, rotation), and choosing the
checkpoints an export averages.

    RUN_DIR/checkpoints/best.json   [{"tag", "metric", "value"}, ...] best first; its tags are never rotated away
    RUN_DIR/checkpoints/latest      the newest complete tag, written after the meta (a save cut short is not latest)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmasr.atomic_file import write_atomic
from llmasr.run_dir.layout import (
    ABANDONED_PREFIX,
    BEST,
    LATEST,
    META,
    SETTING_ASIDE,
    UNIVERSAL_SUFFIX,
    CheckpointRef,
    abandoned_at,
    abandoned_dir,
    complete_tags,
    latest,
    tag_update,
    unnamed_save,
    update_of,
)
from llmasr.run_dir.meta import CheckpointMeta, read_meta, write_meta
from llmasr.safe_load import CheckpointError


@dataclass
class CheckpointPolicy:
    keep_last: int = 3  # 0: keep all
    best_k: int = 1  # 0: no best list
    best_metric: str = "loss"
    best_mode: str = "min"


def read_best(ckpt_dir: str | Path) -> list[dict]:
    """best.json's entries, best first; [] when the run keeps no best list (no file)."""
    path = Path(ckpt_dir) / BEST
    if not path.is_file():
        return []
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(best, list) or not all(isinstance(b, dict) and "tag" in b and "value" in b for b in best):
        raise CheckpointError(f"{path}: expected a list of {{'tag', 'metric', 'value'}} objects")
    odd = [b for b in best if isinstance(b["value"], bool) or not isinstance(b["value"], (int, float))]
    if odd:
        raise CheckpointError(f"{path}: tag {odd[0]['tag']!r} has value {odd[0]['value']!r}; expected a number")
    return best


def update_best(best: list[dict], tag: str, meta: CheckpointMeta, policy: CheckpointPolicy) -> list[dict]:
    """best-K list with `tag` entered by its metric policy.best_metric (missing or NaN values never enter)."""
    if policy.best_k <= 0:
        return []
    value = meta.metric(policy.best_metric)
    out = [b for b in best if b["tag"] != tag]
    if value is not None:
        out.append({"tag": tag, "metric": policy.best_metric, "value": value})
    out.sort(key=lambda b: b["value"], reverse=policy.best_mode == "max")
    return out[: policy.best_k]


def rotate(ckpt_dir: Path, policy: CheckpointPolicy, protect: set[str] = frozenset()) -> list[str]:
    """Delete all but the newest `keep_last` complete checkpoints, sparing best.json's tags, `latest` and `protect`,
    and the saves cut short before `latest`. Returns the deleted tags. Call on rank 0 only (every rank deleting the
    same folder races)."""
    if policy.keep_last <= 0:
        return []
    tags = sorted((t for t in os.listdir(ckpt_dir) if update_of(t) is not None), key=update_of)
    complete = [t for t in tags if (ckpt_dir / t / META).is_file()]  # one without its meta is a save cut short
    keep = set(complete[-policy.keep_last :]) | {b["tag"] for b in read_best(ckpt_dir)} | set(protect)
    newest = latest(ckpt_dir)
    if newest:
        keep.add(newest)
    # a save cut short after `latest` is cleared when its update is saved again; one before it never is
    pending = {t for t in tags if t not in complete and (not newest or update_of(t) > (update_of(newest) or 0))}
    deleted = []
    for tag in tags:
        if tag not in keep and tag not in pending:
            _remove(ckpt_dir / tag)
            deleted.append(tag)
    for name in os.listdir(ckpt_dir):  # a universal copy goes with its checkpoint
        source = name.removesuffix(UNIVERSAL_SUFFIX)
        if source != name and update_of(source) is not None and source not in keep:
            shutil.rmtree(ckpt_dir / name, ignore_errors=True)
    return deleted


def clear_tag(ckpt_dir: Path, tag: str) -> bool:
    """Rank 0, before every rank saves `tag`: remove a folder of that name left from before (a save cut short by a
    preemption, or a checkpoint of a run resumed from an earlier one), which the new save would only partly
    overwrite (another world size's optimizer shards stay, and its file list records them); `latest` and best.json
    stop naming it first, so a crash mid-save leaves them on complete checkpoints. Returns whether one was there."""
    folder = ckpt_dir / tag
    if not folder.exists():
        return False
    _point_off(ckpt_dir, {tag})
    _remove(folder, ignore_errors=False)  # the save goes into this folder: it must be gone
    shutil.rmtree(ckpt_dir / (tag + UNIVERSAL_SUFFIX), ignore_errors=True)
    return True


def _remove(folder: Path, ignore_errors: bool = True) -> None:
    """Delete a checkpoint folder, its meta first: a deletion cut short (a job killed while rotating) leaves a save
    cut short, which nothing takes for a checkpoint, not one that is listed, averaged and resumed with files gone."""
    (folder / META).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=ignore_errors)


def _enter(ckpt_dir: Path, tag: str, meta: CheckpointMeta, policy: CheckpointPolicy) -> None:
    """`tag`'s meta file, and the best list with it entered by its metrics."""
    write_meta(ckpt_dir / tag, meta)
    _rank(ckpt_dir, tag, meta, policy)


def _rank(ckpt_dir: Path, tag: str, meta: CheckpointMeta, policy: CheckpointPolicy) -> None:
    """The best list with `tag` entered by its metrics. With best_k 0 (a resume may turn the list off) best.json
    goes: its tags would be spared by rotation and averaged for ever."""
    best = update_best(read_best(ckpt_dir), tag, meta, policy)
    if policy.best_k > 0:
        write_atomic(ckpt_dir / BEST, json.dumps(best, indent=2))
    else:
        (ckpt_dir / BEST).unlink(missing_ok=True)


def finish_save(ckpt_dir: Path, tag: str, meta: CheckpointMeta, policy: CheckpointPolicy) -> list[str]:
    """Rank 0, after every rank has saved `tag`: meta file, best list, latest pointer, rotation."""
    _enter(ckpt_dir, tag, meta, policy)
    write_atomic(ckpt_dir / LATEST, tag + "\n")
    return rotate(ckpt_dir, policy)


def finish_unnamed(ckpt_dir: Path, tag: str, policy: CheckpointPolicy) -> bool:
    """Rank 0, resuming `tag` of `ckpt_dir`: when it is the save `latest` does not name yet (layout.unnamed_save: a
    save cut short after its meta), write its best.json entry and `latest`, as the save would have. Returns whether
    it was that save."""
    if unnamed_save(ckpt_dir) != tag:
        return False
    _rank(ckpt_dir, tag, read_meta(ckpt_dir / tag), policy)
    write_atomic(ckpt_dir / LATEST, tag + "\n")
    return True


def record_metrics(ckpt_dir: Path, tag: str, metrics: dict, policy: CheckpointPolicy) -> list[str]:
    """Rank 0: the metrics of a validation run after `tag` was saved without it (a stop came first; the resume ran
    it) go into its meta and the best list, as a save with them would have put them; then rotation."""
    meta = read_meta(ckpt_dir / tag)
    meta.metrics = dict(metrics)
    _enter(ckpt_dir, tag, meta, policy)
    return rotate(ckpt_dir, policy)


def set_aside_later(ckpt_dir: Path, update: int, source: Path | None = None) -> tuple[list[str], Path | None]:
    """Rank 0, once a resume at `update` has loaded: the run's checkpoints of later updates belong to the course
    the resume leaves (a resume from an earlier checkpoint, say after a loss spike). Left in place, rotation kept
    them (the highest updates) and deleted the new ones, and export's last-N and best-N averaged them. They move,
    with their universal copies and best.json entries, into `abandoned_at_update_N[_k]/` beside them, where export
    can still read them and nothing rotates them; `latest` names the newest checkpoint left. A resume from such a
    folder (`source`, the folder the checkpoint was loaded from) takes up the course that left the run at its N:
    every checkpoint here after N is of the other course, that of `update` included. Returns (moved tags, that
    folder or None)."""
    if source is not None and abandoned_dir(source) and source.parent.resolve() == Path(ckpt_dir).resolve():
        update = abandoned_at(source)
    # A folder without its meta is a save cut short (a preemption), not a course: the save of its update clears it.
    later = sorted(
        (t for t in os.listdir(ckpt_dir) if (update_of(t) or 0) > update and (ckpt_dir / t / META).is_file()),
        key=update_of,
    )
    aside = _move_aside(ckpt_dir, later, update) if later else None
    # Main now holds no complete tag after `update`: a marker left by a set-aside cut short is done with (one left
    # in place would hide a later save of the same tag from resume_point).
    for marker in Path(ckpt_dir).glob(f"{ABANDONED_PREFIX}*/{SETTING_ASIDE}"):
        marker.unlink()
    return later, aside


def _move_aside(ckpt_dir: Path, later: list[str], update: int) -> Path:
    aside = ckpt_dir / f"abandoned_at_update_{update:08d}"
    k = 1
    while aside.exists():
        k += 1
        aside = ckpt_dir / f"abandoned_at_update_{update:08d}_{k}"
    aside.mkdir()
    # Until they have moved, the marker tells resume_point that these complete tags newer than `latest` are the
    # course being left, not a save that did not get to name itself (a kill now would have them resumed).
    write_atomic(aside / SETTING_ASIDE, "".join(t + "\n" for t in later))
    named, dropped = _point_off(ckpt_dir, set(later))
    for tag in later:
        os.replace(ckpt_dir / tag, aside / tag)
        if (ckpt_dir / (tag + UNIVERSAL_SUFFIX)).exists():
            os.replace(ckpt_dir / (tag + UNIVERSAL_SUFFIX), aside / (tag + UNIVERSAL_SUFFIX))
    if dropped:
        write_atomic(aside / BEST, json.dumps(dropped, indent=2))
    if named:
        write_atomic(aside / LATEST, later[-1] + "\n")
    return aside


def _point_off(ckpt_dir: Path, tags: set[str]) -> tuple[bool, list[dict]]:
    """`latest` and best.json stop naming `tags` (about to go): `latest` falls back to the newest complete
    checkpoint among the others (or goes). Returns (whether `latest` named one of them, the best entries dropped)."""
    named = latest(ckpt_dir) in tags
    if named:
        older = [t for t in complete_tags(ckpt_dir) if t not in tags]
        if older:
            write_atomic(ckpt_dir / LATEST, older[-1] + "\n")
        else:
            (ckpt_dir / LATEST).unlink()
    best = read_best(ckpt_dir)
    dropped = [b for b in best if b["tag"] in tags]
    if dropped:
        write_atomic(ckpt_dir / BEST, json.dumps([b for b in best if b["tag"] not in tags], indent=2))
    return named, dropped


def select_tags(ref: CheckpointRef, n: int, by: str = "last", policy: CheckpointPolicy | None = None) -> list[str]:
    """The `n` checkpoints to average: the last n up to and including `ref.tag`, or the best n of best.json.
    `policy`: the run's keep_last and best_k, which say why fewer are there (None: not known)."""
    if n < 1:
        raise CheckpointError(f"--average must be >= 1, got {n}")
    if by == "last":
        tags = complete_tags(ref.root)  # not a save cut short
        if ref.tag not in tags:
            tags.append(ref.tag)
        chosen = [t for t in tags if tag_update(ref.root / t) <= tag_update(ref.path)][-n:]
    elif by == "best":
        if not (ref.root / BEST).is_file():
            why = "best-N averaging needs the validation ranking the trainer writes"
            if policy is not None and not policy.best_k:
                why = "the run ranked none (train.best_k: 0)"
            raise CheckpointError(
                f"{ref.root / BEST}: missing; {why}; average the last checkpoints instead (--average {n} without "
                "--average-by best)"
            )
        chosen = [b["tag"] for b in read_best(ref.root)][:n]
        if not chosen:  # a run without validation data (or a list emptied since) ranks none: "0 available" said not why
            raise CheckpointError(
                f"{ref.root / BEST} ranks no checkpoint: the run has no validation result to rank by (no data.valid, "
                f"or no validation yet); average the last checkpoints instead (--average {n} without --average-by best)"
            )
        for t in chosen:
            if not (ref.root / t).is_dir():
                raise CheckpointError(f"{ref.root / BEST} lists tag {t!r}, but {ref.root / t} does not exist")
    else:
        raise CheckpointError(f"--average-by must be 'last' or 'best', got {by!r}")
    if len(chosen) < n:
        fix = f": give --average {len(chosen)}, or {_to_keep_more(ref, by, policy)}" if chosen else ""
        raise CheckpointError(
            f"asked to average {n} checkpoints ({by}) but only {len(chosen)} {'is' if len(chosen) == 1 else 'are'} "
            f"available under {ref.root}: "
            f"{', '.join(chosen) or 'none'}{fix}"
        )
    return chosen


def _to_keep_more(ref: CheckpointRef, by: str, policy: CheckpointPolicy | None) -> str:
    """How a run keeps more checkpoints to average: a larger train.keep_last or best_k where those limits removed
    some; where the run kept all it saved or ranked (keep_last 0, fewer validations than best_k), saving or
    validating more often. Without the policy, the keys that limit them."""
    if by == "best":
        if policy is not None and len(read_best(ref.root)) < policy.best_k:
            return (
                f"validate more often (train.valid_every_updates) or train longer: best.json ranks every checkpoint "
                f"saved at a validation, up to train.best_k {policy.best_k}, and the run saved fewer"
            )
        return "train with a larger train.best_k (best.json keeps the run's train.best_k best)"
    if policy is not None and (not policy.keep_last or len(complete_tags(ref.root)) < policy.keep_last):
        kept = "0 keeps all" if not policy.keep_last else f"{policy.keep_last} is more than it saved"
        return (
            f"save more often (train.save_every_updates) or train longer: the run kept all it saved (train.keep_last "
            f"{kept})"
        )
    return "train with a larger train.keep_last (rotation keeps the last train.keep_last)"
