"""`llmasr check`'s "deepspeed config" section (where each value DeepSpeed gets came from), and the DeepSpeed settings
it refuses at start-up that DeepSpeed would take and then ignore or fail on once the model is built: ZeRO++ options
outside stage 3, an hpZ group that does not divide the ranks, NVMe offload without DeepSpeed's async_io op."""

import json

import pytest
from check_runner import run_check

from llmasr.train.config import TrainConfig
from llmasr.train.ds_config import resolve_ds


def _section(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("deepspeed config: "))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))
    return lines[start:end]


def test_a_preset_s_section_says_what_llmasr_filled_and_from_which_recipe_key(recipe_file, tmp_path, capsys):
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero3_offload", "--world-size",
                               "2", "--out", str(tmp_path), "train.precision=bf16")  # fmt: skip
    assert code == 0, err
    section = _section(out)
    assert len(section) <= 13, section  # the largest preset's
    assert section[0].startswith("deepspeed config: the preset zero3_offload (") and "world size 2" in section[0]
    body = "\n".join(section)
    for line in [
        "zero_optimization.{stage 3, offload_optimizer.device cpu, offload_param.device cpu}: as written in "
        "zero3_offload.json",
        "bf16.enabled true, fp16.enabled false: from train.precision bf16",
        "gradient_clipping 1.0: from train.grad_clip",
        "gradient_accumulation_steps 2: from train.grad_accum",
        "train_micro_batch_size_per_gpu 1: llmasr's 1, as train.micro_batch_per_gpu is not set (nominal: "
        "data.batching decides the real batches)",
        "train_batch_size 4: from micro x accumulation x world size (1 x 2 x 2)",
    ]:
        assert f"\n  {line}\n" in body, (line, body)
    # every other key the preset sets, the fp16 block's marked as not read under bf16
    assert "also as written in zero3_offload.json: zero_optimization.{overlap_comm true," in body
    assert "offload_param.pin_memory true}; wall_clock_breakdown false" in body.replace("\n    ", " ")
    wrapped = [line for line, after in zip(section, section[1:]) if after.startswith("    ")]
    assert wrapped and all(line.endswith((",", ";")) for line in wrapped), wrapped  # a key and its value together
    assert "switched off, so not read: fp16.{loss_scale 0, loss_scale_window 1000," in body


def test_a_user_json_s_section_names_each_key_it_set_and_deepspeed_s_defaults(recipe_file, tmp_path, capsys):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({
        "train_batch_size": 4, "gradient_clipping": 1.0, "train_micro_batch_size_per_gpu": 2,
        "bfloat16": {"enabled": True}, "zero_optimization": {"overlap_comm": True},
        "flops_profiler": {"enabled": False, "profile_step": 3},
    }))  # fmt: skip
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(mine), "--out",
                               str(tmp_path / "o"), "train.precision=bf16")  # fmt: skip
    assert code == 0, err
    section = _section(out)
    assert section[0] == f"deepspeed config: {mine}, resolved for world size 1"
    assert section[1:] == [
        "  zero_optimization.{stage 0, offload_optimizer.device none, offload_param.device none}: DeepSpeed's default",
        "  bfloat16.enabled true: as written in mine.json, as train.precision bf16 says",
        "  fp16.enabled false: from train.precision bf16",
        "  gradient_clipping 1.0: as written in mine.json, as train.grad_clip says",
        "  gradient_accumulation_steps 2: from train.grad_accum",
        "  train_micro_batch_size_per_gpu 2: as written in mine.json (nominal: data.batching decides the real batches)",
        "  train_batch_size 4: as written in mine.json, = micro x accumulation x world size (2 x 2 x 1)",
        "  also as written in mine.json: zero_optimization.overlap_comm true",
        "  switched off, so not read: flops_profiler.{enabled false, profile_step 3}",
    ]


def test_the_provenance_is_recorded_where_resolve_fills():
    resolved = resolve_ds("zero2", TrainConfig(grad_accum=3, precision="fp16", grad_clip=0.5), world_size=2)
    assert resolved.config["gradient_clipping"] == 0.5 and resolved.written["gradient_clipping"] == "auto"
    assert resolved.filled == {
        "train_micro_batch_size_per_gpu": "llmasr's 1, as train.micro_batch_per_gpu is not set",
        "gradient_accumulation_steps": "from train.grad_accum",
        "gradient_clipping": "from train.grad_clip",
        "bf16.enabled": "from train.precision fp16",
        "fp16.enabled": "from train.precision fp16",
        "train_batch_size": "from micro x accumulation x world size (1 x 3 x 2)",
    }


