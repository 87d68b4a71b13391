"""The universal copy every ZeRO stage 1-3 loads, on folders laid out as ds_to_universal writes them from each stage
(the runs that resume through it: tests/recipes/test_resume_stage.py)."""

from collections import OrderedDict

import pytest
import torch

from llmasr.train import universal_stages as us

SHAPES = OrderedDict([("enc.weight", torch.Size([2, 3])), ("enc.bias", torch.Size([4]))])


def zero3_copy(folder):
    """What ds_to_universal writes from a ZeRO-3 checkpoint: flat states, no step files, rank 0's whole state."""
    (folder / "zero").mkdir(parents=True)
    torch.save({"param_shapes": [SHAPES], "ds_version": "0.19.8", "module": {}},
               folder / "zero_pp_rank_0_mp_rank_00_model_states.pt")  # fmt: skip
    for i, (name, shape) in enumerate(SHAPES.items()):
        (folder / "zero" / name).mkdir()
        for j, key in enumerate(us.STATES):
            torch.save(
                torch.arange(shape.numel(), dtype=torch.float32) + 10 * i + j, folder / "zero" / name / f"{key}.pt"
            )
    groups = [{"lr": 1e-3, "weight_decay": 0.01, "name": "enc", "params": [0]}]
    torch.save({"zero_stage": 3, "partition_count": 1, "fp32_flat_groups": [torch.zeros(10)],
                "optimizer_state_dict": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(10)}},
                                         "param_groups": groups}},
               folder / "zero" / "optimizer_state.pt")  # fmt: skip
    return folder


def zero2_copy(folder):
    """What ds_to_universal writes from a ZeRO-1/2 checkpoint: shaped states in dicts, a step per parameter."""
    (folder / "zero").mkdir(parents=True)
    torch.save({"param_shapes": [SHAPES], "ds_version": "0.19.8", "module": {}},
               folder / "mp_rank_00_model_states.pt")  # fmt: skip
    for name, shape in SHAPES.items():
        (folder / "zero" / name).mkdir()
        for key in us.STATES:
            torch.save({"param": torch.ones(shape), "cat_dim": 0}, folder / "zero" / name / f"{key}.pt")
        torch.save(torch.tensor(5.0), folder / "zero" / name / "step.pt")
    groups = [{"lr": 1e-3, "weight_decay": 0.01, "name": "enc", "params": [0]}]
    torch.save({"zero_stage": 2, "ds_version": "0.19.8", "clip_grad": 1.0, "param_groups": groups},
               folder / "zero" / "optimizer_state.pt")  # fmt: skip
    return folder


def test_a_zero3_copy_gets_what_the_zero12_loader_reads(tmp_path):
    folder = zero3_copy(tmp_path / "u")
    us.any_stage(folder)
    for i, (name, shape) in enumerate(SHAPES.items()):
        for j, key in enumerate(us.STATES):
            value = torch.load(folder / "zero" / name / f"{key}.pt", weights_only=True)
            expected = (torch.arange(shape.numel(), dtype=torch.float32) + 10 * i + j).reshape(shape)
            assert torch.equal(value["param"], expected), (name, key)  # the same values, in the parameter's shape
        assert float(torch.load(folder / "zero" / name / "step.pt", weights_only=True)) == 3.0
    optim = torch.load(folder / "zero" / "optimizer_state.pt", weights_only=True)
    assert optim["param_groups"][0]["name"] == "enc" and optim["ds_version"] == "0.19.8"
    assert "fp32_flat_groups" not in optim  # rank 0's partition: read by no universal load
    assert float(optim["optimizer_state_dict"]["state"][0]["step"]) == 3.0
    assert set(optim["optimizer_state_dict"]["state"][0]) == {"step"}
    model = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=True)
    assert model["param_shapes"] == [SHAPES]


