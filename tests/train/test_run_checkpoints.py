"""A checkpoint saved by the real training loop (one rank, no launcher) on the tiny model and a tiny wav corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmasr import run_dir as ck
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "train", n=8)


def _recipe(tiny_llm_dir, corpus, run_dir):
    return load_recipe(
        data=tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run_dir, grad_accum=1, max_updates=1)
    )


def test_every_file_and_folder_of_a_checkpoint_is_on_disk_before_latest_names_it(
    tiny_llm_dir, corpus, tmp_path, monkeypatch
):
    """After a power loss `latest` must not name a checkpoint whose files (DeepSpeed's torch.save does not sync
    them), meta or folder entries were still in memory: each is fsynced before `latest` is renamed into place."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", f"{Path(src).resolve()} {Path(dst).resolve()}"))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = (tmp_path / "run").resolve()
    train(_recipe(tiny_llm_dir, corpus, run), "zero2")
    monkeypatch.undo()

    ckpts = run / "checkpoints"
    synced: set[str] = set()
    marker = None
    for i, (kind, what) in enumerate(events):
        if kind == "fsync":
            synced.add(what)
            continue
        src, dst = what.split(" ")
        if src in synced:  # a temporary synced, then renamed: the file under its name is on disk
            synced.add(dst)
        if dst == str(ckpts / ck.LATEST):
            marker = i
            break
    assert marker is not None and ck.latest(ckpts) == ck.tag_for(1)
    tag = ckpts / ck.tag_for(1)
    written = sorted(str(p) for p in tag.rglob("*"))
    assert {str(tag / ck.META), str(tag / "mp_rank_00_model_states.pt")} <= set(written)
    assert any("optim_states" in p for p in written)
    assert [p for p in [*written, str(tag), str(ckpts)] if p not in synced] == []
    # and the rename of `latest` itself is synced with its folder
    assert ("fsync", str(ckpts)) in events[marker + 1 :]


def test_a_disk_that_fills_at_the_meta_names_it_and_keeps_the_last_checkpoint(
    tiny_llm_dir, corpus, tmp_path, monkeypatch, capsys
):
    """DeepSpeed's files of update 2 fit, its meta does not: the error says which checkpoint and file and that the
    disk is full (it had said only "OSError: [Errno 28] No space left on device"), and update 1 stays `latest`."""
    import errno

    import yaml

    from llmasr import errors
    from llmasr.cli import main

    monkeypatch.setenv(errors.DEBUG_ENV, "")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run",
                                                    grad_accum=1, save_every_updates=1, max_updates=2)))  # fmt: skip
    real_fsync = os.fsync

    def fsync(fd):
        if f"{ck.tag_for(2)}/.{ck.META}" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the kernel reports it: no file name
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["train", "--config", str(path), "--deepspeed", "zero0"]) == 1
    err = capsys.readouterr().err
    ckpts = tmp_path / "run" / "checkpoints"
    assert f"while saving checkpoint {ck.tag_for(2)}:" in err
    assert f"{ckpts / ck.tag_for(2) / ck.META}: No space left on device (the disk is full)" in err
    assert ck.latest(ckpts) == ck.tag_for(1) and (ckpts / ck.tag_for(1) / ck.META).is_file()


def test_the_log_names_the_best_checkpoint_after_each_validated_save(tiny_llm_dir, corpus, tmp_path):
    """train.log said nothing of the best checkpoint (best.json alone held it): a save after a validation names the
    one best.json ranks first, with its metric."""
    run = tmp_path / "run"
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], valid=[corpus], output_dir=run, grad_accum=1, max_updates=2,
                            valid_every_updates=1, best_metric="acc")  # fmt: skip
    train(load_recipe(data=data), "zero0")
    best = ck.read_best(run / "checkpoints")[0]
    saved = [line for line in (run / "train.log").read_text().splitlines() if "saved checkpoint" in line]
    assert len(saved) == 2 and all("; best by acc: update_0000000" in line for line in saved)
    assert saved[-1].endswith(f"; best by acc: {best['tag']} ({best['value']:.4f})")
