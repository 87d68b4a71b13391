"""A resume the data no longer lets continue names what differs: the batch, the line, and its old and new inputs
(llmasr.data.plan_record), whatever changed them. A Whisper run under data.batching.max_llm_tokens whose clip
counts one LLM position more (a tokenizer or an llmasr that counts otherwise) had been refused blaming the
manifests, which the user finds as they were."""

import numpy as np
import pytest

from llmasr import errors
from llmasr.config_io import ConfigError
from llmasr.data import plan_record
from llmasr.recipe import load_recipe
from llmasr.run_dir import checkpoints_dir, tag_for
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.testing.tiny_whisper import write_tiny_whisper_dir
from llmasr.train import line_positions
from llmasr.train.trainer import train

BUDGET = 300


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return write_tiny_whisper_dir(tmp_path_factory.mktemp("whisper"))


def make(llm, whisper, corpus, run, max_updates):
    data = tiny_recipe_dict(llm, train=[corpus], output_dir=run, grad_accum=1, max_updates=max_updates,
                            save_every_updates=1, keep_last=0)  # fmt: skip
    data["model"]["encoder"] = {"type": "whisper", "path": str(whisper)}
    data["data"]["batching"] = {"max_seconds": 60.0, "max_llm_tokens": BUDGET, "num_buckets": 1, "shuffle_buffer": 100}
    return load_recipe(data=data)


def at_the_budget(saved: dict) -> int:
    """A line whose batch holds exactly the budget's LLM positions with it as the longest: one more moves it."""
    for batch in plan_record._batches(saved["keys"], saved["offsets"]):
        lens = saved["llm_lens"][batch]
        if batch.size * lens.max() == BUDGET:
            return int(batch[np.argmax(lens)])
    raise AssertionError(f"no batch of this corpus holds exactly {BUDGET} LLM positions: pick another budget")


@pytest.mark.parametrize("more", [1, 80])  # the same count of other batches (the position's hash), or more batches
def test_a_clip_counting_more_llm_positions_is_named_in_the_refusal(tiny_llm_dir, whisper_dir, tmp_path, monkeypatch,
                                                                    more):  # fmt: skip
    corpus, run = write_tiny_corpus(tmp_path / "c", n=20), tmp_path / "run"
    train(make(tiny_llm_dir, whisper_dir, corpus, run, 2), "zero0")
    saved = plan_record.load(checkpoints_dir(run) / tag_for(2) / plan_record.FILE)
    item = at_the_budget(saved)
    was = int(saved["llm_lens"][item])
    rows = line_positions.LineRows.rows

    def one_more(self, manifest, durations, texts):
        out = rows(self, manifest, durations, texts).copy()
        out[item] += more
        return out

    monkeypatch.setattr(line_positions.LineRows, "rows", one_more)
    with pytest.raises((ConfigError, ValueError)) as err:
        train(make(tiny_llm_dir, whisper_dir, corpus, run, 3), "zero0", resume="latest")
    text = errors.describe(err.value)
    assert f"item {item} ({corpus}:{item + 1}): LLM positions {was} -> {was + more} (data.batching.max_llm_tokens " \
           f"{BUDGET})" in text  # fmt: skip
    assert "epoch 0's batch" in text and "held items [" in text
    assert "a manifest" not in text and "Restore the manifests" not in text
