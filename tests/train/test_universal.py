"""The pieces of a resume at another world size that need no launcher (the runs: tests/recipes/test_resume_world.py)."""

import json
import os

import pytest
import torch

from llmasr.run_dir import UNIVERSAL_SUFFIX
from llmasr.train import universal


def fake_checkpoint(folder, ranks=2):
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"model")
    for r in range(ranks):
        (folder / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"optim" * (r + 1))
    return folder


def test_only_zero_partitions_need_conversion():
    assert universal.needs_conversion(2, 1, 2) and universal.needs_conversion(1, 4, 3)
    assert not universal.needs_conversion(2, 1, 0)  # ZeRO-0 saves the optimizer whole
    assert not universal.needs_conversion(2, 2, 3)
    assert not universal.needs_conversion(2, 2, 3, 3)


def test_another_stage_is_converted_at_any_world_size():
    assert universal.needs_conversion(2, 2, 3, 2) and universal.needs_conversion(1, 1, 1, 3)
    assert universal.needs_conversion(2, 1, 2, 3)


def test_a_cached_copy_is_reused_until_its_source_changes(tmp_path):
    src = fake_checkpoint(tmp_path / "update_00000004")
    dst = tmp_path / ("update_00000004" + UNIVERSAL_SUFFIX)
    assert not universal.cached_copy(src, dst)
    dst.mkdir()
    assert not universal.cached_copy(src, dst)  # no marker: an interrupted or foreign folder
    (dst / universal.MARKER).write_text(json.dumps({"files": universal.source_files(src)}))
    assert not universal.cached_copy(src, dst)  # an older llmasr's copy: loads at the stage that saved it only
    (dst / universal.MARKER).write_text(json.dumps({"files": universal.source_files(src), "layout": "any_stage"}))
    assert universal.cached_copy(src, dst)
    (src / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"another run saved this tag")
    assert not universal.cached_copy(src, dst)
    (dst / universal.MARKER).write_text("{not json")
    assert not universal.cached_copy(src, dst)


def test_the_copy_goes_beside_the_checkpoint_unless_that_folder_is_read_only(tmp_path, monkeypatch):
    src = fake_checkpoint(tmp_path / "theirs" / "update_00000004")
    mine = tmp_path / "mine" / "checkpoints"
    beside = src.parent / ("update_00000004" + UNIVERSAL_SUFFIX)
    assert universal.universal_dir(src.parent, src.name, mine) == beside
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert universal.universal_dir(src.parent, src.name, mine) == mine / beside.name
    beside.mkdir()  # a complete copy beside a read-only checkpoint: read there, unless a ZeRO-0 run must write in it
    (beside / universal.MARKER).write_text(json.dumps({"files": universal.source_files(src), "layout": "any_stage"}))
    assert universal.universal_dir(src.parent, src.name, mine) == beside
    assert universal.universal_dir(src.parent, src.name, mine, writable=True) == mine / beside.name


def test_conversion_refuses_a_folder_without_optimizer_partitions(tmp_path):
    src = tmp_path / "update_00000004"
    src.mkdir()
    (src / "mp_rank_00_model_states.pt").write_bytes(b"model")
    with pytest.raises(FileNotFoundError, match="update_00000004: no \\*_optim_states.pt"):
        universal.convert(src, tmp_path / ("update_00000004" + UNIVERSAL_SUFFIX))


def test_resized_total_counts_the_updates_left_at_the_new_world_size():
    # 1 update done, 6 batches left in epoch 0, then epochs of 9 batches, accumulation 4
    assert universal.resized_total(1, 0, 6, [9, 9, 9], 4, None) == 1 + 2 + 3 + 3
    assert universal.resized_total(5, 1, 9, [9, 9, 9], 4, None) == 5 + 3 + 3  # saved at an epoch end
    assert universal.resized_total(1, 0, 6, [9, 9, 9], 4, 7) == 7  # max_updates decides
    assert universal.resized_total(3, 2, 0, [9, 9, 9], 4, None) == 3  # nothing left


