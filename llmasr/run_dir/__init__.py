"""The run directory's format, in one place: the trainer writes through this package; resume, universal
conversion, export and decode read through it.

    RUN_DIR/recipe.yaml, ds_config.json         the resolved configuration (rewritten only once a resume succeeded)
    RUN_DIR/train.log, tensorboard/, lr_schedule.csv, lr_schedule.png
    RUN_DIR/.lock                               pid and host of the run using the folder (llmasr.train.run_dir)
    RUN_DIR/checkpoints/update_00001200/        DeepSpeed's files (trainable tensors only; llmasr.train.ds_files
                                                knows which exist per ZeRO stage) + llmasr_meta.json (meta.py)
    RUN_DIR/checkpoints/latest                  newest complete tag (written atomically, after every rank saved)
    RUN_DIR/checkpoints/best.json               [{"tag", "metric", "value"}, ...] best first; never rotated away
    RUN_DIR/checkpoints/update_00001200_universal/   that checkpoint converted for another world size or ZeRO stage

layout.py: names, tags, `latest`, resolving a checkpoint; meta.py: CheckpointMeta; bookkeeping.py: best list,
rotation, finishing a save, choosing checkpoints to average; files.py: the sizes and checksums of a tag's files.
"""

from llmasr.atomic_file import write_atomic
from llmasr.run_dir.bookkeeping import (
    CheckpointPolicy,
    clear_tag,
    finish_save,
    finish_unnamed,
    read_best,
    record_metrics,
    rotate,
    select_tags,
    set_aside_later,
    update_best,
)
from llmasr.run_dir.layout import (
    BEST,
    CHECKPOINTS,
    DS_CONFIG_FILE,
    LATEST,
    LOCK_FILE,
    LR_CSV,
    LR_PNG,
    META,
    RECIPE_FILE,
    TENSORBOARD,
    TRAIN_LOG,
    UNIVERSAL_SUFFIX,
    CheckpointRef,
    abandoned_dir,
    checkpoints_dir,
    holds_run,
    latest,
    list_tags,
    require_latest,
    resolve_checkpoint,
    resolve_resume,
    resume_asked,
    resume_or_start,
    resume_point,
    run_dir_of,
    tag_for,
    unnamed_save,
    update_of,
)
from llmasr.run_dir.meta import CheckpointMeta, read_meta, write_meta
from llmasr.safe_load import CheckpointError

__all__ = [
    "BEST", "CHECKPOINTS", "CheckpointError", "CheckpointMeta", "CheckpointPolicy", "CheckpointRef", "DS_CONFIG_FILE",
    "LATEST", "LOCK_FILE", "LR_CSV", "LR_PNG", "META", "RECIPE_FILE", "TENSORBOARD", "TRAIN_LOG", "UNIVERSAL_SUFFIX",
    "abandoned_dir", "checkpoints_dir", "clear_tag", "finish_save", "finish_unnamed", "holds_run", "latest",
    "list_tags", "read_best", "read_meta", "record_metrics", "require_latest", "resolve_checkpoint", "resolve_resume",
    "resume_asked", "resume_or_start", "resume_point", "rotate", "run_dir_of", "select_tags", "set_aside_later",
    "tag_for", "unnamed_save", "update_best", "update_of", "write_atomic", "write_meta",
]  # fmt: skip
