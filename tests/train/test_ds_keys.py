"""DeepSpeed JSON keys that DeepSpeed would ignore, or refuse only inside deepspeed.initialize, are refused when the
config is resolved, with the dotted key and the nearest one DeepSpeed knows."""

import pytest

from llmasr.config_io import ConfigError
from llmasr.train.config import TrainConfig
from llmasr.train.ds_config import PRESETS, resolve_ds_config
from llmasr.train.ds_keys import check_ds_keys, known_top_level_keys
from llmasr.train.process_group import free_port

BASE = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2, "train_batch_size": 16}


def test_the_known_keys_come_from_deepspeed():
    known = known_top_level_keys()
    assert {"zero_optimization", "bf16", "fp16", "gradient_clipping", "tensorboard", "checkpoint"} <= known
    assert "zero_optimisation" not in known


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_at_any_world_size(preset):
    for world in (1, 8):
        resolve_ds_config(preset, TrainConfig(precision="bf16", grad_accum=2), world_size=world)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"zero_optimisation": {"stage": 2}},
         "'zero_optimisation': not a DeepSpeed key; did you mean 'zero_optimization'?"),
        ({"zero_optimization": {"stag": 2}}, "zero_optimization.stag: unknown key; did you mean 'stage'?"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"devic": "cpu"}}},
         "zero_optimization.offload_optimizer.devic: unknown key; did you mean 'device'?"),
        ({"zero_optimization": {"stage": 5}}, "zero_optimization.stage: Input should be 0, 1, 2, 3"),
        ({"bf16": {"enabld": True}}, "bf16.enabld: unknown key; did you mean 'enabled'?"),
        ({"checkpoint": {"load_univrsal": True}},
         "checkpoint.load_univrsal: DeepSpeed never reads it; did you mean checkpoint.load_universal?"),
        ({"flops_profiler": {"enabld": True}},
         "flops_profiler.enabld: DeepSpeed never reads it; did you mean flops_profiler.enabled?"),
        # "enabled" is in bf16 too: the section is the one DeepSpeed's error goes away without
        ({"compile": {"enabled": True}, "bf16": {"enabled": False}}, "compile.enabled: unknown key"),
    ],
    ids=["top-level", "zero", "nested", "bad-value", "bf16", "checkpoint", "flops_profiler", "compile"],
)  # fmt: skip
def test_misspelt_keys_are_refused_with_the_nearest(extra, message):
    with pytest.raises(ConfigError) as err:
        check_ds_keys({**BASE, **extra}, "my_ds.json")
    assert str(err.value).startswith("my_ds.json: ") and message in str(err.value)


def test_resolve_refuses_them_before_any_model_is_built():
    with pytest.raises(ConfigError, match="did you mean 'zero_optimization'"):
        resolve_ds_config({"zero_optimisation": {"stage": 2}}, TrainConfig(grad_accum=1), world_size=2)


def test_known_nested_keys_pass():
    # DeepSpeed asks for every flops_profiler key, enabled or not; wandb is a pydantic section
    check_ds_keys({**BASE, "flops_profiler": {"enabled": False, "profile_step": 3}, "wandb": {"enabled": False}}, "x")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}},
         "zero_optimization: Assertion failed, Partial offloading only supported for ZeRO Stage 3."),
        ({"zero_optimization": {"stage": 3, "compute_grad_norm": False}},
         "zero_optimization: Value error, compute_grad_norm=false is supported only with ZeRO Stage 1 or 2"),
        ({"fp16": {"enabled": True, "min_loss_scale": 0}, "bf16": {"enabled": False}},
         "fp16: Value error, fp16.min_loss_scale must be > 0 when dynamic loss scaling is enabled"),
    ],
    ids=["partial-offload-stage-2", "no-grad-norm-stage-3", "fp16-min-loss-scale"],
)  # fmt: skip
def test_a_section_deepspeed_refuses_as_a_whole_is_named_with_deepspeed_s_reason(extra, message):
    """A check of DeepSpeed's over a whole section has no key to point at (an empty location): it failed with an
    IndexError instead of saying anything."""
    with pytest.raises(ConfigError) as err:
        check_ds_keys({**BASE, **extra}, "my_ds.json")
    assert str(err.value).startswith("my_ds.json: DeepSpeed refuses it:") and message in str(err.value)


