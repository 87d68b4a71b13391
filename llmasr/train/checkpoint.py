"""Run-directory layout, checkpoint bookkeeping (latest pointer, keep-last-K rotation, best-K) and resume lookup.

    RUN_DIR/recipe.yaml, ds_config.json         the resolved configuration (rewritten only once a resume succeeded)
    RUN_DIR/train.log, tensorboard/, lr_schedule.csv, lr_schedule.png
    RUN_DIR/.lock                               pid and host of the run using the folder (llmasr.train.run_dir)
    RUN_DIR/checkpoints/update_00001200/        DeepSpeed files (trainable tensors only) + llmasr_meta.json
    RUN_DIR/checkpoints/latest                  newest complete tag (written atomically, after every rank saved)
    RUN_DIR/checkpoints/best.json               [{"tag", "metric", "value"}, ...] best first; never rotated away
    RUN_DIR/checkpoints/update_00001200_universal/   that checkpoint converted for another world size (universal.py)

Only rank 0 writes these files and deletes old checkpoints (every rank deleting the same folder races).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

RECIPE_FILE = "recipe.yaml"
DS_CONFIG_FILE = "ds_config.json"
TRAIN_LOG = "train.log"
TENSORBOARD = "tensorboard"
LR_CSV = "lr_schedule.csv"
LR_PNG = "lr_schedule.png"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best.json"
META = "llmasr_meta.json"
TAG_RE = re.compile(r"^update_(\d{8,})$")
UNIVERSAL_SUFFIX = "_universal"


def tag_for(update: int) -> str:
    return f"update_{update:08d}"


def update_of(tag: str) -> int | None:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_latest(ckpt_dir: Path) -> str | None:
    f = ckpt_dir / LATEST
    if not f.is_file():
        return None
    tag = f.read_text().strip()
    return tag or None


def read_meta(tag_dir: Path) -> dict:
    f = tag_dir / META
    if not f.is_file():
        raise FileNotFoundError(
            f"{tag_dir}: no {META}; not an llmasr checkpoint, or its save was interrupted (use the `latest` one)"
        )
    return json.loads(f.read_text())


def read_best(ckpt_dir: Path) -> list[dict]:
    f = ckpt_dir / BEST
    return json.loads(f.read_text()) if f.is_file() else []


@dataclass
class CheckpointPolicy:
    keep_last: int = 3  # 0: keep all
    best_k: int = 1  # 0: no best list
    best_metric: str = "loss"
    best_mode: str = "min"


def update_best(best: list[dict], tag: str, metrics: dict, policy: CheckpointPolicy) -> list[dict]:
    """best-K list with `tag` entered by metrics[policy.best_metric] (missing or NaN values never enter)."""
    if policy.best_k <= 0:
        return []
    value = metrics.get(policy.best_metric)
    out = [b for b in best if b["tag"] != tag]
    if value is not None and value == value:
        out.append({"tag": tag, "metric": policy.best_metric, "value": float(value)})
    out.sort(key=lambda b: b["value"], reverse=policy.best_mode == "max")
    return out[: policy.best_k]


def rotate(ckpt_dir: Path, policy: CheckpointPolicy, protect: set[str] = frozenset()) -> list[str]:
    """Delete all but the newest `keep_last` checkpoints, sparing best.json's tags, `latest` and `protect`.
    Returns the deleted tags. Call on rank 0 only."""
    if policy.keep_last <= 0:
        return []
    tags = sorted((t for t in os.listdir(ckpt_dir) if update_of(t) is not None), key=update_of)
    keep = set(tags[-policy.keep_last :]) | {b["tag"] for b in read_best(ckpt_dir)} | set(protect)
    latest = read_latest(ckpt_dir)
    if latest:
        keep.add(latest)
    deleted = []
    for tag in tags:
        if tag not in keep:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
            deleted.append(tag)
    for name in os.listdir(ckpt_dir):  # a universal copy goes with its checkpoint
        source = name.removesuffix(UNIVERSAL_SUFFIX)
        if source != name and update_of(source) is not None and source not in keep:
            shutil.rmtree(ckpt_dir / name, ignore_errors=True)
    return deleted


def finish_save(ckpt_dir: Path, tag: str, meta: dict, policy: CheckpointPolicy) -> list[str]:
    """Rank 0, after every rank has saved `tag`: meta file, best list, latest pointer, rotation."""
    write_atomic(ckpt_dir / tag / META, json.dumps(meta, indent=2, sort_keys=True))
    best = update_best(read_best(ckpt_dir), tag, meta.get("metrics") or {}, policy)
    if policy.best_k > 0:
        write_atomic(ckpt_dir / BEST, json.dumps(best, indent=2))
    write_atomic(ckpt_dir / LATEST, tag + "\n")
    return rotate(ckpt_dir, policy)


def resolve_resume(resume: str, run_dir: str | Path) -> tuple[Path, str]:
    """`--resume` value -> (DeepSpeed load_dir, tag). "" / "latest" / "auto": RUN_DIR/checkpoints/latest; a tag
    name: RUN_DIR/checkpoints/TAG; a path: that checkpoint folder (or a checkpoints folder with a `latest`)."""
    ckpt_dir = checkpoints_dir(run_dir)
    if resume in ("", "latest", "auto"):
        tag = read_latest(ckpt_dir)
        if tag is None:
            raise FileNotFoundError(f"--resume: no {ckpt_dir / LATEST}; nothing to resume in {run_dir}")
        return ckpt_dir, tag
    path = Path(resume)
    if not path.exists() and (ckpt_dir / resume).is_dir():
        path = ckpt_dir / resume
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: neither a checkpoint folder nor a tag in {ckpt_dir}")
    if (path / META).is_file():
        return path.parent, path.name
    tag = read_latest(path)
    if tag is not None:
        return path, tag
    raise FileNotFoundError(f"--resume {resume}: {path} holds neither {META} nor a `{LATEST}` file")
