"""The demo's own plumbing, without synthesizing a corpus or training: the training command line it builds, its
overrides checked before any stage, and a corpus reused from a workdir that has been moved."""

from __future__ import annotations

import json
import shutil
import sys
from argparse import Namespace
from dataclasses import asdict

import pytest

from llmasr.commands.demo import main
from llmasr.demo import run
from llmasr.recipe import load_recipe
from llmasr.testing.run_dirs import write_corpus


def _args(**kw) -> Namespace:
    base = {"quick": True, "overrides": [], "voices": None, "test_voices": None, "workers": 1, "ranks": 2}
    return Namespace(**{**base, **kw})


def test_the_training_overrides_hold_any_workdir_path(tmp_path):
    """Paths were pasted into the overrides unquoted: a workdir holding ", " or ": " or " #" became a list, a
    mapping or a cut path (after the corpus and the LLM had been made)."""
    workdir = tmp_path / "demo, v2: [x] #1"
    corpus = {"manifests": {s: workdir / "corpus" / f"{s}.jsonl" for s in ("train", "dev")}}
    recipe = load_recipe(run.RECIPE, run.train_overrides(_args(), workdir, corpus, workdir / "llm"))
    assert recipe.model.llm.path == str(workdir / "llm")
    assert [m.path if hasattr(m, "path") else m for m in recipe.data.train] == [str(workdir / "corpus/train.jsonl")]
    assert recipe.train.output_dir == str(workdir / "run")


def test_a_misspelt_override_is_refused_before_the_first_stage(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path / "w"), "--quick", "train.epoch=4"]) == 2  # bad input, as in llmasr train
    assert "unknown key(s) ['epoch']" in capsys.readouterr().err
    assert not (tmp_path / "w" / "corpus").exists()  # nothing synthesized first


def test_an_override_moving_the_run_out_of_the_workdir_is_refused_before_the_first_stage(tmp_path, capsys):
    """train.output_dir=X trained into X, then export read WORKDIR/run and failed after the whole training."""
    assert main(["--workdir", str(tmp_path / "w"), "--quick", f"train.output_dir={tmp_path / 'elsewhere'}"]) == 2
    err = capsys.readouterr().err
    assert "train.output_dir" in err and "--workdir" in err, err
    assert not (tmp_path / "w" / "corpus").exists()


def test_training_runs_under_this_python():
    """A `deepspeed` first on PATH may belong to another environment."""
    assert run.launcher()[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]


