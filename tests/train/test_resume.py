"""Resume semantics: which recipe keys may change, schedules rebuilt at the current update, nothing in RUN_DIR
rewritten by a resume that fails, and the lr each update really runs with."""

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import llmasr
from llmasr import run_dir as ck
from llmasr.config_io import ConfigError, to_dict
from llmasr.recipe import Recipe, load_recipe
from llmasr.safe_load import CheckpointError
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train import resume as rs
from llmasr.train import resume_recipe as rr
from llmasr.train.config import SchedulerConfig
from llmasr.train.resolve import seed_everything
from llmasr.train.schedulers import schedule_lr
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "train", n=20)  # 5 batches: 3 updates of 2


def recipe(tiny_llm_dir, corpus, run, *, overrides=(), **kw):
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run, **kw)
    return load_recipe(data=data, overrides=list(overrides))


def run_files(run) -> dict:
    names = (ck.RECIPE_FILE, ck.DS_CONFIG_FILE, ck.LR_CSV, ck.LR_PNG)
    return {n: (run / n).read_bytes() for n in names}


def test_a_run_saved_before_spec_augment_s_time_cap_resumes_uncapped_only(tiny_llm_dir, corpus, tmp_path):
    """RUN_DIR/recipe.yaml as an llmasr before data.augment.spec_augment.max_time_fraction wrote it: SpecAugment on,
    the key absent, the time masks drawn uncapped. It had read as today's default 0.5 on both sides, so the resume
    went on drawing other masks, unsaid; it reads as 1, and the recipe that leaves the key at 0.5 is refused
    naming it and the value that resumes the run as it trained."""
    import yaml

    run = tmp_path / "run"
    (run / ck.CHECKPOINTS).mkdir(parents=True)
    on = ["data.augment.spec_augment.enable=true", "data.augment.spec_augment.max_time_width=40"]
    saved = to_dict(recipe(tiny_llm_dir, corpus, run, overrides=on))
    del saved["data"]["augment"]["spec_augment"]["max_time_fraction"]
    (run / ck.RECIPE_FILE).write_text(yaml.safe_dump(saved, sort_keys=False), encoding="utf-8")
    said = r"max_time_fraction: 1.0 -> 0.5 \(.*before this key capped none, as 1 does: set data.augment.spec_augment"
    with pytest.raises(ConfigError, match=said + r".max_time_fraction=1"):
        rr.check_resume_recipe(recipe(tiny_llm_dir, corpus, run, overrides=on), run / ck.CHECKPOINTS)
    same = recipe(tiny_llm_dir, corpus, run, overrides=[*on, "data.augment.spec_augment.max_time_fraction=1"])
    assert rr.check_resume_recipe(same, run / ck.CHECKPOINTS) == []
    sa = "data.augment.spec_augment."
    for section in ({"enable": False}, {"enable": True, "num_time_masks": 2, "max_time_width": 0.1}):
        # no masks drawn, or the masks the cap draws too (each within 0.25 of the utterance): the default stands
        saved["data"]["augment"]["spec_augment"].update(section)
        (run / ck.RECIPE_FILE).write_text(yaml.safe_dump(saved, sort_keys=False), encoding="utf-8")
        now = recipe(tiny_llm_dir, corpus, run, overrides=[*on, *(f"{sa}{k}={v}" for k, v in section.items())])
        assert rr.check_resume_recipe(now, run / ck.CHECKPOINTS) == []


def test_a_branch_s_new_scheduler_lists_only_the_fields_a_type_reads(tiny_llm_dir, corpus, tmp_path):
    """A branch's `scheduler: {type: constant}` over the inherited warmup_cosine had listed tri_stage's
    init_lr_scale, final_lr_scale and phase_ratio and the cosine's min_lr_ratio, null -> their defaults, as changes:
    fields neither schedule reads."""
    from llmasr.recipe import save_recipe

    run = tmp_path / "run"
    run.mkdir()
    save_recipe(recipe(tiny_llm_dir, corpus, run), run / ck.RECIPE_FILE)
    new = recipe(tiny_llm_dir, corpus, run, overrides=["optim.branches.llm.scheduler={type: constant}"])
    assert rr.check_resume_recipe(new, run / "checkpoints") == [
        'resume: recipe changes since the run was saved: optim.branches.llm.scheduler.type: "warmup_cosine" -> '
        '"constant"'
    ]  # (the optim-wide schedule the branch had inherited)
    new = recipe(
        tiny_llm_dir,
        corpus,
        run,
        overrides=["optim.branches.llm.scheduler={type: tri_stage, phase_ratio: [0.1, 0.4, 0.5]}"],
    )
    (note,) = rr.check_resume_recipe(new, run / "checkpoints")
    for read in ("phase_ratio: null -> [", 'type: "warmup_cosine" -> "tri_stage"'):
        assert f"optim.branches.llm.scheduler.{read}" in note  # the new type reads them
    # min_lr_ratio: the old type reads it, 0.0 on both sides; init_lr_scale: 0.01, the default, on both
    assert "min_lr_ratio" not in note and "init_lr_scale" not in note
    # a saved run's field its type never read (such runs still load), gone from the new recipe: neither reads it
    saved = {"optim": {"scheduler": {"type": "tri_stage", "min_lr_ratio": 0.1}, "branches": {}}}
    new = {"optim": {"scheduler": {"type": "tri_stage", "min_lr_ratio": 0.0}, "branches": {}}}
    assert rr.recipe_changes(saved, new) == []


