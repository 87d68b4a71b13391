"""DeepSpeed keys whose effect llmasr has or does otherwise (llmasr.train.ds_owned), met where every config is read:
resolve_ds_config."""

import pytest

from llmasr.config_io import ConfigError, from_dict
from llmasr.train.config import TrainConfig
from llmasr.train.ds_config import resolve_ds_config, zero_stage


def train_cfg(**kw) -> TrainConfig:
    return from_dict(TrainConfig, {"grad_accum": 4, **kw}, "train")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"zero_optimization": True}, r'"zero_optimization" is true; write it as an object'),
        ({"zero_optimization": None}, r'"zero_optimization" is null; write it as an object'),
        ({"tensorboard": {"enabled": True, "output_path": "logs/"}},
         "tensorboard.enabled is true; DeepSpeed's monitor logs the first param group's lr as the run's"),
        ({"csv_monitor": {"enabled": True}}, "csv_monitor.enabled is true; DeepSpeed's monitor"),
        ({"zero_optimization": {"stage": 2, "cpu_offload": True}},
         r'zero_optimization.cpu_offload is true; an old spelling: write "offload_optimizer"'),
        ({"zero_optimization": {"stage": 3, "cpu_offload_param": True}},
         r'zero_optimization.cpu_offload_param is true; an old spelling: write "offload_param"'),
        ({"gradient_allreduce_op": "sum"}, r'gradient_allreduce_op is "sum"; llmasr\'s gradients are means'),
        ({"checkpoint": {"load_universal": True}}, "checkpoint.load_universal is true; llmasr converts"),
        ({"checkpoint": {"checkpoint_serialization": False}}, "checkpoint.checkpoint_serialization is false"),
        ({"activation_checkpointing": {"partition_activations": True}},
         "activation_checkpointing is .*set model.llm.gradient_checkpointing"),
        ({"data_efficiency": {"enabled": True}}, "data_efficiency is .*DeepSpeed's own data loader"),
        ({"dataloader_drop_last": True}, "dataloader_drop_last is true; .*data.batching.drop_last"),
        ({"checkpoint": {"writer": {"decoupled": True}}}, "checkpoint.writer.decoupled is true; a decoupled writer"),
        ({"checkpoint": {"use_node_local_storage": True}},
         "checkpoint.use_node_local_storage is true; llmasr keeps a run's checkpoints in train.output_dir, one folder "
         "every node shares"),
        ({"datastates_ckpt": {}}, "datastates_ckpt is {}; DataStates writes checkpoints in the background"),
        ({"steps_per_print": 100}, "steps_per_print is 100; DeepSpeed's progress lines are silenced .*train.log_every"),
        ({"autotuning": {"enabled": True}},
         r"autotuning.enabled is true; .* ends its process \(exit status 0, nothing saved since the last checkpoint\)"),
        ({"comms_logger": {"enabled": True, "verbose": True}},
         "comms_logger.enabled is true; DeepSpeed's info log is silenced and nothing prints its summary"),
        ({"dump_state": True}, "dump_state is true; it writes to DeepSpeed's info log, which llmasr silences"),
        ({"compile": {"deepcompile": True}}, r"compile.deepcompile is true; DeepCompile acts only once engine.compile"),
        ({"hybrid_engine": {"enabled": True, "max_out_tokens": 512}},
         "hybrid_engine.enabled is true; DeepSpeed-Chat's RLHF engine .* is swapped in for the training engine"),
    ],
)  # fmt: skip
def test_settings_deepspeed_takes_but_llmasr_does_otherwise_are_refused(raw, message):
    """DeepSpeed accepts these, then: `true` trains ZeRO-1 where llmasr counted stage 0 (and crashed reading it),
    `null` failed with a TypeError naming no key;
    the old offload spellings offload where llmasr built an optimizer for the device; sum makes gradients world
    size times larger; load_universal failed inside DeepSpeed on resume; the legacy format broke `llmasr check
    --resume`; the sections of DeepSpeed's own checkpointing and data loader, and steps_per_print (its log lines
    are silenced), did nothing; an enabled monitor (tensorboard, csv_monitor, ...) logged the first param group's
    lr as the run's, the per-branch lrs collapsed into the encoder's; node-local checkpoint storage had every node's
    local rank 0 write mp_rank_00_model_states.pt into the one shared run folder at once; autotuning ended a run's
    process mid-training with exit status 0 (DeepSpeed's exit() after end_profile_step + 1 updates); comms_logger,
    dump_state and deepcompile did nothing visible (their output goes to DeepSpeed's silenced info log, and nothing
    calls comms' log_summary or engine.compile); hybrid_engine trained with DeepSpeed's RLHF engine swapped in."""
    with pytest.raises(ConfigError, match=message):
        resolve_ds_config(raw, train_cfg(), world_size=2, source="ds.json")
    kept = [
        {
            "gradient_allreduce_op": "mean",
            "checkpoint": {"load_universal": False, "checkpoint_serialization": True, "use_node_local_storage": False},
        },
        # what switches nothing on passes: copied configs carry such blocks
        {"dataloader_drop_last": False, "data_efficiency": {"enabled": False, "seed": 0}},
        {
            "activation_checkpointing": {
                "partition_activations": False,
                "cpu_checkpointing": False,
                "number_checkpoints": None,
            }
        },
        {"zero_optimization": {"stage": 2, "cpu_offload": False}},
        {"steps_per_print": None},
        {"tensorboard": {"enabled": False, "output_path": "logs/", "job_name": "run"}, "wandb": {"enabled": False}},
        {
            "autotuning": {"enabled": False},
            "comms_logger": {"enabled": False},
            "dump_state": False,
            "compile": {"deepcompile": False},
        },
    ]
    for ok in kept:
        assert resolve_ds_config(ok, train_cfg(), world_size=2)
    off = resolve_ds_config({"zero_optimization": False}, train_cfg(), world_size=2)  # DeepSpeed's stage 0
    assert "zero_optimization" not in off and zero_stage(off) == 0


