"""What may change when a run is resumed, and what resuming does about it.

A resumed run compares its recipe with the one the run was saved under (RUN_DIR/recipe.yaml beside the checkpoint
folder), key by key:

- `MAY_CHANGE` keys take effect from the next update (logging, saving, validation, loader workers, clipping) or
  are checked another way (base model paths: the checkpoint's base fingerprint);
- `RESCHEDULE` keys size or shape the learning-rate schedules: the schedules are rebuilt from the new recipe and
  continue at the current update (`schedule_changes` says what changed and the lrs from there);
- every other key is refused, with both values and why: the model, the batches and the sampler position, the
  seeds, the precision of the saved optimizer state, optimizer settings that the saved state restores.

README.md ("Resume") lists both tables; a test keeps them equal to these.
"""

from __future__ import annotations

import json
import logging
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from llmasr import run_dir as ck
from llmasr.config_io import ConfigError, from_dict, load_yaml, to_dict
from llmasr.config_paths import resolve_paths
from llmasr.models.fingerprint import base_fingerprint, fingerprint_differences
from llmasr.run_dir import CheckpointMeta
from llmasr.train.config import TYPE_FIELDS
from llmasr.train.schedulers import NO_DECAY_SUFFIX
from llmasr.train.universal_stages import stage_change_allowed

log = logging.getLogger("llmasr.train")

STAGE_PRESETS = {0: "zero0", 1: "zero1", 2: "zero2 or zero2_offload", 3: "zero3 or zero3_offload"}  # ds_configs/

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


# Why the batches differ when no data.train file was edited since the checkpoint
UNEDITED_DATA = (
    "the manifests are as the run read them, but the lines screened unusable before loading differ (an audio file "
    "was removed, became unreadable or was restored since: the warning at this start names the lines unusable now) "
    "or so do the durations probed from the audio of lines that give none"
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


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in changes)


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


def _trained_model(where: Path, recipe) -> dict | None:
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
        lines = [f"  {k}: {_show(a)} -> {_show(b)} ({_why_refused(k)})" for k, a, b in refused]
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


def check_checkpoint(
    meta: CheckpointMeta, where: Path, *, recipe, stage: int, world_size: int, per_epoch: list[int], trainable: list,
    manifests: list[dict] | None = None, explain=None,
) -> list[str]:  # fmt: skip
    """The checkpoint `where` (its `meta`) can be resumed by a run of `recipe` at ZeRO `stage` on `world_size`
    ranks, whose data gives `per_epoch` batches a rank and whose model trains the parameters named `trainable`:
    ConfigError naming what differs. `llmasr train` checks this before loading, `llmasr check` before launching.
    `manifests`: the training files as this run reads them (manifest_contents); those edited since the
    checkpoint are returned, for the position's refusal to name them and, once it passed, warn_changed.
    `explain`: what a refusal of the batches says differs (llmasr.data.plan_record.explainer)."""
    changed = changed_manifests(meta.manifests, manifests)
    same_text = not changed and texts_known(meta.manifests, manifests)
    if meta.zero_stage != stage and not stage_change_allowed(meta.zero_stage, stage, recipe.train.precision):
        raise ConfigError(
            f"{where}: saved at ZeRO stage {meta.zero_stage}, this run uses {stage}; stages 1, 2 and 3 are converted "
            "into one another (as another world size is), and to or from ZeRO-0 in fp32, but not to or from ZeRO-0 "
            f"in {recipe.train.precision} (there DeepSpeed keeps the fp32 masters per group, unnamed): resume with a "
            f"stage {meta.zero_stage} DeepSpeed config, --deepspeed {STAGE_PRESETS.get(meta.zero_stage, '<file>')} or "
            f"the run's own {ck.run_dir_of(where.parent) / ck.DS_CONFIG_FILE}"
        )
    if meta.world_size == world_size:  # at another world size the batches per rank differ by design
        check_batches(meta, per_epoch, where, changed, same_text=same_text, explain=explain)
    current = base_fingerprint(recipe.model)
    if fingerprint_differences(meta.base_fingerprint, current):  # the saved recipe is read to name keys, only then
        diffs = fingerprint_differences(meta.base_fingerprint, current, now=recipe.model,
                                        trained=_trained_model(where, recipe))  # fmt: skip
        raise ConfigError(
            f"{where}: the base model differs from the one trained on:\n  " + "\n  ".join(diffs) + "\nPoint each "
            "key named at the files the run was trained on (the trained tensors only make sense on those), or start "
            "a new run"
        )
    if meta.trainable != trainable:
        saved, now = set(meta.trainable), set(trainable)
        raise ConfigError(
            f"{where}: the trainable parameters differ (only in the checkpoint: {sorted(saved - now)[:5]}, "
            f"only now: {sorted(now - saved)[:5]}): LoRA/freeze settings changed since it was saved, or, where they "
            "are the run's, the llmasr that wrote it chose trainable parameters otherwise (an older llmasr kept the "
            "whole base encoder frozen under encoder LoRA whatever encoder.freeze said, and trained no encoder bias "
            "under lora.bias); resume with that llmasr, or start a new run"
        )
    return changed


def warn_changed(where: Path, changed: list[str]) -> None:
    """The warning for the training files `changed` since checkpoint `where` (check_checkpoint's), logged once the
    saved position is known to count into them: a resume refused after it would contradict it."""
    if changed:
        log.warning("resume: the training data changed since %s was saved: %s; what trains from here reads them as "
                    "they are now", where, "; ".join(changed))  # fmt: skip


