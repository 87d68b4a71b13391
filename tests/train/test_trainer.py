"""The training loop in one process (no launcher: a 1-rank gloo group), on the tiny model and a tiny wav corpus."""

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from transformers.integrations import is_deepspeed_zero3_enabled

import llmasr
from llmasr import run_dir as ck
from llmasr.commands.train import main
from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.progress import parse_log_line
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return write_tiny_corpus(root / "train", n=20), write_tiny_corpus(root / "dev", n=6, seed=1)


def recipe(tiny_llm_dir, corpus, run_dir, *, valid=True, **kw):
    train_m, dev_m = corpus
    return load_recipe(
        data=tiny_recipe_dict(tiny_llm_dir, train=[train_m], valid=[dev_m] if valid else None, output_dir=run_dir, **kw)
    )


def batches_per_epoch(r) -> int:
    from llmasr.train.resolve import build_loaders, text_side

    _, sampler, _ = build_loaders(r, text_side(r.model), rank=0, world_size=1)
    return len(sampler)


def test_run_dir_layout_logs_and_checkpoints(tiny_llm_dir, corpus, tmp_path):
    run = tmp_path / "run"
    r = recipe(tiny_llm_dir, corpus, run, epochs=2, grad_accum=2, save_every_updates=2, keep_last=1, ctc_weight=0.3)
    result = train(r, "zero0")
    history = result["history"]
    n = batches_per_epoch(r)
    for epoch in range(2):  # a partial window at the epoch end still makes an update
        assert sum(h["epoch"] == epoch for h in history) == math.ceil(n / 2)
    assert all(math.isfinite(h["loss"]) for h in history)

    # resolved recipe and DeepSpeed JSON
    assert load_recipe(run / "recipe.yaml") == r
    ds = json.loads((run / "ds_config.json").read_text())
    assert "auto" not in json.dumps(ds) and ds["train_batch_size"] == 2 and ds["gradient_accumulation_steps"] == 2

    # the text log holds one parsable line per update, with the losses of the history
    rows = [parse_log_line(line) for line in (run / "train.log").read_text().splitlines() if " train update=" in line]
    assert [row["update"] for row in rows] == [h["update"] for h in history]
    assert np.allclose([row["loss"] for row in rows], [h["loss"] for h in history], atol=1e-4)
    assert {"lr/encoder", "lr/llm", "lr/ctc", "grad_norm", "utt/s", "audio_s/s", "eta_s"} <= set(rows[0])
    assert any(" valid update=" in line for line in (run / "train.log").read_text().splitlines())
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    # lr_schedule.csv is the schedule the run used: its row `update=u` holds the lr train.log's update u ran with
    csv = np.genfromtxt(run / "lr_schedule.csv", delimiter=",", names=True)
    assert len(csv) == len(history) and list(csv["update"]) == [h["update"] for h in history]
    for h, row in zip(history, csv):
        assert h["lr"]["llm"] == pytest.approx(row["llm"], rel=1e-9)
    assert (run / "lr_schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the plot beside it

    # checkpoints: latest is the last update; meta as documented; frozen base weights not stored
    ckpts = run / "checkpoints"
    last = ck.tag_for(history[-1]["update"])
    assert ck.latest(ckpts) == last
    meta = ck.read_meta(ckpts / last)
    model = llmasr.build_model(r.model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    from llmasr.models.fingerprint import base_fingerprint

    assert meta.update == history[-1]["update"] and meta.epoch == 2
    assert meta.world_size == 1 and meta.zero_stage == 0
    assert meta.trainable == trainable
    assert meta.base_fingerprint == base_fingerprint(r.model)
    assert {"loss", "acc", "wer"} <= set(meta.metrics)
    stored = torch.load(ckpts / last / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    assert set(stored) == set(trainable)
    # keep_last 1 plus the best checkpoint; best.json's tags are never rotated away
    best = ck.read_best(ckpts)
    assert len(best) == 1 and (ckpts / best[0]["tag"]).is_dir()
    tags = sorted(p.name for p in ckpts.iterdir() if ck.update_of(p.name) is not None)
    assert set(tags) == {last, best[0]["tag"]}


@pytest.mark.parametrize(
    ("preset", "stop_after", "resumes_from"),
    [("zero0", 3, 2), ("zero0", 4, 3), ("zero2", 3, 2)],
    ids=["mid-epoch", "epoch-end", "zero2-mid-epoch"],
)
def test_resume_reproduces_the_uninterrupted_losses(tiny_llm_dir, corpus, tmp_path, preset, stop_after, resumes_from):
    """An interrupted run (dropout on, so RNG state matters) resumed from its latest checkpoint gives the same
    per-update losses as a run that was never interrupted; epoch 0 has 5 batches = 3 updates of 2."""

    def make(name):
        return recipe(tiny_llm_dir, corpus, tmp_path / name, valid=False, epochs=2, grad_accum=2,
                      save_every_updates=2, dropout=0.1, deterministic=True)  # fmt: skip

    assert batches_per_epoch(make("a")) == 5
    whole = train(make("a"), preset)["history"]
    cut = train(make("b"), preset, stop_after_updates=stop_after)
    assert cut["interrupted"] and len(cut["history"]) == stop_after
    assert ck.latest(tmp_path / "b" / "checkpoints") == ck.tag_for(resumes_from)
    rest = train(make("b"), preset, resume="latest")["history"]
    assert [h["update"] for h in rest] == [h["update"] for h in whole[resumes_from:]]
    assert [h["epoch"] for h in rest] == [h["epoch"] for h in whole[resumes_from:]]
    np.testing.assert_allclose([h["loss"] for h in rest], [h["loss"] for h in whole[resumes_from:]], rtol=0, atol=1e-6)


def test_a_save_into_a_folder_left_from_before_starts_it_afresh(tiny_llm_dir, corpus, tmp_path, caplog):
    """A run preempted while saving update 4 at more ranks left that folder with shards of its own; the resumed run
    saves update 4 again into a clean folder, and its file list holds only what this save wrote."""
    run = tmp_path / "run"

    def make():
        return recipe(tiny_llm_dir, corpus, run, valid=False, epochs=2, grad_accum=2, save_every_updates=2)

    train(make(), "zero0", stop_after_updates=3)
    stale = run / "checkpoints" / ck.tag_for(4)
    stale.mkdir()
    (stale / "zero_pp_rank_3_mp_rank_00_optim_states.pt").write_bytes(b"a shard of the cut-short save")
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        train(make(), "zero0", resume="latest")
    assert not (stale / "zero_pp_rank_3_mp_rank_00_optim_states.pt").exists()
    assert all("rank_3" not in name for name in ck.read_meta(stale).files)
    assert any("was there from before" in r.getMessage() for r in caplog.records)


def test_resume_refuses_changed_trainables(tiny_llm_dir, corpus, tmp_path):
    # (another world size is no longer refused: tests/recipes/test_resume_world.py)
    run = tmp_path / "run"
    train(recipe(tiny_llm_dir, corpus, run, valid=False, max_updates=2), "zero0")
    frozen_encoder = recipe(tiny_llm_dir, corpus, run, valid=False)
    frozen_encoder.model.encoder.freeze = True
    with pytest.raises(ConfigError, match="model.encoder.freeze: false -> true"):  # by the run's recipe.yaml
        train(frozen_encoder, "zero0", resume="latest")
    tag_dir = run / "checkpoints" / ck.latest(run / "checkpoints")
    loose = tmp_path / "copied" / "checkpoints"  # a checkpoint without its run's recipe.yaml: the meta decides
    shutil.copytree(run / "checkpoints", loose)
    frozen_encoder.train.output_dir = str(tmp_path / "fork")
    with pytest.raises(ConfigError, match="trainable parameters differ"):
        train(frozen_encoder, "zero0", resume=str(loose / tag_dir.name))


def test_max_updates_stops_and_keeps_the_loader_position(tiny_llm_dir, corpus, tmp_path):
    run = tmp_path / "run"
    result = train(recipe(tiny_llm_dir, corpus, run, valid=False, epochs=5, grad_accum=1, max_updates=3), "zero0")
    assert [h["update"] for h in result["history"]] == [1, 2, 3]
    meta = ck.read_meta(run / "checkpoints" / ck.tag_for(3))
    assert meta.epoch == 0  # stopped inside epoch 0: resuming with a larger max_updates carries on there


def test_train_compares_the_recipe_with_the_folder_it_starts_from(nano_start, tmp_path):
    """train() itself (the library entry point `llmasr train` calls) compares the recipe with the llmasr_model.yaml
    of the folder it starts from: a frontend other than the folder's is refused before the run folder is made, and
    a difference the recipe allows (model.differs_from_start) is a warning in train.log."""
    out, nano_recipe = nano_start
    other = "model.encoder.frontend.lfr_n=7"  # the folder's is 6
    with pytest.raises(ConfigError, match=r"^model.encoder.frontend.lfr_n: the recipe differs from the model it st"):
        train(nano_recipe(tmp_path / "refused", other), "zero0")
    assert not (tmp_path / "refused").exists()
    run = tmp_path / "allowed"
    train(nano_recipe(run, other, "model.differs_from_start=[model.encoder.frontend.lfr_n]"), "zero0")
    note = f"model.encoder.frontend.lfr_n: 7 here, 6 in {out / 'llmasr_model.yaml'}, the model the recipe starts from"
    assert f"WARNING llmasr.train: {note}" in (run / "train.log").read_text(encoding="utf-8")


def test_loss_falls(tiny_llm_dir, corpus, tmp_path):
    r = recipe(tiny_llm_dir, corpus, tmp_path / "run", valid=False, epochs=4, grad_accum=1)
    r.optim.scheduler.type = "constant"
    for branch in r.optim.branches.values():
        branch.lr = 3e-3
    losses = [h["loss"] for h in train(r, "zero0")["history"]]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.03, losses


def test_precision_on_cpu(tiny_llm_dir, corpus, tmp_path):
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().is_fp16_supported():
        with pytest.raises(ConfigError, match="train.precision: fp16 is not supported"):
            train(recipe(tiny_llm_dir, corpus, tmp_path / "fp16", precision="fp16"), "zero0")
    else:  # DeepSpeed's CPU accelerator runs fp16 on CPUs with AVX512-FP16: loss-scaled, as on a GPU
        r = recipe(tiny_llm_dir, corpus, tmp_path / "fp16", valid=False, precision="fp16", max_updates=1)
        (step,) = train(r, "zero0")["history"]
        assert math.isfinite(step["loss"])
        assert " loss_scale=" in (tmp_path / "fp16" / "train.log").read_text()
    runs = {}
    for preset in ("zero2", "zero3"):  # ZeRO-3: the LLM is created partitioned, the other branches are cast to bf16
        r = recipe(tiny_llm_dir, corpus, tmp_path / f"bf16_{preset}", valid=True, precision="bf16", max_updates=2)
        runs[preset] = result = train(r, preset)
        assert len(result["history"]) == 2 and all(math.isfinite(h["loss"]) for h in result["history"])
        assert math.isfinite(result["metrics"]["loss"])
    for a, b in zip(runs["zero2"]["history"], runs["zero3"]["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)  # the same bf16 model, sharded differently


def test_a_zero3_run_leaves_no_partitioned_build_behind(tiny_llm_dir, corpus, tmp_path):
    """train() at ZeRO-3, then at ZeRO-2, in one process (a notebook, a sweep): the first run's HfDeepSpeedConfig had
    outlived it until the garbage collector found the run, so the second run's LLM was created partitioned and its
    first forward failed ("'weight' must be 2-D"). A run's end releases it."""
    train(recipe(tiny_llm_dir, corpus, tmp_path / "zero3", valid=False), "zero3", stop_after_updates=1)
    assert not is_deepspeed_zero3_enabled()
    history = train(recipe(tiny_llm_dir, corpus, tmp_path / "zero2", valid=False), "zero2", stop_after_updates=1)
    assert len(history["history"]) == 1 and math.isfinite(history["history"][0]["loss"])


def test_cli(tiny_llm_dir, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus[0]], output_dir=run, epochs=3)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path), "--deepspeed", "zero0", "train.max_updates=2"]) == 0
    assert ck.latest(run / "checkpoints") == ck.tag_for(2)
    assert main(["--config", str(path), "--deepspeed", "zero0", "--resume", "train.max_updates=3"]) == 0
    assert ck.latest(run / "checkpoints") == ck.tag_for(3)
    assert main(["--config", str(path), "--deepspeed", "zero0", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["--config", str(path), "--deepspeed", "zero0", "train.valid_every_updates=2"]) == 2
    assert "data.valid" in capsys.readouterr().err


def test_overrides_may_come_before_and_after_resume_in_command_line_order():
    from llmasr.commands.train import parse_args

    base = ["--config", "r.yaml", "--deepspeed", "zero0"]
    args = parse_args([*base, "train.epochs=2", "--resume", "/some/ckpt", "train.epochs=3"])
    assert (args.resume, args.overrides) == ("/some/ckpt", ["train.epochs=2", "train.epochs=3"])
    args = parse_args([*base, "a.b=1", "--resume", "a.b=2", "c=3"])  # --resume without a value
    assert (args.resume, args.overrides) == ("latest", ["a.b=1", "a.b=2", "c=3"])


def test_the_train_loader_keeps_a_window_of_batches_ready(tiny_llm_dir, tmp_path):
    """train.grad_accum sizes the training loader's prefetch (data.prefetch_factor unset); validation's stays 2."""
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train.resolve import build_loaders, text_side

    corpus = write_tiny_corpus(tmp_path / "corpus", n=4)
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], valid=[corpus], output_dir=tmp_path / "run", grad_accum=8)
    data["data"]["num_workers"] = 2
    recipe = load_recipe(data=data)
    train_loader, _, valid_loader = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    assert (train_loader.prefetch_factor, valid_loader.prefetch_factor) == (5, 2)
    # train.grad_accum unset, the DeepSpeed JSON's gradient_accumulation_steps counts (it had crashed: None / 2)
    from llmasr.train.plan import plan_run

    data["train"]["grad_accum"] = None
    plan = plan_run(load_recipe(data=data), {"gradient_accumulation_steps": 6}, rank=0, world_size=1)
    assert plan.loaders[0].prefetch_factor == 4


