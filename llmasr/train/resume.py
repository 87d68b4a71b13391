"""Whether a checkpoint can be resumed by this run, and what resuming does once it can.

`check_checkpoint` compares the checkpoint's meta with the run resuming it: the ZeRO stage, the batches its data gives
(the saved sampler position counts them: `check_batches`, naming the training files edited since), the base model
and the trainable parameters. `continue_schedules` rebuilds the learning-rate schedules where the recipe's
RESCHEDULE keys changed. Which recipe keys may change at all: llmasr.train.resume_recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llmasr import run_dir as ck
from llmasr.config_io import ConfigError, to_dict
from llmasr.models.fingerprint import base_fingerprint, fingerprint_differences
from llmasr.run_dir import CheckpointMeta
from llmasr.train.resume_recipe import saved_model_section, shown
from llmasr.train.schedulers import NO_DECAY_SUFFIX
from llmasr.train.universal_stages import stage_change_allowed

log = logging.getLogger("llmasr.train")

STAGE_PRESETS = {0: "zero0", 1: "zero1", 2: "zero2 or zero2_offload", 3: "zero3 or zero3_offload"}  # ds_configs/

# Why the batches differ when no data.train file was edited since the checkpoint
UNEDITED_DATA = (
    "the manifests are as the run read them, but the lines screened unusable before loading differ (an audio file "
    "was removed, became unreadable or was restored since: the warning at this start names the lines unusable now) "
    "or so do the durations probed from the audio of lines that give none"
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
                                        trained=saved_model_section(where, recipe))  # fmt: skip
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
        parts += [f"scheduler.{k} {shown(cfg_a[k], cfg_b[k])}" for k in cfg_a if cfg_a[k] != cfg_b[k]]
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
