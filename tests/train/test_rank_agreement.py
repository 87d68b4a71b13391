"""The ranks' findings on the training data are compared before training: a rank that found a file missing (its
node's copy of the data lacks it) would plan other batches than the rest, and the run would hang or train some
utterances twice and others never."""

import json
import shutil

import pytest

from llmasr.config_io import ConfigError
from llmasr.rank_verdict import RankFailure
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.plan import plan_run
from llmasr.train.rank_agreement import check_ranks_agree, data_digest


def recipe_for(tiny_llm_dir, manifest, run):
    data = tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=run)
    data["data"]["max_bad_fraction"] = 0.5
    return load_recipe(data=data)


def alone(gather):
    """`gather` for the data's check; each rank alone on its node, whose screen's exchanges send nothing to compare."""
    return lambda d: [d, d] if "screen" in d else gather(d)


def test_a_rank_missing_a_file_stops_every_rank_naming_the_line(tiny_llm_dir, tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus", n=16, with_duration=False)  # durations probed from headers
    recipe = recipe_for(tiny_llm_dir, corpus, tmp_path / "run")
    digests = []
    plan_run(recipe, {}, rank=0, world_size=2, all_gather=alone(lambda d: digests.append(d) or [d, d]))  # agree
    node = tmp_path / "node1"  # rank 1's node: the same manifest, one wav missing from its copy
    shutil.copytree(corpus.parent, node)
    lines = node.joinpath(corpus.name).read_text().splitlines()
    gone = json.loads(lines[6])["source"]
    (node / gone).unlink()
    other = data_digest(plan_run(recipe_for(tiny_llm_dir, node / corpus.name, tmp_path / "run1"), {}, rank=1,
                                 world_size=2).loaders[1], [])  # fmt: skip
    plan = plan_run(recipe, {}, rank=0, world_size=2)
    with pytest.raises(ConfigError, match=r"the ranks do not see the same training data") as err:
        check_ranks_agree(digests[0], plan.loaders[0].dataset.manifest, lambda d: [d, {**other, "steps": d["steps"]}])
    assert f"1 line(s) screened bad on rank 1 only: {corpus}:7" in str(err.value)
    with pytest.raises(ConfigError, match=r"rank 1 \(node .+\) plans \[9\] steps per epoch, rank 0 \(node .+\) \[3\]"):
        check_ranks_agree({**digests[0], "steps": [3]}, None, lambda d: [d, {**d, "steps": [9]}])


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
