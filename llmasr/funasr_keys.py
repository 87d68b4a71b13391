"""FunASR's fine-tuning keys (finetune.sh's `++train_conf.accum_grad=4`) and the llmasr recipe keys that do their work
(README, Coming from FunASR): a FunASR key written where a recipe key is wanted is refused naming the llmasr key,
not a guess at the nearest spelling ("keep_nbest_models": did you mean 'best_mode'?)."""

from __future__ import annotations

# FunASR's sections, written at a recipe's top level
SECTIONS = {
    "train_conf": "train",
    "optim_conf": "optim",
    "dataset_conf": "data and data.batching",
    "scheduler": "optim.scheduler.type",
    "scheduler_conf": "optim.scheduler",
    "train_data_set_list": "data.train",
    "valid_data_set_list": "data.valid",
    "output_dir": "train.output_dir",
}
_TRAIN = {
    "accum_grad": "train.grad_accum",
    "max_epoch": "train.epochs",
    "keep_nbest_models": "train.best_k",
    "avg_keep_nbest_models_type": "train.best_metric (acc, loss or wer)",  # FunASR ranks by acc unless told
    "avg_nbest_model": "`llmasr export --average N --average-by best`",
    "validate_interval": "train.valid_every_updates",
    "save_checkpoint_interval": "train.save_every_updates",
    "log_interval": "train.log_every",
    "use_deepspeed": "the --deepspeed flag",
    "deepspeed_config": "the --deepspeed flag",
}
_DATA = {"batch_size": "data.batching.max_seconds", "batch_type": "data.batching.max_seconds"}
# a recipe section -> {FunASR key written in it: (its FunASR section, the llmasr key that does its work)}
KEYS = {
    "train": {k: ("train_conf", v) for k, v in _TRAIN.items()},
    "optim": {"lr": ("optim_conf", "optim.branches.<branch>.lr")},
    "data": {k: ("dataset_conf", v) for k, v in _DATA.items()},
    "data.batching": {k: ("dataset_conf", v) for k, v in _DATA.items()},
}


def funasr_hint(section: str, key: str) -> str | None:
    """What to say of `key`, unknown in recipe section `section` ("" at the top level), where it is FunASR's name
    for a setting; None where it is not."""
    if not section and key in SECTIONS:
        return f"FunASR's {key} is {SECTIONS[key]} here"
    known = KEYS.get(section, {}).get(key)
    return None if known is None else f"FunASR's {known[0]}.{key} is {known[1]} here"
