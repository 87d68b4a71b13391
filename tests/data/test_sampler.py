import math

import numpy as np
import pytest

from llmasr.data.item_filters import FILTER_REASONS
from llmasr.data.sampler import DynamicBucketSampler


def librispeech_like(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(12.0), 0.6, n), 1.0, 35.0)


def padding_efficiency(batches, durations) -> float:
    real = sum(durations[b].sum() for b in batches)
    padded = sum(len(b) * durations[b].max() for b in batches)
    return real / padded


def make(durations, target_lens=None, **kw):
    kw.setdefault("max_seconds", 120.0)
    return DynamicBucketSampler(durations, target_lens, **kw)


def test_budget_respected_and_every_item_once():
    d = librispeech_like(5000)
    s = make(d, max_seconds=100.0, seed=3)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        assert len(b) * d[b].max() <= 100.0 + 1e-9
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(d.size))


def test_max_frames_budget():
    d = librispeech_like(2000)
    s = make(d, max_seconds=None, max_frames=5000, frames_per_second=100.0 / 6)
    for b in s:
        assert len(b) * math.ceil(d[b].max() * 100 / 6 - 1e-9) <= 5000


def test_target_token_cap():
    d = librispeech_like(2000)
    t = (d * 15).astype(np.int64)
    s = make(d, t, max_target_tokens=1000)
    for b in s:
        assert len(b) * t[b].max() <= 1000


def test_padding_efficiency_goal():
    d = librispeech_like(20000)
    s = make(d, seed=1)
    eff = padding_efficiency(list(s), d)
    assert eff >= 0.92, eff
    assert abs(s.stats()["padding_efficiency"] - eff) < 1e-6
    # Without in-bucket sorting the quantile buckets alone still reach the goal.
    assert padding_efficiency(list(make(d, shuffle_buffer=0)), d) >= 0.92