def test_a_moved_workdir_reuses_its_own_corpus(tmp_path, monkeypatch):
    """corpus.json records absolute manifest paths: a copied workdir had trained on the original's corpus."""

    def fake_synthesis(out, cfg, workers, log):
        manifest = write_corpus(out, ["zero one", "two three"], name="train")
        shutil.copy(manifest, out / "dev.jsonl")
        summary = {"config": json.loads(json.dumps(asdict(cfg))), "counts": {}, "hours": {},
                   "manifests": {s: str(out / f"{s}.jsonl") for s in ("train", "dev")}}  # fmt: skip
        (out / "corpus.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(run, "synthesize_corpus", fake_synthesis)
    monkeypatch.setattr(run, "try_install_espeak", lambda say: True)  # espeak-ng itself is never run here
    monkeypatch.setattr(run.shutil, "which", lambda name: f"/usr/bin/{name}")
    first = tmp_path / "first"
    run.stage_corpus(_args(), first, run.State(first))
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    monkeypatch.setattr(run, "synthesize_corpus", lambda *a, **k: pytest.fail("the corpus is made again"))
    reused = run.stage_corpus(_args(), moved, run.State(moved))
    assert reused["manifests"] == {s: str(moved / "corpus" / f"{s}.jsonl") for s in ("train", "dev")}


def test_the_llm_stage_gives_back_the_threads_it_narrowed(tmp_path, monkeypatch):
    """The LLM stage pretrains on one thread; it had left the process there, so a fresh demo decoded on one thread
    while a rerun (which skips the stage) used them all."""
    import torch

    seen = []

    def fake_lm(out, texts, cfg, log, spelled):
        seen.append(torch.get_num_threads())
        out.mkdir(parents=True)
        return {}

    monkeypatch.setattr(run, "build_text_lm", fake_lm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    manifest = write_corpus(tmp_path / "corpus", ["zero one", "two three"])
    corpus = {"config": {}, "manifests": {"train": manifest, "dev": manifest}}
    state = run.State(tmp_path)
    state.data["corpus"] = {"fingerprint": "x"}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run.stage_llm(_args(), tmp_path, state, corpus)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_run_interrupted_under_other_overrides_is_not_reused_as_the_finished_one(tmp_path, monkeypatch):
    """A finished run A, then a rerun with other overrides (B) killed after its first checkpoint, then A again:
    A's 'train' entry had survived B's start, so the demo reported 'reusing' and exported B's half-trained run."""
    trained = []

    def fake_launch(cmd, env, cwd, log):  # one checkpoint named after the run's overrides, then the end or a kill
        ckpt = tmp_path / "run" / "checkpoints"
        (ckpt / "update_00000001").mkdir(parents=True, exist_ok=True)
        (ckpt / "latest").write_text("update_00000001")
        (tmp_path / "run" / "made_by").write_text(" ".join(cmd[cmd.index("--deepspeed") + 2 :]))
        trained.append(cmd)
        if "train.epochs=3" in cmd:
            raise KeyboardInterrupt
        return 0

    monkeypatch.setattr(run, "run_launcher", fake_launch)
    monkeypatch.setattr(run, "gpu_count", lambda: 0)
    corpus = {"manifests": {s: tmp_path / "corpus" / f"{s}.jsonl" for s in ("train", "dev")}}
    state = run.State(tmp_path)
    state.data["llm"] = {"fingerprint": "x"}
    run.stage_train(_args(), tmp_path, state, corpus, tmp_path / "llm")
    with pytest.raises(KeyboardInterrupt):
        run.stage_train(_args(overrides=["train.epochs=3"]), tmp_path, run.State(tmp_path), corpus, tmp_path / "llm")
    said = []
    monkeypatch.setattr(run, "say", said.append)
    run.stage_train(_args(), tmp_path, run.State(tmp_path), corpus, tmp_path / "llm")
    assert len(trained) == 3  # A trained again, from scratch
    assert "train.epochs=3" not in (tmp_path / "run" / "made_by").read_text()
    # and the folder removed is said to be, with why: a rerun after an upgrade had retrained without a word
    assert said[0] == (
        f"3/5 train: {tmp_path / 'run'} is removed and trained again from the start: its settings differ from this "
        "run's (the recipe, the DeepSpeed preset, the overrides, the ranks, the corpus or the LLM: an upgraded llmasr "
        "may ship another recipe)"
    )


def test_an_export_interrupted_under_another_run_is_not_reused_as_the_earlier_one(tmp_path, monkeypatch):
    """Run A exported; a rerun for run B killed once B's export stood in model/ but before it was recorded; A again:
    A's 'export' entry had survived B's start and vouched for the model/ holding B's export."""
    exported = []

    def fake_export(run_dir, out, overwrite):  # the export in place, then a kill before the demo records it
        out.mkdir(exist_ok=True)
        (out / "made_by").write_text(run_dir.name)
        exported.append(run_dir.name)
        if run_dir.name == "b":
            raise KeyboardInterrupt

    monkeypatch.setattr(run, "export_model", fake_export)
    state = run.State(tmp_path)
    for name in ("a", "b", "a"):
        state = run.State(tmp_path)
        state.data["train"] = {"fingerprint": name}
        try:
            run.stage_export(tmp_path, state, tmp_path / name)
        except KeyboardInterrupt:
            pass
    assert exported == ["a", "b", "a"] and (tmp_path / "model" / "made_by").read_text() == "a"


def test_a_workdir_that_is_a_file_is_named_as_such(tmp_path, capsys):
    """`--workdir FILE` had said only "FILE: File exists"."""
    (tmp_path / "notes.txt").write_text("x")
    assert main(["--workdir", str(tmp_path / "notes.txt"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "a file, not a folder" in err and "--workdir" in err, err
