"""Training with biasing lists (data.hotwords): the real loop on the tiny model, lists in every batch, the token
cap's drops in train.log, the same lists after a rebuild (resume), validation on the manifest's lists."""

import json
import math

import pytest

from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.progress import parse_log_line
from llmasr.train.resolve import build_loaders, text_side
from llmasr.train.trainer import train

HOTWORDS = {"enable": True, "ngram": [1, 2], "true_phrases": [1, 2], "list_size": [3, 4], "empty_prob": 0.25}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hot_corpus")
    train_m = write_tiny_corpus(root / "train", n=20)
    dev_m = write_tiny_corpus(root / "dev", n=4, seed=1)
    recs = [json.loads(line) for line in dev_m.read_text().splitlines()]
    recs[0]["hotwords"] = recs[0]["target"].split()[:1] + ["zebra"]  # validation uses the manifest's lists
    dev_m.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return train_m, dev_m


def recipe(tiny_llm_dir, corpus, run_dir, **kw):
    d = tiny_recipe_dict(tiny_llm_dir, train=[corpus[0]], valid=[corpus[1]], output_dir=run_dir, **kw)
    d["data"]["hotwords"] = dict(HOTWORDS)
    d["model"]["prompt"] = {"hotwords_template": "Context: {hotwords}. ", "hotwords_max_tokens": 4}
    return load_recipe(data=d)


def epoch_lists(r, epoch: int):
    loader, _, valid = build_loaders(r, text_side(r.model), rank=0, world_size=1)
    loader.set_epoch(epoch)
    return [(b.keys, b.hotwords, b.text_ids.tolist()) for b in loader], [b.hotwords for b in valid]


def test_loader_lists_follow_item_and_epoch(tiny_llm_dir, corpus, tmp_path):
    r = recipe(tiny_llm_dir, corpus, tmp_path / "run")
    first, valid = epoch_lists(r, 0)
    again, _ = epoch_lists(r, 0)
    assert first == again  # a rebuilt loader (a resumed run) gives every item the same list and prompt
    lists = [h for _, hs, _ in first for h in hs]
    assert sum(bool(h) for h in lists) >= len(lists) // 2 and not all(lists)  # some lists, some empty
    assert all(len(h) <= 4 for h in lists)
    later, _ = epoch_lists(r, 1)
    by_key = lambda batches: {k: h for keys, hs, _ in batches for k, h in zip(keys, hs)}  # noqa: E731
    assert by_key(first) != by_key(later)  # a new epoch, new lists
    given = json.loads(corpus[1].read_text().splitlines()[0])["hotwords"]
    capped, dropped = text_side(r.model).prompt.capped_hotwords(given)
    assert dropped == 1 and sorted(map(tuple, (h for hs in valid for h in hs))) == [(), (), (), tuple(capped)]


def test_training_with_hotwords_end_to_end(tiny_llm_dir, corpus, tmp_path):
    run = tmp_path / "run"
    r = recipe(tiny_llm_dir, corpus, run, max_updates=3, grad_accum=1)
    result = train(r, "zero0")
    assert len(result["history"]) == 3 and all(math.isfinite(h["loss"]) for h in result["history"])
    assert sum(h["hotword_lists"] for h in result["history"]) > 0
    log = (run / "train.log").read_text()
    assert "hotwords: lists drawn (source manifest_or_sample, unit auto, n-grams [1, 2]" in log
    rows = [parse_log_line(line) for line in log.splitlines() if " train update=" in line]
    assert sum(row.get("hw_lists", 0) for row in rows) == sum(h["hotword_lists"] for h in result["history"])
    # a 4-token cap on lists of 3-4 phrases drops some, and the log counts them
    assert sum(row.get("hw_dropped", 0) for row in rows) == sum(h["hotwords_dropped"] for h in result["history"]) > 0
    assert load_recipe(run / "recipe.yaml").data.hotwords.list_size == [3, 4]
