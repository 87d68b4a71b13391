"""`llmasr check` on a run folder as `llmasr train` would meet it: earlier checkpoints, --overwrite, --resume (checked
and counted as training does), and a lock held by a live, remote or stale run."""

import json
import re

import numpy as np
import pytest
from check_runner import run_check

from llmasr.testing.tiny_corpus import write_tiny_corpus


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ZeRO-2 run of one update, saved, and its recipe as a file (what `llmasr train` was given)."""
    from llmasr.config_io import dump_yaml, to_dict
    from llmasr.testing.run_dirs import model_section, train_run
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    root = tmp_path_factory.mktemp("check_resume")
    llm, enc = write_tiny_llm_dir(root / "llm"), write_funasr_dir(root / "enc", encoder_conf=tiny_sanm_conf())
    corpus = write_tiny_corpus(root / "corpus", n=8)
    run = train_run(root / "run", model_section(llm, enc), corpus, preset="zero2", save_every_updates=1)
    recipe = root / "recipe.yaml"
    dump_yaml(to_dict(run.recipe), recipe)
    return run.run_dir, recipe


def test_the_run_folder_is_checked_as_train_would_treat_it(trained, tmp_path, capsys):
    """A fresh start in a folder with checkpoints is refused as `llmasr train` refuses it; --overwrite says what it
    would delete (and deletes nothing); --resume names the checkpoint, checked as training checks it before loading."""
    run_dir, recipe = trained
    tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    base = ["--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path)]
    code, _, err = run_check(capsys, *base)
    assert code == 2 and f"{run_dir} holds an earlier run's checkpoints" in err and "--resume" in err
    code, out, err = run_check(capsys, *base, "--overwrite")
    assert code == 0, err
    assert "--overwrite: would delete the earlier run's 1 checkpoint(s), train.log and TensorBoard events" in out
    assert (run_dir / "checkpoints" / tag).is_dir()
    code, out, err = run_check(capsys, *base, "--resume")
    assert code == 0, err
    assert f"resumes {run_dir / 'checkpoints' / tag} (update 1, epoch 0) into {run_dir}" in out
    # the run's max_updates is the update saved: train logs that it has nothing to train, and check says so
    assert "  warning: nothing to train: the run is at update 1 of 1 (raise train.epochs or train.max_updates" in out
    assert re.search(r"checkpoints\n  about [\d.]+ MiB a checkpoint, up to 2 on disk at once", out)
    code, out, err = run_check(capsys, *base, "--resume", "--world-size", "2")
    assert code == 0 and "saved on 1 rank, resized to 2" in out, err
    # what training would refuse before loading a byte
    code, _, err = run_check(capsys, *base, "--resume", "train.seed=7")
    assert code == 2 and "cannot change on resume" in err and "train.seed:" in err and "-> 7" in err
    code, out, err = run_check(capsys, *[a if a != "zero2" else "zero3" for a in base], "--resume")
    assert code == 0 and "(update 1, epoch 0; saved at ZeRO stage 2, converted to 3)" in out, err
    code, out, err = run_check(capsys, *[a if a != "zero2" else "zero0" for a in base], "--resume")
    assert code == 0 and "(update 1, epoch 0; saved at ZeRO stage 2, converted to 0)" in out, err  # fp32
    import llmasr.train.checkpoint_space as space

    with pytest.MonkeyPatch.context() as mp:  # a disk that cannot take one checkpoint of the run
        mp.setattr(space, "free_bytes", lambda path: 1000)
        code, _, err = run_check(capsys, *base, "--resume")
    assert code == 2 and "free, and a checkpoint of this run takes about" in err
    code, _, err = run_check(capsys, *base, "--resume", "update_00000099")
    assert code == 2 and "--resume update_00000099: neither a checkpoint folder nor a tag" in err
    code, _, err = run_check(capsys, *base, "train.resume=update_00000099")  # named as the recipe key it came from
    assert code == 2 and "train.resume update_00000099: neither a checkpoint folder nor a tag" in err


@pytest.mark.parametrize("world", [1, 2])
def test_a_resume_is_counted_as_training_counts_it(trained, tmp_path, capsys, world):
    """Resumed with another grad_accum (or at another world size) the run holds other updates than a fresh one:
    check sizes its update count and lr curve by them, as training's schedules are (it had printed the fresh
    run's). The 1-rank case is checked against the resumed run itself."""
    import shutil

    from llmasr.recipe import load_recipe
    from llmasr.train.trainer import train

    run_dir, recipe = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    overrides = [f"train.output_dir={copy}", "train.max_updates=null", "train.grad_accum=3"]  # fresh: 1 update
    base = ["--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path / "o"), "--world-size", str(world)]
    code, out, err = run_check(capsys, *base, "--resume", *overrides)
    assert code == 0, err
    held = int(re.search(r"resumed, the run holds (\d+): schedules sized by \1", out).group(1))
    assert "nothing to train" not in out
    # at another world size train warns of the global batch it changes, and check says so too
    changed = "warning: resume: the global batch changes from 1 to 6 micro batches per update (no grad_accum keeps it"
    assert (changed in out) == (world == 2), out
    assert len(np.genfromtxt(tmp_path / "o" / "lr_schedule.csv", delimiter=",", names=True)) == held
    if world == 1:
        history = train(load_recipe(recipe, overrides), "zero2", resume="latest")["history"]
        assert history[-1]["update"] == held


def test_a_resume_past_the_epochs_end_has_nothing_to_train_as_train_says(trained, tmp_path, capsys):
    """The run trained to its epochs' end, resumed with a max_updates past it and no more epochs: check says there is
    nothing to train, as training logs it (it had counted to max_updates and passed it)."""
    import shutil

    from llmasr.recipe import load_recipe
    from llmasr.train.trainer import train

    run_dir, recipe = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ended = [f"train.output_dir={copy}", "train.max_updates=null"]
    last = train(load_recipe(recipe, ended), "zero2", resume="latest")["history"][-1]["update"]
    base = ["--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path / "o"), "--resume"]
    code, out, err = run_check(capsys, *base, f"train.output_dir={copy}", "train.max_updates=50")
    assert code == 0, err
    assert f"  warning: nothing to train: the run is at update {last} of {last} (raise train.epochs" in out


def test_a_lock_on_the_run_folder_is_checked_as_train_meets_it(recipe_file, tmp_path, capsys):
    """A live run's lock or another host's refuses check as it refuses train (check had said "a fresh run"); a
    stale one is named as what training takes over."""
    import os
    import socket

    from llmasr.train.run_dir import process_start

    run = tmp_path / "locked"
    run.mkdir()
    lock = run / ".lock"
    base = [
        "--config",
        str(recipe_file),
        "--deepspeed",
        "zero2",
        "--out",
        str(tmp_path / "o"),
        f"train.output_dir={run}",
    ]
    host = socket.gethostname()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": host, "start": process_start(os.getpid()), "since": "x"}))
    code, _, err = run_check(capsys, *base)
    assert code == 2 and f"{run} is in use by another run (pid {os.getpid()}" in err
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "x"}))
    code, _, err = run_check(capsys, *base)
    assert code == 2 and "in use by a run on another host" in err
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": host, "start": None, "since": "x"}))
    code, out, err = run_check(capsys, *base)
    assert code == 0, err
    assert f"{lock}: stale lock of pid {2**22 + 12345}" in out and lock.exists()  # check takes nothing over


