"""Checkpoint reader: all ZeRO stages read offline to the same tensors, safe loading, tag selection, averaging."""

from __future__ import annotations

import json
import os

import pytest
import torch

from llmasr.export.checkpoint_reader import (
    CheckpointError,
    average_states,
    list_tags,
    read_meta,
    read_trained_state,
    resolve_checkpoint,
    select_tags,
    strip_module_prefix,
)
from llmasr.safe_load import weights_only_torch_load


def test_every_zero_stage_reads_to_the_same_trained_tensors(runs):
    states = {}
    for stage, run in runs.items():
        ref = resolve_checkpoint(run)
        meta = read_meta(ref.path)
        assert meta["zero_stage"] == stage
        states[stage] = read_trained_state(ref.path, meta)
        assert set(states[stage]) >= set(meta["trainable"])
        assert all(v.dtype == torch.float32 for v in states[stage].values() if v.is_floating_point())
    assert states[0].keys() == states[2].keys() == states[3].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[2][k]) and torch.equal(states[2][k], states[3][k]), k
    # ZeRO-3 model files hold empty placeholders: the values really came from the optimizer shards.
    z3 = torch.load(next((runs[3] / "checkpoints" / "update_00000000").glob("*_model_states.pt")), weights_only=True)[
        "module"
    ]
    assert all(v.numel() == 0 for v in z3.values())


def test_reading_needs_no_distributed_and_no_gpu(runs):
    import subprocess
    import sys

    code = (
        "import torch.distributed as dist, sys\n"
        "from llmasr.export.checkpoint_reader import read_trained_state\n"
        f"s = read_trained_state({str(runs[3] / 'checkpoints' / 'update_00000000')!r})\n"
        "assert not dist.is_initialized()\n"
        "print(len(s))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 0


def test_safe_loading_refuses_unlisted_pickled_objects(tmp_path):
    class Sneaky:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(1)}, "payload": Sneaky()}, path)
    (tmp_path / "llmasr_meta.json").write_text(
        json.dumps({"trainable": ["w"], "base_fingerprint": {}, "zero_stage": 0})
    )
    with pytest.raises(CheckpointError, match=rf"{path}: refused: it pickles posix.getcwd, which is neither"):
        read_trained_state(tmp_path, read_meta(tmp_path))
    # torch.load is restored afterwards, and the context really forces weights_only
    with weights_only_torch_load():
        with pytest.raises(CheckpointError, match=r"refused: it pickles posix.getcwd"):
            torch.load(path, weights_only=False)
    assert torch.load(path, weights_only=False)["module"]["w"].shape == (1,)


def test_module_prefix_is_stripped():
    assert strip_module_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert strip_module_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}


def test_tag_listing_and_selection(trained_run):
    ref = resolve_checkpoint(trained_run)
    assert list_tags(ref.root) == [f"update_{i:08d}" for i in (1, 2, 3, 4)]
    older = resolve_checkpoint(trained_run, "update_00000003")
    assert select_tags(older, 2, "last") == ["update_00000002", "update_00000003"]
    with pytest.raises(CheckpointError, match=r"asked to average 5 checkpoints \(last\) but only 4"):
        select_tags(ref, 5, "last")
    with pytest.raises(CheckpointError, match="--average-by"):
        select_tags(ref, 2, "worst")


def test_best_json_errors(trained_run, tmp_path, copy_run):
    run = copy_run(trained_run, tmp_path / "r")
    ref = resolve_checkpoint(run)
    (run / "checkpoints" / "best.json").write_text(json.dumps([{"tag": "update_00000077", "metric": "x", "value": 1}]))
    with pytest.raises(CheckpointError, match=r"lists tag 'update_00000077'.*does not exist"):
        select_tags(ref, 1, "best")
    (run / "checkpoints" / "best.json").unlink()
    with pytest.raises(CheckpointError, match="best.json: missing"):
        select_tags(ref, 1, "best")


def test_average_rejects_mismatched_sets():
    a = {"x": torch.ones(2), "n": torch.tensor(3)}
    b = {"x": torch.zeros(2), "n": torch.tensor(5)}
    avg = average_states([a, b])
    assert torch.equal(avg["x"], torch.full((2,), 0.5)) and int(avg["n"]) == 5
    with pytest.raises(CheckpointError, match="holds different tensors"):
        average_states([a, {"x": torch.zeros(2)}])
    with pytest.raises(CheckpointError, match=r"x has shapes"):
        average_states([a, {"x": torch.zeros(3), "n": torch.tensor(1)}])


def test_not_a_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nope")
