"""The sampler's epoch plan (llmasr.data.batch_cut, llmasr.data.regroup): held as arrays, and the very batches, in
the very order, that the list-building plan it replaced made, so that saved positions and their hashes still count
into it."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest

from llmasr.data.batch_cut import unverified
from llmasr.data.sampler import DynamicBucketSampler
from llmasr.testing.run_dirs import older_position


def reference_plan(s: DynamicBucketSampler, epoch: int) -> tuple[list[list[list[int]]], str]:
    """Every rank's batches of `epoch` and their hash, built with Python lists the way the sampler built them before
    its plan was arrays (every item kept, each visited once: visit keys are dataset indices)."""
    rng = np.random.default_rng([s.seed, epoch])
    keep = np.arange(s.durations.size)
    if s.shuffle:
        keep = keep[rng.permutation(keep.size)]
    keep = keep[np.argsort(s.bucket_of[keep], kind="stable")]
    batches, carry = [], []
    for bucket in np.unique(s.bucket_of[keep]):
        part = [int(i) for i in keep if s.bucket_of[i] == bucket]
        for start in range(0, len(part), s.shuffle_buffer):
            cur = []
            for i in sorted(carry + part[start : start + s.shuffle_buffer], key=lambda i: s.sizes[i]):
                if cur and (len(cur) + 1) * max(s.sizes[cur + [i]]) > s.budget:
                    batches.append(cur)
                    cur = []
                cur.append(i)
            carry = cur
    if carry:
        batches.append(carry)
    batches.sort(key=lambda b: (max(s.bucket_of[b]), max(s.sizes[b])))
    flat = np.asarray([i for b in batches for i in b], dtype=np.int64)
    sha1 = hashlib.sha1(np.asarray([len(b) for b in batches], dtype=np.int64).tobytes() + flat.tobytes()).hexdigest()
    ws, positions = s.world_size, list(range(len(batches)))
    if s.drop_last and len(positions) % ws and s.shuffle:
        out = set(rng.choice(len(positions), size=len(positions) % ws, replace=False).tolist())
        positions = [p for p in positions if p not in out]
    groups = [positions[i : i + ws] for i in range(0, len(positions), ws)]
    if groups and len(groups[-1]) < ws:
        if s.drop_last:
            groups.pop()
        else:
            groups[-1] = [groups[-1][j % len(groups[-1])] for j in range(ws)]
    if s.shuffle and groups:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    return [[batches[g[r]] for g in groups] for r in range(ws)], sha1


@pytest.mark.parametrize("world_size", [1, 3, 8])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [True, False])
def test_the_plan_is_the_list_built_plan(world_size, drop_last, shuffle):
    durations = np.random.default_rng(world_size).uniform(1.0, 20.0, 700)
    for epoch in (0, 1):
        s = DynamicBucketSampler(durations, max_seconds=60.0, num_buckets=5, shuffle_buffer=90, seed=4,
                                 world_size=world_size, drop_last=drop_last, shuffle=shuffle)  # fmt: skip
        ranks, sha1 = reference_plan(s, epoch)
        assert [s.batches(epoch, rank) for rank in range(world_size)] == ranks
        assert s.stats(epoch)["num_batches_per_rank"] == len(ranks[0]) > 0
        s.set_epoch(epoch)
        assert s.state_dict()["batches_sha1"] == sha1


def test_every_ranks_plan_is_held_in_arrays():
    """Every rank holds every rank's batches: as Python lists of ints they cost about 100 bytes an item (the int,
    its slot in a list, the list's share); as int64 arrays, the keys and one offset per batch."""
    durations = np.random.default_rng(0).uniform(1.5, 6.5, 50_000)
    s = DynamicBucketSampler(durations, max_seconds=8.0, world_size=8)
    tracemalloc.start()
    try:
        len(s)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held / durations.size < 24, f"{held / durations.size:.0f} bytes an item"


def test_the_keys_an_epoch_trains_count_a_padding_repeat_once_and_no_dropped_batch():
    """EpochPlan.trained_keys is what `llmasr check` and train.log count a mix's visits from: 4 batches over 3 ranks,
    one step of them; drop_last's left-over batch is in no group, a padding repeat in two."""
    from llmasr.data.batch_cut import EpochPlan

    keys, offsets = np.array([5, 6, 7, 8, 9, 10]), np.array([0, 2, 3, 5, 6])  # batches [5 6] [7] [8 9] [10]
    padded = EpochPlan(keys, offsets, np.array([[0, 1, 2], [3, 0, 1]]))  # 4 batches, 2 repeated to fill a step
    assert padded.trained_keys().tolist() == [5, 6, 7, 8, 9, 10]
    dropped = EpochPlan(keys, offsets, np.array([[2, 0, 3]]))  # batch 1 left out
    assert dropped.trained_keys().tolist() == [5, 6, 8, 9, 10]


def test_a_position_an_older_llmasr_saved_mid_epoch_is_said_to_be_checked_by_its_count_only():
    """Such a position (no batches_sha1) could count into other batches of the same count, unsaid: the resume
    says so; one at an epoch's start or end, or one with the hash, has nothing to say."""
    old = older_position()  # as that llmasr wrote it
    said = unverified({"sampler": old, "bad_data": []})
    assert said.startswith("data.train: the checkpoint's position (epoch 2, batch 8 of 16) was saved by an older "
                           "llmasr, which kept no hash of the epoch's batches")  # fmt: skip
    for done in (0, 16):
        assert unverified({"sampler": {**old, "batches_yielded": done}}) is None
    assert unverified({"sampler": {**old, "batches_sha1": "ab12"}}) is None
    assert unverified(None) is None
