"""The hotword sampler's start-up pass over the training texts (llmasr.data.corpus_stats): the pool is the bottom-k of
keys hashed per n-gram occurrence, a uniform sample that one rank and the ranks of a node sharing the pass (threads
here, their gather a barrier) build alike, each rank counting its part only; a rank that fails stops them all."""

from __future__ import annotations

import json
import threading
from collections import Counter

import numpy as np
import pytest

import llmasr.data.corpus_stats as cs
from llmasr.config_io import from_dict
from llmasr.data.corpus_stats import CorpusStats, occurrence_keys
from llmasr.data.hotword_units import glued_units, join_units, ngrams
from llmasr.data.hotwords import HotwordsConfig
from llmasr.data.manifest import Manifest
from llmasr.data.screen_share import ScreenShare
from llmasr.rank_verdict import RankFailure, node_name
from llmasr.testing.thread_ranks import run_ranks

WORDS = [
    "the",
    "cat",
    "Sat",
    "on",
    "a",
    "mat",
    "zanzibar",
    "dog",
    "and",
    "The",
    "通义",
    "千问",
    "很好",
    "买了iPhone手机",
]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMASR_CACHE_DIR", str(tmp_path / "cache"))


def corpus(tmp_path, n=40, bad=(5, 17)) -> Manifest:
    rng = np.random.default_rng(3)
    lines = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 9))))
        lines.append("{not json" if i in bad else json.dumps({"key": f"u{i}", "source": "x.wav", "target": text}))
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Manifest.open(path)


def config(**kw) -> HotwordsConfig:
    return from_dict(HotwordsConfig, {"enable": True, "ngram": [1, 3], "pool_size": 30, **kw}, "data.hotwords")


def same(a: CorpusStats, b: CorpusStats) -> bool:
    return (a.counts, a.pool, a.longest) == (b.counts, b.pool, b.longest)


def test_the_pool_is_the_occurrences_of_smallest_key_in_key_order(tmp_path):
    """Against a brute-force reading of the rule: every n-gram occurrence of the parseable lines keyed by (seed,
    line, span), the pool_size smallest taken, in key order; counts and the longest phrase bound as the texts give
    them."""
    m, cfg = corpus(tmp_path), config(unit="auto")
    occ, counts, longest = [], Counter(), 0
    for i in range(len(m)):
        if i in (5, 17):
            continue
        parts, glued = glued_units(m[i].target, "auto")
        counts.update(p.lower() for p in parts)
        for s, (a, b) in enumerate(ngrams(parts, 1, 3)):
            occ.append((i, s, join_units(parts[a:b], "auto", glued[a:b])))
        top = sorted(len(p.encode()) for p in parts)[-3:] if parts else []  # a bound: its 3 longest units, spaced
        longest = max(longest, sum(top) + len(top) - 1)
    keys = occurrence_keys(7, np.array([o[0] for o in occ]), np.array([o[1] for o in occ]))
    order = sorted(range(len(occ)), key=lambda j: (int(keys[j]), occ[j][0], occ[j][1]))
    stats = CorpusStats.from_manifest(m, cfg, seed=7)
    assert len(occ) > 3 * cfg.pool_size and stats.counts == counts and stats.longest == longest
    assert stats.pool == [occ[j][2] for j in order[: cfg.pool_size]]
    whole = CorpusStats.from_manifest(m, config(unit="auto", pool_size=10_000), seed=7)
    assert whole.pool == [occ[j][2] for j in order]  # a pool larger than the corpus holds every occurrence
    assert CorpusStats.from_manifest(m, cfg, seed=8).pool != stats.pool  # the seed picks the sample


def test_the_pool_does_not_depend_on_how_lines_are_keyed_together(tmp_path, monkeypatch):
    m, cfg = corpus(tmp_path), config()
    whole = CorpusStats.from_manifest(m, cfg, seed=1)
    monkeypatch.setattr(cs, "CHUNK", 3)  # occurrences offered in many small batches, pushed out between them
    assert same(CorpusStats.from_manifest(m, cfg, seed=1), whole)


@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("pool_size", [30, 10_000])
def test_the_ranks_of_a_node_count_a_part_each_and_all_end_with_the_same_stats(tmp_path, monkeypatch, parts,
                                                                               pool_size):  # fmt: skip
    m, cfg = corpus(tmp_path), config(pool_size=pool_size)
    alone = CorpusStats.from_manifest(m, cfg, seed=5)
    calls, sent = Counter(), {}
    counted = cs.glued_units

    def counting_units(text, unit):
        calls[threading.current_thread().name] += 1
        return counted(text, unit)

    monkeypatch.setattr(cs, "glued_units", counting_units)

    def rank(r, gather):
        def spy(obj):
            sent[r] = obj
            return gather(obj)

        return CorpusStats.from_manifest(Manifest.open(m.path), cfg, 5, ScreenShare(r, parts, spy, "node"))

    for got in run_ranks(parts, rank):
        assert isinstance(got, CorpusStats) and same(got, alone)
    for r in range(parts):  # a rank parses its part of the lines only, and sends its counts and pool, no line
        assert calls[f"rank{r}"] == len([i for i in range(r, len(m), parts) if i not in (5, 17)]), r
        mine = sent[r]["screen"]
        if parts == 1:  # alone on its node: it keeps its count and sends none
            assert mine is None
            continue
        assert len(mine["pool"]["keys"]) <= pool_size and set(mine["pool"]) == {"keys", "lines", "spans", "texts"}
    assert sum(len(sent[r]["screen"]["pool"]["keys"]) for r in range(parts) if parts > 1) <= parts * pool_size


