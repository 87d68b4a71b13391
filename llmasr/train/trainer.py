"""The training loop behind `llmasr train` (llmasr.commands.train parses its arguments).

    llmasr train --config RECIPE --deepspeed ds_configs/zero2.json [--resume [TAG|PATH]] [key=value ...]
    deepspeed --num_gpus N --module llmasr train ...      torchrun --nproc_per_node N -m llmasr train ...

Start-up (configuration, run folder, data, model, engine): llmasr.train.run_setup. Here: resume, then epochs of
accumulation windows, validation and checkpoints between them, and a stop signal's save.

An update's micro batches and loss normalisation: llmasr.train.window. What each log line reports: progress.py.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from llmasr import errors
from llmasr import run_dir as ck
from llmasr.data import plan_record
from llmasr.data.bad_data import ranks_summary, refuse_summed
from llmasr.data.loader import say_epoch_mix
from llmasr.models.sanm_chunk import load_chunk_draws
from llmasr.run_dir.files import verify_ranks
from llmasr.train import resolve, universal
from llmasr.train.check_course import Course, epoch_ends, fresh_course, validation_updates
from llmasr.train.config import need_recipe
from llmasr.train.ds_files import CLIENT_KEY
from llmasr.train.efficiency import WaitClock, run_peaks
from llmasr.train.flops import FlopCounter
from llmasr.train.preemption import Preemption, signal_name
from llmasr.train.process_group import all_gather_object
from llmasr.train.progress import Progress, done_line, relogged
from llmasr.train.resume import check_checkpoint, continue_schedules, resuming, warn_changed
from llmasr.train.run_dir import LrCourse
from llmasr.train.run_setup import RunSetup
from llmasr.train.schedulers import warmup_warnings
from llmasr.train.validate import validate_by_set
from llmasr.train.window import run_window, windows

log = logging.getLogger("llmasr.train")


class Run(RunSetup):
    """The state of one training run (built by `train`)."""

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def save(self, epoch: int, loader_state: dict | None, metrics: dict | None, *, validation_owed=False) -> None:
        start = time.monotonic()
        self._write_lr_course()  # the run folder's lr course as of this checkpoint
        lr_course = {"since": self.lr_since, "skipped": list(self.skipped)}  # a resume rewrites lr_schedule.csv by it
        self.last_saved = self.checkpoints.save(epoch, loader_state, metrics, validation_owed=validation_owed,
                                                early_stop=self.early.state_dict(), lr_course=lr_course)  # fmt: skip
        self.progress.aside(time.monotonic() - start)

    def load(self) -> tuple[int, dict | None]:
        """Resume: returns (epoch to run, loader state for a mid-epoch position or None)."""
        load_dir, tag = ck.resolve_resume(self.resume, self.run_dir, self.resume_key)
        meta = ck.read_meta(where := load_dir / tag)
        saved_world = meta.world_size
        explain = plan_record.explainer(where, self.sampler, self.train_loader.dataset.manifest)
        changed = check_checkpoint(
            meta, where, recipe=self.recipe, stage=self.engine.stage, world_size=self.world, per_epoch=self.per_epoch,
            trainable=self.trainable, manifests=self.checkpoints.manifests, explain=explain,
        )  # fmt: skip
        verify_ranks(where, meta, self.rank, self.world, all_gather_object)  # before DeepSpeed reads a byte
        with errors.context(f"loading checkpoint {where}"):
            if universal.needs_conversion(saved_world, self.world, self.engine.stage, meta.zero_stage):
                client = universal.load_converted(self.engine, load_dir, tag, self.ckpt_dir, self.rank, meta)
            else:
                client = self.engine.load(str(load_dir), tag)
        state = client.get(CLIENT_KEY) or {}
        if state.get("loader") is not None:  # a position this data cannot continue: refused before anything moves
            with errors.context(resuming(where, changed)):
                self.sampler.length_after(state["loader"]["sampler"], explain)
        warn_changed(where, changed)  # the position counts into the files as they are now
        for note in universal.older_saves(self.recipe, state.get("loader")) if self.rank == 0 else ():
            log.warning("resume: %s", note)
        # a validation the stop put off goes into the checkpoint's meta where it is this folder's own (one of another
        # run's folder, or set aside, is not this run's to rank, and this folder may hold another course's tag)
        self.validation_owed = bool(state.get("validation_owed"))
        self.early.load_state_dict(state.get("early_stop"))
        self.owed_here = self.validation_owed and where.resolve() == (self.ckpt_dir / tag).resolve()
        load_chunk_draws(self.engine.module, state.get("chunk_draws"), str(where))  # at any world size
        rngs = state.get("rng") or []
        self.pending_rng = rngs[self.rank] if len(rngs) == self.world else None
        if self.pending_rng is not None and state.get("loader") is None:
            # Saved at an epoch end, before the next epoch's loader drew its seed: restore now.
            resolve.set_rng_state(self.pending_rng, self.engine.device)
            self.pending_rng = None
        log.info("resumed from %s at update %d, epoch %d", where, self.engine.global_steps, state.get("epoch", 0))
        if self.rank == 0 and (note := relogged(self.run_dir / "train.log", self.engine.global_steps)):
            log.warning(note)
        self.last_saved = self.engine.global_steps
        self.checkpoints.resumed(load_dir, tag, self.engine.global_steps)  # `latest`, later courses set aside
        epoch, loader_state = int(state.get("epoch", 0)), state.get("loader")
        if saved_world != self.world:
            left = self._resize(saved_world, epoch, loader_state, client.get("ds_config") or {})
        else:  # the epoch's batches not yet trained (another grad_accum counts them into other updates)
            left = universal.batches_left(self.per_epoch, epoch, loader_state)
        done, max_updates = self.engine.global_steps, self.recipe.train.max_updates
        # counted here, not by the plan: the updates before the checkpoint were at its grad_accum and world size
        self.total, held = universal.resumed_counts(done, epoch, left, self.per_epoch, self.k, max_updates)
        # the validations still ahead, for the eta (the owed one runs before the first update: timed, not ahead)
        self.course = Course(done, epoch_ends(done, left, self.per_epoch, epoch, self.k), self.early, epoch=epoch)
        self.ends_after = min(self.total, held)
        if (note := universal.short_of_max_updates(done, held, max_updates)) and self.rank == 0:
            log.warning(note)
        for line in warmup_warnings(self.recipe.optim, self.branches, self.total) if self.rank == 0 else ():
            log.warning(line)  # against the updates this resume holds (the plan counted a fresh run's)
        self.schedules = [dataclasses.replace(s, total=self.total) for s in self.schedules]
        course = LrCourse.of(state.get("lr_course"), self.engine.scheduler.schedules)  # the restored schedules
        continue_schedules(self.engine.scheduler, self.schedules)  # the recipe's schedules, at the current update
        self._write_run_files(self.engine.global_steps, course)  # the resume succeeded: RUN_DIR now describes this run
        self.lr_since, self.skipped = self.engine.global_steps, []  # lr_schedule.csv holds what happened up to here
        if note := universal.nothing_left(self.engine.global_steps, self.ends_after):  # (the epochs' end, too)
            log.info(note)
            return self.recipe.train.epochs, None
        return int(state.get("epoch", 0)), state.get("loader")

    def _resize(self, saved_world: int, epoch: int, loader_state: dict | None, saved_ds: dict) -> int:
        """After a resume at another world size: the epoch's remainder, dealt to this one; returns its batches per
        rank."""
        if loader_state is not None:
            self.train_loader.load_state_dict(loader_state)
        left = universal.batches_left(self.per_epoch, epoch, loader_state, resharded=len(self.sampler))
        log.info(universal.describe_resize(saved_world, self.world, epoch, loader_state, left))
        if note := universal.global_batch_change(saved_ds, self.ds, self.world):
            log.warning(note)
        return left

    # -- the loop -----------------------------------------------------------------------------------------------------
    def validate(self) -> dict | None:
        """The metrics, or None: no validation data, or a stop signal during training abandoned the pass (every
        rank alike; `stop_signal` says which, and the stop's checkpoint owes the validation)."""
        if self.valid_loader is None:
            return None
        start = time.monotonic()
        course = resolve.rng_state(self.engine.device)  # the valid loader's iterator seeds itself from torch's RNG
        try:
            result = validate_by_set(self.engine, self.valid_loader, self.recipe.decode, self.valid_sets,
                                     stop=self._stop_asked)  # fmt: skip
        finally:  # so validating (or a stop before a due one) leaves training's course, dropout's too, alone
            resolve.set_rng_state(course, self.engine.device)
        self.engine.train(True)
        if result is None:  # stopped
            self.progress.aside(time.monotonic() - start)
            return None
        self.progress.validated(time.monotonic() - start)
        metrics, by_set = result  # the pool's metrics rank checkpoints; each manifest's are logged beside them
        self.valid_update = self.engine.global_steps
        self.progress.validation(self.engine.global_steps, metrics, by_set)
        self._valid_bad_data()  # every rank is here: validate() ends in an all-reduce
        self.early.observe(self.engine.global_steps, metrics)  # every rank: the metrics are all-reduced
        return metrics

    def _stop_asked(self) -> int | None:  # while training: a validation pass could outlast the grace period
        if self.preemption is not None:
            self.stop_signal = self.preemption.agreed_stop(self.engine.device)
        return self.stop_signal

    def fit(self, stop_after_updates: int | None = None, preemption: Preemption | None = None) -> dict:
        tc = self.recipe.train
        self.pending_rng = self.preemption = self.stop_signal = None  # the resume's owed validation is start-up
        start_epoch, loader_state, self.last_saved, self.valid_update = 0, None, -1, -1
        self.validation_owed = self.owed_here = False
        self.valid_named = False  # a validation pass's bad-data line has named the first bad lines
        self.lr_since, self.skipped = 0, []  # the updates skipped since lr_schedule.csv was written (LrCourse)
        self.lr_stale = False  # lr_schedule.csv/png lack a skip since (written at the next save or the run's end)
        self.course = None  # a resume's (load); a fresh run's is the plan's
        if self.resume is not None:
            start_epoch, loader_state = self.load()
        self.progress = self._progress()
        history, last_metrics = [], None
        if self.validation_owed:  # a stop saved before a validation due at this update: run it now, as it would have
            last_metrics = self.validate()
            if self.owed_here:
                self.checkpoints.record_validation(self.engine.global_steps, last_metrics)
        self.cut_short = False  # patience ended the run before its epochs or max_updates (not at the same update)
        if self.early.exhausted and start_epoch < tc.epochs:  # resumed a run that stopped early, same patience
            log.info(self.early.nothing_left())
            start_epoch, self.cut_short = tc.epochs, True
        self.engine.train(True)
        stop, result = False, None
        self.preemption = preemption = preemption or Preemption(self.rank)
        preemption.arm()
        try:
            for epoch in range(start_epoch, tc.epochs):
                if self.rank == 0 and (epoch or self.resume is not None):  # epoch 0's said as the data was built
                    say_epoch_mix(self.train_loader.dataset.manifest, self.sampler, epoch, warn=epoch == start_epoch)
                if loader_state is not None and epoch == start_epoch:
                    self.train_loader.load_state_dict(loader_state)
                else:
                    self.train_loader.set_epoch(epoch)
                for window in windows(self.wait.wrap(self.train_loader), self.k):
                    update = self._update(window, epoch, history)
                    if stop_after_updates is not None and update >= stop_after_updates:
                        return {"history": history, "interrupted": True, "run_dir": str(self.run_dir)}
                    stop = tc.max_updates is not None and update >= tc.max_updates
                    if stop:
                        break
                    if self.train_loader.consumed >= len(self.sampler):
                        break  # the epoch's last window: validated and saved below
                    # A stop saves first: a validation pass could outlast the scheduler's grace period.
                    if signum := preemption.agreed_stop(self.engine.device):
                        owed = bool(tc.valid_every_updates) and update % tc.valid_every_updates == 0
                        return self._stopped(signum, epoch, self.train_loader.state_dict(), history, owed)
                    last_metrics = self._validate_and_save(epoch, update) or last_metrics
                    if self.last_saved == update and not self.stop_signal:  # one that came during the save
                        self.stop_signal = preemption.agreed_stop(self.engine.device)
                    if self.stop_signal:  # during the validation pass (saved now, owed it) or the save
                        state = self.train_loader.state_dict()
                        return self._stopped(self.stop_signal, epoch, state, history, owed=True)
                    if self.early.exhausted:
                        self.cut_short = True
                        break  # saved below, mid-epoch: raising train.patience and resuming carries on from here
                self._report_bad_data(epoch)  # every rank is here (its refusals count its own share alone)
                # Epoch end (or max_updates): validate unless just done or stopping, and save. A stop inside the
                # epoch keeps the loader position, so raising max_updates and resuming carries on mid-epoch.
                signum = preemption.agreed_stop(self.engine.device)
                if self.valid_update != self.engine.global_steps and not signum:
                    last_metrics = self.validate() or last_metrics
                    signum = self.stop_signal
                if self.early.exhausted:
                    self.cut_short, stop = self.cut_short or (not stop and epoch + 1 < tc.epochs), True
                    if self.cut_short:
                        log.info("stopping early after update %d: %s", self.engine.global_steps, self.early.why())
                metrics = last_metrics if self.valid_update == self.engine.global_steps else None
                owed = self.valid_loader is not None and self.valid_update != self.engine.global_steps
                ended = self.train_loader.consumed >= len(self.sampler)
                if self.last_saved == self.engine.global_steps:
                    pass  # resumed from this very update (an epoch's end saved mid-epoch): saving it again deletes it
                elif stop and not ended:
                    self.save(epoch, self.train_loader.state_dict(), metrics, validation_owed=owed)
                else:  # the epoch's end, max_updates reached there or not: a resume starts the next epoch
                    self.save(epoch + 1, None, metrics, validation_owed=owed)
                signum = signum or preemption.agreed_stop(self.engine.device)  # one that came during the save
                # a stop before the run's last validation leaves it unfinished too: the resume runs that validation
                if signum and (owed or (not stop and epoch + 1 < tc.epochs)):
                    return self._stopped(signum, epoch + 1, None, history)
                if stop:
                    break
            result = {"history": history, "interrupted": False, "run_dir": str(self.run_dir),
                      "metrics": last_metrics, "stopped_early": self.cut_short, "updates": self.engine.global_steps,
                      "ends_after": self.ends_after}  # fmt: skip
        except Exception as err:
            errors.rank_specific(err, self.rank)  # this rank's data or memory, maybe: every rank reports its own
            if self.rank == 0:  # the error's own message follows: where the run can go on from once it is fixed
                log.error(self._failed_line())
            raise
        finally:
            preemption.arm(False)
            self.flops.remove()
            self.progress.finish()
            self.progress.close()
            try:
                self._write_lr_course()  # skips after the last save: a failed run, or stop_after_updates
            finally:
                if result is not None and self.rank == 0:  # in train.log too: a run that ended, not one cut off
                    log.info(done_line(result))
                self.close()
        return result

    def _progress(self) -> Progress:
        """The run's reporting, with the FLOP counter and loader clock behind its efficiency figures."""
        tc = self.recipe.train
        self.flops = FlopCounter(self.engine.module)
        self.wait = WaitClock()
        # the dtypes the matmuls run in: the engine's, and a model.llm.dtype kept beside it under precision fp32
        dtypes = [self.engine.dtype, *(p.dtype for p in self.engine.module.parameters() if p.is_floating_point())]
        peaks, lines = run_peaks(self.engine.device, dtypes, tc.peak_tflops, self.world)
        for line in lines:
            log.info(line)
        # the validations still to come, timed as they run, go into the eta beside the training pace (as check counts
        # them: the same course)
        course = fresh_course(tc, self.plan.updates_per_epoch) if self.course is None else self.course
        ahead = validation_updates(tc, course, self.ends_after) if self.valid_loader is not None else []
        # counted to the update the run ends after, not to a train.max_updates past the epochs' end (the schedules')
        return Progress(self.run_dir, self.rank, self.ends_after, self.engine.global_steps, tc.log_every,
                        progress_every_s=tc.progress_every_s, peak_total=peaks, device=self.engine.device,
                        speed_squeeze=self.recipe.data.augment.squeeze, validations=ahead)  # fmt: skip

    def _update(self, window, epoch: int, history: list[dict]) -> int:
        """One optimizer update over `window` (its micro-batches), logged and appended to `history`; its number."""
        if self.pending_rng is not None:
            # After the loader started (its iterator draws a base seed from torch's RNG).
            resolve.set_rng_state(self.pending_rng, self.engine.device)
            self.pending_rng = None
        lrs = self.engine.lrs()  # the lrs this update uses (the scheduler moves them on at its end)
        skipped = self.engine.skipped_steps
        waited = self.wait.take()  # the window's batches are in hand: this rank's wait for them is over
        stats = run_window(self.engine, window, self.world, self.flops, wait_s=waited)
        update = self.engine.global_steps
        if self.engine.skipped_steps > skipped:  # it held the schedules: lr_schedule.csv's plan moves on one later
            self.skipped.append(update)
            self.lr_stale = True
        history.append({"update": update, "epoch": epoch, **stats, "lr": lrs})
        self.progress.update(update, epoch, stats, lrs, self._extra(), stats["data_wait_s"])
        return update

    def _validate_and_save(self, epoch: int, update: int) -> dict | None:
        """Mid-epoch: validate every valid_every_updates, save every save_every_updates (and after a validation when
        best_k keeps the best checkpoints). The metrics when it validated, else None."""
        tc = self.recipe.train
        metrics = None
        if tc.valid_every_updates and update % tc.valid_every_updates == 0:
            metrics = self.validate()
            if self.stop_signal:
                return None  # the stop saves
        if (tc.save_every_updates and update % tc.save_every_updates == 0) or (metrics and tc.best_k):
            self.save(epoch, self.train_loader.state_dict(), metrics)
        return metrics

    def _report_bad_data(self, epoch: int) -> None:
        """Every rank, where the epoch's loop ended: rank 0's train.log gets the bad data all ranks counted in it,
        summed (each rank counts its own share, which rank 0's warnings and a rank's refusal name alone)."""
        tracker = self.train_loader.bad_data
        shares = all_gather_object(tracker.share())
        when = f"epoch {epoch}"
        if self.train_loader.consumed < len(self.sampler):  # max_updates or patience ended it
            when += f" up to update {self.engine.global_steps}"
        if self.sampler.remainder_pass:  # the counts start afresh at another world size
            when += " (since the resume at another world size)"
        full = f"llmasr data check --recipe {self.run_dir / ck.RECIPE_FILE}"
        if self.rank == 0 and (line := ranks_summary(shares, tracker.name, when, tracker.max_bad_fraction,
                                                     full_list=full)):  # fmt: skip
            log.warning(line)

    def _valid_bad_data(self) -> None:
        """Every rank, after a validation pass: rank 0's train.log gets the bad data all ranks met in it, summed,
        and every rank refuses alike when the sum passes data.max_bad_fraction (refuse_summed). The first pass's
        line names the first bad lines; each later pass meets the same ones, and counts them only."""
        tracker = self.valid_loader.bad_data
        shares = all_gather_object(tracker.share(tracker.keep_examples))
        when = f"validation at update {self.engine.global_steps}"
        full = f"llmasr data check --recipe {self.run_dir / ck.RECIPE_FILE} --valid"
        shown = 0 if self.valid_named else 5
        if self.rank == 0 and (line := ranks_summary(shares, tracker.name, when, tracker.max_bad_fraction, shown,
                                                     summed=True, full_list=full)):  # fmt: skip
            log.warning(line)
            self.valid_named = True
        refuse_summed(shares, tracker)

    def _stopped(self, signum: int, epoch: int, loader_state: dict | None, history: list[dict], owed=False) -> dict:
        """Every rank, after the same update: save (unless this update was just saved) and report one line. `owed`:
        a validation was due at this update (the checkpoint says so, and the resume runs it first)."""
        if self.last_saved != self.engine.global_steps:
            self.save(epoch, loader_state, None, validation_owed=owed and self.valid_loader is not None)
        where = self.ckpt_dir / ck.tag_for(self.last_saved)
        if self.rank == 0:
            log.warning("stopped by %s after update %d: checkpoint %s saved; continue with --resume",
                        signal_name(signum), self.engine.global_steps, where)  # fmt: skip
        return {"history": history, "interrupted": True, "signal": signum, "checkpoint": str(where),
                "run_dir": str(self.run_dir), "metrics": None}  # fmt: skip

    def _failed_line(self) -> str:
        """train.log's line for a run an error ended: the update it got to and the checkpoint to resume."""
        if self.last_saved < 0:
            saved = "no checkpoint was saved: a rerun starts afresh"
        else:
            saved = (f"the last checkpoint is {self.ckpt_dir / ck.tag_for(self.last_saved)} (update "
                     f"{self.last_saved}): once the cause is fixed, --resume continues from it")  # fmt: skip
        return f"training stopped by an error after update {self.engine.global_steps}; {saved}"

    def _extra(self) -> dict:
        e = self.engine
        return {"grad_norm": e.grad_norm(), "loss_scale": e.loss_scale(), "skipped_steps": e.skipped_steps}


def train(
    recipe,
    ds_config_path,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    stop_after_updates: int | None = None,
) -> dict:
    """Train `recipe` with the DeepSpeed JSON `ds_config_path` (a path or preset name). `resume`: "latest", a tag
    or a checkpoint path. `overwrite`: a fresh run may replace an earlier run's checkpoints in train.output_dir.
    `stop_after_updates` ends the run right after that update without saving (tests use it to simulate an
    interruption). Returns {"history": per-update stats of this run's updates, "metrics": last validation, "updates":
    the run's updates in all (a resume's before it included), ...}.

    SIGTERM/SIGINT/SIGUSR1 during training stop every rank after the same update with a checkpoint ("interrupted": True,
    "signal": its number); during start-up they raise preemption.Interrupted (llmasr.train.preemption)."""
    need_recipe(recipe, "llmasr.train.trainer.train")
    with Preemption(errors.process_rank()) as preemption:
        run = Run(recipe, ds_config_path, resume=resume, overwrite=overwrite)
        try:
            return run.fit(stop_after_updates, preemption)
        finally:
            run.close()
