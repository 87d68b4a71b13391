"""Writing a training run's checkpoints: every rank's DeepSpeed files, then rank 0's meta, best list and rotation
(llmasr.run_dir); on resume, what the checkpoints folder needs (`latest`, later courses set aside), and the metrics
of a validation a stop put off, once the resume has run it."""

from __future__ import annotations

import logging

from llmasr import errors
from llmasr import run_dir as ck
from llmasr.data import plan_record
from llmasr.data.skipped_lines import longest_trained
from llmasr.models.fingerprint import base_fingerprint
from llmasr.models.sanm_chunk import chunk_draws
from llmasr.run_dir.files import hash_share, merge_shares
from llmasr.train.ds_files import CLIENT_KEY
from llmasr.train.process_group import all_gather_object, barrier
from llmasr.train.resolve import rng_state
from llmasr.train.resume import manifest_contents
from llmasr.written_by import written_by

log = logging.getLogger("llmasr.train")


class RunCheckpoints:
    """Saves checkpoints of one run (`engine`, its recipe, rank and world) into RUN_DIR/checkpoints. From its
    training `manifest` each records the longest audio it trains on (llmasr.data.skipped_lines.longest_trained; None:
    unlimited), for decoding, and its files as the run read them (llmasr.train.resume.manifest_contents); with the
    training `sampler`, what its batches were cut from (llmasr.data.plan_record), for a refused resume to explain."""

    def __init__(self, engine, recipe, ckpt_dir, *, trainable: list[str], per_epoch: list[int], rank: int, world: int,
                 manifest, sampler=None):  # fmt: skip
        self.engine, self.recipe, self.ckpt_dir, self.sampler = engine, recipe, ckpt_dir, sampler
        self.trainable, self.per_epoch, self.rank, self.world = trainable, per_epoch, rank, world
        self.longest = longest_trained(recipe.data, manifest.durations())
        self.manifests = manifest_contents(manifest)
        tc = recipe.train
        self.policy = ck.CheckpointPolicy(tc.keep_last, tc.best_k, tc.best_metric, tc.ranking_mode)

    def save(
        self, epoch: int, loader_state: dict | None, metrics: dict | None, *, validation_owed=False,
        early_stop: dict | None = None, lr_course: dict | None = None,
    ) -> int:  # fmt: skip
        """Every rank: save the engine at its update with the loader position, every rank's RNG, the streaming
        encoder's chunk draws (alike on every rank, llmasr.models.sanm_chunk.ChunkDraw) and `metrics`;
        `validation_owed`: a validation due at this update was put off by a stop (the resume runs it); `early_stop`:
        the early-stopping count (llmasr.train.early_stop); `lr_course`: the updates skipped since lr_schedule.csv
        was written (llmasr.train.run_dir.LrCourse). Returns the update saved."""
        update = self.engine.global_steps
        tag = ck.tag_for(update)
        if loader_state is not None:  # DeepSpeed keeps one client state (rank 0's): each rank's bad-data counts go in
            loader_state = {**loader_state, "bad_data": all_gather_object(loader_state["bad_data"])}
        rngs = all_gather_object(rng_state(self.engine.device))
        draws = [draw.state_dict() for draw in chunk_draws(self.engine.module)]
        client = {CLIENT_KEY: {"epoch": epoch, "loader": loader_state, "rng": rngs, "chunk_draws": draws,
                               "update": update, "validation_owed": bool(validation_owed),
                               "early_stop": early_stop, "lr_course": lr_course}}  # fmt: skip
        if self.rank == 0 and ck.clear_tag(self.ckpt_dir, tag):
            log.warning("checkpoint %s was there from before (a save cut short, or a run resumed from an earlier "
                        "checkpoint): removed, and saved afresh", self.ckpt_dir / tag)  # fmt: skip
        barrier()
        with errors.context(f"saving checkpoint {tag}"):
            self.engine.save(str(self.ckpt_dir), tag, client)
            if self.rank == 0 and self.sampler is not None:
                plan_record.save(self.ckpt_dir / tag / plan_record.FILE, plan_record.record(self.sampler))
        barrier()
        files = merge_shares(all_gather_object(hash_share(self.ckpt_dir / tag, self.rank, self.world, sync=True)))
        if self.rank == 0:
            meta = ck.CheckpointMeta(
                update=update,
                epoch=epoch,
                world_size=self.world,
                zero_stage=self.engine.stage,
                metrics=metrics or {},
                base_fingerprint=base_fingerprint(self.recipe.model),
                trainable=self.trainable,
                files=files,
                batches_per_epoch=self.per_epoch,  # a resume checks the data still gives them
                training={"longest_seconds": self.longest},  # decode and export need not read the manifests again
                manifests=self.manifests,
                written_by=written_by(),
            )
            with errors.context(f"saving checkpoint {tag}"):  # its meta, best.json, `latest`: a full disk, too
                deleted = ck.finish_save(self.ckpt_dir, tag, meta, self.policy)
            log.info("saved checkpoint %s%s%s", self.ckpt_dir / tag,
                     f" (removed {', '.join(deleted)})" if deleted else "", self._best_said(metrics))  # fmt: skip
        barrier()
        return update

    def resumed(self, load_dir, tag: str, update: int) -> None:
        """Rank 0, once `tag` of `load_dir` has loaded at `update`: a save of this run that wrote all but `latest` is
        finished, and later checkpoints, another course's, are set aside (llmasr.run_dir.bookkeeping)."""
        if self.rank != 0:
            return
        if load_dir.resolve() == self.ckpt_dir.resolve() and ck.finish_unnamed(load_dir, tag, self.policy):
            log.warning("resume: %s is complete (its meta is written) but `latest` did not name it yet (the job ended "
                        "between the two): continued from it, and `latest` now names it", load_dir / tag)  # fmt: skip
        moved, aside = ck.set_aside_later(self.ckpt_dir, update, load_dir)
        if moved:
            log.warning("resume: %d later checkpoint(s) of this run (%s) belong to the course this resume leaves; "
                        "moved to %s, out of rotation and averaging (export can still read them; delete the "
                        "folder when done)", len(moved), ", ".join(moved), aside)  # fmt: skip

    def record_validation(self, update: int, metrics: dict | None) -> None:
        """Every rank, after a resume ran the validation its checkpoint (of `update`) was saved without: rank 0 puts
        the metrics into that checkpoint's meta and the best list, as a save after the validation would have."""
        if self.rank == 0 and metrics:
            tag = ck.tag_for(update)
            deleted = ck.record_metrics(self.ckpt_dir, tag, metrics, self.policy)
            log.info(
                "checkpoint %s: validation metrics recorded%s%s", self.ckpt_dir / tag,
                f" (removed {', '.join(deleted)})" if deleted else "", self._best_said(metrics),
            )  # fmt: skip
        barrier()

    def _best_said(self, metrics: dict | None) -> str:
        """After a save with validation metrics: the checkpoint best.json now ranks first, by its metric (train.log
        had said nothing of the choice: it lay in best.json alone)."""
        best = ck.read_best(self.ckpt_dir) if metrics and self.policy.best_k > 0 else []
        if not best:
            return ""
        first = best[0]
        return f"; best by {first.get('metric', self.policy.best_metric)}: {first['tag']} ({first['value']:.4f})"