# -- real runs ----------------------------------------------------------------------------------------------------
def test_more_epochs_and_a_new_lr_rebuild_the_schedules_at_the_current_update(tiny_llm_dir, corpus, tmp_path):
    """Resuming a finished 3-update run with 2 epochs and another LLM lr trains updates 4-6 on the new recipe's
    schedules (the saved ones, sized for 3 updates, gave lr 0 there), says so, and records what it used."""
    run = tmp_path / "run"
    first = train(recipe(tiny_llm_dir, corpus, run), "zero0")["history"]
    assert [h["update"] for h in first] == [1, 2, 3]
    new = recipe(tiny_llm_dir, corpus, run, epochs=2, overrides=["optim.branches.llm.lr=2e-3"])
    rest = train(new, "zero0", resume="latest")["history"]
    assert [h["update"] for h in rest] == [4, 5, 6]
    cfg = SchedulerConfig()  # the tiny recipe's: warmup_cosine, no warmup, floor 0
    for h in rest:
        assert h["lr"]["llm"] == pytest.approx(schedule_lr(cfg, h["update"] - 1, 2e-3, 6), rel=1e-12)
        assert h["lr"]["encoder"] == pytest.approx(schedule_lr(cfg, h["update"] - 1, 1e-3, 6), rel=1e-12)
        assert min(h["lr"].values()) > 0
    log = (run / ck.TRAIN_LOG).read_text()
    assert "resume: recipe changes since the run was saved: " in log and "train.epochs: 1 -> 2" in log
    assert "optim.branches.llm.lr: 0.001 -> 0.002" in log
    rebuilt = next(line for line in log.splitlines() if "schedules rebuilt" in line)
    assert (
        "at update 3" in rebuilt and "total updates 3 -> 6" in rebuilt and "peak lr 1.000e-03 -> 2.000e-03" in rebuilt
    )
    saved = load_recipe(run / ck.RECIPE_FILE)
    assert saved.train.epochs == 2 and saved.optim.branches["llm"].lr == 2e-3
    csv = np.genfromtxt(run / ck.LR_CSV, delimiter=",", names=True)
    assert len(csv) == 6  # the lr every update ran with, before and after the change
    for h in first + rest:
        assert csv["llm"][h["update"] - 1] == pytest.approx(h["lr"]["llm"], rel=1e-12)


@pytest.mark.parametrize(("stop", "epochs", "updates"), [(None, 2, [6, 7, 8]), (3, 1, [3, 4])])  # 3: saved at 2
def test_another_grad_accum_on_resume_counts_the_updates_left(tiny_llm_dir, corpus, tmp_path, stop, epochs, updates):
    """5 batches an epoch trained one a update, then resumed 2 a update: the schedules are sized for the updates the
    run now holds (they were sized as if every epoch had been 2 a update: the last updates ran at lr 0)."""
    run = tmp_path / "run"
    first = recipe(tiny_llm_dir, corpus, run, grad_accum=1, save_every_updates=2)
    first = train(first, "zero0", stop_after_updates=stop)["history"]
    rest = train(recipe(tiny_llm_dir, corpus, run, grad_accum=2, epochs=epochs), "zero0", resume="latest")["history"]
    assert [h["update"] for h in rest] == updates and len(first) == (stop or updates[0] - 1)
    cfg, total = SchedulerConfig(), updates[-1]
    for h in rest:
        assert h["lr"]["llm"] == pytest.approx(schedule_lr(cfg, h["update"] - 1, 1e-3, total), rel=1e-12)
        assert h["lr"]["llm"] > 0


