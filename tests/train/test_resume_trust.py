"""Resume treats a checkpoint as data: weights-only loading (a pickled callable is refused, never run) and the
sizes and sha256 sums recorded at save are checked before DeepSpeed reads anything."""

import json
import os
import shutil

import pytest
import torch
import yaml

import llmasr.run_dir.files
from llmasr import run_dir as ck
from llmasr.commands.train import main
from llmasr.recipe import load_recipe
from llmasr.run_dir.files import hash_share
from llmasr.safe_load import CheckpointError
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "train", n=12)


def recipe(tiny_llm_dir, corpus, run_dir, **kw):
    return load_recipe(data=tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run_dir, **kw))


class MakeDir:
    """Pickles as a call of os.mkdir(path): what a booby-trapped checkpoint would run on a plain torch.load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def reseal(tag_dir):
    """Record the files' current checksums, as a save would have (an attacker can do the same)."""
    meta = json.loads((tag_dir / ck.META).read_text())
    (tag_dir / ck.META).write_text(json.dumps({**meta, "files": hash_share(tag_dir)}))


def saved_run(tiny_llm_dir, corpus, run, preset):
    train(recipe(tiny_llm_dir, corpus, run, max_updates=1), preset)
    return run / "checkpoints" / ck.tag_for(1)


def test_save_records_every_file(tiny_llm_dir, corpus, tmp_path):
    tag = saved_run(tiny_llm_dir, corpus, tmp_path / "run", "zero2")
    files = ck.read_meta(tag).files
    assert sorted(files) == [
        "batch_plan.npz",
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ]
    for name, entry in files.items():
        assert entry["bytes"] == (tag / name).stat().st_size and len(entry["sha256"]) == 64


@pytest.mark.parametrize(
    ("preset", "victim"),
    [("zero0", "mp_rank_00_model_states.pt"), ("zero2", "zero_pp_rank_0_mp_rank_00_optim_states.pt")],
)
def test_resume_refuses_pickled_code(tiny_llm_dir, corpus, tmp_path, monkeypatch, preset, victim):
    run, marker = tmp_path / "run", tmp_path / "code_ran"
    tag = saved_run(tiny_llm_dir, corpus, run, preset)
    state = torch.load(tag / victim, weights_only=False)  # our own file, to plant the payload in
    state["payload"] = MakeDir(marker)
    torch.save(state, tag / victim)
    reseal(tag)
    more = recipe(tiny_llm_dir, corpus, run, max_updates=2)
    refused = rf"{tag / victim}: refused: it pickles posix.mkdir"
    with pytest.raises(CheckpointError, match=refused):
        train(more, preset, resume="latest")  # found by the scan before loading
    # Without the scan (a torch too old to list a file's globals), DeepSpeed's own loading refuses it.
    monkeypatch.setattr(llmasr.run_dir.files, "unsafe_globals", lambda path: [])
    with pytest.raises(CheckpointError, match=refused):
        train(more, preset, resume="latest")
    assert not marker.exists()