def test_batches_left_after_a_resize_is_the_remainder_of_the_pass_it_was_saved_in():
    """Trained on 2 ranks, resumed on 1 (the epoch's remainder, dealt afresh), saved again on 1 and resumed on 1:
    the batches left are those of the remainder, not of a whole epoch (the schedule had run too long); an epoch
    the run no longer has (train.epochs lowered) has none."""
    import numpy as np

    from llmasr.data.sampler import DynamicBucketSampler

    durations = np.random.default_rng(0).uniform(1, 15, 300)

    def sampler(rank, world):
        return DynamicBucketSampler(durations, max_seconds=60.0, num_buckets=5, seed=3, rank=rank, world_size=world)

    two = sampler(0, 2)
    two.set_epoch(0)
    it = iter(two)
    for _ in range(5):
        next(it)
    one = sampler(0, 1)
    one.load_state_dict(two.state_dict(consumed=5))
    it = iter(one)
    for _ in range(3):
        next(it)
    state = one.state_dict(consumed=3)
    again = sampler(0, 1)
    again.load_state_dict(state)
    per_epoch = [len(sampler(0, 1))]
    assert universal.batches_left(per_epoch, 0, {"sampler": state}) == len(list(again)) < per_epoch[0] - 3
    assert universal.batches_left(per_epoch, 1, {"sampler": state}) == 0
    assert universal.batches_left(per_epoch, 0, None) == per_epoch[0]


def test_a_changed_global_batch_is_named_with_the_accumulation_that_keeps_it():
    ds = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 1}
    assert universal.global_batch_change({"train_batch_size": 2}, ds, 1) is None
    note = universal.global_batch_change({"train_batch_size": 4}, ds, 1)
    assert "from 4 to 2" in note and "train.grad_accum=4 keeps it" in note
    note = universal.global_batch_change({"train_batch_size": 4}, {**ds, "train_batch_size": 9}, 3)
    assert "no grad_accum keeps it at 3 rank(s)" in note


def test_describe_resize_says_how_the_epoch_continues():
    state = {"sampler": {"batches_yielded": 2}}
    assert "epoch 0 was 2 steps in" in universal.describe_resize(2, 1, 0, state, 6)
    assert "in the order the 2-rank run had planned" in universal.describe_resize(2, 1, 0, state, 6)
    assert "dealt afresh" in universal.describe_resize(2, 3, 0, state, 2)
    # what else changes: the bad-data counts of the epoch so far stay with the old world size's shares
    assert "data.max_bad_fraction counts their bad data afresh" in universal.describe_resize(2, 1, 0, state, 6)
    assert "epoch 1 starts afresh" in universal.describe_resize(2, 1, 1, None, 9)


def test_unshare_steps_gives_every_state_its_own_step():
    step = torch.tensor(3.0)
    inner = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))])
    for p in inner.param_groups[0]["params"]:
        inner.state[p] = {"step": step, "exp_avg": torch.zeros(1)}

    class Wrapper:  # DeepSpeed's ZeRO optimizers hold the torch one as .optimizer
        optimizer = inner

    universal.unshare_steps(Wrapper())
    steps = [s["step"] for s in inner.state.values()]
    assert len({id(s) for s in steps}) == 2 and all(float(s) == 3.0 for s in steps)


def test_conversion_reads_the_checkpoint_weights_only(tmp_path):
    src = fake_checkpoint(tmp_path / "update_00000004")
    shard = src / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": 2}, "payload": os.getcwd}, shard)  # a pickled callable
    dst = tmp_path / ("update_00000004" + UNIVERSAL_SUFFIX)
    with pytest.raises(RuntimeError, match="universal checkpoint failed") as err:
        universal.convert(src, dst)
    assert str(src) in str(err.value) and "getcwd" in str(err.value)
    assert not dst.exists() and not list(tmp_path.glob(".*"))


def test_conversion_refuses_a_folder_without_room_for_it(tmp_path, monkeypatch):
    """The copy and DeepSpeed's extraction on the way take about twice the optimizer partitions; refused before
    DeepSpeed writes a byte, naming the folder and both sizes (then the error reaches every rank: prepare)."""
    src = fake_checkpoint(tmp_path / "update_00000004")
    (src / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 3 * 2**20)
    (src / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"x" * 3 * 2**20)
    dst = tmp_path / ("update_00000004" + UNIVERSAL_SUFFIX)
    monkeypatch.setattr(universal, "free_bytes", lambda path: 10 * 2**20)
    with pytest.raises(OSError, match=f"{tmp_path}: 10.00 MiB free, and converting .*update_00000004 .* 12.00 MiB"):
        universal.convert(src, dst)
    assert not dst.exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(RuntimeError, match="10.00 MiB free"):
        universal.prepare(tmp_path, "update_00000004", tmp_path / "fallback", rank=0)