def test_a_resume_whose_data_makes_other_batches_is_refused_as_train_refuses_it(tiny_llm_dir, tmp_path, capsys):
    """The training manifest's lines reordered since the checkpoint, into as many batches: the saved position would
    count into other batches, and training's load refuses the resume; check had passed it (it read the position
    only at another world size)."""
    import random

    from llmasr.config_io import dump_yaml, to_dict
    from llmasr.recipe import load_recipe
    from llmasr.testing.run_dirs import train_run
    from llmasr.testing.tiny_recipe import tiny_model_section
    from llmasr.train.resolve import build_loaders, text_side

    manifest = write_tiny_corpus(tmp_path / "corpus", n=8)
    run = train_run(tmp_path / "run", tiny_model_section(tiny_llm_dir), manifest, save_every_updates=1)
    recipe = tmp_path / "recipe.yaml"
    dump_yaml(to_dict(run.recipe), recipe)

    def batches() -> int:
        r = load_recipe(recipe)
        return len(build_loaders(r, text_side(r.model), rank=0, world_size=1)[1])

    base = ["--config", str(recipe), "--deepspeed", "zero0", "--out", str(tmp_path / "o"), "--resume"]
    code, _, err = run_check(capsys, *base)
    assert code == 0, err
    count, lines = batches(), manifest.read_text().splitlines()
    for seed in range(100):  # the same lines in an order that makes as many batches
        random.Random(seed).shuffle(lines)
        manifest.write_text("\n".join(lines) + "\n")
        if batches() == count:
            break
    code, _, err = run_check(capsys, *base)
    assert code == 1 and "cannot resume epoch 0 at batch 1: the training data (data.train)" in err, err


