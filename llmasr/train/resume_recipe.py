"""Which recipe keys may change when a run is resumed: the saved recipe against the new one.

A resumed run compares its recipe with the one the run was saved under (RUN_DIR/recipe.yaml beside the checkpoint
folder), key by key:

- `MAY_CHANGE` keys take effect from the next update (logging, saving, validation, loader workers, clipping) or
  are checked another way (base model paths: the checkpoint's base fingerprint);
- `RESCHEDULE` keys size or shape the learning-rate schedules: the schedules are rebuilt from the new recipe and
  continue at the current update (llmasr.train.resume.continue_schedules says what changed and the lrs from there);
- every other key is refused, with both values and why: the model, the batches and the sampler position, the
  seeds, the precision of the saved optimizer state, optimizer settings that the saved state restores.

README.md ("Resume") lists both tables; a test keeps them equal to these.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from llmasr import run_dir as ck
from llmasr.config_io import ConfigError, from_dict, load_yaml, to_dict
from llmasr.config_paths import resolve_paths
from llmasr.train.config import TYPE_FIELDS

MAY_CHANGE: tuple[str, ...] = (
    "train.log_every",
    "train.progress_every_s",
    "train.peak_tflops",
    "train.save_every_updates",
    "train.keep_last",
    "train.valid_every_updates",
    "train.best_k",
    "train.patience",  # raised to train on after an early stop
    "train.min_delta",
    "train.grad_clip",
    "train.deterministic",
    "train.cudnn_attention",
    "train.output_dir",
    "train.resume",
    "data.valid",
    "data.valid_max_utts",
    "data.num_workers",
    "data.features_on",  # the same features either way (same dither and masks per item)
    "data.prefetch_factor",
    "data.pin_memory",
    "data.max_bad_fraction",
    "decode",
    "model.llm.path",
    "model.encoder.path",
    "model.adaptor.init_from",
    "model.ctc.init_from",
    "model.llm.gradient_checkpointing",
    "model.encoder.gradient_checkpointing",
    "model.llm.checkpoint_every",
    "model.llm.fused_kernels",  # the same weights and loss, other kernels
    "model.encoder.conf.train_chunks",  # the same weights, another draw of streaming chunks from here (said at resume)
)
RESCHEDULE: tuple[str, ...] = (
    "train.epochs",
    "train.max_updates",
    "train.grad_accum",
    "optim.scheduler",
    "optim.branches.*.lr",
    "optim.branches.*.scheduler",
)
# Why a refused key cannot change (first matching pattern).
_REFUSED_WHY: tuple[tuple[str, str], ...] = (
    ("model", "the model the checkpoint holds"),
    ("train.seed", "the random streams the run continues"),
    ("data.seed", "the batch order the saved sampler position points into"),
    (
        "data.augment.spec_augment.max_time_fraction",
        "the cap the run's time masks were drawn under; an llmasr before this key capped none, as 1 does: set "
        "data.augment.spec_augment.max_time_fraction=1 to resume such a run as it trained",
    ),
    ("data", "the batches the saved sampler position points into"),
    ("optim", "the saved optimizer state restores the old value"),
    ("train.precision", "the precision of the saved optimizer state"),
    ("train.best_*", "the ranking already in checkpoints/best.json"),
)


def _matches(key: str, pattern: str) -> bool:
    return fnmatchcase(key, pattern) or fnmatchcase(key, pattern + ".*")


def key_kind(key: str) -> str:
    """The kind of a dotted recipe key on resume: "may_change", "reschedule" or "refused"."""
    if any(_matches(key, p) for p in MAY_CHANGE):
        return "may_change"
    if any(_matches(key, p) for p in RESCHEDULE):
        return "reschedule"
    return "refused"


def _why_refused(key: str) -> str:
    for pattern, why in _REFUSED_WHY:
        if _matches(key, pattern):
            return why
    return "not among the keys that may change on resume"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested dicts; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def recipe_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every leaf that differs; a key absent on one side reads as None. A
    scheduler's field that neither side's type reads is left out: a branch's `scheduler: {type: constant}` over an
    inherited one had listed tri_stage's init_lr_scale null -> 0.01 and the like, defaults nothing reads. A branch's
    scheduler set on one side only is compared with the optim-wide one the other side's branch inherits."""
    saved, new = _inherited(saved, new), _inherited(new, saved)
    a, b = flatten(saved), flatten(new)
    return [
        (k, a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not (_unread_by(k, a) and _unread_by(k, b))
    ]


def _inherited(side: dict, other: dict) -> dict:
    """`side` with each branch scheduler it leaves unset, and `other` sets, as the optim-wide one it inherits."""
    optim, others = side.get("optim"), (other.get("optim") or {}).get("branches") or {}
    if not isinstance(optim, dict) or not isinstance(optim.get("branches"), dict):
        return side
    branches = {
        name: {**branch, "scheduler": optim.get("scheduler")}
        if isinstance(branch, dict) and branch.get("scheduler") is None and (others.get(name) or {}).get("scheduler")
        else branch
        for name, branch in optim["branches"].items()
    }
    return {**side, "optim": {**optim, "branches": branches}}


def _unread_by(key: str, flat: dict) -> bool:
    """Whether `key` is a scheduler's field its type in `flat` (the optim-wide one's for a branch's unset
    scheduler) does not read."""
    section, _, name = key.rpartition(".")
    if not (section == "optim.scheduler" or fnmatchcase(section, "optim.branches.*.scheduler")):
        return False
    kind = flat.get(f"{section}.type") or flat.get("optim.scheduler.type")
    return name in TYPE_FIELDS and kind not in TYPE_FIELDS[name]


def shown(before: Any, after: Any) -> str:
    """A change's two values as it names them, `BEFORE -> AFTER`: their JSON, each cut at 80 characters around the
    first character where they differ (a long list cut at its start had read the same on both sides: data.train's
    entries with another weight at the end)."""
    texts = [json.dumps(v, default=str) for v in (before, after)]
    first = next((i for i, (x, y) in enumerate(zip(*texts)) if x != y), min(map(len, texts)))
    start = max(0, first - 30)  # some of what comes before the difference, to say where it is

    def cut(text: str) -> str:
        if len(text) <= 80:
            return text
        if start == 0:
            return text[:77] + "..."
        return "..." + text[start : start + 74] + ("..." if start + 74 < len(text) else "")

    return " -> ".join(map(cut, texts))


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {shown(a, b)}" for k, a, b in changes)


def saved_recipe_dict(path: Path, recipe_type: type) -> dict:
    """The recipe a run was saved under, parsed as a `recipe_type` (defaults filled in, as the new one is). The
    type comes from the caller's recipe: the training library stays below the recipe loader."""
    try:
        data = load_yaml(path)  # as load_recipe reads a recipe: the same numbers (1e-4) on both sides
        if isinstance(data, dict) and hasattr(recipe_type, "saved_data"):
            data = recipe_type.saved_data(data, path)
        for base in (path.parent, Path.cwd()):  # as load_recipe reads paths: a run saved with relative ones compares
            if isinstance(data, dict):
                resolve_paths(recipe_type, data, base)
        return _plain(from_dict(recipe_type, data))
    except (ConfigError, yaml.YAMLError, AttributeError, TypeError) as err:
        raise ConfigError(f"{path}: the saved recipe of the run being resumed does not load: {err}") from None


def _plain(recipe) -> dict:
    # through YAML so that both sides hold the same types (tuples as lists), as recipe.yaml stores them
    return yaml.safe_load(yaml.safe_dump(to_dict(recipe), sort_keys=False))


def saved_recipe_path(load_dir: Path) -> Path:
    """RUN_DIR/recipe.yaml of the run whose checkpoints folder (or abandoned_at_update_N folder) is `load_dir`."""
    return (ck.run_dir_of(load_dir) if ck.abandoned_dir(load_dir) else load_dir.parent) / ck.RECIPE_FILE


def saved_model_section(where: Path, recipe) -> dict | None:
    """The model section the checkpoint `where`'s run was saved under; None where its recipe.yaml is not there or
    does not load (check_resume_recipe names that)."""
    path = saved_recipe_path(where.parent)
    try:
        return saved_recipe_dict(path, type(recipe)).get("model") if path.is_file() else None
    except ConfigError:
        return None


def check_resume_recipe(recipe, load_dir: Path) -> list[str]:
    """Compare `recipe` with the recipe of the run `load_dir` (its checkpoints folder) belongs to. Refuses keys
    that cannot change on resume (each with both values and why); returns notes for the run's log (the changes
    that may happen, or that there was nothing to compare with)."""
    load_dir = Path(load_dir)
    saved_path = saved_recipe_path(load_dir)
    if not saved_path.is_file():
        return [f"resume: no {saved_path} beside {load_dir}; the recipe cannot be compared with the run's"]
    changes = recipe_changes(saved_recipe_dict(saved_path, type(recipe)), _plain(recipe))
    refused = [c for c in changes if key_kind(c[0]) == "refused"]
    if refused:
        lines = [f"  {k}: {shown(a, b)} ({_why_refused(k)})" for k, a, b in refused]
        raise ConfigError(
            f"--resume: the recipe differs from {saved_path} (the run being resumed) in keys that cannot change "
            "on resume:\n" + "\n".join(lines) + "\nResume with the run's values, or start a new run (another "
            "train.output_dir, or --overwrite); README.md (Resume) lists the keys that may change"
            + _from_this_run(refused, saved_path.parent)
        )
    return [f"resume: recipe changes since the run was saved: {describe(changes)}"] if changes else []


def _from_this_run(refused: list, run_dir: Path) -> str:
    """For a branch unfrozen (or frozen) on resume: the route that trains it on from this run's weights."""
    keys = [k for k, _, _ in refused if fnmatchcase(k, "model.*.freeze")]
    if not keys:
        return ""
    return (
        f"\nTo train on from this run's weights with {', '.join(keys)} changed: `llmasr export --checkpoint {run_dir} "
        "--output DIR`, then a new run (another train.output_dir) whose recipe starts from DIR: "
        "model.encoder.init_from: DIR/encoder.safetensors, model.adaptor.init_from: DIR/adaptor.safetensors, "
        "model.llm.path: DIR/llm (or model.llm.adapter: DIR/adapter from an --adapter-only export)"
    )