def test_a_zero2_copy_gets_what_the_zero3_loader_reads(tmp_path):
    folder = zero2_copy(tmp_path / "u")
    us.any_stage(folder)
    optim = torch.load(folder / "zero" / "optimizer_state.pt", weights_only=True)
    assert float(optim["optimizer_state_dict"]["state"][0]["step"]) == 5.0
    assert optim["optimizer_state_dict"]["param_groups"] == optim["param_groups"]
    assert optim["clip_grad"] == 1.0
    assert (folder / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file()
    value = torch.load(folder / "zero" / "enc.weight" / "fp32.pt", weights_only=True)
    assert torch.equal(value["param"], torch.ones(2, 3))
    us.any_stage(folder)  # a second pass changes nothing
    again = torch.load(folder / "zero" / "optimizer_state.pt", weights_only=True)
    assert float(again["optimizer_state_dict"]["state"][0]["step"]) == 5.0


def test_an_offloaded_optimizer_s_int_step_becomes_the_tensor_torch_s_adam_steps_with(tmp_path):
    """DeepSpeedCPUAdam (offload) counts its step in an int, which ZeRO-3's loader put into torch's Adam as it is."""
    folder = zero2_copy(tmp_path / "u")
    for name in SHAPES:
        torch.save(5, folder / "zero" / name / "step.pt")
    us.any_stage(folder)
    optim = torch.load(folder / "zero" / "optimizer_state.pt", weights_only=True)
    steps = [optim["optimizer_state_dict"]["state"][0]["step"]]
    steps += [torch.load(folder / "zero" / name / "step.pt", weights_only=True) for name in SHAPES]
    assert all(torch.is_tensor(s) and s.dtype == torch.float32 and float(s) == 5.0 for s in steps), steps


def test_a_state_that_does_not_fit_its_parameter_is_named(tmp_path):
    folder = zero3_copy(tmp_path / "u")
    bad = folder / "zero" / "enc.bias" / "exp_avg.pt"
    torch.save(torch.zeros(5), bad)
    with pytest.raises(ValueError, match=f"{bad}: 5 values, the parameter's shape \\(4,\\) holds 4"):
        us.any_stage(folder)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_stages_1_to_3_convert_into_one_another_and_to_or_from_zero0_in_fp32(precision):
    assert all(us.stage_change_allowed(a, b, precision) for a in (1, 2, 3) for b in (1, 2, 3))
    assert us.stage_change_allowed(0, 0, precision)
    for s in (1, 2, 3):  # ZeRO-0 keeps torch's own state in fp32, DeepSpeed's fp32 masters per group otherwise
        assert (
            us.stage_change_allowed(0, s, precision)
            == us.stage_change_allowed(s, 0, precision)
            == (precision == "fp32")
        )


def test_a_zero0_checkpoint_without_torch_s_optimizer_state_is_named(tmp_path):
    """bf16/fp16 ZeRO-0 keeps fp32 masters per group in DeepSpeed's wrapper: not a state this converts."""
    src = tmp_path / "update_00000002"
    src.mkdir()
    torch.save({"module": {"enc.bias": torch.zeros(4)}, "optimizer": {"fp32_groups": [], "optimizer_state_dict": {}}},
               src / us.ZERO12_MODEL)  # fmt: skip
    with pytest.raises(ValueError, match="only a ZeRO-0 checkpoint trained in fp32 converts"):
        us.from_stage0(src, tmp_path / "u", ["enc.bias"])


def test_a_zero0_group_that_does_not_line_up_with_the_names_is_named(tmp_path):
    src = tmp_path / "update_00000002"
    src.mkdir()
    optim = {"state": {}, "param_groups": [{"name": "encoder", "params": [0, 1]}]}  # 2 tensors; the meta names 1
    torch.save({"module": {"encoder.w": torch.zeros(2, 2)}, "optimizer": optim}, src / us.ZERO12_MODEL)
    with pytest.raises(
        ValueError, match="param group 'encoder' holds 2 tensors, the checkpoint's trainable parameters"
    ):
        us.from_stage0(src, tmp_path / "u", ["encoder.w"])
