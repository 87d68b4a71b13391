"""`llmasr train` failures end in one message naming what is at fault, with the traceback in train.log (and on
stderr with LLMASR_DEBUG=1): a full disk while saving, an output folder that cannot be made, a checkpoint that does
not fit the model, a misspelt DeepSpeed key, NVMe offload without DeepSpeed's async_io op."""

import json
import shutil

import pytest
import torch
import yaml

from llmasr import errors
from llmasr.cli import main
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train import checkpoint_space

SHORT_WRITE = "[enforce fail at inline_container.cc:664] . unexpected pos 8576 vs 8468"  # torch, on a full disk


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.setenv(errors.DEBUG_ENV, "")  # and `--debug` sets it for the process: undone after each test


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "train", n=12)


@pytest.fixture
def recipe_file(tiny_llm_dir, corpus, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")))
    return path


def full_disk_writer(monkeypatch):
    """torch.save as it fails when the disk fills up mid-file (what DeepSpeed's checkpoint engine calls)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoints" in str(f):
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04" + b"\0" * 100)
            raise RuntimeError(SHORT_WRITE)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    # The disk fills during the run: the start-up check (checkpoint_space's own binding of free_bytes, which a first
    # import under this patch would bind for good) still finds room, the report of the failed save finds none.
    monkeypatch.setattr(checkpoint_space, "free_bytes", errors.free_bytes)
    monkeypatch.setattr(errors, "free_bytes", lambda path: 0)


def test_full_disk_while_saving_names_the_checkpoint(recipe_file, tmp_path, monkeypatch, capsys):
    full_disk_writer(monkeypatch)
    assert main(["train", "--config", str(recipe_file), "--deepspeed", "zero0", "train.max_updates=1"]) == 1
    err = capsys.readouterr().err
    tag_dir = tmp_path / "run" / "checkpoints" / "update_00000001"
    lines = [line for line in err.splitlines() if "llmasr train: error" in line]
    assert len(lines) == 1 and "while saving checkpoint update_00000001" in lines[0], err
    assert f"{tag_dir}: No space left on device while writing it (0.0 MiB free there) (the disk is full)" in err
    assert "Traceback" not in err and "unexpected pos" not in err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Traceback" in log and SHORT_WRITE in log  # the full story stays in the run's log


def test_debug_prints_the_traceback(recipe_file, tmp_path, monkeypatch, capsys):
    (tmp_path / "blocker").write_text("a file where the run folder should go")
    args = ["train", "--config", str(recipe_file), "--deepspeed", "zero0", f"train.output_dir={tmp_path}/blocker/run"]
    assert main(args) == 2  # the run folder cannot be made: refused before anything starts
    err = capsys.readouterr().err
    want = f"llmasr train: error: train.output_dir {tmp_path}/blocker/run: cannot create the folder: {tmp_path}/blocker"
    assert f"{want} is a file" in err
    assert "Traceback" not in err
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and ", in check_output_dir" in err  # where it was found


def test_a_checkpoint_that_does_not_fit_names_it(recipe_file, tmp_path, capsys):
    base = ["train", "--config", str(recipe_file), "--deepspeed", "zero0", "train.max_updates=1"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--resume", "model.llm.lora.r=2"]) == 2  # the run's recipe.yaml refuses the change first
    assert "model.llm.lora.r: 4 -> 2" in capsys.readouterr().err
    # a checkpoint without its run's recipe.yaml (copied elsewhere): DeepSpeed's own load finds the mismatch
    loose = tmp_path / "copied" / "checkpoints"
    shutil.copytree(tmp_path / "run" / "checkpoints", loose)
    where = loose / "update_00000001"
    fork = ["train.output_dir=" + str(tmp_path / "fork"), "model.llm.lora.r=2"]
    assert main([*base, "--resume", str(where), *fork]) == 1
    err = capsys.readouterr().err
    assert f"llmasr train: error: while loading checkpoint {where}:" in err
    assert "RuntimeError: Error(s) in loading state_dict" in err and "size mismatch" in err and "raised at " in err
    assert f"the traceback: in {tmp_path / 'fork' / 'train.log'}" in err and "Traceback" not in err


def test_a_misspelt_deepspeed_key_is_refused_with_the_nearest(recipe_file, tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimisation": {"stage": 2}}))
    assert main(["train", "--config", str(recipe_file), "--deepspeed", str(ds)]) == 2
    err = capsys.readouterr().err
    assert f"llmasr train: error: {ds}: unknown key(s)" in err and "did you mean 'zero_optimization'?" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything ran


def test_nvme_offload_without_deepspeed_s_async_io_op_is_refused_at_start(recipe_file, tmp_path, capsys):
    """Before: DeepSpeed failed once the model was built ("Unable to JIT load the async_io op")."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder("AsyncIOBuilder")
    if builder is not None and (installed_ops.get(builder.name) or builder.is_compatible(verbose=False)):
        pytest.skip("this machine builds DeepSpeed's async_io op (libaio is installed)")
    ds = tmp_path / "ds.json"
    (tmp_path / "swap").mkdir()  # a folder to swap to: the op is what this test is about
    swap = {"device": "nvme", "nvme_path": str(tmp_path / "swap")}
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": swap}}))
    assert main(["train", "--config", str(recipe_file), "--deepspeed", str(ds), "train.precision=fp32"]) == 2
    err = capsys.readouterr().err
    assert f"llmasr train: error: {ds}: zero_optimization.offload_optimizer.device is 'nvme', but DeepSpeed's " in err
    assert "cannot be built on this machine" in err and "Unable to JIT load" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything ran


def test_an_nvme_path_and_zero_plus_quantization_that_cannot_work_here_are_refused_at_start(
    recipe_file, tmp_path, capsys
):
    """Before: a swap folder not there failed once the model was built, naming the path but no key; quantized ZeRO-3
    weights failed inside the LLM's load on a machine without DeepSpeed's quantizer op, blamed on the model."""
    from deepspeed.accelerator import get_accelerator

    ds = tmp_path / "ds.json"
    swap = {"device": "nvme", "nvme_path": str(tmp_path / "swap")}
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_param": swap}}))
    assert main(["train", "--config", str(recipe_file), "--deepspeed", str(ds), "train.precision=fp32"]) == 2
    err = capsys.readouterr().err
    assert f"llmasr train: error: {ds}: zero_optimization.offload_param.nvme_path '{tmp_path / 'swap'}' is not " in err
    if type(get_accelerator().create_op_builder("QuantizerBuilder")).__name__ == "NotImplementedBuilder":
        ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "zero_quantized_weights": True}}))
        assert main(["train", "--config", str(recipe_file), "--deepspeed", str(ds), "train.precision=fp32"]) == 2
        err = capsys.readouterr().err
        assert f"llmasr train: error: {ds}: zero_optimization.zero_quantized_weights is true, but DeepSpeed's " in err
        assert "not loadable as a causal LM" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything ran


