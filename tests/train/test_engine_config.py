"""What a TrainEngine makes of the resolved DeepSpeed config, on a real one-rank engine on the CPU (the tiny
stand-in model of conftest.py)."""

import pytest
import torch

from llmasr.config_io import from_dict
from llmasr.train.config import OptimConfig, TrainConfig
from llmasr.train.ds_config import load_ds_config, resolve_ds_config

OPTIM = {"scheduler": {"type": "constant"}, "branches": {"encoder": {"lr": 1e-3}, "llm": {"lr": 1e-4}}}


def make_engine(model, ds, **train):
    from llmasr.train.engine import TrainEngine
    from llmasr.train.param_groups import build_param_groups
    from llmasr.train.process_group import init_distributed
    from llmasr.train.schedulers import build_group_schedules

    dist = init_distributed()
    optim = from_dict(OptimConfig, OPTIM, "optim")
    ds = resolve_ds_config(ds, TrainConfig(**{"grad_accum": 1, "precision": "fp32", **train}), world_size=1)
    groups = build_param_groups(model, optim)
    return TrainEngine(model, groups, build_group_schedules(groups, optim, 10), ds, dist.device)


def one_update(te) -> None:
    loss = te.engine(torch.randn(3, 5, 4, dtype=te.dtype), torch.randint(0, 12, (3, 5)))
    te.engine.backward(loss, scale_wrt_gas=False)
    te.engine.step()


@pytest.mark.parametrize("preset", ["zero1", "zero2"])
def test_a_resumed_run_clips_at_its_own_grad_clip(preset, make_model, tmp_path):
    """DeepSpeed's ZeRO-1/2 optimizer restores the clipping value the checkpoint was saved with; train.grad_clip
    may change on resume (llmasr.train.resume) and must win."""
    saved = make_engine(make_model(), preset, grad_clip=1.0)
    one_update(saved)
    saved.save(str(tmp_path), "t", {})
    resumed = make_engine(make_model(), preset, grad_clip=5.0)
    resumed.load(str(tmp_path), "t")
    assert resumed.optimizer.clip_grad == 5.0
    assert resumed.global_steps == 1  # the checkpoint did load


@pytest.mark.parametrize(("before", "after"), [("zero2", "zero2_offload"), ("zero3", "zero3_offload")])
def test_a_resume_may_offload_the_optimizer(before, after, make_model, tmp_path):
    """A run saved with torch's AdamW resumed with zero_optimization.offload_optimizer (DeepSpeedCPUAdam, say to
    fit a smaller device): its first update had failed on a KeyError, bias_correction (the saved param groups)."""
    saved = make_engine(make_model(), before)
    one_update(saved)
    saved.save(str(tmp_path), "t", {})
    resumed = make_engine(make_model(), after)
    resumed.load(str(tmp_path), "t")
    one_update(resumed)
    assert resumed.global_steps == 2 and type(resumed.optimizer.optimizer).__name__ == "DeepSpeedCPUAdam"


def test_a_universal_resume_clips_at_its_own_grad_clip(make_model, tmp_path):
    from llmasr.train import universal

    saved = make_engine(make_model(), "zero2", grad_clip=1.0)
    one_update(saved)
    saved.save(str(tmp_path), "t", {})
    universal.convert(tmp_path / "t", tmp_path / "t_universal")
    resumed = make_engine(make_model(), "zero2", grad_clip=5.0)
    universal.load(resumed, tmp_path, "t_universal")
    assert resumed.optimizer.clip_grad == 5.0


@pytest.mark.parametrize("universal_load", [False, True], ids=["load", "universal-load"])
def test_a_resume_may_stop_clipping_and_computing_the_norm(universal_load, make_model, tmp_path):
    """ZeRO-1/2 refused a checkpoint saved with clipping into zero_optimization.compute_grad_norm false, though
    train.grad_clip 0 replaces the saved value on resume."""
    from llmasr.train import universal

    saved = make_engine(make_model(), "zero2", grad_clip=1.0)
    one_update(saved)
    saved.save(str(tmp_path), "t", {})
    ds = load_ds_config("zero2")
    ds["zero_optimization"]["compute_grad_norm"] = False
    resumed = make_engine(make_model(), ds, grad_clip=0.0)
    if universal_load:
        universal.convert(tmp_path / "t", tmp_path / "t_universal")
        universal.load(resumed, tmp_path, "t_universal")
    else:
        resumed.load(str(tmp_path), "t")
    assert resumed.optimizer.clip_grad == 0.0 and resumed.optimizer.compute_grad_norm is False
    one_update(resumed)
    assert resumed.global_steps == 2