@pytest.mark.parametrize(
    "zero, world, said",
    [
        ({"stage": 2, "zero_hpz_partition_size": 2}, 2,
         "zero_optimization.zero_hpz_partition_size 2 at ZeRO stage 2: only ZeRO stage 3 reads ZeRO++ options, so "
         "here it does nothing: remove it"),
        ({"stage": 1, "zero_quantized_weights": True, "zero_quantized_gradients": True}, 1,
         "zero_optimization.zero_quantized_weights true, zero_optimization.zero_quantized_gradients true at ZeRO "
         "stage 1: only ZeRO stage 3 reads ZeRO++ options, so here they do nothing: remove them"),
        ({"stage": 3, "zero_hpz_partition_size": 2}, 3,
         "zero_optimization.zero_hpz_partition_size is 2 but the world size is 3: DeepSpeed splits the ranks into hpZ "
         "groups of 2, which must divide them"),
    ],
)  # fmt: skip
def test_zero_plus_options_that_do_nothing_or_fail_late_are_refused(recipe_file, tmp_path, capsys, zero, world, said):
    """Before: check passed; stage 2 trained without them, and 3 ranks failed at deepspeed.initialize
    ("3 is not divisible by 2"), one rank raising while the others waited on it."""
    path = tmp_path / "zpp.json"
    path.write_text(json.dumps({"zero_optimization": zero}))
    code, _, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(path), "--world-size",
                             str(world), "--out", str(tmp_path))  # fmt: skip
    assert code == 2 and said in err, err


def test_hpz_that_divides_the_ranks_resolves():
    zero = {"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 2}}
    for world in (1, 2, 4):
        resolve_ds(zero, TrainConfig(grad_accum=1, precision="fp32"), world_size=world)


def test_nvme_offload_needs_deepspeed_s_async_io_op_on_this_machine(recipe_file, tmp_path, capsys):
    """Before: check passed, and training failed once the model was built ("Unable to JIT load the async_io op")."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder("AsyncIOBuilder")
    usable = builder is not None and (installed_ops.get(builder.name) or builder.is_compatible(verbose=False))
    path = tmp_path / "nvme.json"
    swap = str(tmp_path / "swap")
    (tmp_path / "swap").mkdir()  # a folder to swap to: the op is what this test is about
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme",
                                                                                    "nvme_path": swap}}}))  # fmt: skip
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(path), "--out", str(tmp_path))
    if usable:  # a machine with libaio: the section names the offload
        assert code == 0 and "offload_param.device nvme" in out, err
    else:
        assert code == 2, err
        assert (
            f"{path}: zero_optimization.offload_param.device is 'nvme', but DeepSpeed's async_io op, which swaps to "
            "NVMe, cannot be built on this machine (" in err
        )
        assert "apt install libaio-dev" in err


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_an_nvme_path_that_is_not_a_folder_to_swap_to_is_named_by_its_key(recipe_file, tmp_path, capsys, kind):
    """Before: check passed, and DeepSpeed failed once the model was built ("PATH: No such file or directory", no key
    named), where the async_io op builds; or created a folder not there on the drive that holds its parent."""
    swap = tmp_path / "swap"
    if kind == "file":
        swap.write_text("not a folder")
    path = tmp_path / "nvme.json"
    swap_at = {"device": "nvme", "nvme_path": str(swap)}
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": swap_at}}))
    code, _, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(path), "--out", str(tmp_path))
    why = "is not there" if kind == "missing" else "is not a folder"
    assert code == 2 and f"{path}: zero_optimization.offload_optimizer.nvme_path '{swap}' {why} on this node (" in err
    assert "name a folder on the NVMe drive that this user can write in, there on every node (mkdir -p it)" in err


def test_zero_plus_quantization_without_deepspeed_s_quantizer_op_is_refused(recipe_file, tmp_path, capsys):
    """Before: check passed, and training failed inside the LLM's load, blaming the model ("not loadable as a causal
    LM (qwen2): This op had not been implemented on CPU backend"): the CPU accelerator has no quantizer op."""
    from deepspeed.accelerator import get_accelerator

    if type(get_accelerator().create_op_builder("QuantizerBuilder")).__name__ != "NotImplementedBuilder":
        pytest.skip("this accelerator has DeepSpeed's quantizer op")
    path = tmp_path / "zpp.json"
    zero = {"stage": 3, "zero_quantized_weights": True, "zero_quantized_gradients": True}
    path.write_text(json.dumps({"zero_optimization": zero}))
    code, _, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(path), "--out", str(tmp_path))
    keys = "zero_optimization.zero_quantized_weights and zero_optimization.zero_quantized_gradients"
    assert code == 2 and f"{path}: {keys} are true, but DeepSpeed's quantizer op, which ZeRO++ quantizes with" in err
    assert "has no build for the cpu accelerator on this machine (" in err
    assert "remove them (ZeRO++ quantization needs CUDA GPUs)" in err
