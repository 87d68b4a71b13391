import json
import re

import pytest
import torch

from llmasr.config_io import ConfigError, from_dict
from llmasr.train.config import OptimConfig, TrainConfig
from llmasr.train.ds_config import (
    PRESETS,
    load_ds_config,
    resolve_ds_config,
    zero_stage,
)
from llmasr.train.param_groups import build_param_groups
from llmasr.train.process_group import free_port
from llmasr.train.schedulers import BranchLRScheduler, build_group_schedules, schedule_lr


def train_cfg(**kw) -> TrainConfig:
    return from_dict(TrainConfig, {"grad_accum": 4, **kw}, "train")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_resolves(name):
    raw = load_ds_config(name)
    assert "optimizer" not in raw and "scheduler" not in raw
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert raw[key] == "auto"
    assert raw["bf16"]["enabled"] == "auto" and raw["fp16"]["enabled"] == "auto"
    before = json.dumps(raw, sort_keys=True)
    ds = resolve_ds_config(raw, train_cfg(precision="bf16", grad_clip=0.5), world_size=8)
    assert json.dumps(raw, sort_keys=True) == before  # input untouched
    assert ds["train_micro_batch_size_per_gpu"] == 1
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 32
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(ds)
    stage = zero_stage(ds)
    assert stage == int(name[4])
    zero = ds["zero_optimization"]
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert ("offload_optimizer" in zero) == name.endswith("offload")
    assert ("offload_param" in zero) == (name == "zero3_offload")
    if name.endswith("offload"):
        assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}


def test_path_and_source_in_messages(tmp_path):
    path = tmp_path / "my.json"
    path.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ConfigError, match=f'^{path}: remove the "scheduler" block'):
        resolve_ds_config(path, train_cfg(), world_size=1)
    with pytest.raises(ConfigError, match="^recipe deepspeed: remove"):
        resolve_ds_config({"scheduler": {}}, train_cfg(), world_size=1, source="recipe deepspeed")


def test_precision_fp16_and_fp32():
    ds = resolve_ds_config("zero2", train_cfg(precision="fp16"), world_size=1)
    assert ds["fp16"]["enabled"] is True and ds["bf16"]["enabled"] is False
    assert ds["fp16"]["initial_scale_power"] == 16
    ds = resolve_ds_config({"zero_optimization": {"stage": 1}}, train_cfg(precision="fp32"), world_size=2)
    assert ds["fp16"] == {"enabled": False} and ds["bf16"] == {"enabled": False}
    assert ds["train_batch_size"] == 8


def test_concrete_values_that_agree_are_kept_and_json_fills_recipe_gaps():
    raw = {
        "train_batch_size": 24,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 4,
        "bf16": {"enabled": True},
    }
    ds = resolve_ds_config(raw, train_cfg(micro_batch_per_gpu=2), world_size=3)
    assert ds["train_batch_size"] == 24
    # recipe silent on grad_accum and micro batch: the JSON's numbers are used
    ds = resolve_ds_config(raw, from_dict(TrainConfig, {}, "train"), world_size=3)
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == 2


def test_every_disagreeing_key_listed_in_one_message():
    raw = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 8,
        "gradient_clipping": 5.0,
        "bf16": {"enabled": False},
        "fp16": {"enabled": True},
    }
    with pytest.raises(ConfigError) as err:
        resolve_ds_config(raw, train_cfg(micro_batch_per_gpu=1, precision="bf16"), world_size=1, source="x.json")
    msg = str(err.value)
    assert msg.startswith("x.json: concrete value(s) disagree with the recipe")
    assert "train_micro_batch_size_per_gpu: 2 in the JSON, but train.micro_batch_per_gpu = 1" in msg
    assert "gradient_accumulation_steps: 8 in the JSON, but train.grad_accum = 4" in msg
    assert "gradient_clipping: 5.0 in the JSON, but train.grad_clip = 1.0" in msg
    assert "bf16.enabled: False in the JSON, but train.precision = 'bf16'" in msg
    assert "fp16.enabled: True in the JSON, but train.precision = 'bf16'" in msg