def test_deterministic_per_seed_and_epoch():
    d = librispeech_like(3000)
    a, b = make(d, seed=5), make(d, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    e1 = list(a)
    assert e1 == list(b)
    a.set_epoch(0)
    assert list(a) != e1
    assert list(make(d, seed=6)) != list(make(d, seed=5))


def test_no_shuffle_is_ordered_and_stable():
    d = librispeech_like(500)
    s = make(d, shuffle=False)
    first = list(s)
    s.set_epoch(3)
    assert list(s) == first
    longest = [d[b].max() for b in first]
    assert longest == sorted(longest)


def test_filters_counted():
    d = np.array([0.05, 0.5, 2.0, 3.0, 50.0, np.nan, 4.0, 10.0])
    t = np.array([1, 2, 3, 400, 5, 6, 7, 8])
    s = make(d, t, max_seconds=8.0, min_duration=0.1, max_duration=40.0, max_target_len=100)
    assert s.filtered == {
        "too_short": 1,
        "too_long": 1,
        "unknown_duration": 1,
        "target_too_long": 1,
        "over_batch_budget": 1,
    }
    kept = sorted(i for b in s for i in b)
    assert kept == [1, 2, 6]


def test_the_skipped_items_are_said_once_not_once_an_epoch(caplog):
    """The start-up plans every epoch (their update counts): a line skipped every epoch had been said once an epoch
    there, and again as each epoch began, 2E lines of the same counts. Said once, and again where the counts change."""
    s = make(np.array([0.5, 2.0, 50.0, 3.0]), max_seconds=8.0)
    with caplog.at_level("INFO", logger="llmasr"):
        for epoch in [*range(5), *range(5)]:
            s.set_epoch(epoch)
            list(s)
    said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert said == ["epoch 0: skipped 1 of 4 items (over_batch_budget 1)"]


def test_known_bad_lines_are_skipped_first_and_listed_by_reason():
    d = np.array([0.05, 0.5, 2.0, 3.0, 50.0, np.nan, 4.0, 60.0])
    s = make(d, max_seconds=8.0, min_duration=0.1, max_duration=40.0, skip=np.array([1, 4, 5]))
    assert s.filtered == {"bad_line": 3, "too_short": 1, "too_long": 1}  # a bad line counts once, as bad
    assert sorted(i for b in s for i in b) == [2, 3, 6]
    assert s.skipped_indices("too_long").tolist() == [7] and s.skipped_indices("bad_line").tolist() == [1, 4, 5]
    assert s.skipped_indices("too_short").tolist() == [0]


def test_filter_codes_and_epoch_plan_are_what_the_sampler_batches_by():
    """The public view llmasr.data.plan_record reads: each item's filter code (read-only) and the ranks' batches."""
    d = np.array([0.05, 0.5, 2.0, 3.0, 50.0, np.nan, 4.0, 60.0])
    s = make(d, max_seconds=8.0, min_duration=0.1, max_duration=40.0, skip=np.array([1, 4, 5]), world_size=2, rank=1)
    codes = s.filter_codes
    assert [FILTER_REASONS[c] if c >= 0 else None for c in codes.tolist()] == [
        "too_short", "bad_line", None, None, "bad_line", "bad_line", None, "too_long"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="read-only"):
        codes[2] = 1
    assert s.filter_codes[2] == -1 and s.filtered == {"bad_line": 3, "too_short": 1, "too_long": 1}
    s.set_epoch(1)
    assert list(s.epoch_plan().rank_batches(1)) == s.batches(1, 1) == list(s)
    assert list(s.epoch_plan(0).rank_batches(0)) == s.batches(0, 0)


def test_a_line_at_exactly_a_duration_limit_is_kept_though_the_manifest_holds_float32():
    """A manifest keeps durations in float32: 20.1 s is held as 20.1000004, and a line of exactly
    data.batching.max_duration = 20.1 was skipped as longer; 1.3 s is held as 1.2999999 and was shorter than
    min_duration = 1.3. Neither may be dropped, nor truncated."""
    d = np.array([1.3, 5.0, 20.1, 20.2, 1.2], dtype=np.float32).astype(np.float64)
    s = make(d, max_seconds=100.0, min_duration=1.3, max_duration=20.1)
    assert s.filtered == {"too_short": 1, "too_long": 1}
    assert sorted(i for b in s for i in b) == [0, 1, 2]
    t = make(d, max_seconds=100.0, min_duration=1.3, max_duration=20.1, truncate_to_max=True)
    assert np.flatnonzero(t.truncated_mask).tolist() == [3]


# The sampler position an llmasr wrote before it hashed an epoch's batches (and before as_held)
OLD_STATE_KEYS = (
    "epoch",
    "batches_yielded",
    "seed",
    "world_size",
    "rank",
    "num_items",
    "num_batches",
    "history",
    "plan",
)


def test_an_older_llmasrs_position_is_refused_where_it_skipped_a_line_at_a_duration_limit():
    """An llmasr before as_held skipped a line of exactly max_duration (20.1 s, held as 20.1000004) or min_duration,
    and saved positions with no hash of the epoch's batches: this one batches the line, so a position saved
    mid-epoch counts into other batches, though of the same count. Refused, naming the limit; a position at the
    epoch's start or end, or a run with no line at a limit, resumes."""
    d = librispeech_like(400).astype(np.float32).astype(np.float64)
    d[[7, 8]] = np.float32(20.1), np.float32(1.3)
    for key, limits in (("max_duration", {"max_duration": 20.1}), ("min_duration", {"min_duration": 1.3})):
        s = make(d, max_seconds=60.0, **limits)
        s.set_epoch(1)
        state = {k: v for k, v in s.state_dict().items() if k in OLD_STATE_KEYS}
        n = state["num_batches"]
        fresh = make(d, max_seconds=60.0, **limits)
        with pytest.raises(ValueError, match=rf"saved by an older llmasr, which skipped the epoch's 1 line\(s\) of "
                           rf"exactly data.batching.{key} .*train others twice"):  # fmt: skip
            fresh.load_state_dict({**state, "batches_yielded": 3})
        for done in (0, n):
            fresh.load_state_dict({**state, "batches_yielded": done})
    unheld = make(d, max_seconds=60.0, max_duration=20.2)  # no line at the limit
    state = {k: v for k, v in unheld.state_dict().items() if k in OLD_STATE_KEYS}
    make(d, max_seconds=60.0, max_duration=20.2).load_state_dict({**state, "batches_yielded": 3})


def test_truncate_to_max_keeps_long_items():
    d = np.array([2.0, 3.0, 50.0, 60.0])
    s = make(d, max_seconds=100.0, max_duration=30.0, truncate_to_max=True)
    assert s.filtered == {}
    assert s.stats()["truncated"] == 2
    assert sorted(i for b in s for i in b) == [0, 1, 2, 3]


def test_len_is_exact_and_cheap_across_epochs():
    d = librispeech_like(4000)
    s = make(d, world_size=3, rank=2)
    for epoch in range(3):
        s.set_epoch(epoch)
        assert len(s) == len(list(s))


def test_resume_mid_epoch_gives_identical_remaining_batches():
    d = librispeech_like(3000)
    s = make(d, seed=11)
    s.set_epoch(2)
    full = list(s)
    it = iter(s)
    for _ in range(7):
        next(it)
    state = s.state_dict()
    assert state["epoch"] == 2 and state["batches_yielded"] == 7

    fresh = make(d, seed=11)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # a trainer calling set_epoch at the top of its loop must not lose the resume point
    assert len(fresh) == len(full)
    assert list(fresh) == full[7:]
    assert list(fresh) == full  # the next pass over the epoch is whole again


def test_resume_with_consumed_count():
    d = librispeech_like(1000)
    s = make(d)
    full = list(s)
    state = s.state_dict(consumed=4)
    fresh = make(d)
    fresh.load_state_dict(state)
    assert list(fresh) == full[4:]


def rank_samplers(d, world_size, **kw):
    return [make(d, rank=r, world_size=world_size, seed=5, **kw) for r in range(world_size)]


def run_steps(samplers, epoch, state, steps):
    """Every rank resumes from `state` (or starts `epoch`) and trains `steps` steps (None: to the epoch end).
    Returns (the batches trained, rank 0's state after them)."""
    trained = []
    for s in samplers:
        if state is None:
            s.set_epoch(epoch)
        else:
            s.load_state_dict(state)
        it = iter(s)
        n = len(s) if steps is None else steps
        trained += [tuple(next(it)) for _ in range(n)]
    return trained, samplers[0].state_dict()


def test_a_state_saved_before_an_epochs_first_batch_resumes_at_its_start():
    """The last epoch's count does not carry into the next: saved between set_epoch and the first batch, the
    state resumes the new epoch whole (it said the new epoch was done, and a resume skipped all of it)."""
    d = librispeech_like(600)
    s = make(d, seed=5)
    s.set_epoch(0)
    assert len(list(s)) == len(s) > 0
    s.set_epoch(1)
    assert s.state_dict()["batches_yielded"] == 0
    again = make(d, seed=5)
    again.load_state_dict(s.state_dict())
    assert list(again) == s.batches(epoch=1)
    # a resume loaded for an epoch keeps its position through set_epoch to that epoch and back
    again.load_state_dict({**s.state_dict(), "batches_yielded": 3})
    again.set_epoch(2)
    assert again.state_dict()["batches_yielded"] == 0
    again.set_epoch(1)
    assert again.state_dict()["batches_yielded"] == 3 and list(again) == s.batches(epoch=1)[3:]


@pytest.mark.parametrize("sizes", [(2, 1), (3, 2), (2, 4), (4, 1, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_at_another_world_size_trains_every_batch_once(sizes, drop_last):
    d = librispeech_like(1500)
    full = make(d, seed=5, drop_last=drop_last).batches(epoch=1)  # the epoch's batches (1 rank: no padding)
    trained, state = [], None
    for i, ws in enumerate(sizes):
        samplers = rank_samplers(d, ws, drop_last=drop_last)
        last = i == len(sizes) - 1
        steps, state = run_steps(samplers, 1, state, None if last else 3 + i)
        assert all(s.resharded == (i > 0) for s in samplers) and len({len(s) for s in samplers}) == 1
        trained += steps
    counts: dict[tuple, int] = {}
    for b in trained:
        counts[b] = counts.get(b, 0) + 1
    assert set(counts) <= {tuple(b) for b in full}
    if not drop_last:
        assert set(counts) == {tuple(b) for b in full}  # nothing left out
    repeats = sum(c - 1 for c in counts.values())
    assert repeats <= sum(ws - 1 for ws in sizes)  # only each segment's padding duplicates
    dropped = len(full) - len(counts)
    assert dropped <= (sum(ws - 1 for ws in sizes) if drop_last else 0)


def test_resharded_epoch_resumes_again_exactly_and_the_next_pass_is_whole():
    d = librispeech_like(1500)
    two = rank_samplers(d, 2)
    _, state = run_steps(two, 0, None, 4)
    one = make(d, seed=5)
    one.load_state_dict(state)
    remainder = list(one)
    # 1 divides 2: the 2-rank plan's remaining steps in order, each split in two (rank 0's batch, then rank 1's)
    steps = zip(two[0].batches(epoch=0)[4:], two[1].batches(epoch=0)[4:])
    assert one.resharded and remainder == [b for step in steps for b in step]
    again = make(d, seed=5)
    again.load_state_dict(state)
    it = iter(again)
    head = [next(it) for _ in range(5)]
    saved = again.state_dict(consumed=5)
    assert saved["history"] == [[2, 4]] and saved["world_size"] == 1
    later = make(d, seed=5)
    later.load_state_dict(saved)
    assert not later.resharded and head + list(later) == remainder
    assert list(later) == make(d, seed=5).batches(epoch=0)  # a fresh pass deals the whole epoch
    later.set_epoch(1)
    assert list(later) == make(d, seed=5).batches(epoch=1)


def test_resume_refuses_other_seed_data_or_batching():
    d = librispeech_like(1000)
    state = make(d, world_size=2, seed=5).state_dict()
    with pytest.raises(ValueError, match="seed=5"):
        make(d, world_size=1, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="num_items"):
        make(d[:-1], world_size=1, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="batching settings"):
        make(d, world_size=1, seed=5, max_seconds=60.0).load_state_dict(state)
    with pytest.raises(ValueError, match="batching settings"):
        make(d, world_size=2, seed=5, max_seconds=60.0).load_state_dict(state)
    # the same lines in another order: as many batches, other ones (the resume would skip and repeat utterances)
    swapped = d.copy()
    swapped[[0, 1]] = d[[1, 0]]
    for world_size in (2, 1):
        other = make(swapped, world_size=world_size, seed=5)
        assert len(make(d, world_size=world_size, seed=5)) == len(other)
        with pytest.raises(ValueError, match=r"cannot resume epoch 0 at batch \d+: the training data \(data.train\)"):
            other.load_state_dict({**state, "batches_yielded": 3})
    make(d, world_size=1, seed=5).load_state_dict({**state, "batches_yielded": 3})  # the same data resumes


def test_data_changed_since_a_state_of_another_world_size_is_named_as_the_training_data():
    """Resumed at another world size, the count check against the saved plan is the first to see a changed manifest
    (the trainer's per-epoch count check runs only at the same world size): the refusal names data.train, as the one
    at the same world size does (it had asked whether the batching settings changed, which a resume refuses
    before). Lines added since the state are named likewise."""
    d = librispeech_like(1000)
    state = {**make(d, world_size=2, seed=5).state_dict(), "batches_yielded": 3}
    longer = d.copy()
    longer[:50] = 34.0
    planned = len(make(longer, world_size=2, seed=5))
    for world_size in (2, 1):
        with pytest.raises(
            ValueError,
            match=rf"the training data \(data.train\) now makes {planned} batches per rank "
            rf"of that epoch at the saved world size 2, the run had {state['num_batches']}: a manifest",
        ):
            make(longer, world_size=world_size, seed=5).load_state_dict(state)
    with pytest.raises(
        ValueError,
        match=r"the training data \(data.train\) now holds 1001 lines, the run had "
        "num_items=1000 .* Restore the manifests, or start a new run",
    ):
        make(np.append(d, 3.0), world_size=1, seed=5).load_state_dict(state)


def test_epoch_indices_and_subset():
    d = librispeech_like(1000)
    s = make(d, epoch_indices=lambda e: np.arange(0, 1000, 2 + e))
    assert {i for b in s for i in b} == set(range(0, 1000, 2))
    s.set_epoch(1)
    assert {i for b in s for i in b} == set(range(0, 1000, 3))
    sub = make(d, indices=np.array([5, 6, 7]))
    assert sorted(i for b in sub for i in b) == [5, 6, 7]


def test_repeated_visits_are_batched_under_keys_of_their_own_and_resume_exactly():
    """An epoch visiting lines 0-99 three times: the sampler yields visit keys (index + copy * 1000), each visit
    once, and a resume mid-epoch at another world size continues with the untrained ones."""
    d = librispeech_like(1000)
    three = lambda e: np.concatenate([np.arange(1000)] + [np.arange(100)] * 2)  # noqa: E731
    s = make(d, seed=5, epoch_indices=three)
    keys = sorted(k for b in s for k in b)
    assert keys == list(range(1000)) + list(range(1000, 1100)) + list(range(2000, 2100))
    for b in s.batches():
        assert len(b) * d[np.asarray(b) % 1000].max() <= 120.0 + 1e-9
    assert s.stats()["num_items"] == s.stats()["kept_items"] == 1200
    two = [make(d, seed=5, epoch_indices=three, rank=r, world_size=2) for r in range(2)]
    _, state = run_steps(two, 0, None, 4)
    one = make(d, seed=5, epoch_indices=three)
    one.load_state_dict(state)
    trained = [k for step in zip(two[0].batches()[:4], two[1].batches()[:4]) for b in step for k in b]
    assert sorted(trained + [k for b in one for k in b]) == keys


def test_empty_and_tiny_datasets_do_not_break():
    s = make(np.zeros(0), world_size=4, rank=1)
    assert len(s) == 0 and list(s) == []
    tiny = np.array([3.0])
    for r in range(4):
        s = make(tiny, world_size=4, rank=r)
        assert list(s) == [[0]]  # padded with duplicates so that every rank takes a step
        assert len(make(tiny, world_size=4, rank=r, drop_last=True)) == 0


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make(np.ones(3), max_seconds=None)
    with pytest.raises(ValueError):
        make(np.ones(3), max_frames=10)
    with pytest.raises(ValueError):
        make(np.ones(3), rank=2, world_size=2)


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("shuffle", [True, False])
def test_skipping_duplicate_steps_covers_every_item_exactly_once(world_size, shuffle):
    """The last group's padding repeats batches; the steps duplicate_steps() names are exactly those repeats, so an
    evaluation that skips them scores every item once."""
    d = librispeech_like(301, seed=world_size)
    samplers = [make(d, max_seconds=90.0, rank=r, world_size=world_size, shuffle=shuffle) for r in range(world_size)]
    assert samplers[0].num_padding_batches > 0  # the case under test: the batches do not divide by world size
    counted, skipped = [], 0
    for s in samplers:
        dups = s.duplicate_steps()
        skipped += len(dups)
        counted += [i for step, b in enumerate(s) if step not in dups for i in b]
    assert skipped == samplers[0].num_padding_batches
    assert sorted(counted) == list(range(d.size))


def test_drop_last_leaves_out_other_batches_each_epoch():
    """drop_last drops the batches left over after dividing by the world size. They had been the last in cost order
    every epoch, so the longest utterances were never trained; drawn at random, every utterance trains in some epoch
    of a few, and each epoch says how many batches it left out."""
    d = librispeech_like(600)
    samplers = rank_samplers(d, 8, drop_last=True, max_seconds=60.0)
    trained, longest = set(), set(np.argsort(d)[-5:].tolist())
    for epoch in range(8):
        per_rank = [s.batches(epoch=epoch) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1  # the ranks stay in step
        seen = {i for batches in per_rank for batch in batches for i in batch}
        stats = samplers[0].stats(epoch)
        assert stats["dropped_batches"] == stats["num_batches_global"] % 8 > 0
        assert len(seen) < len(d)
        trained |= seen
    assert longest <= trained and len(trained) == len(d)


def test_drop_last_s_left_out_batches_are_said_once_and_again_where_their_count_changes(caplog):
    """The start-up plans every epoch: drop_last's line had been said once an epoch there and again as each began."""
    d = librispeech_like(600)
    sampler = rank_samplers(d, 8, drop_last=True, max_seconds=60.0)[0]
    with caplog.at_level("INFO", logger="llmasr"):
        for epoch in [*range(4), *range(4)]:
            sampler.set_epoch(epoch)
            list(sampler)
    said = [r.getMessage() for r in caplog.records if "drop_last left out" in r.getMessage()]
    dropped = sampler.stats(0)["dropped_batches"]
    assert dropped > 0 and said == [
        f"epoch 0: data.batching.drop_last left out {dropped} batch(es) over the world size 8, drawn at random"
    ]


def test_an_epoch_resumed_from_a_plan_that_dropped_the_last_batches_keeps_it():
    """A state saved before drop_last drew its left-over batches (no "plan" in it) resumes the plan it was trained
    on: the rest of that epoch is that plan's, so no batch trains twice and none is skipped; the next epoch draws.
    After a resume at another world size, dropped_batches counts what the epoch really left out."""
    d = librispeech_like(400)
    samplers = rank_samplers(d, 3, drop_last=True, max_seconds=60.0)
    legacy = {**samplers[0].state_dict(), "epoch": 1, "batches_yielded": 0}
    legacy.pop("plan")
    legacy.pop("batches_sha1")  # nor its batches' hash
    for s in samplers:
        s.load_state_dict({**legacy, "rank": s.rank})
    old_plan = [s.batches(epoch=1) for s in samplers]  # the plan the old run trains epoch 1 on
    ordered = samplers[0]._ordered_batches(1).lists()
    kept = {tuple(b) for plan in old_plan for b in plan}
    assert {tuple(b) for b in ordered[-(len(ordered) % 3) :]}.isdisjoint(kept)  # its last batches dropped
    fresh = rank_samplers(d, 3, drop_last=True, max_seconds=60.0)
    for s in fresh:
        s.load_state_dict({**legacy, "rank": s.rank, "batches_yielded": 10})
        assert s.batches(epoch=1) == old_plan[s.rank] and s.state_dict()["plan"] == 1
        assert s.stats(2)["dropped_batches"] == len(s._ordered_batches(2)) % 3
    two = rank_samplers(d, 2, drop_last=True, max_seconds=60.0)
    state = fresh[0].state_dict()  # saved again in the resumed epoch: still the old plan
    for s in two:
        s.load_state_dict({**state, "rank": s.rank})
        assert s.resharded and s.stats()["dropped_batches"] <= 1 + 2  # the first plan's and the remainder's


def test_a_line_screened_unusable_since_the_state_is_named_as_the_cause():
    """A manifest left as it was, but a line's audio removed (or restored) since the checkpoint: the screen skips
    another set of lines, so the epoch makes other batches. The refusal says so; it had blamed edited manifests or
    changed durations, which the user finds unchanged."""
    d = librispeech_like(300)
    state = {**make(d, world_size=2, seed=5, skip=np.array([4])).state_dict(), "batches_yielded": 3}
    assert state["unusable"][0] == 1
    for now, said in (([4, 9], "2 of its lines are screened unusable before loading now, the run had 1"),
                      ([9], "1 of its lines are screened unusable before loading now, other ones than the run's"),
                      ([], "0 of its lines .* the run had 1")):  # fmt: skip
        with pytest.raises(ValueError, match=said + r" .*restored since the checkpoint.* Restore the audio files"):
            make(d, world_size=2, seed=5, skip=np.array(now, dtype=np.int64)).load_state_dict(state)
    make(d, world_size=2, seed=5, skip=np.array([4])).load_state_dict(state)  # the same lines skipped: resumes


def short_and_long_batches() -> np.ndarray:
    """16 clips of 0.5 s (4 a batch at 2 s) and 6 of 1.5 s (1 a batch): 10 batches, of 4 and of 1 utterances."""
    return np.array([0.5] * 16 + [1.5] * 6)


def test_mean_batch_size_counts_the_real_batches_not_their_padding_duplicates():
    """Over 8 ranks the last group's 2 one-utterance batches are padded with 6 repeats of themselves: the mean batch
    size had counted them, 28 utterances over 16 rank-batches, where the epoch's 10 batches hold 22."""
    s = make(short_and_long_batches(), max_seconds=2.0, num_buckets=1, world_size=8)
    st = s.stats(0)
    assert (st["num_batches_global"], st["num_batches_per_rank"], st["num_padding_batches"]) == (10, 2, 6)
    assert st["mean_batch_size"] == pytest.approx(22 / 10)


def test_padding_duplicates_past_a_tenth_of_the_rank_batches_are_warned_once(caplog):
    """10 batches over 8 ranks: 6 of 16 rank-batches repeat a batch. Training's sampler says so with the numbers, in
    its stats and once in the log (rank 0), however often its epochs are planned; 10 batches over 5 ranks, or a
    sampler not training's, say nothing."""
    d = short_and_long_batches()
    with caplog.at_level("WARNING", logger="llmasr.data"):
        s = make(d, max_seconds=2.0, num_buckets=1, world_size=8, padding_warns=True)
        for epoch in (0, 1, 0, 2):
            s.set_epoch(epoch)
            len(s)
    want = "10 batches over 8 ranks: 6 of the 16 rank-batches (38%) are padding duplicates"
    assert s.stats(0)["padding_warning"].startswith(want)
    assert [r.getMessage().startswith(f"epoch 0: {want}") for r in caplog.records] == [True]
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmasr.data"):
        others = [
            make(d, max_seconds=2.0, num_buckets=1, world_size=5, padding_warns=True),
            make(d, max_seconds=2.0, num_buckets=1, world_size=8),  # validation's, decoding's
            make(d, max_seconds=2.0, num_buckets=1, world_size=8, rank=1, padding_warns=True),
        ]
    assert [o.stats(0)["padding_warning"] is None for o in others] == [True, True, False]
    assert caplog.records == []


@pytest.mark.parametrize("budget", [{"max_seconds": 120.0}, {"max_seconds": None, "max_frames": 12000}])
def test_padding_efficiency_counts_a_fixed_window_as_padding(budget):
    """Every clip costs Whisper's 30 s window, and the encoder runs over all of it: 3-6 s clips fill a fifth of
    what is padded. Counting each clip at its cost had reported 1.000, no padding at all."""
    d = np.random.default_rng(0).uniform(3.0, 6.0, 400)
    s = make(d, min_item_seconds=30.0, frames_per_second=100.0, **budget)
    batches = list(s)
    assert all(len(b) == 4 for b in batches)  # four windows of 30 s in 120 s
    real = sum(d[b].sum() for b in batches) / (30.0 * sum(len(b) for b in batches))
    assert s.stats()["padding_efficiency"] == pytest.approx(real, rel=0.01)
    assert 0.1 < s.stats()["padding_efficiency"] < 0.2
    # a clip cut at the window (truncate_to_max; the loader caps max_duration at the window) fills it
    long = make(np.array([40.0, 10.0]), min_item_seconds=30.0, truncate_to_max=True, max_duration=30.0)
    assert long.stats()["padding_efficiency"] == pytest.approx((30.0 + 10.0) / 60.0)


def test_padding_duplicates_a_resume_on_one_rank_continues_are_said_to_be_the_earlier_ranks():
    """An epoch cut for 8 ranks, resumed on 1: the duplicates it still trains are the 8-rank cut's, which the warning
    had blamed on "1 ranks" and a world size that does not divide the batches."""
    d = short_and_long_batches()
    eight = make(d, max_seconds=2.0, num_buckets=1, world_size=8, padding_warns=True)
    eight.set_epoch(0)
    one = make(d, max_seconds=2.0, num_buckets=1, padding_warns=True)
    one.load_state_dict(eight.state_dict(consumed=0))  # saved as the epoch began: its 8-rank cut continues
    said = one.stats(0)["padding_warning"]
    assert one.resharded and said.startswith("10 batches on 1 rank: ") and "over 1 ranks" not in said
    assert "duplicates of the epoch as the run cut it for its earlier ranks" in said
    assert one.stats(1)["padding_warning"] is None  # the next epoch is cut for 1 rank