@pytest.mark.parametrize(
    ("first", "then", "short"),
    [((2, 3), (1, 9), True), ((1, 5), (2, 8), False)],
    ids=["accumulation-lowered", "accumulation-raised"],
)
def test_a_resume_warns_of_max_updates_past_what_its_epochs_now_hold(tiny_llm_dir, corpus, tmp_path, caplog, first,
                                                                    then, short):  # fmt: skip
    """5 batches an epoch, 2 epochs: stopped by max_updates at epoch 0's end, resumed at another grad_accum with a
    larger max_updates. Lowered from 2 to 1, 3 updates + 5 left hold 8 (a fresh run at 1 would hold 10): max_updates 9
    is never reached, which the resume had not said. Raised from 1 to 2, 5 + 3 reach max_updates 8 (a fresh run at 2
    holds 6): no warning (the fresh count had warned falsely)."""
    run = tmp_path / "run"
    (k0, stop), (k1, max_updates) = first, then
    train(recipe(tiny_llm_dir, corpus, run, valid=False, epochs=2, grad_accum=k0, max_updates=stop), "zero0")
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        rest = train(recipe(tiny_llm_dir, corpus, run, valid=False, epochs=2, grad_accum=k1, max_updates=max_updates),
                     "zero0", resume="latest")["history"]  # fmt: skip
    last = rest[-1]["update"]
    assert last == (8 if short else max_updates)
    warned = [r.getMessage() for r in caplog.records if "max_updates" in r.getMessage() and "hold" in r.getMessage()]
    warned += [r.getMessage() for r in caplog.records if f"train.max_updates={max_updates} sizes" in r.getMessage()]
    if short:
        assert warned == [
            f"train.max_updates=9 sizes the schedules, but resumed at update 3 the epochs end after update {last}: the "
            "run stops there, 89% of the way through them (raise train.epochs or lower max_updates)"
        ]
    else:
        assert warned == []


