"""The CTC gate in SpeechLLM.transcribe (decode.ctc_gate, models.ctc_gate): a row whose CTC best path is empty gets
an empty transcript and is not searched; the rows searched get what the whole batch gets without the gate."""

from __future__ import annotations

import pytest
import torch

import llmasr
from llmasr.config_io import ConfigError
from llmasr.models.ctc_gate import searched_rows, spread
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.tiny_recipe import OracleCTCHead, random_batch, tiny_model_section

TARGETS = ["three four", "one", "two three", "four"]
FRAMES = [40, 52, 64, 76]
HEARD = ["three four", "", "one", ""]  # the oracle head's text per row: rows 1 and 3 hold no word


@pytest.fixture(scope="module")
def gated_model(tiny_llm_dir):
    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.3)).eval()
    batch = random_batch(model, TARGETS, frames=FRAMES, seed=1)
    with torch.no_grad():
        lens = model.encoder(batch.feats, batch.feat_lens)[1].tolist()
    assert len(set(lens)) == len(lens)  # the oracle tells the rows apart by encoder length
    model._modules["ctc_head"] = OracleCTCHead(model.ctc_tokenizer, dict(zip(lens, HEARD)))
    return model, batch


def _counting_generate(model, monkeypatch) -> list:
    """Each call of the LLM's generate as (rows, synced_gpus), the call itself run without synced_gpus (no process
    group here)."""
    calls, generate = [], model.llm.generate

    def counted(*args, **kwargs):
        calls.append((kwargs["inputs_embeds"].shape[0], kwargs.pop("synced_gpus", None)))
        return generate(*args, **kwargs)

    monkeypatch.setattr(model.llm, "generate", counted)
    return calls


@pytest.mark.parametrize("beams, ctc_weight", [(1, 0.0), (1, 0.3), (2, 0.0)])
def test_rows_the_head_hears_nothing_in_are_empty_and_not_searched(gated_model, monkeypatch, beams, ctc_weight):
    model, batch = gated_model
    cfg = DecodeConfig(num_beams=beams, ctc_weight=ctc_weight, max_new_tokens=6, confidence=True, timestamps=True)
    with torch.no_grad():
        off = model.transcribe(batch, cfg)
        calls = _counting_generate(model, monkeypatch)
        on = model.transcribe(batch, DecodeConfig(**{**vars(cfg), "ctc_gate": True}))
    assert calls == [(2, None)]  # rows 0 and 2 only
    assert off.no_speech is None and on.no_speech == [False, True, False, True]
    if not ctc_weight:  # unguided, the LLM writes words there (guided by this certain head, it ends at once)
        assert off.llm[1].strip() and off.llm[3].strip()
    assert on.llm == [off.llm[0], "", off.llm[2], ""]  # the rows searched as in the whole batch
    assert on.ctc == off.ctc == HEARD
    assert on.truncated == [off.truncated[0], None, off.truncated[2], None]
    assert on.timestamps[1] == on.timestamps[3] == [] and on.timestamps[0] == off.timestamps[0]
    assert on.confidence[1] is None and on.confidence[3] is None
    for i in (0, 2):
        assert on.confidence[i].tokens == off.confidence[i].tokens
        assert on.confidence[i].logprob == pytest.approx(off.confidence[i].logprob, abs=1e-4)
    assert on.mode == off.mode
    with torch.no_grad():
        ids = model.generate_ids(batch, num_beams=beams, ctc_weight=ctc_weight, max_new_tokens=6, ctc_gate=True)
    assert ids[1] == ids[3] == [] and model.prompt.decode(ids[0]) == off.llm[0]


def test_a_batch_with_no_word_heard_is_not_searched_unless_the_ranks_search_together(gated_model, monkeypatch):
    """Under ZeRO-3 (synced_gpus) every rank's generate must run: one row stands in, its text dropped."""
    model, batch = gated_model
    silent = batch.select([1, 3])
    cfg = DecodeConfig(max_new_tokens=6, ctc_gate=True, confidence=True)
    calls = _counting_generate(model, monkeypatch)
    with torch.no_grad():
        alone = model.transcribe(silent, cfg)
        synced = model.transcribe(silent, cfg, synced_gpus=True)
    assert calls == [(1, True)]
    for got in (alone, synced):
        assert got.llm == ["", ""] and got.no_speech == [True, True] and got.truncated == [None, None]
        assert got.confidence == [None, None]


def test_the_stand_in_row_of_a_synced_search_is_dropped():
    assert searched_rows([False, False], synced=False) == []
    assert searched_rows([False, False], synced=True) == [0]
    assert searched_rows([False, True], synced=True) == [1]
    ids, cut, scores = spread([False, False], [0], [[5, 6]], ["max_new_tokens"], [object()])
    assert ids == [[], []] and cut == [None, None] and scores == [None, None]


def test_the_gate_needs_a_ctc_head(tiny_llm_dir):
    model = llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.0)).eval()
    batch = random_batch(model, ["three four"], frames=[40], seed=1)
    with pytest.raises(ConfigError, match=r"decode.ctc_gate: .*this model has none"):
        model.transcribe(batch, DecodeConfig(ctc_gate=True, max_new_tokens=2))
    with pytest.raises(ConfigError, match=r"decode.ctc_gate"):
        model.generate_ids(batch, ctc_gate=True, max_new_tokens=2)
    assert model.transcribe(batch, DecodeConfig(max_new_tokens=2)).no_speech is None