def test_ranks_that_do_not_make_up_a_node_each_count_everything(tmp_path):
    m, cfg = corpus(tmp_path), config()
    alone = CorpusStats.from_manifest(m, cfg, seed=5)
    got = run_ranks(2, lambda r, gather: CorpusStats.from_manifest(m, cfg, 5, ScreenShare(0, 2, gather, "node")))
    assert all(same(g, alone) for g in got)


def test_a_rank_failing_in_its_count_stops_every_rank_in_the_same_gather(tmp_path, monkeypatch):
    m, cfg = corpus(tmp_path), config()
    counted = cs.glued_units

    def failing_units(text, unit):
        if threading.current_thread().name == "rank1":
            raise OSError("its copy of the texts is gone")
        return counted(text, unit)

    monkeypatch.setattr(cs, "glued_units", failing_units)
    zero, one = run_ranks(2, lambda r, gather: CorpusStats.from_manifest(m, cfg, 5, ScreenShare(r, 2, gather, "n")))
    assert isinstance(zero, RankFailure) and zero.ranks_told
    why = "could not build its training data; every rank stops with it:\n  OSError: its copy of the texts is gone"
    assert f"rank 1 (node {node_name()}) {why}" in str(zero)
    assert isinstance(one, OSError) and one.ranks_told


def chi2(observed, expected) -> float:
    observed, expected = np.asarray(observed, dtype=float), np.asarray(expected, dtype=float)
    return float(((observed - expected) ** 2 / expected).sum())


def test_the_pool_is_a_uniform_sample_of_the_occurrences(tmp_path):
    """Lines of 1 to 8 distinct words (unigrams: each pool phrase names its line and place): over a few seeds, the
    picks per line length, per stretch of the file and per place in a line follow the occurrences there (a sample
    uniform over lines, the first lines' or the first words' would be far off), and two picks share a line no more
    often than chance has them (a sample of whole lines would). Loose bounds: a chi-square of 9 or fewer degrees of
    freedom beyond 40 is a bias, not chance (without replacement it spreads less still)."""
    n, seeds, k = 400, 10, 450
    lengths = 1 + np.arange(n) % 8
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps({"key": f"u{i}", "source": "x.wav",
                                        "target": " ".join(f"w{i}x{j}" for j in range(lengths[i]))}) + "\n"
                            for i in range(n)), encoding="utf-8")  # fmt: skip
    m, cfg = Manifest.open(path), config(unit="word", ngram=[1, 1], pool_size=k)
    by_length, by_stretch, by_place, pairs = np.zeros(8), np.zeros(10), np.zeros(8), 0
    for seed in range(seeds):
        pool = CorpusStats.from_manifest(m, cfg, seed).pool
        assert len(pool) == len(set(pool)) == k  # without replacement
        per_line = Counter()
        for phrase in pool:
            i, j = map(int, phrase[1:].split("x"))
            by_length[lengths[i] - 1] += 1
            by_stretch[i * 10 // n] += 1
            by_place[j] += 1
            per_line[i] += 1
        pairs += sum(c * (c - 1) // 2 for c in per_line.values())
    total = lengths.sum()
    # two picks from one line as often as from any two occurrences: not whole lines taken together
    expected_pairs = seeds * (lengths * (lengths - 1) // 2).sum() * k * (k - 1) / (total * (total - 1))
    assert abs(pairs / expected_pairs - 1) < 0.15, (pairs, expected_pairs)
    share_of = seeds * k / total  # picks an occurrence gets on average
    assert chi2(by_length, [share_of * (n // 8) * (L + 1) for L in range(8)]) < 40
    assert chi2(by_stretch, [share_of * lengths[s * n // 10 : (s + 1) * n // 10].sum() for s in range(10)]) < 40
    assert chi2(by_place, [share_of * (lengths > j).sum() for j in range(8)]) < 40


def test_plan_run_shares_the_pass_between_the_ranks_of_a_node(tiny_llm_dir, tmp_path, monkeypatch):
    """The share plan_run makes for the start-up screen reaches the hotword sampler: on two ranks of a node each
    counts half the training texts, and both draw from the stats one rank alone builds."""
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train import plan as plan_mod

    data = write_tiny_corpus(tmp_path / "corpus", n=12)
    d = tiny_recipe_dict(tiny_llm_dir, train=[data], output_dir=tmp_path / "run")
    d["data"]["hotwords"] = {"enable": True, "ngram": [1, 2], "pool_size": 7}
    recipe = load_recipe(data=d)
    alone = plan_mod.plan_run(recipe, {}, rank=0, world_size=1).loaders[0].dataset.hotword_sampler.stats
    calls, counted = Counter(), cs.glued_units

    def counting_units(text, unit):
        calls[threading.current_thread().name] += 1
        return counted(text, unit)

    monkeypatch.setattr(cs, "glued_units", counting_units)
    share_of = {}
    of_node = staticmethod(lambda gather: ScreenShare(share_of[gather], 2, gather, "node"))
    monkeypatch.setattr(plan_mod.ScreenShare, "of_node", of_node)

    def rank(r, gather):
        share_of[gather] = r
        return plan_mod.plan_run(recipe, {}, rank=r, world_size=2, all_gather=gather).loaders[0].dataset

    for dataset in run_ranks(2, rank):
        assert same(dataset.hotword_sampler.stats, alone) and len(alone.pool) == 7
    assert calls == {"rank0": 6, "rank1": 6}