@pytest.mark.parametrize("preset", ["zero2_offload", "zero3_offload"])
def test_bf16_optimizer_states_train_in_the_offloaded_optimizer(preset, make_model):
    """DeepSpeed refused the CPU Adam llmasr built, whose moments were fp32, for bf16.bf16_optimizer_states."""
    ds = load_ds_config(preset)
    ds["bf16"].update(bf16_master_weights_and_grads=True, bf16_optimizer_states=True)
    te = make_engine(make_model(), ds, precision="bf16")
    one_update(te)
    moments = [s[k] for s in te.optimizer.optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.bfloat16}
    assert te.global_steps == 1 and te.skipped_steps == 0


@pytest.mark.parametrize(
    ("precision", "flags"),
    [
        ("bf16", {}),
        ("bf16", {"bf16_master_weights_and_grads": True}),
        ("bf16", {"bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}),
        ("fp16", {"fp16_master_weights_and_grads": True}),
    ],
    ids=["fp32-states", "bf16-master", "bf16-master-and-moments", "fp16-master"],
)
def test_the_cpu_estimate_is_what_the_offloaded_optimizer_holds(precision, flags, make_model):
    """`llmasr check`'s offloaded figure (ZeRO-2, one rank): master weights, their gradients and Adam's moments."""
    from deepspeed.accelerator import get_accelerator

    from llmasr.train.zero_memory import estimate_zero_memory, optimizer_state_bytes

    if precision == "fp16" and not get_accelerator().is_fp16_supported():
        # DeepSpeed refuses an fp16 engine where oneDNN has no fp16 kernels (an AMD EPYC here; Intel's AMX has them)
        pytest.skip("DeepSpeed's CPU accelerator has no fp16 on this CPU")
    ds = load_ds_config("zero2_offload")
    ds[precision].update(flags, **({"initial_scale_power": 4} if precision == "fp16" else {}))
    te = make_engine(make_model(), ds, precision=precision)
    one_update(te)
    assert te.skipped_steps == 0  # an overflow skip would leave Adam's moments unmade
    masters = te.optimizer.single_partition_of_fp32_groups
    held = [*masters, *(p.grad for p in masters)]
    held += [v for state in te.optimizer.optimizer.state.values() for k, v in state.items() if k != "step"]
    trained = sum(p.numel() for p in te.module.parameters() if p.requires_grad)
    master_bytes, moment_bytes = optimizer_state_bytes(te.ds_config)
    estimate = estimate_zero_memory(trained, trained, 2, 1, offload_optimizer=True, precision=precision,
                                    master_bytes=master_bytes, moment_bytes=moment_bytes)  # fmt: skip
    assert estimate["cpu"] == sum(t.numel() * t.element_size() for t in held)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("stage", [1, 2])
def test_the_device_estimate_counts_the_gradients_zero_keeps_between_micro_batches(stage, precision, make_model):
    """With the optimizer offloaded, ZeRO-1 keeps every 16-bit gradient in the module until the boundary; ZeRO-2
    reduces them into the CPU partitions as the backward goes."""
    from llmasr.train.zero_memory import estimate_zero_memory

    ds = load_ds_config("zero2_offload")
    ds["zero_optimization"]["stage"] = stage
    te = make_engine(make_model(), ds, precision=precision, grad_accum=2)
    te.engine.set_gradient_accumulation_boundary(False)
    loss = te.engine(torch.randn(3, 5, 4, dtype=te.dtype), torch.randint(0, 12, (3, 5)))
    te.engine.backward(loss, scale_wrt_gas=False)
    held = sum(p.grad.numel() * p.grad.element_size() for p in te.module.parameters() if p.grad is not None)
    trained = sum(p.numel() for p in te.module.parameters() if p.requires_grad)
    estimate = estimate_zero_memory(trained, trained, stage, 1, offload_optimizer=True, precision=precision)
    assert estimate["device"] - estimate["params"] == held
    te.engine.step()


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("pure_bf16", [False, True], ids=["fp32-master", "bf16-master-and-moments"])
def test_the_device_estimate_is_what_the_optimizer_holds(pure_bf16, stage, make_model):
    """Without offload: the master partition, the gradients the optimizer steps on and Adam's moments, in fp32, or
    in bf16 where bf16.bf16_master_weights_and_grads and bf16_optimizer_states keep them so (DeepSpeed runs that
    pair on the device; it had been refused, and counted at 4 bytes)."""
    from llmasr.train.zero_memory import estimate_zero_memory, optimizer_state_bytes

    ds = load_ds_config(f"zero{stage}")
    ds["bf16"].update(bf16_master_weights_and_grads=pure_bf16, bf16_optimizer_states=pure_bf16)
    te = make_engine(make_model(), ds, precision="bf16")
    inner = te.optimizer.optimizer
    stepped_on = {}  # ZeRO-1/2 step their groups one by one; ZeRO-3 swaps its sub-groups in and out
    step = inner.step

    def recording_step(*args, **kwargs):
        stepped_on.update({id(p): p for g in inner.param_groups for p in g["params"]})
        held = sum(p.grad.numel() * p.grad.element_size() for g in inner.param_groups for p in g["params"])
        stepped_on.setdefault("grads", []).append(held)
        return step(*args, **kwargs)

    inner.step = recording_step
    one_update(te)
    grads = sum(stepped_on.pop("grads"))
    assert te.global_steps == 1 and te.skipped_steps == 0 and stepped_on
    masters = list(stepped_on.values())
    states = [v for p in masters for k, v in inner.state[p].items() if k != "step"]
    assert {t.dtype for t in masters + states} == {torch.bfloat16 if pure_bf16 else torch.float32}
    trained = sum(p.numel() for p in te.module.parameters() if p.requires_grad)
    master_bytes, moment_bytes = optimizer_state_bytes(te.ds_config)
    estimate = estimate_zero_memory(trained, trained, stage, 1, precision="bf16", master_bytes=master_bytes,
                                    moment_bytes=moment_bytes)  # fmt: skip
    assert estimate["optimizer_states"] == sum(t.numel() * t.element_size() for t in masters + states)
    assert estimate["grads"] - 2 * trained == grads  # beside the 16-bit gradients


@pytest.fixture(scope="module")
def large_weight_llm(tmp_path_factory):
    """A tiny LLM one of whose weights float16 cannot hold (bf16 and float32 can)."""
    from transformers import AutoModelForCausalLM

    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    path = write_tiny_llm_dir(tmp_path_factory.mktemp("large_weight_llm"))
    llm = AutoModelForCausalLM.from_pretrained(str(path))
    with torch.no_grad():
        llm.model.layers[0].self_attn.k_proj.bias[3] = 69632.0
    llm.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("preset", ["zero2", "zero3"])
def test_fp16_training_refuses_weights_float16_cannot_hold(preset, large_weight_llm):
    """train.precision fp16 on an LLM with a weight past 65504: DeepSpeed cast it to inf (ZeRO-3 created it so),
    every loss was NaN and every update skipped, with a warning that pointed at the data. Now the model build names
    the tensor, before the engine starts; bf16 takes the same model."""
    from llmasr.config_io import ConfigError
    from llmasr.models.config import ModelConfig
    from llmasr.testing.tiny_recipe import tiny_model_section
    from llmasr.train.engine import build_model_for_training
    from llmasr.train.process_group import init_distributed

    init_distributed()
    cfg = from_dict(ModelConfig, tiny_model_section(large_weight_llm), "model")
    resolve = lambda precision: resolve_ds_config(preset, TrainConfig(grad_accum=1, precision=precision), world_size=1)  # noqa: E731
    with pytest.raises(
        ConfigError, match=r"^train.precision fp16: 1 weight tensor\(s\) hold values beyond float16's"
    ) as err:
        build_model_for_training(cfg, resolve("fp16"))
    assert "llm.base_model.model.model.layers.0.self_attn.k_proj.bias (largest |value| " in str(err.value)
    model, hf_ds = build_model_for_training(cfg, resolve("bf16"))
    del model, hf_ds


@pytest.mark.parametrize(("value", "held"), [(65519.0, True), (65520.0, False)])
def test_fp16_training_load_and_export_agree_on_the_weights_float16_cannot_hold(tmp_path, value, held):
    """float16 rounds a value below 65520 to its largest finite 65504, and one from 65520 to inf. fp16 training had
    refused every value past 65504 (saying it became inf) while the export's cast and a float16 load took 65519:
    the three now ask one owner (llm_files.beyond_range), and agree."""
    from transformers import AutoModelForCausalLM

    from llmasr.config_io import ConfigError
    from llmasr.export.merge import ExportError, cast_llm
    from llmasr.models.config import ModelConfig
    from llmasr.models.llm import load_llm
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import tiny_model_section
    from llmasr.train.engine import build_model_for_training
    from llmasr.train.process_group import init_distributed

    path = write_tiny_llm_dir(tmp_path / "llm")
    llm = AutoModelForCausalLM.from_pretrained(str(path))
    with torch.no_grad():
        llm.model.layers[0].self_attn.k_proj.bias[3] = value
    llm.save_pretrained(str(path))
    init_distributed()
    cfg = from_dict(ModelConfig, tiny_model_section(path), "model")
    fp16 = resolve_ds_config("zero2", TrainConfig(grad_accum=1, precision="fp16"), world_size=1)
    checks = {
        "train": lambda: build_model_for_training(cfg, fp16),
        "load": lambda: load_llm(path, dtype="float16"),
        "export": lambda: cast_llm(AutoModelForCausalLM.from_pretrained(str(path)), torch.float16),
    }
    refused = {}
    for what, check in checks.items():
        try:
            check()
        except (ConfigError, ExportError) as err:
            refused[what] = str(err)
    assert not refused if held else sorted(refused) == ["export", "load", "train"], refused
    for message in refused.values():
        assert "k_proj.bias" in message and ("65520" in message or "now inf" in message)
