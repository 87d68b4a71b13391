"""What `llmasr check` says of train.output_dir, as `llmasr train` would find it: a fresh run, or the checkpoint a
resume continues (fitting this recipe, data, model and ZeRO stage, its files whole) with the updates it holds."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from llmasr import errors
from llmasr.data import plan_record
from llmasr.run_dir import read_meta, resolve_resume, resume_asked, resume_or_start
from llmasr.run_dir.files import verify_tag
from llmasr.train.check_course import Course, epoch_ends, fresh_course
from llmasr.train.ds_files import read_client_state
from llmasr.train.early_stop import EarlyStop
from llmasr.train.resume import check_checkpoint, manifest_contents, resuming, warn_changed
from llmasr.train.run_dir import LrCourse, check_lock, check_run_start
from llmasr.train.schedulers import BranchLRScheduler
from llmasr.train.universal import batches_left, global_batch_change, nothing_left, older_saves, resumed_counts


class RunFolder(NamedTuple):
    asked: str | None  # the resume asked for (--resume, else train.resume)
    key: str  # where it was asked (--resume or train.resume)
    resume: str | None  # what it comes to in this folder: None for a fresh start
    notes: list[str]


def run_folder(recipe, *, resume: str | None, overwrite: bool) -> RunFolder:
    """What `llmasr train` (with --resume `resume`, --overwrite) checks of train.output_dir when it claims it, before
    any data or model is loaded, in its order (so a command line both refuse is refused in the same words): a run
    holding the folder, a fresh start in a folder holding checkpoints, a resume's recipe against the run's.
    ConfigError / FileNotFoundError otherwise; nothing is deleted or taken."""
    run_dir = Path(recipe.train.output_dir)
    asked, key = resume_asked(resume, recipe.train.resume)
    resume = resume_or_start(asked, run_dir, overwrite=overwrite)
    stale = check_lock(run_dir)  # a run holding the folder refuses training before anything else
    notes = [*([stale] if stale else []), *check_run_start(run_dir, resume, overwrite, recipe, clear=False, key=key)]
    return RunFolder(asked, key, resume, notes)


def run_start(recipe, model, plan, folder: RunFolder, *, stage: int, world_size: int, overwrite: bool):
    """What `llmasr train` would do with train.output_dir (`folder`, as run_folder found it) once it has the data
    and the model: the checkpoint resumed fits this recipe, data, model and ZeRO stage, and its files are whole.
    Returns the report's lines, the updates the run's schedules are sized by (a resume counts those it holds, as
    training does), the update it stops after (fewer where train.max_updates is more than the epochs hold) and its
    course (check_course.Course: from the checkpoint for a resume)."""
    run_dir = Path(recipe.train.output_dir)
    asked, key, resume, notes = folder
    if resume is None:
        why = "--overwrite starts over" if overwrite else "no checkpoint yet"
        auto = f" (train.resume auto: {why})" if asked == "auto" else ""
        lines = ["run directory", f"  {run_dir}: a fresh run{auto}", *(f"  {n}" for n in notes)]
        return lines, plan.total, plan.ends_after, fresh_course(recipe.train, plan.updates_per_epoch)
    where = Path(*resolve_resume(resume, run_dir, key))
    meta = read_meta(where)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    manifest = plan.loaders[0].dataset.manifest
    explain = plan_record.explainer(where, plan.loaders[1], manifest)
    changed = check_checkpoint(
        meta, where, recipe=recipe, stage=stage, world_size=world_size, per_epoch=plan.per_epoch, trainable=trainable,
        manifests=manifest_contents(manifest), explain=explain,
    )  # fmt: skip
    notes += [f"data.train changed since the checkpoint: {c}" for c in changed]
    verify_tag(where, meta)  # the files the save recorded, as training's ranks verify them before loading
    ranks = f"{meta.world_size} rank{'s' if meta.world_size != 1 else ''}"
    resized = "" if meta.world_size == world_size else f"; saved on {ranks}, resized to {world_size}"
    converted = "" if meta.zero_stage == stage else f"; saved at ZeRO stage {meta.zero_stage}, converted to {stage}"
    head = f"  resumes {where} (update {meta.update}, epoch {meta.epoch}{resized}{converted}) into {run_dir}"
    client, saved_ds, scheduler = read_client_state(where, meta)
    total, stop, ends = resumed_total(recipe, plan, where, meta, world_size, client, changed, explain)
    epoch = int(client.get("epoch", meta.epoch))  # the one it resumes in
    warn_changed(where, changed)  # as training warns, once the position counts into the files as they are now
    early = EarlyStop.of(recipe.train)
    early.load_state_dict(client.get("early_stop"))
    held, applied = BranchLRScheduler.saved(scheduler) if scheduler else ([], meta.update)  # as train restores them
    lrs = LrCourse.of(client.get("lr_course"), held)
    course = Course(meta.update, ends, early, bool(client.get("validation_owed")), epoch, applied, lrs)
    done = nothing_left(meta.update, stop)  # the epochs' end, where it comes before max_updates
    batch = global_batch_change(saved_ds, plan.ds, world_size) if resized else None
    if done is None and early.exhausted and epoch < recipe.train.epochs:
        done = early.nothing_left()  # as the trainer says once it has loaded the count
    warnings = [f"  warning: {w}" for w in (batch, done, *older_saves(recipe, client.get("loader"))) if w]
    return ["run directory", head, *(f"  {n}" for n in notes), *warnings], total, stop, course


def resumed_total(
    recipe, plan, where: Path, meta, world_size: int, client: dict, changed: list[str] = (), explain=None
) -> tuple[int, int, list[int]]:
    """The updates a resume from checkpoint `where` (its `client` state) holds, counted as the trainer counts them
    once it has loaded: the batches left in its epoch (dealt to this world size) and the epochs after it, at this
    grad_accum; the update the run stops after (the epochs' end where train.max_updates is more); and the updates
    after which its epochs end."""
    epoch, loader_state = int(client.get("epoch", meta.epoch)), client.get("loader")
    resharded = None
    if loader_state is not None:  # a position this data cannot continue is refused, as training's load refuses it
        with errors.context(resuming(where, changed)):
            length = plan.loaders[1].length_after(loader_state["sampler"], explain)
        resharded = length if meta.world_size != world_size else None
    left = batches_left(plan.per_epoch, epoch, loader_state, resharded)
    total, held = resumed_counts(meta.update, epoch, left, plan.per_epoch, plan.grad_accum, recipe.train.max_updates)
    return total, min(total, held), epoch_ends(meta.update, left, plan.per_epoch, epoch, plan.grad_accum)