def test_resolve_names_a_section_deepspeed_refuses_as_a_whole():
    with pytest.raises(ConfigError, match="fp16: Value error, fp16.min_loss_scale must be > 0"):
        resolve_ds_config({"fp16": {"min_loss_scale": 0}}, TrainConfig(grad_accum=1, precision="fp16"), world_size=2)


ZERO_REFUSED = [
    ({"zero_optimization": {"stage": 2}, "prescale_gradients": True},
     "prescale_gradients is true; at ZeRO stage 2 with zero_optimization.reduce_scatter"),
    ({"zero_optimization": {"stage": 3}, "prescale_gradients": True},
     "prescale_gradients is true; at ZeRO stage 3 with zero_optimization.reduce_scatter"),
    ({"zero_optimization": {"stage": 2}, "gradient_predivide_factor": 2.0},
     "gradient_predivide_factor is 2.0; at ZeRO stage 2"),
    ({"zero_optimization": {"stage": 1, "legacy_stage1": True}}, "zero_optimization.legacy_stage1 is true"),
    ({"zero_optimization": {"stage": 2, "allgather_bucket_size": 200000001}},
     "zero_optimization.allgather_bucket_size is 200000001; ZeRO stage 2 needs an even number"),
]  # fmt: skip
ZERO_KEPT = [
    {"zero_optimization": {"stage": 1}, "prescale_gradients": True},
    {"zero_optimization": {"stage": 2, "reduce_scatter": False}, "prescale_gradients": True},
    {"zero_optimization": {"stage": 2}, "gradient_predivide_factor": 1.0},
    {"zero_optimization": {"stage": 3, "allgather_bucket_size": 3}},
]


@pytest.mark.parametrize(
    ("extra", "message"), ZERO_REFUSED,
    ids=["prescale-2", "prescale-3", "predivide", "legacy-stage1", "odd-allgather-bucket"],
)  # fmt: skip
def test_settings_the_zero_optimizer_refuses_together_are_refused_at_start(extra, message):
    """Each setting is valid alone, so DeepSpeed's config reading passed them; its ZeRO optimizer asserted on them
    inside deepspeed.initialize, after the model had loaded (`llmasr check` passed them)."""
    with pytest.raises(ConfigError, match=f"^my_ds.json: {message}"):
        resolve_ds_config(extra, TrainConfig(grad_accum=1), world_size=2, source="my_ds.json")
    for kept in ZERO_KEPT:
        resolve_ds_config(kept, TrainConfig(grad_accum=1), world_size=2)


def test_deepspeed_refuses_them_at_initialize_and_keeps_the_rest(monkeypatch):
    """The rule above is DeepSpeed's: its engine refuses each refused config and builds each kept one."""
    import deepspeed
    import torch

    port = free_port()
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():  # fmt: skip
        monkeypatch.setenv(key, value)

    def initialize(extra):
        model = torch.nn.Linear(4, 4)
        config = {**BASE, "gradient_accumulation_steps": 1, "train_batch_size": 1, **extra}
        deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)

    for extra, _ in ZERO_REFUSED:
        with pytest.raises(
            Exception, match="not yet supported|deprecated version of ZeRO Stage 1|multiple of nccl_start"
        ):
            initialize(extra)
    for extra in ZERO_KEPT:
        initialize(extra)