def manifest_contents(manifest) -> list[dict]:
    """What each file behind a training `manifest` (a Manifest or MixedManifest) held when it was read: its path,
    lines and the sha1 of its text; a checkpoint records it (its meta's `manifests`), for changed_manifests."""
    parts = getattr(manifest, "manifests", [manifest])
    return [{"path": str(m.path), "lines": len(m), "sha1": getattr(m, "sha1", None)} for m in parts]


def changed_manifests(saved: list[dict] | None, now: list[dict] | None) -> list[str]:
    """Each data.train file whose text differs from what the checkpoint's run read, as "PATH (what changed)", in
    data.train's order (files are paired by position: data.train itself cannot change on resume); none known when
    either record is missing (a checkpoint from before llmasr recorded it)."""
    out = []
    for old, new in zip(saved or [], now or []):
        if old["sha1"] is None or new["sha1"] is None or old["sha1"] == new["sha1"]:
            continue
        lines = f"{old['lines']} -> {new['lines']} lines" if old["lines"] != new["lines"] else "lines edited or moved"
        out.append(f"{new['path']} ({lines})")
    return out


def texts_known(saved: list[dict] | None, now: list[dict] | None) -> bool:
    """Whether both records (manifest_contents) hash every data.train file's text, so equal hashes mean no file was
    edited since."""
    return bool(saved and now) and len(saved) == len(now) and all(m["sha1"] is not None for m in [*saved, *now])


def resuming(where: Path, changed: list[str]) -> str:
    """What a resume from `where` is doing, for errors.context; with the training files `changed` since."""
    return f"resuming {where}" + (f" (data.train changed since: {'; '.join(changed)})" if changed else "")


def check_batches(
    meta: CheckpointMeta, per_epoch: list[int], where: Path, changed: list[str] = (), *, same_text: bool = False,
    explain=None,
) -> None:  # fmt: skip
    """The training data must give the batches the checkpoint's run had (the sampler position counts them);
    `changed`: the files edited since (changed_manifests), named in the refusal; `same_text`: every file's text is
    known to be as the run read it, so what differs is what the lines point to; `explain`: called on a refusal, what
    differs batch by batch and line by line (llmasr.data.plan_record.explain), or None."""
    saved = meta.batches_per_epoch
    if not saved:
        return
    n = min(len(saved), len(per_epoch))
    if n and len(set(saved)) == 1 and saved[0] == per_epoch[0] and list(saved[:n]) != list(per_epoch[:n]):
        # llmasr before each epoch's own count wrote the first epoch's for all: the same data, counted anew
        log.info("%s: counted %s batches per rank in every epoch; the data gives %s", where, saved[0], per_epoch[:n])
        return
    if list(saved[:n]) == list(per_epoch[:n]):
        return
    found = explain() if explain is not None else None
    edited = f"changed since the checkpoint: {'; '.join(changed)}" if changed else ""
    if found:
        cause = f"{edited}; {found}" if edited else found
        restore = "what changed (the manifests, the audio, or the llmasr or tokenizer the run had)"
    else:
        cause = edited or (UNEDITED_DATA if same_text else "a manifest changed since the checkpoint")
        cause += ", or an llmasr that plans batches otherwise wrote it"
        restore = f"{'the audio' if same_text else 'the manifests'} (or that llmasr)"
    raise ConfigError(
        f"{where}: the training data (data.train) now gives {per_epoch[:n]} batches per rank per epoch, the run "
        f"had {list(saved[:n])}: {cause}; resuming would skip or repeat utterances. Restore {restore}, or start a new "
        "run"
    )


def schedule_changes(saved: list, new: list) -> list[str]:
    """What differs between the saved GroupSchedules and the new recipe's, one entry per group (a `_no_decay`
    twin that changes like its branch is left out)."""
    old = {s.name: s for s in saved}
    out, seen = [], {}
    for s in new:
        o = old.get(s.name)
        parts = []
        if o.total != s.total:
            parts.append(f"total updates {o.total} -> {s.total}")
        if o.peak_lr != s.peak_lr:
            parts.append(f"peak lr {o.peak_lr:.3e} -> {s.peak_lr:.3e}")
        cfg_a, cfg_b = to_dict(o.cfg), to_dict(s.cfg)
        parts += [f"scheduler.{k} {_show(cfg_a[k])} -> {_show(cfg_b[k])}" for k in cfg_a if cfg_a[k] != cfg_b[k]]
        if not parts:
            continue
        text = ", ".join(parts)
        branch = s.name.removesuffix(NO_DECAY_SUFFIX)
        if s.name.endswith(NO_DECAY_SUFFIX) and seen.get(branch) == text:
            continue
        seen[s.name] = text
        out.append(f"{s.name}: {text}")
    return out


def continue_schedules(scheduler, schedules: list) -> list[str]:
    """After a load: where the recipe's `schedules` differ from the restored ones (another total, lr or scheduler),
    continue with the recipe's from the current update and log what changed and the lrs from here. Returns the
    changes ([] when the saved schedules go on)."""
    changes = schedule_changes(scheduler.schedules, schedules)
    if not changes:
        return []
    before = scheduler.get_lr_by_name()
    scheduler.replace_schedules(schedules)
    now = scheduler.get_lr_by_name()
    log.info(
        "resume: learning-rate schedules rebuilt from this recipe at update %d (%s); lr now %s (the saved schedules "
        "gave %s)", scheduler.last_update, "; ".join(changes),
        " ".join(f"{k}={v:.3e}" for k, v in now.items()), " ".join(f"{k}={v:.3e}" for k, v in before.items()),
    )  # fmt: skip
    return changes