@pytest.mark.parametrize(
    ("first", "then", "warmup", "warns"),
    [((2, 3), 1, 9, True), ((1, 5), 2, 8, False)],
    ids=["accumulation-lowered", "accumulation-raised"],
)
def test_a_resume_weighs_the_warmup_against_the_updates_it_holds(tiny_llm_dir, corpus, tmp_path, caplog, first, then,
                                                                warmup, warns):  # fmt: skip
    """5 batches an epoch, 2 epochs, stopped by max_updates at epoch 0's end and resumed at another grad_accum. Lowered
    from 2 to 1: 3 updates + 5 hold 8, a warmup of 9 never reaches its peak (a fresh run at 1 holds 10, which had
    passed it silently). Raised from 1 to 2: 5 + 3 hold 8, a warmup of 8 peaks at the last update (a fresh run at 2
    holds 6, which had warned)."""
    run = tmp_path / "run"

    def make(k, **kw):
        r = recipe(tiny_llm_dir, corpus, run, valid=False, epochs=2, grad_accum=k, **kw)
        r.optim.scheduler.warmup_steps = warmup
        return r

    train(make(first[0], max_updates=first[1]), "zero0")
    caplog.clear()  # (the first run's warmup was longer than its max_updates)
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        rest = train(make(then), "zero0", resume="latest")["history"]
    assert rest[-1]["update"] == 8
    warned = [r.getMessage() for r in caplog.records if "warms up over" in r.getMessage()]
    assert len(warned) == (3 if warns else 0)  # one a trained branch: encoder, adaptor, llm
    assert all(f"warms up over {warmup} updates, but the run has 8" in w for w in warned)
    assert (rest[-1]["lr"]["llm"] == pytest.approx(1e-3)) != warns  # the peak, at the last update


