"""`llmasr check`: the numbers it prints are the trainer's, and config problems exit non-zero with the reason."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
import yaml

import llmasr
from llmasr.commands.check import main
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus


@pytest.fixture(scope="module")
def recipe_file(tiny_llm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    train_m, dev_m = write_tiny_corpus(root / "train", n=20), write_tiny_corpus(root / "dev", n=4, seed=1)
    data = tiny_recipe_dict(tiny_llm_dir, train=[train_m], valid=[dev_m], output_dir=root / "run", epochs=3,
                            grad_accum=2, ctc_weight=0.3)  # fmt: skip
    data["optim"]["scheduler"] = {"type": "warmup_cosine", "warmup_steps": 2}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_check(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_matches_the_trainer_numbers(recipe_file, tmp_path, capsys):
    from llmasr.recipe import load_recipe
    from llmasr.train.resolve import build_loaders, text_side
    from llmasr.train.schedulers import lr_curve

    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "2",
                               "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    recipe = load_recipe(recipe_file)
    _, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=2)
    per_epoch = len(sampler)
    updates = math.ceil(per_epoch / 2) * 3
    assert "gradient accumulation: 2" in out and "world size: 2" in out and "train_batch_size: 4" in out
    assert f"batches per rank per epoch: {per_epoch}\n" in out
    assert f"= {updates}; schedules sized by {updates}" in out
    assert "warning: optim:" not in out
    long_warmup = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path / "w"),
                            "optim.scheduler.warmup_steps=25000")  # fmt: skip
    assert long_warmup[0] == 0, long_warmup[2]
    assert "warning: optim: the llm branch warms up over 25000 updates, but the run has" in long_warmup[1]
    model = llmasr.build_model(recipe.model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"total {total:,}; trainable {trainable:,}" in out
    # numbered from 1, as train.log: the first update at the warmup's peak is update 3
    assert "update 1 (start)" in out and "update 3 (warmup end" in out and f"update {updates} (last)" in out
    assert "ZeRO stage 2" in out and "on the device:" in out

    names = ["encoder", "encoder_no_decay", "adaptor", "adaptor_no_decay", "ctc", "ctc_no_decay", "llm"]
    csv = np.genfromtxt(tmp_path / "lr_schedule.csv", delimiter=",", names=True)
    assert list(csv.dtype.names) == ["update", *names]
    want = lr_curve(recipe.optim, names, updates)
    assert len(csv) == updates and list(csv["update"]) == list(range(1, updates + 1))
    for name in names:
        np.testing.assert_allclose(csv[name], want[name], rtol=1e-12)
    line = re.search(r"update 3 \(warmup end[^\n]*\n(?:.*\n)*?\s+llm\s+(\S+)", out)
    assert float(line.group(1)) == pytest.approx(want["llm"][2], rel=1e-4)
    png = (tmp_path / "lr_schedule.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_the_batch_budget_says_what_augmentation_reserves(recipe_file, tmp_path, capsys):
    from llmasr.recipe import load_recipe
    from llmasr.train.resolve import batches_per_epoch, build_loaders, text_side

    pauses = ["data.augment.silence.enable=true", "data.augment.silence.lead=[0.0,0.3]",
              "data.augment.silence.trail=[0.0,0.1]", "data.augment.speed_perturb.enable=true"]  # fmt: skip
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "1", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *base, *pauses)
    assert code == 0, err
    assert (
        "an utterance costs the budget its length after this epoch's speed factor and pauses; at most its duration "
        "x 1.11 + 0.4 s (data.augment" in out
    )
    recipe = load_recipe(recipe_file, pauses)
    _, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    per_epoch = batches_per_epoch(sampler, recipe.train.epochs)
    shown = per_epoch[0] if len(set(per_epoch)) == 1 else per_epoch
    assert f"batches per rank per epoch: {shown}\n" in out  # the trainer's batches, each clip at its drawn length
    assert "fit the budget only at some" not in out  # the recipe's clips fit at every draw
    tight = [*pauses, "data.augment.silence.lead=[0.0,6.0]", "data.augment.silence.prob=1.0"]
    code, out, err = run_check(capsys, *base, *tight)
    assert code == 0, err
    sometimes = re.search(r"\n  (\d+) utterance\(s\) fit the budget only at some of these lengths: an epoch skips", out)
    assert sometimes and int(sometimes.group(1)) > 0, out
    code, plain, _ = run_check(capsys, *base)
    assert "costs the budget" not in plain and int(re.search(r"per epoch: (\d+)", plain).group(1)) < min(per_epoch)


def test_a_max_updates_beyond_the_epochs_shows_where_the_run_stops(recipe_file, tmp_path, capsys):
    """The schedules are sized by train.max_updates, but the trainer stops when the epochs end: the report had
    labelled the schedule's last update the run's last, an update the run never reaches."""
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path),
                               "train.max_updates=400")  # fmt: skip
    assert code == 0, err
    held = int(re.search(r"x 3 epochs = (\d+); schedules sized by 400", out).group(1))
    assert held < 400 and f"update {held} (last)" in out and "update 400" not in out
    assert f"warning: train.max_updates 400 sizes the schedules, but the epochs end after update {held}" in out


def test_memory_estimate_follows_the_zero_stage(recipe_file, tmp_path, capsys):
    def device_line(preset):
        code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", preset, "--world-size", "4",
                                   "--out", str(tmp_path))  # fmt: skip
        assert code == 0, err
        return re.search(r"on the device: ([\d.]+) (\w+)", out).groups()

    sizes = {p: device_line(p) for p in ("zero0", "zero2", "zero3")}
    assert all(unit == "MiB" for _, unit in sizes.values())
    assert float(sizes["zero0"][0]) > float(sizes["zero2"][0]) > float(sizes["zero3"][0])


def test_bf16_optimizer_states_are_counted_at_two_bytes(recipe_file, tmp_path, capsys):
    from llmasr.train.checkpoint_space import size_text
    from llmasr.train.ds_config import load_ds_config

    ds = load_ds_config("zero2_offload")
    ds["bf16"].update(bf16_master_weights_and_grads=True, bf16_optimizer_states=True)
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(tmp_path / "ds.json"),
                               "--out", str(tmp_path), "train.precision=bf16")  # fmt: skip
    assert code == 0, err
    trainable = int(re.search(r"trainable ([\d,]+);", out).group(1).replace(",", ""))
    # one rank: bf16 master weights, their gradients and two bf16 moments offloaded; those and the bf16 weights saved
    assert f"offloaded to CPU: {size_text(8 * trainable)}" in out
    assert f"about {size_text(8 * trainable)} a checkpoint" in out


def test_errors_exit_non_zero_with_the_reason(recipe_file, tmp_path, capsys):
    base = ["--config", str(recipe_file), "--out", str(tmp_path)]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"gradient_accumulation_steps": 8, "zero_optimization": {"stage": 2}}))
    code, _, err = run_check(capsys, *base, "--deepspeed", str(bad_json))
    assert code == 2 and "gradient_accumulation_steps" in err and "train.grad_accum" in err
    code, _, err = run_check(capsys, *base, "--deepspeed", "zero2", "data.train=[/nonexistent/train.jsonl]")
    assert code == 2 and "/nonexistent/train.jsonl" in err
    code, _, err = run_check(capsys, *base, "--deepspeed", "zero2", "data.valid=[]", "train.valid_every_updates=5")
    assert code == 2 and "data.valid" in err
    code, _, err = run_check(capsys, *base, "--deepspeed", "zero9")
    assert code == 2 and "zero9" in err
    code, _, err = run_check(capsys, *base, "--deepspeed", "zero2", "optim.branches.decoder.lr=1e-4")
    assert code == 2 and "decoder" in err


def test_a_run_folder_keeps_its_own_lr_schedule(recipe_file, capsys):
    """Without --out the curves go to the run directory, but once it holds a run (its recipe.yaml) they go to its
    check/ folder: the run's lr_schedule.* record what it trained with and a check beside it must not overwrite them."""
    run = recipe_file.parent / "run"
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2")
    assert code == 0, err
    assert (run / "lr_schedule.csv").is_file() and f"wrote {run / 'lr_schedule.csv'}" in out
    (run / "recipe.yaml").write_text("# a run started here\n")
    (run / "lr_schedule.csv").write_text("the run's own\n")
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "train.epochs=9")
    assert code == 0, err
    assert (run / "lr_schedule.csv").read_text() == "the run's own\n"
    assert (run / "check" / "lr_schedule.csv").is_file() and f"wrote {run / 'check' / 'lr_schedule.csv'}" in out


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
    assert re.search(r"checkpoints\n  about [\d.]+ MiB a checkpoint, up to 2 on disk at once", out)
    code, out, err = run_check(capsys, *base, "--resume", "--world-size", "2")
    assert code == 0 and "saved on 1 rank, resized to 2" in out, err
    # what training would refuse before loading a byte
    code, _, err = run_check(capsys, *base, "--resume", "train.seed=7")
    assert code == 2 and "cannot change on resume" in err and "train.seed:" in err and "-> 7" in err
    code, _, err = run_check(capsys, *[a if a != "zero2" else "zero3" for a in base], "--resume")
    assert code == 2 and "saved at ZeRO stage 2, this run uses 3" in err
    import llmasr.train.checkpoint_space as space

    with pytest.MonkeyPatch.context() as mp:  # a disk that cannot take one checkpoint of the run
        mp.setattr(space, "free_bytes", lambda path: 1000)
        code, _, err = run_check(capsys, *base, "--resume")
    assert code == 2 and "free, and a checkpoint of this run takes about" in err
    code, _, err = run_check(capsys, *base, "--resume", "update_00000099")
    assert code == 2 and "--resume update_00000099: neither a checkpoint folder nor a tag" in err


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
    assert len(np.genfromtxt(tmp_path / "o" / "lr_schedule.csv", delimiter=",", names=True)) == held
    if world == 1:
        history = train(load_recipe(recipe, overrides), "zero2", resume="latest")["history"]
        assert history[-1]["update"] == held


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


