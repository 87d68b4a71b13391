"""Disk space for checkpoints (llmasr.train.checkpoint_space): the estimate is the size a real save writes, a run
whose folder cannot hold one checkpoint is refused before its first update, and one that cannot hold rotation's
worth is warned of; `llmasr check` prints the same numbers."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

import llmasr.train.checkpoint_space as space_mod
from llmasr.train.checkpoint_space import CheckpointSpace
from llmasr.train.run_dir import RunDirError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from llmasr.testing.run_dirs import model_section
    from llmasr.testing.tiny_corpus import write_tiny_corpus
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    root = tmp_path_factory.mktemp("space")
    llm, enc = write_tiny_llm_dir(root / "llm"), write_funasr_dir(root / "enc", encoder_conf=tiny_sanm_conf())
    return model_section(llm, enc), write_tiny_corpus(root / "corpus", n=8)


def _train_cfg(**kw):
    cfg = {
        "precision": "fp32",
        "save_every_updates": 0,
        "valid_every_updates": 0,
        "keep_last": 3,
        "best_k": 1,
        "output_dir": "/tmp",
    }
    return SimpleNamespace(**{**cfg, **kw})


def test_how_many_checkpoints_rotation_keeps_at_once():
    one = CheckpointSpace.estimate(_train_cfg(), trainable=1000, epochs=10, total=500, validates=True)
    assert one.per_checkpoint == 1000 * (4 + 12) and one.most_kept == 5  # keep_last 3 + best 1 + the one written
    bf16 = CheckpointSpace.estimate(_train_cfg(precision="bf16"), trainable=1000, epochs=1, total=5, validates=True)
    assert bf16.per_checkpoint == 1000 * 14
    bf16_states = {"bf16": {"enabled": True, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}}
    half = CheckpointSpace.estimate(_train_cfg(precision="bf16"), trainable=1000, epochs=1, total=5, validates=True,
                                    ds=bf16_states)  # fmt: skip
    assert half.per_checkpoint == 1000 * (2 + 2 + 2 * 2)  # bf16 weights, master weights and Adam moments
    assert CheckpointSpace.estimate(_train_cfg(), trainable=1, epochs=2, total=50, validates=True).most_kept == 2
    keep_all = _train_cfg(keep_last=0, save_every_updates=10)
    assert CheckpointSpace.estimate(keep_all, trainable=1, epochs=2, total=50, validates=True).most_kept == 2 + 5


def test_every_validation_that_ranks_checkpoints_saves_one():
    """best_k > 0 saves after every valid_every_updates validation: 1 epoch, 10 validations, kept all."""
    ranked = _train_cfg(keep_last=0, valid_every_updates=5)
    assert CheckpointSpace.estimate(ranked, trainable=1, epochs=1, total=50, validates=True).most_kept == 1 + 10
    assert CheckpointSpace.estimate(ranked, trainable=1, epochs=1, total=50, validates=False).most_kept == 1
    unranked = _train_cfg(keep_last=0, valid_every_updates=5, best_k=0)  # validation alone saves nothing
    assert CheckpointSpace.estimate(unranked, trainable=1, epochs=1, total=50, validates=True).most_kept == 1


@pytest.mark.parametrize("preset", ["zero0", "zero2"])
def test_the_estimate_is_what_a_save_writes(base, tmp_path, preset):
    from llmasr.testing.run_dirs import train_run

    run = train_run(tmp_path / "run", *base[:1], base[1], preset=preset)
    tag_dir = next(p for p in (run.run_dir / "checkpoints").iterdir() if p.name.startswith("update_"))
    written = sum(f.stat().st_size for f in tag_dir.iterdir() if f.name.endswith(".pt"))
    trainable = sum(t.numel() for t in run.trained.values())
    estimate = CheckpointSpace.estimate(
        run.recipe.train, trainable=trainable, epochs=1, total=1, validates=False
    ).per_checkpoint
    # ZeRO keeps 12 bytes of optimizer state a parameter, plain Adam 8; pickling adds a little per tensor
    assert 0.7 * estimate <= written <= 1.25 * estimate, (written, estimate)


def test_a_folder_that_cannot_hold_one_checkpoint_is_refused_before_training(base, tmp_path, monkeypatch):
    from llmasr.testing.run_dirs import train_run

    monkeypatch.setattr(space_mod, "free_bytes", lambda path: 4096)
    with pytest.raises(RunDirError, match=r"0.00 MiB free, and a checkpoint of this run takes about .* first save"):
        train_run(tmp_path / "run", *base[:1], base[1], preset="zero2")
    assert not any((tmp_path / "run" / "checkpoints").glob("update_*"))


def test_too_little_for_rotation_is_warned_of(base, tmp_path, monkeypatch, caplog):
    from llmasr.models.builder import build_model
    from llmasr.testing.run_dirs import train_run

    model = build_model(base[0], weights="meta")
    per = 16 * sum(p.numel() for p in model.parameters() if p.requires_grad)  # fp32 weights + optimizer states
    monkeypatch.setattr(space_mod, "free_bytes", lambda path: int(1.5 * per))  # one fits, the run's two saves do not
    with caplog.at_level(logging.WARNING, logger="llmasr.train"):
        train_run(tmp_path / "run", *base[:1], base[1], preset="zero2", keep_last=3, best_k=1, save_every_updates=1)
    assert "a later save may fail for lack of space; lower train.keep_last" in caplog.text


def test_epochs_past_max_updates_are_not_counted(base, tmp_path, monkeypatch, capsys, caplog):
    """train.max_updates 1 ends a 40-epoch run in its first epoch, with one save: keeping every checkpoint
    (keep_last 0), one is on disk. The estimate had counted a save at each of the 40 epoch ends: `llmasr check`
    printed "up to 40 on disk at once", and `llmasr train` warned that a later save may not fit where one does."""
    from check_runner import run_check

    from llmasr.config_io import dump_yaml
    from llmasr.models.builder import build_model
    from llmasr.testing.run_dirs import train_run
    from llmasr.testing.tiny_corpus import tiny_recipe_dict

    keys = {"epochs": 40, "keep_last": 0, "best_k": 0}
    data = tiny_recipe_dict(base[0]["llm"]["path"], train=[base[1]], output_dir=tmp_path / "checked", max_updates=1,
                            **keys)  # fmt: skip
    data["model"] = base[0]
    dump_yaml(data, tmp_path / "recipe.yaml")
    code, out, err = run_check(capsys, "--config", str(tmp_path / "recipe.yaml"), "--deepspeed", "zero0",
                               "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 0 and ", up to 1 on disk at once (" in out, out + err

    model = build_model(base[0], weights="meta")
    per = 16 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    monkeypatch.setattr(space_mod, "free_bytes", lambda path: int(1.5 * per))  # the run's one save fits
    with caplog.at_level(logging.WARNING, logger="llmasr.train"):
        run = train_run(tmp_path / "run", *base[:1], base[1], preset="zero0", updates=1, **keys)
    assert len(list((run.run_dir / "checkpoints").glob("update_*"))) == 1
    assert "a later save may fail" not in caplog.text
