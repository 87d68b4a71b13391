"""data.batching.max_llm_tokens in the sampler: B x the longest LLM row stays within it, short clips (whose fixed
prompt weighs more per second) make batches of fewer rows than the audio budget alone allows, and an item past it on
its own is skipped and counted as over_batch_budget."""

import numpy as np
import pytest

from llmasr.data.sampler import DynamicBucketSampler

PROMPT = 60  # a chat template, an instruction and a biasing list: every row carries them


def rows(durations: np.ndarray) -> np.ndarray:
    """LLM positions of clips: the prompt, 12.5 audio tokens a second and about 4 transcript tokens a second."""
    return PROMPT + np.ceil(durations * 12.5).astype(np.int64) + np.ceil(durations * 4).astype(np.int64)


def mixed(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 20.0, n)


def test_every_batch_holds_at_most_the_budget_of_padded_llm_positions():
    d = mixed(4000)
    llm = rows(d)
    # windows of 50 restart each bucket's sort: the batches are reordered by cost after the cut
    s = DynamicBucketSampler(d, llm_lens=llm, max_llm_tokens=2000, max_seconds=200.0, seed=1, shuffle_buffer=50)
    batches = list(s)
    assert batches
    for b in batches:
        assert len(b) * llm[b].max() <= 2000
        assert len(b) * d[b].max() <= 200.0 + 1e-9
    assert sorted(i for b in batches for i in b) == list(range(d.size))  # nothing over it on its own: all batched
    st = s.stats()["llm_positions"]
    padded = [len(b) * int(llm[b].max()) for b in batches]
    assert st["max"] == max(padded) and st["mean"] == pytest.approx(np.mean(padded))
    assert st["longest_row"] == int(llm.max())


def test_short_clips_make_batches_of_fewer_rows_than_the_audio_budget_alone():
    """120 one-second clips fit 120 s of audio; their 77 LLM positions each (60 of them prompt) do not fit 4000."""
    d = np.full(600, 1.0)
    plain = DynamicBucketSampler(d, max_seconds=120.0)
    capped = DynamicBucketSampler(d, llm_lens=rows(d), max_llm_tokens=4000, max_seconds=120.0)
    assert max(len(b) for b in plain) == 120
    assert max(len(b) for b in capped) == 4000 // int(rows(d)[0]) < 120
    # long clips: the audio budget binds first, and the LLM budget changes nothing
    long = np.full(60, 20.0)
    assert list(DynamicBucketSampler(long, max_seconds=120.0)) == list(
        DynamicBucketSampler(long, llm_lens=rows(long), max_llm_tokens=4000, max_seconds=120.0)
    )


def test_an_item_past_the_budget_alone_is_skipped_and_counted():
    d = mixed(500, seed=2)
    llm = rows(d)
    big = [7, 300]
    llm[big] = 5000
    s = DynamicBucketSampler(d, llm_lens=llm, max_llm_tokens=4000, max_seconds=200.0)
    assert s.filtered == {"over_batch_budget": 2}
    assert s.skipped_indices("over_batch_budget").tolist() == big
    assert not set(big) & {i for b in s for i in b}


def test_the_budget_needs_a_length_per_item():
    with pytest.raises(ValueError, match=r"max_llm_tokens needs llm_lens, one per item: got shape \(3,\)"):
        DynamicBucketSampler(np.ones(4), llm_lens=np.ones(3), max_llm_tokens=100, max_seconds=10.0)


def test_growth_after_padding_counts_at_the_largest_of_the_batch():
    """Decoding (llm_new): the inputs are padded to the longest, then every row grows by the largest cap, which need
    not be the longest input's: B x (longest input + largest growth) stays within the budget."""
    rng = np.random.default_rng(3)
    d = np.sort(rng.uniform(1.0, 10.0, 400))
    inputs = PROMPT + np.ceil(d * 12.5).astype(np.int64)
    inputs[::7] += 200  # a long biasing list on some shorter clips
    new = np.ceil(d * 8).astype(np.int64) + 9
    s = DynamicBucketSampler(d, llm_lens=inputs, llm_new=new, max_llm_tokens=3000, max_seconds=1e6, shuffle=False)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(d.size))
    held = [len(b) * (inputs[b].max() + new[b].max()) for b in batches]
    assert max(held) <= 3000
    assert any(len(b) * (inputs[b] + new[b]).max() < h for b, h in zip(batches, held))  # one sum per row undercounts
    assert s.stats()["llm_positions"]["max"] == max(held)


def test_an_item_past_the_budget_alone_is_batched_alone_when_asked():
    """Decoding skips no item (llm_alone): one past the budget gets a batch of its own, the others stay within it."""
    d = mixed(300, seed=4)
    llm = rows(d)
    big = [5, 120]
    llm[big] = 5000
    s = DynamicBucketSampler(d, llm_lens=llm, max_llm_tokens=4000, max_seconds=200.0, llm_alone=True)
    batches = list(s)
    assert s.filtered == {}
    assert sorted(i for b in batches for i in b) == list(range(d.size))
    assert sorted(b for b in batches if len(b) * llm[b].max() > 4000) == [[5], [120]]