def test_a_branch_unfrozen_on_resume_is_told_the_route_from_this_run_s_weights(tiny_llm_dir, corpus, tmp_path):
    """The refusal had said only "start a new run", which starts from the base weights again."""
    run = tmp_path / "run"
    first = recipe(tiny_llm_dir, corpus, run, max_updates=1)
    train(first, "zero0")
    frozen = first.model.encoder.freeze
    changed = recipe(tiny_llm_dir, corpus, run, max_updates=2, overrides=[f"model.encoder.freeze={not frozen}"])
    with pytest.raises(ConfigError) as err:
        train(changed, "zero0", resume="latest")
    route = str(err.value).splitlines()[-1]
    assert route.startswith("To train on from this run's weights with model.encoder.freeze changed: `llmasr export ")
    assert f"--checkpoint {run} --output DIR`, then a new run (another train.output_dir)" in route
    for key in ("model.encoder.init_from: DIR/encoder.safetensors", "model.adaptor.init_from: DIR/adaptor.safetensors",
                "model.llm.path: DIR/llm"):  # fmt: skip
        assert key in route


def test_a_refused_or_failed_resume_leaves_the_run_folder_as_it_was(tiny_llm_dir, corpus, tmp_path):
    run = tmp_path / "run"
    train(recipe(tiny_llm_dir, corpus, run, max_updates=2), "zero0")
    before = run_files(run)
    changed = recipe(tiny_llm_dir, corpus, run, max_updates=3, seed=1, max_seconds=4.0)
    with pytest.raises(ConfigError) as err:
        train(changed, "zero0", resume="latest")
    msg = str(err.value)
    assert f"differs from {run / ck.RECIPE_FILE}" in msg
    assert "train.seed: 0 -> 1 (the random streams" in msg and "data.batching.max_seconds: 3.0 -> 4.0" in msg
    assert "train.max_updates" not in msg  # that one may change
    assert run_files(run) == before and not (run / ck.LOCK_FILE).exists()

    shard = ck.checkpoints_dir(run) / ck.tag_for(2) / "mp_rank_00_model_states.pt"  # fails later, in the load
    whole = shard.read_bytes()
    shard.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt"):
        train(recipe(tiny_llm_dir, corpus, run, max_updates=3), "zero0", resume="latest")
    shard.write_bytes(whole)
    assert run_files(run) == before and not (run / ck.LOCK_FILE).exists()

    assert [
        h["update"] for h in train(recipe(tiny_llm_dir, corpus, run, max_updates=3), "zero0", resume="")["history"]
    ] == [3]
    assert load_recipe(run / ck.RECIPE_FILE).train.max_updates == 3  # rewritten once the resume succeeded
    again = train(recipe(tiny_llm_dir, corpus, run, max_updates=3), "zero0", resume="latest")
    assert again["history"] == [] and ck.latest(ck.checkpoints_dir(run)) == ck.tag_for(3)
    assert "nothing to train: the run is at update 3 of 3" in (run / ck.TRAIN_LOG).read_text()


def test_resuming_an_earlier_checkpoint_sets_the_later_ones_aside(tiny_llm_dir, corpus, tmp_path):
    """A run saved at updates 1-3, resumed from update 1 (say after a loss spike): its saves at 2 and 3 replace the
    old ones, and rotation (keep_last 1) keeps the new course's; the old 2 and 3 wait in a folder of their own. They
    had kept rotation's slots (the highest updates) while the new course's checkpoints were deleted."""
    run = tmp_path / "run"
    first = train(recipe(tiny_llm_dir, corpus, run, grad_accum=1, max_updates=3, save_every_updates=1), "zero0")
    assert [h["update"] for h in first["history"]] == [1, 2, 3]
    ckpts = ck.checkpoints_dir(run)
    old3 = (ckpts / ck.tag_for(3) / "mp_rank_00_model_states.pt").read_bytes()
    again = recipe(tiny_llm_dir, corpus, run, grad_accum=1, max_updates=2, save_every_updates=1, keep_last=1)
    rest = train(again, "zero0", resume=ck.tag_for(1))["history"]
    assert [h["update"] for h in rest] == [2]
    aside = ckpts / "abandoned_at_update_00000001"
    assert ck.list_tags(aside) == [ck.tag_for(2), ck.tag_for(3)] and ck.latest(ckpts) == ck.tag_for(2)
    assert ck.list_tags(ckpts) == [ck.tag_for(2)]  # the new update 2; update 1 rotated away
    assert (aside / ck.tag_for(3) / "mp_rank_00_model_states.pt").read_bytes() == old3
    assert (
        "resume: 2 later checkpoint(s) of this run (update_00000002, update_00000003)"
        in (run / ck.TRAIN_LOG).read_text()
    )
    # resuming one of them is checked against the run's recipe (it had found none to compare with, and allowed all)
    reseeded = recipe(tiny_llm_dir, corpus, run, grad_accum=1, max_updates=3, overrides=["train.seed=999"])
    with pytest.raises(ConfigError, match=f"(?s)the recipe differs from {run / ck.RECIPE_FILE}.*train.seed: 0 -> 999"):
        rr.check_resume_recipe(reseeded, aside)
    # ... and it is this run's own: resumed in its folder, not refused as an earlier run's (whose --overwrite would
    # have deleted the folder being resumed)
    from llmasr.train.run_dir import RunDirError, check_run_start

    assert check_run_start(run, str(aside / ck.tag_for(3)), False, None, clear=False) == []
    with pytest.raises(RunDirError, match="which --resume continues from: give only one of them"):
        check_run_start(run, str(aside / ck.tag_for(3)), True, None)
    assert (aside / ck.tag_for(3)).is_dir()


