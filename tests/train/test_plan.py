"""plan_run on several ranks: a rank that cannot start on its data side stops every rank with it (ranks as threads,
their gather a barrier)."""

import shutil

from llmasr.config_io import ConfigError
from llmasr.rank_verdict import RankFailure, node_name
from llmasr.recipe import load_recipe
from llmasr.testing.thread_ranks import run_ranks
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.plan import plan_run


def test_a_rank_whose_node_lacks_the_llm_directory_stops_every_rank(tiny_llm_dir, tmp_path):
    """Rank 1's node has no copy of model.llm.path (its tokenizer is read before the data is built): it had raised
    before the data's first gather and left the others waiting there (on NCCL until the process group's timeout)."""
    data = write_tiny_corpus(tmp_path / "corpus", n=8)
    llm = shutil.copytree(tiny_llm_dir, tmp_path / "node1_llm")
    recipes = [
        load_recipe(data=tiny_recipe_dict(d, train=[data], output_dir=tmp_path / "run")) for d in (tiny_llm_dir, llm)
    ]
    shutil.rmtree(llm)  # gone from rank 1's node after the recipe was read

    zero, one = run_ranks(2, lambda r, gather: plan_run(recipes[r], {}, rank=r, world_size=2, all_gather=gather),
                          timeout=20)  # fmt: skip
    assert isinstance(zero, RankFailure), zero
    assert f"rank 1 (node {node_name()}) could not build its training data" in str(zero) and str(llm) in str(zero)
    assert isinstance(one, ConfigError) and not isinstance(one, RankFailure) and str(llm) in str(one)