def test_resume_verifies_the_recorded_checksums(tiny_llm_dir, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    tag = saved_run(tiny_llm_dir, corpus, run, "zero2")
    shard = tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = shard.read_bytes()
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run, max_updates=2)))
    argv = ["--config", str(path), "--deepspeed", "zero2", "--resume"]

    shard.write_bytes(data[: len(data) // 2])  # an interrupted copy
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{shard}: {len(data) // 2} bytes, but the save wrote {len(data)}: the file is truncated" in err
    assert "\nRestore the files from a copy\n" in err  # no other checkpoint of the run to name
    assert "Traceback" not in err

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # same size, one byte changed
    shard.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=rf"{shard}: its sha256 differs from the one recorded at save"):
        train(recipe(tiny_llm_dir, corpus, run, max_updates=2), "zero2", resume="latest")

    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard}: missing \(the save recorded it: {len(data)} bytes\)"):
        train(recipe(tiny_llm_dir, corpus, run, max_updates=2), "zero2", resume="latest")

    # A checkpoint from before checksums: a cut-short zip archive is still named, not left to DeepSpeed.
    shard.write_bytes(data[: len(data) // 2])
    meta = json.loads((tag / ck.META).read_text())
    del meta["files"]
    (tag / ck.META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"{shard}: cannot be read .*truncated or corrupt"):
        train(recipe(tiny_llm_dir, corpus, run, max_updates=2), "zero2", resume="latest")

    shard.write_bytes(data)  # intact again, still without checksums: resumes (with a warning)
    result = train(recipe(tiny_llm_dir, corpus, run, max_updates=2), "zero2", resume="latest")
    assert [h["update"] for h in result["history"]] == [2]


@pytest.mark.parametrize("preset", ["zero1", "zero3", "zero2_offload"])
def test_weights_only_resume_loads_every_stage(tiny_llm_dir, corpus, tmp_path, preset):
    """DeepSpeed's own classes (loss scaler, ZeRO stage, fragment addresses) pass the weights-only load."""
    run = tmp_path / "run"
    saved_run(tiny_llm_dir, corpus, run, preset)
    result = train(recipe(tiny_llm_dir, corpus, run, max_updates=2), preset, resume="latest")
    assert [h["update"] for h in result["history"]] == [2]
    assert ck.read_meta(run / "checkpoints" / ck.tag_for(2)).files


def test_resume_refuses_same_shape_other_base_weights(tiny_llm_dir, corpus, tmp_path):
    from safetensors.torch import load_file, save_file

    from llmasr.config_io import ConfigError

    llm = tmp_path / "llm"
    shutil.copytree(tiny_llm_dir, llm)
    run = tmp_path / "run"
    train(recipe(llm, corpus, run, max_updates=1), "zero0")
    state = load_file(str(llm / "model.safetensors"))
    name = next(k for k in state if "v_proj.weight" in k)
    state[name] = state[name].flip(0)  # same shape, same file size, other weights
    save_file(state, str(llm / "model.safetensors"), metadata={"format": "pt"})
    changed = r"base model differs.*\n  llm/model.safetensors: trained on \d+ bytes sha256:"
    with pytest.raises(ConfigError, match=changed):
        train(recipe(llm, corpus, run, max_updates=2), "zero0", resume="latest")


def test_a_same_shape_other_base_is_refused_naming_its_key_and_both_folders(tiny_llm_dir, corpus, tmp_path):
    """A preempted job restarted with model.llm.path pointing at another copy of the LLM (another revision, say)."""
    from safetensors.torch import load_file, save_file

    from llmasr.config_io import ConfigError

    llm, other = tmp_path / "llm", tmp_path / "llm_other"
    shutil.copytree(tiny_llm_dir, llm)
    shutil.copytree(tiny_llm_dir, other)
    state = load_file(str(other / "model.safetensors"))
    name = next(k for k in state if "v_proj.weight" in k)
    state[name] = state[name].flip(0)
    save_file(state, str(other / "model.safetensors"), metadata={"format": "pt"})
    run = tmp_path / "run"
    train(recipe(llm, corpus, run, max_updates=1), "zero0")
    with pytest.raises(ConfigError) as err:
        train(recipe(other, corpus, run, max_updates=2), "zero0", resume="latest")
    text = str(err.value)
    assert "llm/model.safetensors: trained on" in text
    assert f"(model.llm.path: {other} now, {llm} when trained)" in text
    assert "Point each key named at the files the run was trained on" in text

    shutil.copy(other / "model.safetensors", llm / "model.safetensors")  # the trained-on folder changed in place
    with pytest.raises(ConfigError, match=rf"\(model.llm.path: {llm}, as when trained: its files changed since\)"):
        train(recipe(llm, corpus, run, max_updates=2), "zero0", resume="latest")