@pytest.fixture(scope="module")
def pretrained_recipe(tiny_llm_dir, tmp_path_factory):
    """A recipe whose encoder is a FunASR directory (model.pt) and whose adaptor starts from a file."""
    import torch
    from safetensors.torch import save_file

    from llmasr.models.builder import build_model
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir

    root = tmp_path_factory.mktemp("check_pretrained")
    enc = write_funasr_dir(root / "paraformer", encoder_conf=tiny_sanm_conf())
    train_m = write_tiny_corpus(root / "train", n=8)
    data = tiny_recipe_dict(tiny_llm_dir, train=[train_m], output_dir=root / "run", encoder_dir=enc, dropout=None)
    model = build_model(data["model"], weights="random")
    save_file({k: v.contiguous() for k, v in model.adaptor.state_dict().items()}, str(root / "adaptor.safetensors"))
    wide = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 8) for k, v in model.adaptor.state_dict().items()}
    save_file(wide, str(root / "adaptor_wide.safetensors"))
    data["model"]["adaptor"]["init_from"] = str(root / "adaptor.safetensors")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_pretrained_files_that_do_not_fit_the_model_are_refused_before_training(pretrained_recipe, tmp_path, capsys):
    """`llmasr check` runs the encoder, adaptor and CTC head loaders on the files' names and shapes, as training's
    load does, so what the first minutes of a GPU job would refuse is refused here."""
    from llmasr.models.builder import build_model
    from llmasr.recipe import load_recipe

    base = ["--config", str(pretrained_recipe), "--out", str(tmp_path), "--deepspeed", "zero2"]
    code, out, err = run_check(capsys, *base, "model.ctc.weight=0.3")
    assert code == 0, err
    root = pretrained_recipe.parent
    assert f"  encoder: {root / 'paraformer' / 'model.pt'} (encoder.*)\n" in out
    assert f"  adaptor: {root / 'adaptor.safetensors'}\n" in out
    assert "  ctc_head: fresh over the LLM's vocabulary\n" in out
    meta = build_model(load_recipe(pretrained_recipe).model, weights="shapes")
    assert {p.device.type for p in meta.parameters()} == {"meta"}  # nothing allocated, no data read

    deeper = tmp_path / "deeper"  # config.yaml says 3 blocks, model.pt holds 2
    shutil.copytree(root / "paraformer", deeper)
    config = yaml.safe_load((deeper / "config.yaml").read_text())
    config["encoder_conf"]["num_blocks"] = 3
    (deeper / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_check(capsys, *base, f"model.encoder.path={deeper}")
    assert code == 2 and "model.pt (encoder.*) does not match the SANMEncoder built from the config" in err
    assert "missing from checkpoint: encoders.1." in err, err
    code, _, err = run_check(capsys, *base, "model.encoder.conf.num_blocks=3")  # over the directory's 2
    assert code == 2 and "model.encoder.conf.num_blocks: 3, but " in err and "config.yaml states 2" in err, err
    wide = pretrained_recipe.parent / "adaptor_wide.safetensors"
    code, _, err = run_check(capsys, *base, f"model.adaptor.init_from={wide}")
    assert code == 2 and "adaptor_wide.safetensors" in err, err
    code, _, err = run_check(capsys, *base, "model.ctc.weight=0.3", "model.ctc.from_encoder=true")
    assert code == 2 and "model.ctc.from_encoder:" in err and "holds no CTC head" in err, err


def test_a_decode_vad_is_loaded_by_the_check(recipe_file, tmp_path, capsys):
    from llmasr.testing.tiny_vad import write_fsmn_vad_dir

    vad = write_fsmn_vad_dir(tmp_path / "vad")
    args = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *args, f"decode.vad={vad}", "decode.vad_max_end_silence_ms=800")
    assert code == 0, err
    assert f"long audio cut at the speech segments of the FSMN VAD {vad} (ending silence: 800 ms)" in out
    (vad / "model.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # a weight file never pulled
    code, out, err = run_check(capsys, *args, f"decode.vad={vad}")
    assert code == 2 and "model.pt" in err and "Git LFS" in err
    code, out, err = run_check(capsys, *args, f"decode.vad={tmp_path}")
    assert code == 2 and "decode.vad: " in err and "is not a FunASR VAD directory" in err


def test_world_size_from_the_environment_is_read_only_when_not_given(recipe_file, monkeypatch, capsys):
    """WORLD_SIZE set to something that is not a number had broken even `llmasr check --help` (read while building
    the parser); it is named when used, and --world-size goes first."""
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "default: $WORLD_SIZE, else 1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--config", str(recipe_file), "--deepspeed", "zero2"])
    assert (
        "WORLD_SIZE='abc' in the environment is not a number of ranks; pass --world-size N" in capsys.readouterr().err
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, _ = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2")
    assert code == 0 and "world size: 2" in out


def test_an_unfrozen_half_precision_llm_without_master_weights_is_refused(recipe_file, tmp_path, capsys):
    """A bf16 LLM trained under train.precision fp32 has no fp32 master copy: small updates round away (it had been
    accepted); a frozen bf16 LLM with fp32 LoRA, or bf16 precision with its master weights, are fine."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero0", "--out", str(tmp_path), "model.llm.dtype=bfloat16"]
    code, _, err = run_check(capsys, *base, "model.llm.freeze=false", "train.precision=fp32")
    assert code == 2 and "model.llm.dtype: bfloat16 with model.llm.freeze false and train.precision fp32" in err
    assert "set train.precision bf16" in err
    assert run_check(capsys, *base, "train.precision=fp32")[0] == 0
    assert run_check(capsys, *base, "model.llm.freeze=false", "train.precision=bf16")[0] == 0


def test_memory_counts_a_frozen_bf16_llm_at_two_bytes_a_weight_under_fp32(recipe_file, tmp_path, capsys):
    """train.precision fp32 keeps each weight in the dtype it was built in: a frozen bf16 LLM's weights take 2 bytes
    each (they had been counted at 4, the LLM's memory doubled)."""
    from llmasr.recipe import load_recipe
    from llmasr.train.checkpoint_space import size_text

    overrides = ["model.llm.dtype=bfloat16", "train.precision=fp32"]
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero0", "--out", str(tmp_path),
                               *overrides)  # fmt: skip
    assert code == 0, err
    model = llmasr.build_model(load_recipe(recipe_file, overrides).model)
    assert {p.dtype for p in model.llm.parameters() if not p.requires_grad} == {torch.bfloat16}
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights < 4 * sum(p.numel() for p in model.parameters())
    assert f"  params {size_text(weights)}, grads" in out


def test_half_precision_llm_biases_lora_trains_without_master_weights_are_refused(recipe_file, tmp_path, capsys):
    """lora.bias all / lora_only trains the frozen LLM's own biases, bf16 ones under model.llm.dtype bfloat16: under
    train.precision fp32 they had been stepped with no fp32 master copy, as an unfrozen LLM's weights are."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero0", "--out", str(tmp_path), "model.llm.dtype=bfloat16"]
    for bias in ("all", "lora_only"):
        code, _, err = run_check(capsys, *base, f"model.llm.lora.bias={bias}", "train.precision=fp32")
        assert code == 2 and f"model.llm.dtype: bfloat16 with model.llm.lora.bias {bias} and train.precision" in err
    assert run_check(capsys, *base, "model.llm.lora.bias=all", "train.precision=bf16")[0] == 0


def test_utterances_past_the_llm_context_are_refused_at_start(tmp_path, capsys):
    """Audio tokens count against the LLM's context with the prompt and transcript: a line whose sum passes
    config.json's max_position_embeddings is named, with its numbers, before training (RoPE reads past it silently)."""
    import soundfile as sf

    from llmasr.models.builder import build_model
    from llmasr.models.context import audio_tokens
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    llm = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=64)
    manifest = write_tiny_corpus(tmp_path / "train", n=4)
    sf.write(str(tmp_path / "train" / "long.wav"), np.zeros(6 * 16000, dtype=np.float32), 16000)
    with manifest.open("a") as f:
        f.write(json.dumps({"key": "long", "source": "long.wav", "target": "one two", "duration": 6.0}) + "\n")
    data = tiny_recipe_dict(llm, train=[manifest], output_dir=tmp_path / "run", max_seconds=20.0)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path / "c"))
    model = build_model(data["model"], weights="meta")
    audio, text = audio_tokens(model, 6.0), len(model.prompt.encode("one two").ids)
    assert code != 0
    assert (
        f"data.train: 1 utterance(s) do not fit the LLM's context of 64 tokens (config.json's max_position_embeddings);"
        f" the worst, {manifest}:5, is heard as 6 s of audio, {audio} audio tokens, beside {text} prompt and "
        f"transcript tokens ({audio + text} in all). Lower data.batching.max_duration" in err
    )
    # kept under max_duration (3 s) it fits
    code, _, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path / "c"),
                             "data.batching.max_duration=3")  # fmt: skip
    assert code == 0, err