def test_an_output_dir_that_cannot_be_a_folder_is_refused_by_check_as_by_train(recipe_file, tmp_path, capsys):
    """A train.output_dir that is a file, or lies under one: check failed on reading the lock (exit 1, "Not a
    directory") and train on making the folder ("File exists"), each with its own message."""
    from llmasr.commands.train import main as train_main

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for run in (a_file, a_file / "run"):
        argv = ["--config", str(recipe_file), "--deepspeed", "zero2", f"train.output_dir={run}"]
        code, _, err = run_check(capsys, *argv, "--out", str(tmp_path / "o"))
        problem = "a file, not a folder" if run == a_file else f"cannot create the folder: {a_file} is a file"
        assert code == 2 and f"llmasr check: error: train.output_dir {run}: {problem}" in err, err
        assert train_main(argv) == 2
        assert f"llmasr train: error: train.output_dir {run}: {problem}" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_refused_by_check_as_by_train(trained, tmp_path, capsys):
    """A checkpoint file cut short (an interrupted copy): training's ranks verify the files the save recorded before
    loading and refuse it; check had passed the resume."""
    import shutil

    from llmasr.commands.train import main as train_main

    run_dir, recipe = trained
    run = shutil.copytree(run_dir, tmp_path / "run")
    tag_dir = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    optim = next(tag_dir.glob("*optim_states.pt"))
    with open(optim, "r+b") as f:
        f.truncate(1000)
    argv = ["--config", str(recipe), "--deepspeed", "zero2", "--resume", f"train.output_dir={run}"]
    code, _, err = run_check(capsys, *argv, "--out", str(tmp_path / "o"))
    want = f"checkpoint {tag_dir} cannot be used:\n  {optim}: 1000 bytes, but the save wrote"
    assert code == 2 and f"llmasr check: error: {want}" in err, err
    assert train_main(argv) == 2
    assert f"llmasr train: error: {want}" in capsys.readouterr().err


def test_check_refuses_in_train_s_order(trained, tmp_path, capsys):
    """A fresh start in a folder holding checkpoints, with training data that is all bad: train refuses the folder
    before it reads any data, and check now says the same (it had planned the data first and named that)."""
    from llmasr.commands.train import main as train_main

    run_dir, recipe = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "a", "source": "/nonexistent/a.wav", "target": "x"}\n')
    argv = ["--config", str(recipe), "--deepspeed", "zero2", f"data.train=[{bad}]"]
    code, _, err = run_check(capsys, *argv, "--out", str(tmp_path / "o"))
    assert code == 2 and f"llmasr check: error: {run_dir} holds an earlier run's checkpoints" in err, err
    assert train_main(argv) == 2
    assert f"llmasr train: error: {run_dir} holds an earlier run's checkpoints" in capsys.readouterr().err


def test_a_disk_too_small_is_named_before_a_resume_s_checkpoint_as_train_names_it(trained, tmp_path, capsys):
    """Train checks the disk before it loads the checkpoint: with both wrong (no room, another ZeRO stage) check
    named the stage where train names the disk."""
    import shutil

    import llmasr.train.checkpoint_space as space
    from llmasr.commands.train import main as train_main

    run_dir, recipe = trained
    run = shutil.copytree(run_dir, tmp_path / "run")
    argv = ["--config", str(recipe), "--deepspeed", "zero3", "--resume", f"train.output_dir={run}"]
    want = f"{run}: 0.00 MiB free, and a checkpoint of this run takes about"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(space, "free_bytes", lambda path: 1000)
        code, _, err = run_check(capsys, *argv, "--out", str(tmp_path / "o"))
        assert code == 2 and f"llmasr check: error: {want}" in err, err
        assert train_main(argv) == 2
    assert f"llmasr train: error: {want}" in capsys.readouterr().err
    import gc

    from transformers.integrations import is_deepspeed_zero3_enabled

    gc.collect()  # the refused run's ZeRO-3 config must not outlive it (a later LLM load would be partitioned)
    assert not is_deepspeed_zero3_enabled()


