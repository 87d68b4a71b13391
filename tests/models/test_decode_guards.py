"""The end of a hypothesis: an LLM whose generation_config lists several end tokens (Qwen's <|im_end|> and
<|endoftext|>) ends its answer at any of them, greedy, beam and CTC-guided alike."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import llmasr
from llmasr.models.decode_guards import EndTokens, other_end_ids
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.scripted_llm import ScriptedLLM
from llmasr.testing.tiny_recipe import OracleCTCHead, random_batch, tiny_model_section


@pytest.fixture(scope="module")
def two_end_llm_dir(tiny_llm_dir, tmp_path_factory):
    """The tiny Qwen2 directory with the generation_config an Instruct Qwen ships: both end tokens."""
    out = tmp_path_factory.mktemp("two_ends") / "llm"
    shutil.copytree(tiny_llm_dir, out)
    ids = {t["content"]: t["id"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]}
    gen = json.loads((out / "generation_config.json").read_text())
    gen["eos_token_id"] = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    (out / "generation_config.json").write_text(json.dumps(gen))
    return out


def _script(tok, end_of_text: int) -> dict:
    """Says "three four", then <|endoftext|>, then (were it not an end) " nine" on and on."""
    said, nine = tok.encode("three four", add_special_tokens=False), tok.encode(" nine", add_special_tokens=False)
    steps = [None, *said, end_of_text, *nine]
    script = {prev: {nxt: 30.0} for prev, nxt in zip(steps, steps[1:])}
    script[nine[-1]] = {nine[0]: 30.0}
    return script


@pytest.mark.parametrize("beams, ctc_weight", [(1, 0.0), (2, 0.0), (1, 0.3)])
def test_an_answer_ended_by_the_llms_other_end_token_stops_there(two_end_llm_dir, beams, ctc_weight):
    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(two_end_llm_dir, ctc_weight=0.3)).eval()
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    end_of_text = tok.convert_tokens_to_ids("<|endoftext|>")
    assert other_end_ids(model.llm.generation_config, tok, end) == [end_of_text]
    batch = random_batch(model, ["three four"], frames=[60], seed=1)
    enc_len = int(model.encoder(batch.feats, batch.feat_lens)[1][0])
    model._modules["ctc_head"] = OracleCTCHead(model.ctc_tokenizer, {enc_len: "three four"})  # the audio says it
    with torch.no_grad(), ScriptedLLM(model, _script(tok, end_of_text)):
        got = model.transcribe(batch, DecodeConfig(num_beams=beams, ctc_weight=ctc_weight, max_new_tokens=12))
        ids = model.generate_ids(batch, num_beams=beams, ctc_weight=ctc_weight, max_new_tokens=12)
    assert got.llm == ["three four"]
    assert got.truncated == [None]  # ended by the LLM, not run on to the cap
    assert end_of_text not in ids[0] and ids[0][-1] == end


def test_the_end_holds_the_probability_of_every_end_token():
    fold = EndTokens(2, [5, 9])  # 9 is past this vocabulary: left alone
    scores = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 0.5, 0.0, 1.5]]), dim=1)
    out = fold(torch.zeros(1, 0, dtype=torch.long), scores)
    assert out[0, 2].exp().item() == pytest.approx((scores[0, 2].exp() + scores[0, 5].exp()).item())
    assert out[0, 5] == float("-inf") and torch.equal(out[0, [0, 1, 3, 4]], scores[0, [0, 1, 3, 4]])
    assert out.exp().sum().item() == pytest.approx(1.0)


def test_a_beam_stopped_in_its_loop_does_not_outrank_one_the_model_ended(tiny_llm_dir):
    """The first token splits the beams: " nine" a little likelier, then looping ("nine nine ...", each step
    near-certain), against "three four" and the end. The repetition stop had forced the looping beam's end at no
    cost, and beam search returned the loop; the forced end now pays the model's own score for ending there."""
    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(tiny_llm_dir)).eval()
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    said, nine = tok.encode("three four", add_special_tokens=False), tok.encode(" nine", add_special_tokens=False)
    steps = [None, *said, end]
    script = {prev: {nxt: 30.0} for prev, nxt in zip(steps, steps[1:])}
    script[None] = {said[0]: 30.0, nine[0]: 31.0}
    for a, b in zip(nine, nine[1:] + nine[:1]):
        script.setdefault(a, {})[b] = 30.0
    batch = random_batch(model, ["three four"], frames=[200], seed=1)
    with torch.no_grad(), ScriptedLLM(model, script):
        greedy = model.transcribe(batch, DecodeConfig(num_beams=1, repeat_limit=2, max_new_tokens=40))
        beam = model.transcribe(batch, DecodeConfig(num_beams=2, repeat_limit=2, max_new_tokens=40))
    assert greedy.truncated == ["repetition"] and greedy.llm[0].startswith("nine nine")  # greedy cannot look back
    assert beam.llm == ["three four"] and beam.truncated == [None]


def test_a_forced_end_keeps_the_models_score_floored_where_it_is_ruled_out():
    from llmasr.models.decode_guards import END_FLOOR, Guards

    guards = Guards(caps=[2, 9], repeat_limit=0, end_id=3, num_beams=1)
    scores = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, -1.0], [0.0, 1.0, 2.0, -1.0]]), dim=1)
    scores[0, 3] = float("-inf")  # (a CTC guide that rules the end out there)
    out = guards(torch.tensor([[5, 6], [5, 6]]), scores.clone())
    assert out[0, 3] == END_FLOOR and torch.isinf(out[0, :3]).all()  # row 0 at its cap: only the end is left
    assert torch.equal(out[1], scores[1])  # row 1 below its cap: untouched
    scores[0, 3] = -4.5
    assert guards(torch.tensor([[5, 6], [5, 6]]), scores.clone())[0, 3] == -4.5


@pytest.mark.parametrize("setting", ["confidence", "timestamps"])
def test_generate_refuses_what_only_transcribe_returns(tiny_llm_dir, setting):
    model = llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.3)).eval()
    batch = random_batch(model, ["three four"], frames=[60], seed=1)
    with pytest.raises(ValueError, match=rf"{setting}.*transcribe\(batch, DecodeConfig\({setting}=True\)\)"):
        model.generate(batch, max_new_tokens=4, **{setting: True})
    assert len(model.generate_ids(batch, max_new_tokens=4, **{setting: False})) == 1
