"""A training run's start-up: everything checked and built before its first update.

Order of work: recipe + overrides, DeepSpeed JSON resolved ("auto" filled), precision checked, the recipe compared
with the folder it starts from (llmasr.models.start_from); data built (the exact batches per rank per epoch give
the update count the schedules are sized by); model built (under ZeRO-3 partitioned as it loads); param groups,
schedules, engine. A step one rank may fail alone (a node's own files, its compiler) is gathered, so that every rank
stops together with one message (llmasr.rank_verdict). The loop that follows: llmasr.train.trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmasr import errors, slurm_env
from llmasr import run_dir as ck
from llmasr.models.fused_kernels import apply_fused_kernels, check_fused_kernels
from llmasr.models.sanm_chunk import seed_chunk_draws
from llmasr.models.start_from import check_start_folder
from llmasr.models.start_notes import start_notes
from llmasr.models.tokenizer import one_tokenizer_load
from llmasr.rank_verdict import flat, run_together
from llmasr.train import ds_config, resolve
from llmasr.train import engine as eng
from llmasr.train.check_prompt import prompt_warnings
from llmasr.train.checkpoint_space import check_run_space
from llmasr.train.context_fit import check_context_fit
from llmasr.train.ctc_fit import ctc_frames_warnings
from llmasr.train.early_stop import EarlyStop
from llmasr.train.engine import TrainEngine, build_model_for_training, make_optimizer
from llmasr.train.op_builds import check_nvme_offload, check_quantizer, warn_stale_build_locks
from llmasr.train.param_groups import build_param_groups, describe_param_groups, idle_branch_settings, numel
from llmasr.train.plan import plan_run
from llmasr.train.process_group import all_gather_object, init_distributed
from llmasr.train.run_checkpoints import RunCheckpoints
from llmasr.train.run_dir import LrCourse, claim_run_dir, write_lr_files, write_run_files
from llmasr.train.run_log import StartupLog, setup_logging
from llmasr.train.schedulers import build_group_schedules, warmup_warnings
from llmasr.train.valid_sets import ValidSets
from llmasr.written_by import software

log = logging.getLogger("llmasr.train")


class RunSetup:
    """A run's configuration, run folder, data, model and engine, built in that order (the loop: trainer.Run)."""

    @one_tokenizer_load()  # the start-up's checks, data plan and model build share the LLM's tokenizer
    def __init__(self, recipe, ds_config_path, *, resume=None, overwrite=False):
        self.recipe = recipe
        tc = recipe.train
        warn_stale_build_locks()  # before DeepSpeed loads a JIT-built op, which would wait on one for ever
        self.dist = init_distributed()
        self.rank, self.world = self.dist.rank, self.dist.world_size
        self.startup_log = StartupLog.attach(self.rank)  # train.log starts with what is logged before it exists
        if slurm_env.adopted() is not None:
            log.info("%s", slurm_env.adopted().describe())
        self.gather = all_gather_object if self.world > 1 else None  # start-up steps a rank may fail alone
        self.run_dir = Path(tc.output_dir)
        self.ckpt_dir = ck.checkpoints_dir(self.run_dir)
        # every rank reads its own node's copy of the DeepSpeed JSON: a copy that differs, or that one node lacks,
        # stops every rank here, before the run folder's broadcast
        asked = run_together("check the run's configuration",
                             lambda: self._configure(ds_config_path, resume, overwrite), self.gather,
                             same=lambda _: flat(self.ds), same_what="DeepSpeed configs")  # fmt: skip
        if asked == "auto":
            fresh = "--overwrite: a fresh run" if overwrite else "no checkpoint yet, a fresh run"
            log.info("resume auto: %s", f"continuing {self.ckpt_dir}" if self.resume else fresh)
        self.log_handler = None
        self.early = EarlyStop.of(tc)
        # Once the configuration is known to be sound (--overwrite deletes the earlier run); a resume's recipe is
        # compared with the run's here, before any data or model is loaded.
        self.lock = claim_run_dir(self.run_dir, rank=self.rank, resume=self.resume, overwrite=overwrite,
                                  recipe=recipe, key=self.resume_key)  # fmt: skip
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def _configure(self, ds_config_path, resume, overwrite) -> str | None:
        """The DeepSpeed config resolved and checked, and where the run starts; returns what was asked of resume."""
        tc = self.recipe.train
        self.ds = ds_config.resolve_ds_config(ds_config_path, tc, world_size=self.world)  # by module: tests patch it
        eng.check_precision(tc.precision)
        check_nvme_offload(self.ds, str(ds_config_path))  # each node's own: DeepSpeed loads the op once built
        check_quantizer(self.ds, str(ds_config_path))  # each node's own: ZeRO-3 loads the op in the LLM's load
        resolve.check_run_settings(self.recipe)
        for note in check_start_folder(self.recipe.model) + start_notes(self.recipe.model):  # allowed, but said
            log.warning("%s", note, extra=errors.EVERY_RANK)
        check_fused_kernels(self.recipe.model.llm, zero_stage=ds_config.zero_stage(self.ds), device=self.dist.device)
        resolve.process_settings(tc)  # deterministic algorithms, attention kernels
        asked, self.resume_key = ck.resume_asked(resume, tc.resume)
        self.resume = ck.resume_or_start(asked, self.run_dir, overwrite=overwrite)
        return asked

    def _prepare(self) -> None:
        recipe, tc = self.recipe, self.recipe.train
        self.log_handler = setup_logging(self.run_dir, self.rank)
        self.startup_log.replay(self.log_handler)
        errors.traceback_to(self.run_dir / "train.log")  # a failure's traceback, beside the log of the run
        log.info("software: %s", software())  # which versions gave this run's numbers (or its failure)
        for note in self.lock.notes if self.lock is not None else []:
            log.warning(note)
        resolve.seed_everything(tc.seed)
        plan = self.plan = plan_run(recipe, self.ds, rank=self.rank, world_size=self.world, device=self.dist.device,
                                    all_gather=all_gather_object, resuming=self.resume is not None)  # fmt: skip
        self.k, self.side, self.per_epoch, self.total = plan.grad_accum, plan.side, plan.per_epoch, plan.total
        self.ends_after = plan.ends_after  # where the run ends (a resume counts it again)
        self.train_loader, self.sampler, self.valid_loader = plan.loaders
        # each data.valid manifest's own metrics beside the pool's (None: one manifest, or none)
        self.valid_sets = None if self.valid_loader is None else ValidSets.of(
            [spec.path for spec in recipe.data.valid_manifests], self.valid_loader.dataset.manifest
        )  # fmt: skip
        self._log_batches()
        self._build_engine()
        check_run_space(self.recipe.train, self.rank, trainable=self.trainable_params, epochs=plan.epochs_reached,
                        total=plan.ends_after, validates=self.valid_loader is not None, ds=self.ds)  # fmt: skip
        if self.resume is None:
            self._write_run_files(0)

    def _write_run_files(self, start: int, course: LrCourse | None = None) -> None:
        if self.rank == 0:
            s = self.engine.scheduler  # behind `start` by the updates skipped so far, which held it
            write_run_files(self.run_dir, self.recipe, self.ds, s.schedules, start, self.total, s.last_update, course)

    def _write_lr_course(self) -> None:
        """lr_schedule.csv/png once updates were skipped since they were written (`lr_stale`): the rows since
        `lr_since` as the updates used them (each skip held the schedules), the later rows one update on the plan
        later per skip. At a save and the run's end, not at each skip: an fp16 run skips one update per loss-scale
        window, and a resume rewrites the rows from its checkpoint's course however stale the file was left."""
        if self.lr_stale and self.rank == 0:
            s = self.engine.scheduler
            course = LrCourse(self.lr_since, tuple(self.skipped), s.schedules)
            write_lr_files(self.run_dir, s.schedules, self.engine.global_steps, self.total, s.last_update, course)
        self.lr_stale = False

    def _log_batches(self) -> None:
        device = self.dist.device
        threads = torch.get_num_threads()
        where = f"{threads} CPU thread{'s' * (threads != 1)} per rank" if device.type == "cpu" else device
        stage = int((self.ds.get("zero_optimization") or {}).get("stage", 0))
        precision = self.recipe.train.precision
        log.info("batches: %s (ZeRO stage %d, %s, %s)", self.plan.batch_line(), stage, precision, where)

    def _build_engine(self) -> None:
        tc = self.recipe.train
        # a weight file one node lacks or holds cut short, or a CPU Adam op its node cannot build, fails that node's
        # ranks only: all of them stop together before deepspeed.initialize's first collective (ZeRO-3's partitioned
        # load checks the files before its own)
        model, groups, optimizer = run_together("build the model and its optimizer", self._build_model, self.gather)
        self.engine = TrainEngine(model, groups, self.schedules, self.ds, self.dist.device, optimizer)
        self.checkpoints = RunCheckpoints(self.engine, self.recipe, self.ckpt_dir, trainable=self.trainable,
                                          per_epoch=self.per_epoch, rank=self.rank, world=self.world,
                                          manifest=self.train_loader.dataset.manifest,
                                          sampler=self.sampler)  # fmt: skip
        resolve.seed_everything(tc.seed + self.rank)  # dropout differs per rank

    def _build_model(self) -> tuple:
        """(model, param groups, optimizer), the schedules sized, with every check made before the engine's."""
        tc, optim = self.recipe.train, self.recipe.optim
        resolve.seed_everything(tc.seed)  # identical initial weights on every rank
        model, self._hf_ds = build_model_for_training(self.recipe.model, self.ds, all_gather=self.gather)
        seed_chunk_draws(model, tc.seed)  # a streaming encoder's chunk configurations: alike on every rank
        resolve.check_model_frontend(model, self.side.frontend)
        check_context_fit(model, self.recipe, self.plan.loaders)
        for line in ctc_frames_warnings(model, self.recipe, self.plan.loaders) if self.rank == 0 else ():
            log.warning("%s", line)
        for note in prompt_warnings(model.prompt) if self.rank == 0 else ():
            log.warning("model.prompt: %s", note)
        apply_fused_kernels(model, self.recipe.model.llm)
        self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.trainable_params = sum(numel(p) for p in model.parameters() if p.requires_grad)
        groups = build_param_groups(model, optim)
        log.info("param groups:\n%s", describe_param_groups(groups))
        self.schedules = build_group_schedules(groups, optim, self.total)
        self.branches = [g["branch"] for g in groups]
        # a resume's warmups are weighed against the updates it holds, once it has counted them (trainer.Run.load)
        warmups = warmup_warnings(optim, self.branches, self.total) if self.resume is None else []
        for line in [*idle_branch_settings(model, optim), *warmups] if self.rank == 0 else ():
            log.warning(line)
        return model, groups, make_optimizer(groups, self.ds)  # DeepSpeedCPUAdam: its op may not build on a node

    def close(self) -> None:
        """Release the run directory's lock, the log file and ZeRO-3's HfDeepSpeedConfig (normal exit and error
        alike; idempotent). While that config lives, transformers creates every LLM partitioned: a later run of
        another stage in this process would have built its LLM so until the garbage collector found this run."""
        self._hf_ds = None
        if self.log_handler is not None:
            logging.getLogger("llmasr").removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