def test_a_run_folder_this_user_may_not_write_into_is_refused(recipe_file, tmp_path, capsys, monkeypatch):
    """An existing train.output_dir that may not be written into (another user's folder, a read-only mount) passed
    the check when --out put the lr curves elsewhere; `llmasr train` then stopped at its lock file with "Operation not
    permitted". Both refuse it, naming the key."""
    import os
    from pathlib import Path

    from llmasr.train.run_dir import RunDirError, check_output_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "mine").mkdir()
    real = os.access

    def access(path, mode, **kwargs):  # as a read-only mount answers, whoever runs the test (root writes anywhere)
        return False if Path(path) == shared and mode & os.W_OK else real(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    out = tmp_path / "curves"
    code, _, err = run_check(
        capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(out), f"train.output_dir={shared}"
    )
    assert code == 2 and f"train.output_dir {shared}: a folder this user may not write into" in err
    with pytest.raises(RunDirError, match="may not write into"):  # the first step of training's claim on it
        check_output_dir(shared)
    code, _, err = run_check(
        capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(out),
        f"train.output_dir={tmp_path / 'mine'}",
    )  # fmt: skip
    assert code == 0, err  # an existing folder it may write into


def test_a_resume_s_lr_points_and_validations_are_counted_from_its_checkpoint(trained, tmp_path, capsys):
    """Resumed after update 1 with validation every update: check had labelled update 1 the start and counted its
    validations from update 0 (9, where the run validates 8 times), so a train.patience of 8, which those 8 can never
    reach, went unwarned; and the warmup was labelled as if ahead. Checked against the resumed run itself."""
    import shutil

    from llmasr.recipe import load_recipe
    from llmasr.train.schedulers import branch_of_group
    from llmasr.train.trainer import train

    run_dir, recipe = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    corpus = load_recipe(recipe).data.train[0].path
    overrides = [f"train.output_dir={copy}", "train.max_updates=null", "train.epochs=3", f"data.valid=[{corpus}]",
                 "train.valid_every_updates=1", "train.patience=8", "optim.scheduler.warmup_steps=1"]  # fmt: skip
    base = ["--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path / "o"), "--resume"]
    code, out, err = run_check(capsys, *base, *overrides)
    assert code == 0, err
    result = train(load_recipe(recipe, overrides), "zero2", resume="latest")
    first, last = result["history"][0], result["history"][-1]
    validated = re.findall(r"llmasr\.train: valid update=(\d+)", (copy / "train.log").read_text(encoding="utf-8"))
    assert first["update"] == 2 and not result["stopped_early"] and len(validated) == last["update"] - 1
    optim = load_recipe(recipe, overrides).optim  # its first update runs at every branch's peak: the warmup is done
    assert all(lr == pytest.approx(optim.branch(branch_of_group(g)).lr) for g, lr in first["lr"].items())
    assert "update 1 (start)" not in out and "warmup end" not in out
    # warmup_steps 1: update 1 ran at the peak (it had been said to be update 2)
    assert "update 2 (resumed; warmup done (encoder, adaptor, ctc, llm): the peak from update 1):" in out
    assert f"update {last['update']} (last)" in out
    assert (
        "; resumed after update 1 with 0 such validation(s) counted (no best yet), the run validates "
        f"{len(validated)} more time(s)\n  warning: train.patience 8 needs 9 more validations and the run holds "
        f"{len(validated)}: it never stops early" in out
    ), out


def test_a_resume_s_lr_schedule_csv_is_the_one_train_writes(trained, tmp_path, capsys):
    """A resume that resizes the schedules (here more epochs, another shape) had its lr_schedule.csv/png drawn from
    the new schedules alone, from update 1: a smooth curve where the run's own file keeps the lrs its first updates
    used and jumps at the resume. Check writes the rows train writes."""
    import shutil

    from llmasr.recipe import load_recipe
    from llmasr.train.trainer import train

    run_dir, recipe = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    overrides = [f"train.output_dir={copy}", "train.max_updates=null", "train.epochs=2",
                 "optim.scheduler={type: warmup_linear, warmup_ratio: 0.5}"]  # fmt: skip
    base = ["--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path / "o"), "--resume"]
    code, out, err = run_check(capsys, *base, *overrides)
    assert code == 0, err
    before = (copy / "lr_schedule.csv").read_text(encoding="utf-8").splitlines()
    train(load_recipe(recipe, overrides), "zero2", resume="latest")
    written = (copy / "lr_schedule.csv").read_text(encoding="utf-8").splitlines()
    assert written[1] == before[1]  # the update the run had trained keeps its row
    assert (tmp_path / "o" / "lr_schedule.csv").read_text(encoding="utf-8").splitlines() == written