def test_the_last_update_is_logged_when_the_run_ends_before_its_total(tiny_llm_dir, corpus, tmp_path):
    """max_updates past what the epochs hold (only a warning): the run's last update is still a train.log line (it
    had been left out unless it fell on log_every)."""
    run = tmp_path / "run"
    r = recipe(tiny_llm_dir, corpus, run, valid=False, grad_accum=2, log_every=1000, max_updates=1000)
    history = train(r, "zero0")["history"]
    rows = [parse_log_line(line) for line in (run / "train.log").read_text().splitlines() if " train update=" in line]
    assert len(history) > 1 and [row["update"] for row in rows] == [history[-1]["update"]]


def test_train_log_ends_with_the_done_line(tiny_llm_dir, corpus, tmp_path):
    """The "done: ..." line had gone to stderr alone, after the log file was closed: a finished run's train.log ended
    at its last save, as one cut off there does; its validation figures were a Python dict of unrounded floats."""
    run = tmp_path / "run"
    train(recipe(tiny_llm_dir, corpus, run, grad_accum=2, max_updates=2), "zero0")
    last = (run / "train.log").read_text().splitlines()[-1]
    assert " INFO llmasr.train: done: 2 updates, last loss " in last
    loss, validation = last.split(", last loss ")[1].split(", validation ")
    assert len(loss.split(".")[1]) == 4 and {"loss", "acc", "wer"} <= set(parse_log_line(validation))