def test_a_resume_that_finds_nothing_is_named_by_where_it_was_asked(recipe_file, capsys):
    """train.resume in the recipe or its override is named as such, not as the --resume flag nobody gave."""
    args = ["train", "--config", str(recipe_file), "--deepspeed", "zero0"]
    assert main([*args, "train.resume=update_00000099"]) == 2
    assert "train.resume update_00000099: neither a checkpoint folder nor a tag" in capsys.readouterr().err
    assert main([*args, "--resume", "update_00000099"]) == 2
    assert "--resume update_00000099: neither a checkpoint folder nor a tag" in capsys.readouterr().err


def test_a_resume_tag_that_is_not_there_lists_the_tags_that_are(recipe_file, capsys, tmp_path):
    """`--resume update_4` (the update without its zeros) named the checkpoints folder but not what it holds."""
    from llmasr.run_dir.layout import resolve_resume

    run = tmp_path / "run"
    for tag in ("update_00000002", "update_00000004"):
        (run / "checkpoints" / tag).mkdir(parents=True)
        (run / "checkpoints" / tag / "llmasr_meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"--resume update_4: neither a checkpoint folder nor a tag in .*; "
                                                r"its checkpoints are update_00000002, update_00000004$"):  # fmt: skip
        resolve_resume("update_4", run)


def test_a_library_exit_inside_training_is_no_finished_run(recipe_file, tmp_path, monkeypatch, capsys):
    """DeepSpeed's autotuner calls exit() after its profile steps: inside training, that had ended `llmasr train` with
    status 0 and no message, which a job scheduler takes for a finished run. It is an error naming what happened."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    step, calls = DeepSpeedEngine.step, []

    def exits_at_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            exit()  # what deepspeed's engine does at autotuning.end_profile_step
        return step(self, *args, **kwargs)

    monkeypatch.setattr(DeepSpeedEngine, "step", exits_at_the_second)
    assert main(["train", "--config", str(recipe_file), "--deepspeed", "zero0", "train.max_updates=4"]) == 1
    err = capsys.readouterr().err
    assert "a library ended the process inside training (exit(None)) before the run finished" in err, err
    assert "Traceback" in (tmp_path / "run" / "train.log").read_text()


def test_a_run_an_error_ends_names_its_last_checkpoint(recipe_file, tmp_path, monkeypatch, capsys):
    """An error mid-run (a batch that fails, the data gone bad) had left train.log ending in the traceback alone: which
    update the run got to and which checkpoint --resume takes up were for the reader to dig out of the folder."""
    from llmasr.train import trainer

    real, calls = trainer.run_window, []

    def fails_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a batch that fails")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "run_window", fails_at_the_third)
    args = [
        "train",
        "--config",
        str(recipe_file),
        "--deepspeed",
        "zero0",
        "train.epochs=3",
        "train.save_every_updates=1",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    said = (f"training stopped by an error after update 2; the last checkpoint is {tmp_path}/run/checkpoints/"
            "update_00000002 (update 2): once the cause is fixed, --resume continues from it")  # fmt: skip
    assert said in err and err.index(said) < err.index("llmasr train: error: ")
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"ERROR llmasr.train: {said}\n" in log and log.index(said) < log.index("Traceback")


def test_a_run_that_fails_before_its_first_save_says_it_starts_afresh(recipe_file, tmp_path, monkeypatch, capsys):
    from llmasr.train import trainer

    monkeypatch.setattr(
        trainer, "run_window", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a batch that fails"))
    )
    assert main(["train", "--config", str(recipe_file), "--deepspeed", "zero0"]) == 1
    assert (
        "training stopped by an error after update 0; no checkpoint was saved: a rerun starts afresh"
        in (tmp_path / "run" / "train.log").read_text()
    )
