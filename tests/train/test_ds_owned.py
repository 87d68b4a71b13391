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
    local rank 0 write mp_rank_00_model_states.pt into the one shared run folder at once."""
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
    ]
    for ok in kept:
        assert resolve_ds_config(ok, train_cfg(), world_size=2)
    off = resolve_ds_config({"zero_optimization": False}, train_cfg(), world_size=2)  # DeepSpeed's stage 0
    assert "zero_optimization" not in off and zero_stage(off) == 0