def test_a_value_of_the_wrong_json_type_is_named_as_such():
    """ "true" and "1.0" in quotes are text, true is no clip threshold: each was reported as disagreeing with the
    recipe (bf16.enabled: 'true' in the JSON, but train.precision = 'bf16') or taken (true as a clip of 1)."""
    raw = {"gradient_clipping": "1.0", "bf16": {"enabled": "true"}, "gradient_accumulation_steps": "4"}
    with pytest.raises(ConfigError) as err:
        resolve_ds_config(raw, train_cfg(precision="bf16"), world_size=1, source="x.json")
    msg = str(err.value)
    assert 'gradient_clipping: "1.0" in the JSON is not a number; write one, or "auto"' in msg
    assert 'bf16.enabled: "true" in the JSON is not true or false (a JSON boolean)' in msg
    assert 'gradient_accumulation_steps: "4" in the JSON is not a number' in msg
    with pytest.raises(ConfigError, match="gradient_clipping: true in the JSON is not a number"):
        resolve_ds_config({"gradient_clipping": True}, train_cfg(), world_size=1, source="x.json")


def test_batch_arithmetic_error_shows_the_product():
    with pytest.raises(ConfigError, match=r"train_batch_size is 64, .* = 2 \* 4 \* 2 = 16"):
        resolve_ds_config({"train_batch_size": 64}, train_cfg(micro_batch_per_gpu=2), world_size=2)


def test_a_missing_grad_accum_is_refused_once_not_as_an_auto_left_too():
    """A recipe without train.grad_accum under a preset ("auto" there) had its refusal followed by a second group
    that named the same keys as "auto" left unfilled, saying in one breath that llmasr fills them."""
    with pytest.raises(ConfigError) as err:
        resolve_ds_config("zero2", from_dict(TrainConfig, {}, "train"), world_size=1, source="zero2")
    assert str(err.value).startswith("zero2: gradient_accumulation_steps is not set") and "left at" not in str(
        err.value
    )


def test_missing_grad_accum_is_an_error_never_one():
    recipe = from_dict(TrainConfig, {}, "train")
    for raw in ({}, {"gradient_accumulation_steps": "auto"}):
        with pytest.raises(ConfigError, match="gradient_accumulation_steps is not set.*never assumes 1"):
            resolve_ds_config(raw, recipe, world_size=1)


def test_scheduler_and_optimizer_blocks_refused():
    with pytest.raises(ConfigError, match="scheduler.*collapse the per-branch"):
        resolve_ds_config({"scheduler": {"type": "WarmupLR"}}, train_cfg(), world_size=1)
    with pytest.raises(ConfigError, match="optimizer.*optim.branches"):
        resolve_ds_config({"optimizer": {"type": "AdamW"}}, train_cfg(), world_size=1)


def test_fp16_and_bf16_both_enabled():
    with pytest.raises(ConfigError, match="both true"):
        resolve_ds_config({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, train_cfg(), world_size=1)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"fp16": False}, r'"fp16" is false; write it as an object'),
        ({"bf16": None}, r'"bf16" is null; write it as an object'),
        ({"sequence_parallel_size": 2}, "sequence_parallel_size is 2; llmasr trains data-parallel only"),
        ({"tensor_parallel": {"autotp_size": 2}}, "tensor_parallel.autotp_size is 2"),
        ({"pipeline": {"stages": 2}}, "pipeline.stages is 2; llmasr trains data-parallel only"),
        ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}},
         r"offload_param.device is 'cpu' but zero_optimization.stage is 2; offload_param needs stage 3"),
        ({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}},
         r"offload_optimizer.device is 'cpu' but zero_optimization.stage is 0; offload_optimizer needs stage 1"),
        ({"zero_optimization": {"stage": "1", "offload_param": {"device": "cpu"}}},
         r'zero_optimization.stage is "1"; write 0, 1, 2 or 3 \(a number\)'),
        ({"zero_optimization": {"stage": 4}}, r"zero_optimization.stage is 4; write 0, 1, 2 or 3"),
        ({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}},
         r"offload_param.device is 'nvme' but offload_param.nvme_path is not set"),
        ({"torch_autocast": {"enabled": True, "dtype": "torch.bfloat16"}},
         r"torch_autocast is enabled; it would run the forward in its own dtype whatever train.precision says"),
        ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}},
         r"zero_optimization.offload_optimizer.ratio is 0.5; .* llmasr's per-branch lr schedules never reach"),
    ],
)  # fmt: skip
def test_settings_deepspeed_or_training_would_fail_on_later_are_refused(raw, message):
    """A precision block that is not an object (a TypeError naming nothing), model parallelism (DeepSpeed counts fewer
    data ranks than the batch sizes: it refuses after the model loaded), offload at a stage without it (the memory
    estimate failed at the end of llmasr check), a stage written as a string (which had slipped past the offload
    check), torch_autocast (bf16 forwards under train.precision fp32, unchecked), partial optimizer offload (a
    DeepSpeed optimizer of its own, whose lrs stayed at their first values, stepped the part on the GPU)."""
    with pytest.raises(ConfigError, match=message):
        resolve_ds_config(raw, train_cfg(), world_size=8, source="ds.json")
    assert resolve_ds_config({"zero_optimization": {"stage": 2, "offload_param": {"device": "none"}}}, train_cfg(),
                             world_size=8)  # fmt: skip
    whole = {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 1.0}}
    assert resolve_ds_config({"zero_optimization": whole}, train_cfg(), world_size=8)