def test_training_data_that_changed_on_disk_is_refused(tiny_llm_dir, tmp_path):
    manifest = write_tiny_corpus(tmp_path / "corpus", n=20)
    run = tmp_path / "run"
    train(recipe(tiny_llm_dir, manifest, run, max_updates=1), "zero0")
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:8]) + "\n")
    with pytest.raises(
        ConfigError, match=r"data.train\) now gives \[\d+\] batches per rank per epoch, the run had \[5\]"
    ):
        train(recipe(tiny_llm_dir, manifest, run, max_updates=2), "zero0", resume="latest")


def test_each_update_moves_the_weights_by_its_scheduled_lr(tiny_llm_dir, corpus, tmp_path):
    """AdamW's first step moves a weight by lr * g / (|g| + eps): the largest move of the first update is the lr
    DeepSpeed's optimizer step really used, i.e. lr(0) (the scheduler steps after the optimizer). The second and
    last update of a 2-update cosine run must move the weights too (its floor of 0 is after the run)."""
    run = tmp_path / "run"
    r = recipe(tiny_llm_dir, corpus, run, max_updates=2, save_every_updates=1, keep_last=0,
               overrides=["optim.weight_decay=0.0"])  # fmt: skip
    history = train(r, "zero0")["history"]
    cfg = r.optim.scheduler
    assert [h["lr"]["llm"] for h in history] == [schedule_lr(cfg, 0, 1e-3, 2), schedule_lr(cfg, 1, 1e-3, 2)]
    assert history[1]["lr"]["llm"] == pytest.approx(0.5e-3)
    seed_everything(r.train.seed)
    initial = {n: p.detach().clone() for n, p in llmasr.build_model(r.model).named_parameters() if p.requires_grad}

    def weights(update):
        path = ck.checkpoints_dir(run) / ck.tag_for(update) / "mp_rank_00_model_states.pt"
        return torch.load(path, map_location="cpu", weights_only=False)["module"]

    first, second = weights(1), weights(2)
    assert set(first) == set(initial)
    moves = {n: float((first[n] - initial[n]).abs().max()) for n in initial}
    for name, move in moves.items():
        assert move <= 1e-3 + 2e-7, name  # float32 rounding of weights near 1
    assert max(moves.values()) == pytest.approx(1e-3, rel=1e-3)
    last = max(float((second[n] - first[n]).abs().max()) for n in initial)
    assert 0.1 * 0.5e-3 < last < 3 * 0.5e-3


def test_resume_auto_starts_fresh_then_continues(tiny_llm_dir, corpus, tmp_path):
    """`train.resume: auto` is one command for a preemptible job: with no checkpoint it starts a fresh run, and run
    again (here with a second epoch) it continues the newest checkpoint instead of refusing the folder."""
    run = tmp_path / "run"
    first = train(recipe(tiny_llm_dir, corpus, run, overrides=["train.resume=auto"]), "zero0")["history"]
    assert [h["update"] for h in first] == [1, 2, 3]
    assert "resume auto: no checkpoint yet, a fresh run" in (run / ck.TRAIN_LOG).read_text()
    again = recipe(tiny_llm_dir, corpus, run, epochs=2, overrides=["train.resume=auto"])
    assert [h["update"] for h in train(again, "zero0")["history"]] == [4, 5, 6]
    assert "resume auto: continuing" in (run / ck.TRAIN_LOG).read_text()
    # --overwrite starts over (it had been refused as contradicting a --resume never given)
    assert [h["update"] for h in train(again, "zero0", overwrite=True)["history"]] == [1, 2, 3, 4, 5, 6]
    assert "resume auto: --overwrite: a fresh run" in (run / ck.TRAIN_LOG).read_text()
    assert ck.resume_or_start("latest", tmp_path / "empty") == "latest"  # "latest" still insists on a checkpoint
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        ck.resolve_resume("latest", tmp_path / "empty")