HF_ZERO2 = {  # transformers' docs' ZeRO-2 example, as users copy it
    "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16},
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": [0.9, 0.98], "eps": "auto", "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": 3e-4,
                                                      "warmup_num_steps": 500, "total_num_steps": "auto"}},
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 2000,
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}  # fmt: skip


def test_a_copied_config_s_refusals_come_in_one_error_with_the_recipe_settings_that_replace_them():
    """HF's example config was refused three times over, one key a run (scheduler, then optimizer, then
    steps_per_print), and the optimizer's and scheduler's values had to be carried into the recipe by hand."""
    with pytest.raises(ConfigError) as err:
        resolve_ds_config(HF_ZERO2, train_cfg(), world_size=2, source="ds.json")
    lines = str(err.value).splitlines()
    assert lines[0] == "ds.json: 3 settings llmasr does otherwise or not at all:"
    scheduler, optimizer, steps = lines[1:]
    assert scheduler.startswith('  - remove the "scheduler" block.')
    assert (
        "its WarmupDecayLR in the recipe: optim.scheduler: {type: warmup_linear, warmup_steps: 500}; the peak "
        "(warmup_max_lr 0.0003) is optim.branches.<branch>.lr" in scheduler
    )
    assert optimizer.startswith('  - remove the "optimizer" block.')
    assert "in the recipe: optim: {betas: [0.9, 0.98], weight_decay: 0.1}" in optimizer  # "auto" ones left out
    assert steps.startswith("  - steps_per_print is 2000;")
    cleaned = {k: v for k, v in HF_ZERO2.items() if k not in ("optimizer", "scheduler", "steps_per_print")}
    assert resolve_ds_config(cleaned, train_cfg(), world_size=2)["gradient_accumulation_steps"] == 4


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ({"type": "WarmupLR", "params": {"warmup_num_steps": 100}},
         "optim.scheduler: {type: constant, warmup_steps: 100}"),
        ({"type": "WarmupCosineLR", "params": {"warmup_num_steps": 10, "cos_min_ratio": 0.1, "total_num_steps": 99}},
         "optim.scheduler: {type: warmup_cosine, warmup_steps: 10, min_lr_ratio: 0.1}; the decay ends at the run's "
         "last update (total_num_steps 99 is not read)"),
        ({"type": "OneCycle", "params": {"cycle_max_lr": 1e-3}},
         'llmasr has no schedule like "OneCycle": optim.scheduler.type is one of tri_stage, warmup'),
    ],
)  # fmt: skip
def test_each_deepspeed_schedule_is_named_with_the_recipe_s_nearest(block, said):
    with pytest.raises(ConfigError, match=r'^ds.json: remove the "scheduler" block\. ') as err:
        resolve_ds_config({"scheduler": block}, train_cfg(), world_size=2, source="ds.json")
    assert said in str(err.value)


def test_an_optimizer_other_than_adamw_is_named():
    with pytest.raises(ConfigError, match=r'llmasr trains with AdamW only, not "Lamb"; .*lr 0.01 is each branch'):
        resolve_ds_config({"optimizer": {"type": "Lamb", "params": {"lr": 0.01}}}, train_cfg(), world_size=2)