def test_gradients_accumulated_in_another_dtype_only_where_deepspeed_runs_and_exports_them():
    """fp32 accumulation of bf16 failed after the model was built (ZeRO-0) or wrote checkpoints no export could read
    (ZeRO-1, DeepSpeed's BF16_Optimizer)."""
    with pytest.raises(ConfigError, match=r'grad_accum_dtype is "fp32" with train.precision bf16 at ZeRO stage 0: '
                                          "DeepSpeed does not run that mix"):  # fmt: skip
        resolve_ds_config({"data_types": {"grad_accum_dtype": "fp32"}}, train_cfg(), world_size=2)
    raw = {"zero_optimization": {"stage": 1}, "data_types": {"grad_accum_dtype": "fp32"}}
    with pytest.raises(ConfigError, match=r"at ZeRO stage 1: its checkpoints \(BF16_Optimizer\) cannot be exported"):
        resolve_ds_config(raw, train_cfg(), world_size=2)
    for stage, dtype in ((2, "fp32"), (1, "bf16")):
        raw = {"zero_optimization": {"stage": stage}, "data_types": {"grad_accum_dtype": dtype}}
        assert resolve_ds_config(raw, train_cfg(), world_size=2)


OFFLOAD = {"stage": 2, "offload_optimizer": {"device": "cpu"}}