def test_a_checkpoint_that_counted_every_epoch_as_the_first_resumes(caplog):
    """Checkpoints from before each epoch was counted on its own hold the first epoch's count for all: the same data
    resumes (a log line says so); any other difference is still a changed manifest."""
    meta = ck.CheckpointMeta(3, 1, 1, 0, base_fingerprint={}, trainable=[], batches_per_epoch=[906, 906, 906])
    with caplog.at_level(logging.INFO, logger="llmasr.train"):
        rs.check_batches(meta, [906, 905, 906], Path("ck"))
    assert "counted 906 batches per rank in every epoch; the data gives [906, 905, 906]" in caplog.text
    with pytest.raises(ConfigError, match=r"now gives \[905, 905, 906\] .* the run had \[906, 906, 906\]"):
        rs.check_batches(meta, [905, 905, 906], Path("ck"))
    meta.batches_per_epoch = [906, 905, 906]
    with pytest.raises(ConfigError, match="a manifest changed"):
        rs.check_batches(meta, [906, 906, 906], Path("ck"))


def test_other_batches_from_unedited_manifests_are_not_blamed_on_an_edit():
    """A checkpoint whose data.train files hash as they do now, yet the data gives other batch counts (a line's audio
    removed since, so the screen skips it): the refusal says the manifests are as the run read them and points at
    the lines screened unusable. It had said a manifest changed, which the user checks and finds untrue."""
    files = [{"path": "/data/train.jsonl", "lines": 30, "sha1": "ab12"}]
    meta = ck.CheckpointMeta(3, 1, 1, 0, base_fingerprint={}, trainable=[], batches_per_epoch=[17, 17],
                             manifests=files)  # fmt: skip
    recipe = SimpleNamespace(model=None)
    with pytest.raises(
        ConfigError,
        match=r"now gives \[16, 16\] .* the run had \[17, 17\]: the manifests are as the "
        r"run read them, but the lines screened unusable before loading differ .* Restore the audio",
    ):
        rs.check_checkpoint(meta, Path("ck"), recipe=recipe, stage=0, world_size=1, per_epoch=[16, 16], trainable=[],
                            manifests=[dict(files[0])])  # fmt: skip
    edited = [{**files[0], "sha1": "cd34"}]
    with pytest.raises(ConfigError, match=r"changed since the checkpoint: /data/train.jsonl \(lines edited or moved\)"):
        rs.check_checkpoint(meta, Path("ck"), recipe=recipe, stage=0, world_size=1, per_epoch=[16, 16], trainable=[],
                            manifests=edited)  # fmt: skip


def test_max_updates_at_an_epoch_end_saves_the_next_epoch_start(tiny_llm_dir, corpus, tmp_path):
    """max_updates reached by an epoch's last window: the checkpoint is that of the epoch's end (the next epoch, no
    loader position), as an uninterrupted run saves it. It had kept the emptied epoch's position: a resume re-entered
    it, validated again and saved the same update afresh, deleting the checkpoint it resumed from first."""
    run = tmp_path / "run"
    dev = write_tiny_corpus(tmp_path / "dev", n=3, seed=1)
    first = recipe(tiny_llm_dir, corpus, run, epochs=2, max_updates=3, valid=[dev])
    assert [h["update"] for h in train(first, "zero0")["history"]] == [1, 2, 3]
    meta = ck.read_meta(run / "checkpoints" / ck.tag_for(3))
    assert meta.epoch == 1
    again = recipe(tiny_llm_dir, corpus, run, epochs=2, overrides=["train.resume=latest"], valid=[dev])
    assert [(h["update"], h["epoch"]) for h in train(again, "zero0")["history"]] == [(4, 1), (5, 1), (6, 1)]
    log = (run / ck.TRAIN_LOG).read_text()
    assert "was there from before" not in log
    assert [line.split(" valid update=")[1].split()[0] for line in log.splitlines() if " valid update=" in line] == [
        "3",
        "6",
    ]


def test_training_data_reordered_on_disk_is_refused_before_the_run_folder_changes(tiny_llm_dir, tmp_path):
    """A manifest's lines reordered since the checkpoint, into as many batches: the saved position would count into
    other batches (utterances skipped and repeated). The resume is refused before it sets the later checkpoints
    aside or rewrites the run's files."""
    import random

    from llmasr.train.resolve import build_loaders, text_side

    manifest = write_tiny_corpus(tmp_path / "corpus", n=40)
    run = tmp_path / "run"
    settings = ["data.batching.shuffle_buffer=4", "data.batching.num_buckets=1"]

    def make(max_updates):
        return recipe(tiny_llm_dir, manifest, run, grad_accum=1, max_updates=max_updates, save_every_updates=1,
                      keep_last=0, overrides=settings)  # fmt: skip

    def batches() -> int:
        r = make(3)
        return len(build_loaders(r, text_side(r.model), rank=0, world_size=1)[1])

    train(make(3), "zero0")
    before, count, lines = run_files(run), batches(), manifest.read_text().splitlines()
    for seed in range(100):  # the same lines in an order that makes as many batches
        random.Random(seed).shuffle(lines)
        manifest.write_text("\n".join(lines) + "\n")
        if batches() == count:
            break
    with pytest.raises(ValueError, match=r"cannot resume epoch 0 at batch 1: the training data \(data.train\)"):
        train(make(4), "zero0", resume=ck.tag_for(1))
    assert run_files(run) == before
    assert ck.list_tags(ck.checkpoints_dir(run)) == [ck.tag_for(u) for u in (1, 2, 3)]


