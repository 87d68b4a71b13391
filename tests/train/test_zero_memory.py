"""The per-rank memory estimate of `llmasr check` against DeepSpeed's own estimators."""

import pytest

from llmasr.train.zero_memory import estimate_zero_memory, optimizer_state_bytes


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_memory_matches_deepspeed_estimators_all_trainable(world):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n, largest = 7_000_000_000, 130_000_000
    est = lambda **kw: estimate_zero_memory(n, n, world_size=world, precision="bf16", **kw)  # noqa: E731

    cpu, gpu = estimate_zero2_model_states_mem_needs(n, world, 1, cpu_offload=False, additional_buffer_factor=1)
    assert est(stage=2)["device"] == gpu
    cpu, gpu = estimate_zero2_model_states_mem_needs(n, world, 1, cpu_offload=True, additional_buffer_factor=1)
    got = est(stage=2, offload_optimizer=True)
    assert got["device"] == gpu
    if world <= 4:
        assert got["cpu"] * world == cpu

    for offload_opt, offload_par in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            n,
            largest,
            world,
            1,
            cpu_offload=offload_opt,
            cpu_offload_params=offload_par,
            zero_init=True,
            additional_buffer_factor=1,
        )
        got = est(stage=3, offload_optimizer=offload_opt, offload_params=offload_par, largest_layer_params=largest)
        # Without offload DeepSpeed also keeps the 16-bit gradient partition (2T/W), which its estimator omits;
        # bench/zero_memory.py measures it.
        missing = 0 if offload_opt else 2 * n / world
        assert got["device"] == pytest.approx(gpu + missing, abs=world)
        if offload_opt:
            assert got["cpu"] * world == pytest.approx(cpu, abs=world)


def test_memory_frozen_params_and_fp32():
    n, t = 1_000_000, 100_000
    z0 = estimate_zero_memory(n, t, stage=0, world_size=4, precision="bf16")
    assert z0 == {
        "params": 2 * n,
        "grads": 6 * t,
        "optimizer_states": 12 * t,
        "gathered_layer": 0,
        "device": 2 * n + 18 * t,
        "cpu": 0,
    }
    z1 = estimate_zero_memory(n, t, stage=1, world_size=4, precision="bf16")
    assert z1["grads"] == 2 * t + t and z1["optimizer_states"] == 3 * t
    f32 = estimate_zero_memory(n, t, stage=2, world_size=4, precision="fp32")
    assert f32 == {
        "params": 4 * n,
        "grads": t,
        "optimizer_states": 3 * t,  # a separate fp32 master partition even for fp32 weights
        "gathered_layer": 0,
        "device": 4 * n + 4 * t,
        "cpu": 0,
    }
    # bf16 master weights (and offloaded gradients) and bf16 Adam moments: 2 bytes each where 4 were
    half = estimate_zero_memory(n, t, stage=2, world_size=4, offload_optimizer=True, master_bytes=2, moment_bytes=2)
    assert half == {
        "params": 2 * n,
        "grads": 2 * t // 4,
        "optimizer_states": (2 + 2 * 2) * t // 4,
        "gathered_layer": 0,
        "device": 2 * n,
        "cpu": 2 * t,
    }
    assert optimizer_state_bytes({"bf16": {"bf16_master_weights_and_grads": True}}) == (2, 4)
    both = {"bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
    assert optimizer_state_bytes({"bfloat16": both}) == (2, 2)
    assert optimizer_state_bytes({"bf16": {"enabled": True}}) == (4, 4)
    with pytest.raises(ValueError, match="stage 3"):
        estimate_zero_memory(n, t, stage=2, world_size=1, offload_params=True)
    with pytest.raises(ValueError, match="stage >= 1"):
        estimate_zero_memory(n, t, stage=0, world_size=1, offload_optimizer=True)


def test_zero1_offload_keeps_the_full_16_bit_gradients_on_the_device():
    """ZeRO-1 does not partition gradients in the backward: with the optimizer offloaded the 16-bit ones (2T) stay
    on the device until the accumulation boundary, beside the fp32 partitions (4T/W) on the CPU."""
    n, t = 1_000_000, 100_000
    z1 = estimate_zero_memory(n, t, stage=1, world_size=4, offload_optimizer=True, precision="bf16")
    assert z1 == {
        "params": 2 * n,
        "grads": 2 * t + 4 * t // 4,
        "optimizer_states": 12 * t // 4,
        "gathered_layer": 0,
        "device": 2 * n + 2 * t,
        "cpu": 4 * t // 4 + 12 * t // 4,
    }
    f32 = estimate_zero_memory(n, t, stage=1, world_size=4, offload_optimizer=True, precision="fp32")
    assert f32["device"] == 4 * n + 4 * t and f32["cpu"] == 4 * t // 4 + 12 * t // 4
    z2 = estimate_zero_memory(n, t, stage=2, world_size=4, offload_optimizer=True, precision="bf16")
    assert z2["device"] == 2 * n  # reduced into the CPU partitions during the backward