@pytest.mark.parametrize(
    ("raw", "train", "message"),
    [
        ({"managed_gradient_accumulation": False}, {},
         "managed_gradient_accumulation is false; llmasr marks the accumulation boundary"),
        ({"zero_optimization": {"stage": 2, "compute_grad_norm": False}}, {"grad_clip": 0.5},
         r"zero_optimization.compute_grad_norm is false with gradient_clipping 0.5 \(train.grad_clip\)"),
        ({"zero_optimization": {"stage": 1, "compute_grad_norm": False, "offload_optimizer": {"device": "cpu"}}},
         {"grad_clip": 0.0}, "zero_optimization.compute_grad_norm is false with offload_optimizer.device 'cpu'"),
        ({"data_types": {"param_dtype": "fp16"}}, {"precision": "bf16"},
         'data_types.param_dtype is "fp16" but train.precision is bf16'),
        ({"data_types": {"param_dtype": "bf16"}}, {"precision": "fp32"},
         'data_types.param_dtype is "bf16" but train.precision is fp32'),
        ({"zero_optimization": {"stage": 2}, "bf16": {"bf16_master_weights_and_grads": True}}, {"precision": "bf16"},
         "bf16.bf16_master_weights_and_grads is true but the optimizer is not offloaded .* beside bf16 Adam moments"),
        ({"bf16": {"bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}}, {"precision": "bf16"},
         "bf16.bf16_master_weights_and_grads is true but zero_optimization.stage is 0"),
        ({"zero_optimization": OFFLOAD, "bf16": {"bf16_optimizer_states": True}}, {"precision": "bf16"},
         "bf16.bf16_optimizer_states is true but bf16.bf16_master_weights_and_grads is not"),
        ({"zero_optimization": OFFLOAD, "bf16": {"bf16_master_weights_and_grads": True}}, {"precision": "fp32"},
         "bf16.bf16_master_weights_and_grads is true but train.precision is fp32"),
        ({"zero_optimization": {"stage": 2}, "fp16": {"fp16_master_weights_and_grads": True}}, {"precision": "fp16"},
         "fp16.fp16_master_weights_and_grads is true but the optimizer is not offloaded"),
        ({"zero_optimization": OFFLOAD, "fp16": {"fp16_master_weights_and_grads": True}}, {"precision": "bf16"},
         "fp16.fp16_master_weights_and_grads is true but train.precision is bf16: they are fp16 copies"),
        ({"zero_optimization": OFFLOAD, "bf16": {"bf16_master_weights_and_grads": True},
          "fp16": {"fp16_master_weights_and_grads": True}}, {"precision": "bf16"},
         "fp16.fp16_master_weights_and_grads is true but train.precision is bf16"),
    ],
)  # fmt: skip
def test_settings_deepspeed_refuses_once_the_model_is_built_are_refused_first(raw, train, message):
    """deepspeed.initialize refused these (compute_grad_norm, param_dtype, bf16 or fp16 master weights and optimizer
    states), or the first micro batch did (managed_gradient_accumulation: TrainEngine sets every boundary itself),
    after the model had loaded."""
    with pytest.raises(ConfigError, match=f"^ds.json: {message}"):
        resolve_ds_config(raw, train_cfg(**train), world_size=2, source="ds.json")
    kept = [
        ({"managed_gradient_accumulation": True}, {}),
        ({"zero_optimization": {"stage": 2, "compute_grad_norm": False}}, {"grad_clip": 0.0}),
        ({"data_types": {"param_dtype": "bfloat16"}}, {"precision": "bf16"}),
        ({"data_types": {"param_dtype": "fp32"}}, {"precision": "fp32"}),
        ({"zero_optimization": OFFLOAD, "bf16": {"bf16_master_weights_and_grads": True}}, {"precision": "bf16"}),
        ({"zero_optimization": OFFLOAD, "bf16": {"bf16_master_weights_and_grads": True,
                                                 "bf16_optimizer_states": True}}, {"precision": "bf16"}),
        ({"zero_optimization": OFFLOAD, "fp16": {"fp16_master_weights_and_grads": True}}, {"precision": "fp16"}),
        ({"zero_optimization": {"stage": 1}, "bf16": {"bf16_master_weights_and_grads": True,
                                                      "bf16_optimizer_states": True}}, {"precision": "bf16"}),
    ]  # fmt: skip
    for ok, train in kept:
        assert resolve_ds_config(ok, train_cfg(**train), world_size=2)


def test_a_key_written_twice_is_refused(tmp_path):
    """JSON keeps the last of a repeated key: the ZeRO-3 block above the second one was dropped without a word."""
    path = tmp_path / "ds.json"
    path.write_text(
        '{"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 2}}'
    )
    with pytest.raises(ConfigError, match=f"{path}: key 'zero_optimization' appears twice in one object"):
        load_ds_config(path)


def test_unknown_auto_key_named():
    raw = {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}
    with pytest.raises(ConfigError, match=r"\"auto\" left at \['zero_optimization.reduce_bucket_size'\]") as err:
        resolve_ds_config(raw, train_cfg(), world_size=1)
    filled = ("llmasr fills only train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps, "
              "gradient_clipping, bf16.enabled and fp16.enabled: ")  # fmt: skip
    assert filled in str(err.value)  # the keys it leaves out of the check (ds_config.FILLED), bf16's alias as bf16
    # HF's ZeRO-3 example: what to write instead is said, HF's own formula included
    raw = {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": "auto", "sub_group_size": "auto"}}
    with pytest.raises(ConfigError) as err:
        resolve_ds_config(raw, train_cfg(), world_size=1)
    assert (
        "remove each of those keys for DeepSpeed's default, or set a number there (HF's Trainer fills "
        "zero_optimization.stage3_prefetch_bucket_size with 0.9*h*h, h the LLM's hidden_size)" in str(err.value)
    )


def test_bad_json_reports_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "train_batch_size": "auto",\n  "zero_optimization": {stage: 2}\n}\n')
    with pytest.raises(ConfigError, match=rf"^{path}:3:\d+: not valid JSON"):
        load_ds_config(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_ds_config(path)
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_ds_config(tmp_path / "missing.json")
    path.write_bytes(b"RIFF\xaa\xff\x00WAVE")  # a wav given by mistake: named, not a UnicodeDecodeError
    with pytest.raises(ConfigError, match=rf"^{path}: not a DeepSpeed JSON file \(not UTF-8 text"):
        load_ds_config(path)


# --- DeepSpeed integration (CPU, one process, gloo) --------------------------------------------------------------


@pytest.fixture(scope="module")
def single_rank():
    """A one-rank gloo world. It stays up for the rest of the session: DeepSpeed caches its process groups, and a
    destroyed world would break a later deepspeed.initialize in the same process."""
    port = free_port()
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["zero0", "zero2"])
def test_deepspeed_steps_branch_scheduler(preset, make_model, single_rank, tmp_path):
    deepspeed = pytest.importorskip("deepspeed")
    model = make_model(freeze_encoder=False)
    optim_cfg = from_dict(
        OptimConfig,
        {
            "scheduler": {"type": "tri_stage", "phase_ratio": [0.5, 0.0, 0.5]},
            "branches": {"encoder": {"lr": 1e-3}, "llm": {"lr": 1e-4}},
        },
        "optim",
    )
    tcfg = train_cfg(precision="fp32", grad_accum=4)
    groups = build_param_groups(model, optim_cfg)
    names = [g["name"] for g in groups]
    total = 4
    schedules = build_group_schedules(groups, optim_cfg, total)
    optimizer = torch.optim.AdamW(groups)
    scheduler = BranchLRScheduler(optimizer, schedules)
    ds = resolve_ds_config(preset, tcfg, world_size=1)
    engine, ds_opt, _, ds_sched = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds, dist_init_required=True
    )
    assert ds_sched is scheduler
    assert [g["name"] for g in engine.optimizer.param_groups] == names

    torch.manual_seed(1)
    n_micro = 5  # one full window of 4 and a partial one closed at the "epoch end"
    updates = []
    for i in range(n_micro):
        engine.set_gradient_accumulation_boundary((i + 1) % tcfg.grad_accum == 0 or i == n_micro - 1)
        loss = engine(torch.randn(3, 5, 4), torch.randint(0, 12, (3, 5)))
        engine.backward(loss)
        engine.step()
        assert scheduler.last_update == engine.global_steps - engine.skipped_steps
        updates.append(scheduler.last_update)
        lrs = {g["name"]: g["lr"] for g in engine.optimizer.param_groups}
        for name in names:
            branch = name.removesuffix("_no_decay")
            peak = {"encoder": 1e-3, "llm": 1e-4}.get(branch, 1e-4)
            assert lrs[name] == pytest.approx(schedule_lr(optim_cfg.scheduler, scheduler.last_update, peak, total)), (
                i,
                name,
            )
        assert lrs["encoder"] / lrs["llm"] == pytest.approx(10)
        assert engine.get_lr() == [lrs[n] for n in names]
    assert updates == [0, 0, 0, 1, 2]

    # the engine checkpoints the scheduler with itself
    saved = {g["name"]: g["lr"] for g in engine.optimizer.param_groups}
    engine.save_checkpoint(str(tmp_path), tag="t")
    scheduler.last_update = 0
    for g in engine.optimizer.param_groups:
        g["lr"] = 0.0
    engine.load_checkpoint(str(tmp_path), tag="t")
    assert scheduler.last_update == 2
    assert {g["name"]: g["lr"] for g in engine.optimizer.param_groups} == saved


@pytest.mark.parametrize("given", ["ds_configs/zero2.json", "zero2.json", "ds_configs/zero2", "configs/zero2.JSON"])
def test_a_checkout_s_preset_path_missing_here_names_the_preset(tmp_path, monkeypatch, given):
    """The README's `--deepspeed ds_configs/zero2.json`, run outside a checkout (a pip install), was refused as
    "neither a file nor a preset" with the preset list alone: the preset of that name is what to give."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^DeepSpeed config {re.escape(repr(given))} is neither a file nor a "
                                          r"preset: no such file here, and the preset of that name \(the same file, "
                                          r"shipped in the package\) is --deepspeed zero2$"):  # fmt: skip
        load_ds_config(given)
    with pytest.raises(ConfigError, match=r"'mine.json' is neither a file nor a preset \(zero0, zero1, zero2,"):
        load_ds_config("mine.json")


def test_comments_and_trailing_commas_read_as_deepspeed_reads_them(tmp_path):
    """DeepSpeed reads its JSON with hjson, so configs carry comments and trailing commas; llmasr refused them as
    invalid JSON."""
    path = tmp_path / "mine.json"
    path.write_text(
        '{\n  // ZeRO-2, from the docs\n  "zero_optimization": {"stage": 2, /* buckets: default */},\n'
        '  # HF style\n  "checkpoint": {"tag_validation": "Warn // not a comment"},\n  "gradient_clipping": 1.0,\n}\n'
    )
    assert load_ds_config(path) == {
        "zero_optimization": {"stage": 2},
        "checkpoint": {"tag_validation": "Warn // not a comment"},
        "gradient_clipping": 1.0,
    }
    path.write_text('{\n  // a comment keeps the lines\n  "zero_optimization": {"stage": 2}\n  "x": 1\n}')
    with pytest.raises(ConfigError, match=rf"^{path}:4:3: not valid JSON: Expecting ',' delimiter$"):
        load_ds_config(path)


def test_a_yaml_file_and_a_misspelt_preset_are_named(tmp_path):
    path = tmp_path / "ds.yaml"
    path.write_text("zero_optimization:\n  stage: 2\n")
    with pytest.raises(
        ConfigError,
        match=r"ds.yaml:1:1: not valid JSON: .*a YAML file\? --deepspeed takes DeepSpeed's "
        "JSON; the recipe is --config",
    ):
        load_ds_config(path)
    with pytest.raises(
        ConfigError,
        match=r"'zero3offload' is neither a file nor a preset .*; did you mean "
        "'zero3_offload'\\?",
    ):
        load_ds_config("zero3offload")