def test_a_resume_past_the_epochs_end_says_it_has_nothing_to_train(tiny_llm_dir, corpus, tmp_path, caplog):
    """A run that trained its epochs, resumed with a max_updates past them and no more epochs: nothing trains, and
    the log says so (it had said nothing: the check counted to max_updates)."""
    run = tmp_path / "run"
    done = train(recipe(tiny_llm_dir, corpus, run, valid=False, grad_accum=2), "zero0")["history"][-1]["update"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llmasr"):
        result = train(recipe(tiny_llm_dir, corpus, run, valid=False, grad_accum=2, max_updates=10), "zero0",
                       resume="latest")  # fmt: skip
    assert result["history"] == []
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("nothing to train")]
    assert said == [f"nothing to train: the run is at update {done} of {done} (raise train.epochs or train.max_updates "
                    "to train on)"]  # fmt: skip


def test_progress_counts_to_the_update_the_run_ends_after(tiny_llm_dir, corpus, tmp_path, capfd):
    """max_updates past what the epochs hold: the progress lines count to the epochs' end, where the run stops (they
    had counted to max_updates: no line at the last update, and an eta for updates that never come)."""
    r = recipe(tiny_llm_dir, corpus, tmp_path / "run", valid=False, grad_accum=2, max_updates=1000,
               progress_every_s=3600)  # fmt: skip
    last = train(r, "zero0")["history"][-1]["update"]
    lines = [line for line in capfd.readouterr().err.splitlines() if " progress update " in line]
    assert len(lines) == 1 and f" progress update {last}/{last} (100%) " in lines[0]


