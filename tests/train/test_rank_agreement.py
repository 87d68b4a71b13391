"""The ranks' findings on the training data are compared before training: a rank that found a file missing (its
node's copy of the data lacks it) would plan other batches than the rest, and the run would hang or train some
utterances twice and others never."""

import json
import shutil

import pytest

from llmasr.config_io import ConfigError
from llmasr.data.bad_data import BadItem
from llmasr.rank_verdict import RankFailure, node_name
from llmasr.recipe import load_recipe
from llmasr.testing.thread_ranks import run_ranks
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.plan import plan_run
from llmasr.train.rank_agreement import SHOWN, check_ranks_agree


def recipe_for(tiny_llm_dir, manifest, run):
    data = tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=run)
    data["data"]["max_bad_fraction"] = 0.5
    return load_recipe(data=data)


def alone(gather):
    """`gather` for the data's check; each rank alone on its node, whose screen's exchanges send nothing to compare."""
    return lambda d: [d, d] if "screen" in d else gather(d)


def test_a_rank_missing_a_file_stops_every_rank_naming_the_line(tiny_llm_dir, tmp_path):
    """Two ranks (threads, their gathers real) on nodes with their own copies of the data: rank 1's lacks one wav.
    Both stop naming the line as rank 1 read it (its node's manifest, not rank 0's), why it is bad there and the
    audio path it looked for; the message had named rank 0's manifest:line alone."""
    corpus = write_tiny_corpus(tmp_path / "corpus", n=16, with_duration=False)  # durations probed from headers
    node = tmp_path / "node1"  # rank 1's node: the same manifest, one wav missing from its copy
    shutil.copytree(corpus.parent, node)
    lines = node.joinpath(corpus.name).read_text().splitlines()
    gone = json.loads(lines[6])["source"]
    (node / gone).unlink()
    recipes = [recipe_for(tiny_llm_dir, corpus, tmp_path / "run"), recipe_for(tiny_llm_dir, node / corpus.name,
                                                                               tmp_path / "run")]  # fmt: skip
    said = run_ranks(2, lambda r, gather: plan_run(recipes[r], {}, rank=r, world_size=2, all_gather=gather))
    assert all(isinstance(e, ConfigError) and str(e) == str(said[0]) for e in said), said
    assert "the ranks do not see the same training data" in str(said[0])
    assert (
        f"1 line(s) screened bad on rank 1 (node {node_name()}) only:\n    {node / corpus.name}:7 key=utt00_0006: "
        f"audio {node / gone}: file not found" in str(said[0])
    ), said[0]
    with pytest.raises(ConfigError, match=r"rank 1 \(node .+\) plans \[9\] steps per epoch, rank 0 \(node .+\) \[3\]"):
        check_ranks_agree(
            {"steps": [3], "bad": [], "durations": "d", "node": node_name()}, None, lambda d: [d, {**d, "steps": [9]}]
        )


def test_only_the_shown_lines_reasons_travel_each_from_the_rank_that_found_it(tmp_path):
    """The reasons come in a second gather, only when the ranks' bad lines differ, and only for the lines shown:
    rank 1's first SHOWN of its 8 lines alone bad, rank 0's one; a rank's reason for a line that both found bad
    is not asked for."""
    bad = [[BadItem("m0", 3, "k2", "r0 says", 2), BadItem("m0", 10, "k9", "both", 9)],
           [BadItem("m1", i + 1, f"k{i}", f"r1 says {i}", i) for i in range(10, 18)]
           + [BadItem("m1", 10, "k9", "both", 9)]]  # fmt: skip
    sent = [[], []]

    def work(rank, gather):
        digest = {"steps": [3], "bad": sorted(b.index for b in bad[rank]), "durations": "d", "node": f"n{rank}"}
        check_ranks_agree(digest, None, lambda d: sent[rank].append(d) or gather(d), None, bad[rank])

    said = run_ranks(2, work)
    assert [len(s) for s in sent] == [2, 2] and sent[0][1] == {2: "m0:3 key=k2: r0 says"}
    assert sorted(sent[1][1]) == list(range(10, 10 + SHOWN))
    text = str(said[0])
    assert str(said[1]) == text
    assert "8 line(s) screened bad on rank 1 (node n1) only:\n    m1:11 key=k10: r1 says 10\n" in text
    assert "\n    m1:15 key=k14: r1 says 14\n    ... and 3 more\n" in text
    assert "1 line(s) screened bad on rank 0 (node n0) only:\n    m0:3 key=k2: r0 says\n" in text
    sent = [[], []]
    bad = [[], []]
    said = run_ranks(2, lambda r, g: check_ranks_agree({"steps": [3 + 6 * r], "bad": [], "durations": "d"}, None,
                                                       lambda d: sent[r].append(d) or g(d)))  # fmt: skip
    assert [len(s) for s in sent] == [1, 1] and "plans [9] steps per epoch" in str(said[0])


def test_a_rank_that_cannot_build_its_data_stops_the_others_too(tiny_llm_dir, tmp_path):
    """A rank whose start-up refuses its data (too much of it bad on its node) had raised alone, leaving the others
    waiting in their next collective: every rank now learns of it through the same gather, and stops."""
    corpus = write_tiny_corpus(tmp_path / "corpus", n=8, with_duration=False)
    node = tmp_path / "node1"
    shutil.copytree(corpus.parent, node)
    for wav in (node / "wav").glob("*.wav"):
        wav.unlink()  # rank 1's node lacks the audio
    good = recipe_for(tiny_llm_dir, corpus, tmp_path / "run")
    bad = recipe_for(tiny_llm_dir, node / corpus.name, tmp_path / "run1")
    digests = {}
    with pytest.raises(Exception, match="unusable before training starts") as err:
        plan_run(bad, {}, rank=1, world_size=2, all_gather=alone(lambda d: digests.setdefault(1, d) and [{}, d]))
    assert "failed" in digests[1]
    with pytest.raises(
        RankFailure,
        match=r"rank 1 \(node .+\) could not build its training data; every rank stops "
        r"with it:\n.*unusable",
    ):
        plan_run(good, {}, rank=0, world_size=2, all_gather=alone(lambda d: [d, digests[1]]))
    assert err.type.__name__ == "TooMuchBadData"


def test_the_ranks_that_disagree_are_named_with_their_nodes():
    """A rank number alone does not say which node's copy of the data to look at; the node the digest came from does
    (and ranks of different nodes that found the same agree)."""
    mine = {"steps": [3], "bad": [], "durations": "d", "node": "gpu-a#0"}
    check_ranks_agree(mine, None, lambda d: [d, {**d, "node": "gpu-b#1"}])
    with pytest.raises(ConfigError) as err:
        check_ranks_agree(mine, None, lambda d: [d, {**d, "steps": [9], "durations": "e", "node": "gpu-b#1"}])
    assert "rank 1 (node gpu-b#1) plans [9] steps per epoch, rank 0 (node gpu-a#0) [3]" in str(err.value)
    assert "rank 1 (node gpu-b#1) read other audio durations than rank 0 (node gpu-a#0)" in str(err.value)