def test_a_training_manifest_edited_since_the_checkpoint_is_named(tiny_llm_dir, tmp_path, caplog):
    """Each checkpoint records every data.train file's lines and sha1: a resume over a file edited since (a transcript
    corrected) goes on with a warning naming it, and one the saved position cannot count into (a line removed) is
    refused naming it too (both had named data.train at most, and the edit went unsaid)."""
    from llmasr import errors
    from llmasr.testing.tiny_corpus import tiny_recipe_dict

    first, second = write_tiny_corpus(tmp_path / "a", n=12), write_tiny_corpus(tmp_path / "b", n=8, seed=5)
    run = tmp_path / "run"

    def make(max_updates):
        data = tiny_recipe_dict(tiny_llm_dir, train=[first, second], output_dir=run, grad_accum=1,
                                max_updates=max_updates, save_every_updates=1, keep_last=0)  # fmt: skip
        return load_recipe(data=data)

    train(make(2), "zero0")
    assert ck.read_meta(ck.checkpoints_dir(run) / ck.tag_for(2)).manifests[1]["lines"] == 8
    lines = second.read_text().splitlines()
    second.write_text("\n".join([lines[0].replace('"target": "', '"target": "nine '), *lines[1:]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="llmasr.train"):
        assert [h["update"] for h in train(make(3), "zero0", resume="latest")["history"]] == [3]
    assert f"the training data changed since {ck.checkpoints_dir(run) / ck.tag_for(2)} was saved: {second} (lines " \
           "edited or moved); what trains from here reads them as they are now" in caplog.text  # fmt: skip
    assert str(first) not in caplog.text
    second.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises((ConfigError, ValueError)) as err:
        train(make(4), "zero0", resume="latest")
    assert f"{second} (8 -> 7 lines)" in errors.describe(err.value)


def test_a_line_added_since_the_checkpoint_is_refused_without_the_edited_file_s_warning(
    tiny_llm_dir, tmp_path, caplog, capsys
):
    """A manifest that gained a line (as many batches: the position check refuses it) had been warned of first, "what
    trains from here reads them as they are now", then refused: the warning comes once the position check passed
    (in `llmasr check` too, which still warns of a transcript edited alone)."""
    import yaml
    from check_runner import run_check

    from llmasr import errors
    from llmasr.train.resolve import build_loaders, text_side

    manifest, run = write_tiny_corpus(tmp_path / "corpus", n=24), tmp_path / "run"

    def make(max_updates):
        return recipe(tiny_llm_dir, manifest, run, grad_accum=1, max_updates=max_updates, save_every_updates=1)

    def batches() -> int:
        return len(build_loaders(make(3), text_side(make(3).model), rank=0, world_size=1)[1])

    train(make(2), "zero0")
    count, lines = batches(), manifest.read_text().splitlines()
    for line in lines:  # a copy of a line that makes as many batches
        manifest.write_text("\n".join([*lines, line]) + "\n")
        if batches() == count:
            break
    assert batches() == count
    with caplog.at_level(logging.WARNING, logger="llmasr.train"), pytest.raises(ValueError) as err:
        train(make(3), "zero0", resume="latest")
    assert f"{manifest} (24 -> 25 lines)" in errors.describe(err.value) and "now holds 25 lines" in str(err.value)
    assert "the training data changed since" not in caplog.text
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(to_dict(make(3))))
    with caplog.at_level(logging.WARNING, logger="llmasr.train"):
        code, _, stderr = run_check(capsys, "--config", str(path), "--deepspeed", "zero0", "--resume")
    assert code != 0 and "now holds 25 lines" in stderr, stderr
    assert "the training data changed since" not in caplog.text + stderr
    manifest.write_text("\n".join([lines[0].replace('"target": "', '"target": "nine '), *lines[1:]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="llmasr.train"):  # a transcript edited alone: warned, goes on
        assert run_check(capsys, "--config", str(path), "--deepspeed", "zero0", "--resume")[0] == 0
    assert f"the training data changed since {ck.checkpoints_dir(run) / ck.tag_for(2)} was saved: {manifest}" \
           in caplog.text  # fmt: skip


def test_lr_schedule_csv_after_a_resume_follows_the_schedules_held_by_a_skipped_update(
    tiny_llm_dir, corpus, tmp_path, monkeypatch
):
    """A NaN batch skips update 1, which holds the schedules (each later update uses the lr of the one before it
    on the plan). The resume knows the skip: its lr_schedule.csv rows from the resumed update on had still been
    lr(update - 1), one warmup step ahead of the lr train.log shows every update using."""
    from llmasr.train.engine import TrainEngine

    real, seen = TrainEngine.to_device, []

    def to_device(self, batch):
        out = real(self, batch)
        if self.module.training and not seen:
            seen.append(True)
            out.feats[0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(TrainEngine, "to_device", to_device)
    run = tmp_path / "run"
    ov = ["optim.scheduler.type=warmup_linear", "optim.scheduler.warmup_steps=2"]
    train(recipe(tiny_llm_dir, corpus, run, epochs=2, save_every_updates=2, overrides=ov), "zero0",
          stop_after_updates=3)  # fmt: skip
    rest = train(recipe(tiny_llm_dir, corpus, run, epochs=2, save_every_updates=2, overrides=ov), "zero0",
                 resume="latest")["history"]  # fmt: skip
    assert [h["update"] for h in rest] == [3, 4, 5, 6]
    csv = np.genfromtxt(run / ck.LR_CSV, delimiter=",", names=True)
    assert len(csv) == 6
    cfg = SchedulerConfig(type="warmup_linear", warmup_steps=2)
    for h in rest:
        assert h["lr"]["llm"] == pytest.approx(schedule_lr(cfg, h["update"] - 2, 1e-3, 6), rel=1e-12)
        assert csv["llm"][h["update"] - 1] == pytest.approx(h["lr"]["llm"], rel=1e-12), h["update"]


@pytest.mark.parametrize(("saved", "stage", "presets"), [(2, 0, "zero2 or zero2_offload"), (0, 3, "zero0")])
def test_a_stage_change_to_or_from_zero0_is_refused_saying_how_to_resume(tmp_path, saved, stage, presets):
    """The refusal names the stages that convert and the DeepSpeed configs that continue the checkpoint."""
    where = tmp_path / "run" / "checkpoints" / ck.tag_for(4)
    meta = ck.CheckpointMeta(update=4, epoch=0, world_size=2, zero_stage=saved, base_fingerprint={}, trainable=[])
    with pytest.raises(ConfigError) as err:
        rs.check_checkpoint(meta, where, recipe=Recipe(), stage=stage, world_size=2, per_epoch=[4], trainable=[])
    message = str(err.value)
    assert f"{where}: saved at ZeRO stage {saved}, this run uses {stage}; stages 1, 2 and 3 are converted" in message
    assert "to or from ZeRO-0 in fp32, but not to or from ZeRO-0 in bf16" in message  # Recipe()'s precision
    assert f"--deepspeed {presets} or the run's own {tmp_path / 'run' / ck.DS_CONFIG_FILE}" in message


def killed_before_latest(ckpts, update: int) -> None:
    """`latest` as the save of `update` left it, the next save killed before it rewrote the pointer."""
    import os

    ck.write_atomic(ckpts / ck.LATEST, ck.tag_for(update) + "\n")
    saved = (ckpts / ck.tag_for(update) / ck.META).stat().st_mtime_ns
    os.utime(ckpts / ck.LATEST, ns=(saved, saved))


def test_a_checkpoint_saved_all_but_its_latest_pointer_is_resumed(tiny_llm_dir, corpus, tmp_path):
    """A job killed between update 2's meta (and best.json entry) and `latest` (still update 1): the resume
    continues update 2 and `latest` names it. The resume had continued update 1 and set the complete update 2 aside
    as a course left behind, training update 2 again. A folder without its meta is still no checkpoint."""
    run = tmp_path / "run"
    make = recipe(tiny_llm_dir, corpus, run, save_every_updates=1, overrides=["train.resume=auto"])
    train(make, "zero0", stop_after_updates=3)  # saves 1 and 2
    ckpts = ck.checkpoints_dir(run)
    killed_before_latest(ckpts, 1)
    assert [h["update"] for h in train(make, "zero0")["history"]] == [3]
    assert not list(ckpts.glob("abandoned_at_update_*")) and ck.latest(ckpts) == ck.tag_for(3)
    assert (
        f"{ckpts / ck.tag_for(2)} is complete (its meta is written) but `latest` did not"
        in (run / ck.TRAIN_LOG).read_text()
    )
    # the same kill at the first save: no `latest` at all (auto had started afresh, and been refused the folder)
    first = tmp_path / "first"
    make = recipe(tiny_llm_dir, corpus, first, save_every_updates=1, overrides=["train.resume=auto"])
    train(make, "zero0", stop_after_updates=2)  # saves 1
    (ck.checkpoints_dir(first) / ck.LATEST).unlink()
    assert [h["update"] for h in train(make, "zero0")["history"]] == [2, 3]
    # a save cut short before its meta is not resumed: the run goes on from `latest` and saves that update afresh
    cut = tmp_path / "cut"
    make = recipe(tiny_llm_dir, corpus, cut, save_every_updates=1)
    train(make, "zero0", stop_after_updates=3)
    (ck.checkpoints_dir(cut) / ck.tag_for(2) / ck.META).unlink()
    killed_before_latest(ck.checkpoints_dir(cut), 1)
    assert [h["update"] for h in train(make, "zero0", resume="latest")["history"]] == [2, 3]
    assert ck.read_meta(ck.checkpoints_dir(cut) / ck.tag_for(2)).update == 2


def test_lr_schedule_csv_rows_before_a_resume_are_the_lrs_the_updates_used(tiny_llm_dir, corpus, tmp_path, nan_updates):
    """NaN batches skip update 1 (before the checkpoint at 2) and, after a resume, update 4 (before the checkpoint at
    4): each held the schedules, so the updates after it used the lr of the one before on the plan. Every row of
    lr_schedule.csv after two resumes is the lr that update used (train.log's). Rows written before a resume had kept
    the plan of the run's start: update 2's lr (and, after the second resume, update 4's) one warmup step ahead."""
    bad = nan_updates
    run = tmp_path / "run"
    make = recipe(tiny_llm_dir, corpus, run, epochs=3, save_every_updates=2,
                  overrides=["optim.scheduler.type=warmup_linear", "optim.scheduler.warmup_steps=4"])  # fmt: skip
    used = {}
    for skip, kw in (({1}, {"stop_after_updates": 3}), ({4}, {"stop_after_updates": 6, "resume": "latest"}),
                     (set(), {"resume": "latest"})):  # fmt: skip
        bad |= skip
        latest = ck.latest(ck.checkpoints_dir(run))
        done = ck.update_of(latest) if latest else 0
        used = {u: lr for u, lr in used.items() if u <= done}  # the updates after the checkpoint are redone
        used |= {h["update"]: h["lr"] for h in train(make, "zero0", **kw)["history"]}
    assert sorted(used) == list(range(1, 10)) and used[2] == used[1] and used[5] == used[4] != used[3]
    csv = np.genfromtxt(run / ck.LR_CSV, delimiter=",", names=True)
    assert [int(u) for u in csv["update"]] == list(range(1, 10))
    for row in csv:
        for group, lr in used[int(row["update"])].items():
            assert row[group] == pytest.approx(lr, rel=1e-12), (int(row["update"]), group)


@pytest.mark.parametrize(("saved", "stage"), [(2, 3), (3, 2), (1, 3), (3, 1), (1, 2), (2, 1)])
def test_stages_1_2_and_3_resume_one_another(tmp_path, saved, stage):
    """A checkpoint of ZeRO-1, 2 or 3 resumes at another of them (converted through a universal checkpoint)."""
    from llmasr.models.fingerprint import base_fingerprint

    where, recipe = tmp_path / "run" / "checkpoints" / ck.tag_for(4), Recipe()
    meta = ck.CheckpointMeta(update=4, epoch=0, world_size=2, zero_stage=saved,
                             base_fingerprint=base_fingerprint(recipe.model), trainable=[])  # fmt: skip
    assert rs.check_checkpoint(meta, where, recipe=recipe, stage=stage, world_size=2, per_epoch=[4],
                               trainable=[]) == []  # fmt: skip


def test_llmasr_train_s_last_line_counts_this_run_s_updates_and_the_run_s(tiny_llm_dir, corpus, tmp_path, caplog):
    """A resumed run's last line had said "done: 3 updates" where it trained 1: the update number counts the run's
    updates from its start, a resume's history its own. One with nothing left to train says so, and where the run
    is (it had said "0 updates this run, 3 in all, last loss None, validation {}")."""
    import yaml

    from llmasr.commands.train import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")))
    args = ["--config", str(path), "--deepspeed", "zero0"]
    with caplog.at_level("INFO", logger="llmasr"):
        assert main([*args, "train.max_updates=2"]) == 0
        assert "done: 2 updates, last loss" in caplog.text
        caplog.clear()
        assert main([*args, "--resume", "train.max_updates=3"]) == 0
        assert "done: 1 update this run, 3 in all, last loss" in caplog.text
        caplog.clear()
        assert main([*args, "--resume", "train.max_updates=3"]) == 0  # at its end: nothing to train
        assert "done: nothing to train (the run had reached update 3 of 3)\n" in caplog.text
        caplog.clear()
        assert main([*args, "--resume", "train.max_updates=2"]) == 0
        assert "done: nothing to train (the run is at update 3, past the 2 it ends after now)\n" in caplog.text