def test_a_batch_with_a_non_finite_loss_is_named_and_leaves_the_model_finite(
    tiny_llm_dir, corpus, tmp_path, monkeypatch, caplog
):
    """A NaN in one batch's features (a corrupt input): train.log names the batch's keys and counts the skipped
    update, and the weights stay finite (at ZeRO-0 in fp32 the run had gone on to its end with a NaN model, every
    later loss and the validation NaN, and exit status 0)."""
    from llmasr.train.engine import TrainEngine

    real, seen = TrainEngine.to_device, []

    def to_device(self, batch):
        out = real(self, batch)
        if self.module.training and not seen:
            seen.append(list(batch.keys))
            out.feats[0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(TrainEngine, "to_device", to_device)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="llmasr.train.progress"):
        result = train(recipe(tiny_llm_dir, corpus, run, grad_accum=2, ctc_weight=0.3), "zero0")
    warned = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warned) == 1 and f"rank 0: {', '.join(seen[0])}." in warned[0] and "skipped_steps=1" in warned[0]
    history = result["history"]
    assert math.isnan(history[0]["loss"]) and all(math.isfinite(h["loss"]) for h in history[1:])
    assert math.isfinite(result["metrics"]["loss"])
    rows = [parse_log_line(line) for line in (run / "train.log").read_text().splitlines() if " train update=" in line]
    assert [row["skipped_steps"] for row in rows] == [1.0] * len(history)


@pytest.mark.parametrize("exported", [None, ":16:8"])
def test_a_deterministic_run_sets_the_cublas_workspace_it_needs_on_cuda(tiny_llm_dir, corpus, tmp_path, monkeypatch,
                                                                       exported):  # fmt: skip
    """train.deterministic turns on torch's deterministic algorithms, which on CUDA raise at the first cuBLAS matmul
    unless CUBLAS_WORKSPACE_CONFIG is set: the run sets it (a value the user exported stays)."""
    import os

    if exported is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", exported)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        train(recipe(tiny_llm_dir, corpus, tmp_path / "run", valid=False, max_updates=1, deterministic=True), "zero0")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == (exported or ":4096:8")