FP16 = {"zero_optimization": {"stage": 2}}
SCALES_REFUSED = [
    ({"initial_scale_power": 64}, r"fp16.initial_scale_power is 64; DeepSpeed multiplies the loss by the integer "
                                  r"2\*\*64, which torch cannot take .*: give 0 to 63"),
    ({"initial_scale_power": 1000}, r"fp16.initial_scale_power is 1000; .*: give 0 to 63"),
    ({"initial_scale_power": -1}, r"fp16.initial_scale_power is -1; the scale would start at 2\*\*-1, below 1"),
    ({"min_loss_scale": 2**64}, r"fp16.min_loss_scale is 18446744073709551616; .*give 1 to 18446744073709551615"),
    ({"loss_scale": 1e39}, r"fp16.loss_scale is 1e\+39; .* every update is skipped: give a static scale from 1 to "
                           r"3.403e\+38, or 0"),
]  # fmt: skip
SCALES_KEPT = [
    {"initial_scale_power": 63}, {"initial_scale_power": 0}, {"min_loss_scale": 2**64 - 1},
    {"loss_scale": 2.0**64}, {"loss_scale": 128, "initial_scale_power": 99},  # static: the power is not read
]  # fmt: skip


@pytest.mark.parametrize(("fp16", "message"), SCALES_REFUSED, ids=["power-64", "power-1000", "power-neg", "floor",
                                                                    "static"])  # fmt: skip
def test_fp16_loss_scales_that_cannot_work_are_refused_at_start(fp16, message):
    """DeepSpeed accepts these and fails at the first step (OverflowError: int too big to convert), or skips every
    update; they had passed start-up and `llmasr check`. Under bf16 they are not read, and pass."""
    ds = {**FP16, "fp16": {"enabled": "auto", **fp16}}
    with pytest.raises(ConfigError, match=f"^my_ds.json: {message}"):
        resolve_ds_config(ds, TrainConfig(precision="fp16", grad_accum=1), world_size=2, source="my_ds.json")
    resolve_ds_config(ds, TrainConfig(precision="bf16", grad_accum=1), world_size=2)
    for kept in SCALES_KEPT:
        resolve_ds_config({**FP16, "fp16": {"enabled": "auto", **kept}}, TrainConfig(precision="fp16", grad_accum=1),
                          world_size=2)  # fmt: skip


def test_the_scale_bounds_are_where_deepspeed_s_loss_scaler_fails(monkeypatch):
    """The bounds above are DeepSpeed's and torch's: the scaler built from the parsed config multiplies a float32
    loss by 2**63 and fails on 2**64; a floor of 2**64 fails once two overflows (hysteresis 2) bring the scale to it."""
    import torch
    from deepspeed.runtime.fp16 import loss_scaler
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler
    from deepspeed.runtime.precision_config import DeepSpeedFP16Config

    monkeypatch.setattr(loss_scaler.dist, "get_rank", lambda: 0)  # its overflow message asks; no process group here

    from llmasr.train.ds_keys import INT_SCALE_LIMIT, MAX_SCALE_POWER

    def first_backward(overflows=0, **fp16):
        args = DeepSpeedFP16Config(enabled=True, **fp16).dynamic_loss_scale_args()
        scaler = CreateLossScaler(torch.float16, 0, True, args)
        for _ in range(overflows):
            scaler.update_scale(True)
        loss = torch.tensor(2.5, requires_grad=True)
        scaler.backward(loss)
        return loss.grad.item()

    assert first_backward(initial_scale_power=MAX_SCALE_POWER) == 2.0**MAX_SCALE_POWER
    with pytest.raises(OverflowError, match="int too big to convert"):
        first_backward(initial_scale_power=MAX_SCALE_POWER + 1)
    assert first_backward(initial_scale_power=16, min_loss_scale=INT_SCALE_LIMIT - 1, overflows=2) > 2.0**63
    with pytest.raises(OverflowError, match="int too big to convert"):
        first_backward(initial_scale_power=16, min_loss_scale=INT_SCALE_LIMIT, overflows=2)