@pytest.mark.parametrize("cudnn", [False, True])
def test_a_run_chooses_its_attention_kernels_before_it_trains(tiny_llm_dir, corpus, tmp_path, cudnn):
    """cuDNN's fused attention builds a graph per input shape on the host, and speech batches change shape batch by
    batch: a run rules it out unless train.cudnn_attention asks for it (torch allows it by default)."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(not cudnn)  # the other way: the run itself must set it
    try:
        r = recipe(tiny_llm_dir, corpus, tmp_path / "run", valid=False, max_updates=1, cudnn_attention=cudnn)
        train(r, "zero0")
        assert torch.backends.cuda.cudnn_sdp_enabled() is cudnn
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.parametrize("skipped", [{1}, {2, 3}])
def test_lr_schedule_csv_of_a_run_with_skipped_updates_holds_the_lrs_used(tiny_llm_dir, corpus, tmp_path, nan_updates,
                                                                          skipped):  # fmt: skip
    """An update skipped on a non-finite gradient (a NaN batch here, an fp16 loss-scale overflow alike) holds the
    schedules, so every later update uses the lr of the one before it on the plan. lr_schedule.csv had kept the
    plan written at the run's start unless the run was resumed: rows one warmup step ahead of train.log's lrs."""
    nan_updates.update(skipped)
    run = tmp_path / "run"
    r = recipe(tiny_llm_dir, corpus, run, valid=False, epochs=2, grad_accum=1, max_updates=6)
    r.optim.scheduler.type, r.optim.scheduler.warmup_steps = "warmup_linear", 4
    history = train(r, "zero0")["history"]
    assert [h["update"] for h in history] == list(range(1, 7))
    rows = [parse_log_line(line) for line in (run / "train.log").read_text().splitlines() if " train update=" in line]
    assert rows[-1]["skipped_steps"] == len(skipped)
    assert history[max(skipped)]["lr"]["llm"] == history[max(skipped) - 1]["lr"]["llm"]  # the skip held it
    csv = np.genfromtxt(run / "lr_schedule.csv", delimiter=",", names=True)
    assert [int(u) for u in csv["update"]] == list(range(1, 7))
    for h, row in zip(history, csv):
        for group, lr in h["lr"].items():
            assert row[group] == pytest.approx(lr, rel=1e-12), (h["update"], group)


def test_skipped_updates_rewrite_lr_schedule_files_once_at_the_save(tiny_llm_dir, corpus, tmp_path, nan_updates,
                                                                      monkeypatch):  # fmt: skip
    """Four skipped updates (an fp16 run skips one per loss-scale window) before the run's first save (update 5, the
    epoch's end): lr_schedule.csv and .png are written at the start and once at that save, not rewritten and replotted
    at every skip, and the CSV still holds the lr every update used."""
    from llmasr.train import run_dir

    plots, real = [], run_dir.plot_lr
    monkeypatch.setattr(run_dir, "plot_lr", lambda curves, path: (plots.append(path), real(curves, path)))
    nan_updates.update({1, 2, 3, 4})
    run = tmp_path / "run"
    r = recipe(tiny_llm_dir, corpus, run, valid=False, epochs=2, grad_accum=1, max_updates=6)
    r.optim.scheduler.type, r.optim.scheduler.warmup_steps = "warmup_linear", 4
    history = train(r, "zero0")["history"]
    assert history[-1]["update"] == 6 and ck.list_tags(ck.checkpoints_dir(run)) == [ck.tag_for(5), ck.tag_for(6)]
    assert plots == [run / ck.LR_PNG] * 2  # the start, then the save after the skips (none new by update 6's)
    csv = np.genfromtxt(run / ck.LR_CSV, delimiter=",", names=True)
    assert [int(u) for u in csv["update"]] == list(range(1, 7))
    assert [row["llm"] for row in csv] == pytest.approx([h["lr"]["llm"] for h in history], rel=1e-12)
    assert history[4]["lr"]["llm"] == history[0]["lr"]["llm"]  # updates 1-5 held the schedules at its start


def test_a_stale_build_lock_is_named_before_the_run_starts(tiny_llm_dir, corpus, tmp_path, monkeypatch, caplog):
    """The start of a run names a lock torch left in the JIT-extension cache (llmasr.train.op_builds) before DeepSpeed
    may load an op, which would wait on it for ever; the run itself goes on."""
    from llmasr.train import op_builds

    lock = tmp_path / "cache" / "cpu_adam" / "lock"
    monkeypatch.setattr(op_builds, "stale_build_locks", lambda cache=None: [(lock, 5400.0)])
    with caplog.at_level(logging.WARNING, logger="llmasr.train"):
        out = train(recipe(tiny_llm_dir, corpus, tmp_path / "run", valid=False), "zero0", stop_after_updates=1)
    assert [h["update"] for h in out["history"]] == [1]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{lock}: a lock torch left")]
    assert len(said) == 1 and "'cpu_adam' 90 minutes ago" in said[0]
