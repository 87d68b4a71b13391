"""Hotword boosting in the search: the bonus a phrase earns token by token and gives back when it breaks off, and
what it does to decoding on models of known output (a scripted LLM, an oracle CTC head)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import llmasr
from llmasr.config_io import ConfigError
from llmasr.models.decoding import AUTO_HOTWORD_BOOST, DecodeConfig
from llmasr.models.hotword_boost import HotwordBoost, phrase_trie
from llmasr.models.llm import base_lm
from llmasr.testing.scripted_llm import ScriptedLLM
from llmasr.testing.tiny_recipe import OracleCTCHead, random_batch, tiny_model_section

TARGETS = ["zero one two", "three four", "five six seven eight", "nine"]


@pytest.fixture
def model(tiny_llm_dir):
    torch.manual_seed(0)
    return llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.3)).eval()


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _gains(boost: HotwordBoost, prefix: list[int], vocab: int) -> torch.Tensor:
    """What the processor adds to each token's score after `prefix` (one greedy row)."""
    scores = torch.zeros(1, vocab)
    return boost(torch.tensor([prefix], dtype=torch.long).reshape(1, -1), scores)[0]


def test_a_phrase_earns_its_boost_only_when_it_is_complete(model):
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    vocab = len(tok)
    boost = HotwordBoost([["three four"]], tok, 2.0, end, 1)
    phrase = _ids(tok, "three four")
    earned = 0.0
    for n, token in enumerate(phrase):  # each token of the phrase earns the boost as it is written
        gains = _gains(boost, phrase[:n], vocab)
        assert gains[token] == 2.0
        earned += float(gains[token])
    gains = _gains(boost, phrase, vocab)
    assert gains[end] == 0.0  # complete: nothing to give back
    assert earned + float(gains[end]) == 2.0 * len(phrase)
    # Broken off after three tokens: any other token, and the end token, give those three back.
    gains = _gains(boost, phrase[:3], vocab)
    other = _ids(tok, " nine")[0]
    assert gains[end] == -6.0 and gains[other] == -6.0 and gains[phrase[3]] == 2.0
    # The after-a-space spelling matches mid-sentence too.
    mid = _ids(tok, "nine three four")
    total = sum(float(_gains(boost, mid[:n], vocab)[mid[n]]) for n in range(len(mid)))
    assert total + float(_gains(boost, mid, vocab)[end]) == 2.0 * len(_ids(tok, " three four"))


def _total(boost: HotwordBoost, seq: list[int], vocab: int, end: int) -> float:
    """The boost a hypothesis of tokens `seq` ends with (every step's gain, then the end token's)."""
    steps = sum(float(_gains(boost, seq[:n], vocab)[seq[n]]) for n in range(len(seq)))
    return steps + float(_gains(boost, seq, vocab)[end])


def test_a_phrase_is_complete_only_where_its_word_ends(model):
    """ "four" earns its boost before " one" and at the end; carried on by a token that goes on with the word
    ("four" + "teen") it gives it back: the search is not pushed towards every word a phrase begins. A phrase in a
    script without spaces is complete before the next character."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    vocab = len(tok)
    boost = HotwordBoost([["four"]], tok, 1.0, end, 1)
    four, teen, one = _ids(tok, " four"), _ids(tok, "teen"), _ids(tok, " one")
    assert _total(boost, four + one, vocab, end) == len(four) and _total(boost, four, vocab, end) == len(four)
    assert _total(boost, four + teen + one, vocab, end) == 0.0
    joined = _ids(tok, "五")
    cjk = HotwordBoost([["四"]], tok, 1.0, end, 1)
    assert _total(cjk, _ids(tok, "四") + joined, vocab, end) == 1.0  # one character (hotword_text), three byte tokens


def test_a_completed_shorter_phrase_stays_earned_when_a_longer_one_breaks_off(model):
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    boost = HotwordBoost([["four", "four one"]], tok, 1.0, end, 1)
    spelled = _ids(tok, "four")
    longer = _ids(tok, "four one")
    assert longer[: len(spelled)] == spelled
    root = phrase_trie(["four", "four one"], tok)
    assert not root.children[spelled[0]].complete
    gains = _gains(boost, spelled, len(tok))
    assert gains[end] == 0.0  # "four" is complete: ending here keeps its boost
    gains = _gains(boost, longer[: len(spelled) + 1], len(tok))
    assert gains[end] == -1.0  # one token into " one": only that token is given back


def test_a_phrase_that_begins_or_ends_inside_a_broken_off_match_is_found(model):
    """A match breaking off does not hide a listed phrase that began inside it ("one two" of "one two three", then
    " four": "two four") or ended inside it ("two"); a phrase carried on by a joining token earns nothing even when a
    longer phrase goes on from there ("four" in "fourteen nine"); matches never overlap."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    vocab = len(tok)

    def total(phrases, text):
        return _total(HotwordBoost([phrases], tok, 1.0, end, 1), _ids(tok, text), vocab, end)

    assert total(["one two three", "two four"], "one two four") == len(_ids(tok, " two four"))
    assert total(["two", "one two three"], "one two nine") == len(_ids(tok, " two"))
    assert total(["four", "fourteen one"], "fourteen nine") == 0.0
    assert total(["one two", "two three"], "one two three") == len(_ids(tok, "one two"))
    # a phrase ending before the token where a longer match breaks off (it had been missed)
    assert total(["two", "one two three four"], "one two three nine") == len(_ids(tok, " two"))
    assert total(["one", "zero one two three"], "zero one two nine") == len(_ids(tok, " one"))


def _leftmost_longest(spellings: dict[tuple, bool], seq: list[int], joins, ending) -> int:
    """The reference: tokens of the phrases found in `seq` leftmost first, then longest first, never overlapping;
    a phrase ending in a word character (spellings[s] True) counts only when the next token does not join it, and
    one whose first token joins only where the token before it (if any) does not end in a word character."""
    total, i = 0, 0
    while i < len(seq):
        found = 0
        for n in range(len(seq) - i, 0, -1):
            joined = i + n < len(seq) and bool(joins[seq[i + n]])
            mid_word = i > 0 and bool(joins[seq[i]]) and seq[i - 1] in ending
            if mid_word:
                continue
            if tuple(seq[i : i + n]) in spellings and not (spellings[tuple(seq[i : i + n])] and joined):
                found = n
                break
        total += found
        i += found or 1
    return total


def test_what_a_hypothesis_earns_is_its_leftmost_longest_phrases(model):
    """Over random hypotheses of overlapping phrases, the boost a finished hypothesis keeps is the tokens of the
    phrases a plain leftmost-longest scan finds in it."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    phrases = ["one two", "two three", "three", "one two three four", "two", "four teen", "fourteen", "zero one"]
    boost = HotwordBoost([phrases], tok, 1.0, end, 1)
    spellings = {}
    for p in phrases:
        for text in (p, " " + p):
            spellings[tuple(_ids(tok, text))] = p[-1].isalnum()
    alphabet = sorted({t for s in spellings for t in s} | set(_ids(tok, " nine")))
    rng = random.Random(1)
    for _ in range(300):
        seq = [rng.choice(alphabet) for _ in range(rng.randint(1, 9))]
        got = _total(boost, seq, len(tok), end)
        assert got == _leftmost_longest(spellings, seq, boost.joins, boost.ending), tok.convert_ids_to_tokens(seq)


def test_a_phrase_inside_a_longer_word_earns_nothing():
    """A phrase's start-of-text spelling ("ann") begins a match only where no word is under way: " jo" + "ann"
    (Joann) and " " + "x" + "ann" had earned the boost of the hotword "ann"; at the start of the text, after a
    space and after punctuation it still does. A GPT-2 style split, where "(" stands alone: Qwen's joins it to the
    word after it ("(ann" one token, which no spelling of the phrase holds)."""
    from llmasr.testing.tiny_llm import train_gpt2_style_bpe_tokenizer

    texts = ["ann ann ann ann", "hello ann", "ann said jo", "jo went", "(ann)"] * 20
    tok = train_gpt2_style_bpe_tokenizer(texts, vocab_size=280)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    vocab = len(tok)

    def earned(text):
        return _total(HotwordBoost([["ann"]], tok, 1.0, end, 1), _ids(tok, text), vocab, end)

    assert _ids(tok, "hello joann went")[2:3] == _ids(tok, "ann")  # the case: a word's second token spells "ann"
    assert earned("hello joann went") == 0.0 and earned("hello xann went") == 0.0
    assert earned("ann said") == len(_ids(tok, "ann"))
    assert earned("hello ann") == len(_ids(tok, " ann"))
    assert earned("(ann) went") == len(_ids(tok, "ann"))
    assert earned("hello joann ann") == len(_ids(tok, " ann"))


def test_a_phrase_right_after_a_character_qwen_joins_to_it_earns_its_boost():
    """Qwen's split keeps one character that is no letter, digit or space with the letters after it ("(ann" one
    pre-token), and its BPE merges them ("(ann" one token): no spelling of the phrase had been in "(ann) went", which
    earned nothing. A token that is the character alone still leaves the phrase's own spellings to match."""
    from llmasr.testing.tiny_llm import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["ann ann ann ann", "hello ann", "ann said jo", "jo went", "(ann)", "[x"] * 20, 280)
    end = tok.convert_tokens_to_ids("<|im_end|>")

    def earned(text):
        return _total(HotwordBoost([["ann"]], tok, 1.0, end, 1), _ids(tok, text), len(tok), end)

    assert tok.convert_ids_to_tokens(_ids(tok, "(ann) went"))[0] == "(ann"  # the case: the opener merged
    assert earned("(ann) went") == len(_ids(tok, "(ann"))
    assert earned("hello (ann) went") == len(_ids(tok, "ann"))  # " (" a pre-token: "ann" after it, alone
    assert earned("[ann went") == len(_ids(tok, "ann"))  # "[" alone a token: the start-of-text spelling after it
    assert earned("(anna) went") == 0.0  # the word goes on past the phrase
    tea = train_bpe_tokenizer(["don't tea", "don'tea", "'tea", "tea"] * 20, 280)  # "'t" a token, a contraction
    assert "'t" in tea.convert_ids_to_tokens(_ids(tea, "don'tea"))
    tea_end = tea.convert_tokens_to_ids("<|im_end|>")
    assert _total(HotwordBoost([["tea"]], tea, 1.0, tea_end, 1), _ids(tea, "don'tea"), len(tea), tea_end) == 0.0
    assert earned("hello joann went") == 0.0


def test_sentencepiece_words_are_not_read_as_joining(tmp_path):
    """A SentencePiece (Metaspace) tokenizer, as Llama's and Mistral's: a word's first token decoded alone loses its
    space ("▁is" reads "is"), which had made every word-initial token 'joining', so a phrase ending in a letter
    was complete only at the end of the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmasr.models.hotword_boost import joining_tokens

    spm = Tokenizer(models.BPE(unk_token="<unk>"))
    spm.pre_tokenizer, spm.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    corpus = ["anna is here and anna is there", "annabel is not here"] * 5
    spm.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=spm, unk_token="<unk>", eos_token="</s>")
    end = tok.convert_tokens_to_ids("</s>")
    joins = joining_tokens(tok)
    word_starts = [t for t in range(len(tok)) if tok.convert_ids_to_tokens(t).startswith("▁")]
    assert word_starts and not any(joins[t] for t in word_starts)
    inside = [t for t in range(len(tok)) if tok.convert_ids_to_tokens(t)[0].isalpha()]
    assert inside and all(joins[t] for t in inside)
    boost = HotwordBoost([["anna"]], tok, 1.0, end, 1)
    anna = len(_ids(tok, "anna"))
    assert _total(boost, _ids(tok, "anna is here"), len(tok), end) == anna
    assert _total(HotwordBoost([["anna"]], tok, 1.0, end, 1), _ids(tok, "annabel is"), len(tok), end) == 0.0


def test_every_tokens_gain_is_the_step_of_the_match(model):
    """What the processor adds to each token's score (computed for the whole vocabulary at once) is that token's
    change of the match's worth, stepped alone, over random hypotheses of overlapping phrases; a hypothesis never
    ends with more than its own tokens' worth."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    vocab = len(tok)
    phrases = ["one two", "two three", "three", "one two three four", "four teen", "fourteen"]
    boost = HotwordBoost([phrases], tok, 1.0, end, 1)
    alphabet = sorted({t for p in phrases for text in (p, " " + p) for t in _ids(tok, text)} | set(_ids(tok, " nine")))
    rng = random.Random(0)

    def worth(seq):
        match = boost._match(0, tuple(seq), boost.tries[0].tokens)
        return match.banked + match.node.weight

    for _ in range(40):
        seq = [rng.choice(alphabet) for _ in range(rng.randint(0, 8))]
        gains = _gains(boost, seq, vocab)
        stepped = torch.tensor([worth(seq + [t]) - worth(seq) for t in range(vocab)], dtype=gains.dtype)
        stepped[end] = gains[end]
        assert torch.equal(gains, stepped), seq
        assert 0.0 <= _total(boost, seq, vocab, end) <= len(seq)


def test_ended_rows_and_rows_without_a_list_are_left_alone(model):
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    boost = HotwordBoost([["four"], []], tok, 2.0, end, 1)
    scores = torch.zeros(2, len(tok))
    out = boost(torch.tensor([[end], [5]]), scores)
    assert torch.equal(out, scores)
    ruled_out = torch.full((1, len(tok)), float("-inf"))
    assert torch.equal(HotwordBoost([["four"]], tok, 2.0, end, 1)(torch.zeros(1, 0, dtype=torch.long), ruled_out),
                       ruled_out)  # fmt: skip


def test_a_list_every_utterance_shares_is_spelled_once(model, monkeypatch):
    """A `--hotwords` list is every utterance's: each batch had spelled its phrases again for each utterance (a
    list of three thousand names took 0.65 s an utterance, more than the search). The spellings are made once per
    list and tokenizer; what each row earns is what a list spelled afresh gives it."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    words = "zero one two three four five six seven eight nine".split()
    phrases = [f"{a} {b}" for a in words for b in words]
    spelled = []
    real = tok.encode
    monkeypatch.setattr(tok, "encode", lambda text, *a, **k: spelled.append(text) or real(text, *a, **k))
    shared = HotwordBoost([phrases] * 3, tok, 1.0, end, 1)
    again = HotwordBoost([phrases, [], phrases], tok, 1.0, end, 1)  # the next batch
    assert sum(t.strip() in phrases for t in spelled) == 2 * len(phrases)  # each phrase's two spellings, once
    monkeypatch.undo()
    alone = HotwordBoost([list(reversed(phrases))], tok, 1.0, end, 1)  # another list: a trie of its own
    seq = _ids(tok, "seven eight nine four")
    vocab = len(tok)
    rows = torch.tensor([seq[:3]] * 3)
    for boost in (shared, again):
        assert torch.equal(boost(rows, torch.zeros(3, vocab))[2], _gains(alone, seq[:3], vocab))


def test_each_state_of_a_search_walks_the_list_once(model, monkeypatch):
    """Every row at every step had walked the phrases that go on from its match (at the root: the first token of
    every phrase, thousands for a long list) and written their gains anew: 32 rows of a list of ten thousand names
    took 0.6 s a step on a CPU. What a state earns is kept for the batch; rows in the same state share it, with the
    gains a row alone gets."""
    import llmasr.models.hotword_boost as hb

    tok, end = model.prompt.tokenizer, model.prompt.end_id
    words = "zero one two three four five six seven eight nine".split()
    phrases = [f"{a} {b}" for a in words for b in words]
    walked = []
    real = hb.chain
    monkeypatch.setattr(hb, "chain", lambda root, node, joins: walked.append(node) or real(root, node, joins))
    seq = _ids(tok, "the quick brown fox seven eight nine")
    rows, vocab = 6, len(tok)
    boost = HotwordBoost([phrases] * rows, tok, 1.0, end, 1)
    got = [boost(torch.tensor([seq[:k]] * rows).reshape(rows, -1), torch.zeros(rows, vocab)) for k in range(len(seq))]
    assert len(walked) <= 2 * 2 * len(seq)  # (a state, after a word or not) once each, not once per row and step
    monkeypatch.undo()
    for k, out in enumerate(got):
        alone = HotwordBoost([list(phrases)], tok, 1.0, end, 1)
        assert torch.equal(out, _gains(alone, seq[:k], vocab).expand(rows, -1)), k


def _near_miss_script(tok, end: int) -> dict:
    """An LLM that says "three nine", with "three four" a close second (two logits behind at the branch)."""
    first, nine, four = _ids(tok, "three"), _ids(tok, " nine"), _ids(tok, " four")
    script = {None: {first[0]: 30.0}}
    for a, b in zip(first, first[1:]):
        script[a] = {b: 30.0}
    script[first[-1]] = {nine[0]: 30.0, four[0]: 28.0}
    for word in (nine, four):
        for a, b in zip(word, word[1:]):
            script[a] = {b: 30.0}
        script[word[-1]] = {end: 30.0}
    return script


@pytest.mark.parametrize("beams", [1, 2])
def test_the_boost_turns_the_near_miss_into_the_listed_phrase(model, beams):
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    batch = random_batch(model, ["three four"], frames=[30], seed=1)
    cfg = DecodeConfig(num_beams=beams, ctc_weight=0.0, hotword_boost=3.0)
    with torch.no_grad(), ScriptedLLM(model, _near_miss_script(tok, end)):
        plain = model.transcribe(batch, cfg)
        batch.hotwords = [["four"]]
        listed = model.transcribe(batch, cfg)
        batch.hotwords = [["fourteen"]]  # begun by "four" but never finished: its boost is given back
        unfinished = model.transcribe(batch, cfg)
    assert plain.llm == ["three nine"] and listed.llm == ["three four"]
    if beams > 1:  # the beam kept "three nine", which now scores higher; greedy took the bonus and could not undo it
        assert unfinished.llm == ["three nine"]


def test_a_listed_phrase_the_audio_does_not_hold_stays_out_when_ctc_guided(model):
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    batch = random_batch(model, ["three nine"], frames=[30], seed=1)
    enc_len = int(model.encoder(batch.feats, batch.feat_lens)[1][0])
    model._modules["ctc_head"] = OracleCTCHead(model.ctc_tokenizer, {enc_len: "three nine"})
    batch.hotwords = [["four"]]
    with torch.no_grad(), ScriptedLLM(model, _near_miss_script(tok, end)):
        guided = model.transcribe(batch, DecodeConfig())  # the defaults: CTC-guided, boosted
        alone = model.transcribe(batch, DecodeConfig(ctc_weight=0.0, hotword_boost=AUTO_HOTWORD_BOOST))
    assert guided.llm == ["three nine"]
    assert alone.llm == ["three four"]  # the LLM alone, boosted, writes the listed word the audio does not hold


@pytest.mark.parametrize("beams", [1, 3])
def test_boosted_batched_equals_one_by_one(model, beams):
    batch = random_batch(model, TARGETS, frames=[12, 20, 16, 9], seed=5)
    batch.hotwords = [["one two"], [], ["six", "seven eight"], ["nine"]]
    cfg = DecodeConfig(num_beams=beams, ctc_weight=0.5, hotword_boost=6.0, max_new_tokens=8)
    together = model.transcribe(batch, cfg)
    assert together.llm == [model.transcribe(batch.select([i]), cfg).llm[0] for i in range(len(TARGETS))]
    unboosted = model.transcribe(batch, DecodeConfig(num_beams=beams, ctc_weight=0.5, hotword_boost=0.0,
                                                     max_new_tokens=8))  # fmt: skip
    assert unboosted.llm != together.llm


def test_default_boost_follows_ctc_guidance_and_bad_values_are_refused():
    assert DecodeConfig().boost(0.7, True) == AUTO_HOTWORD_BOOST
    assert DecodeConfig().boost(0.0, True) == 0.0  # an LLM alone is not boosted by default
    assert DecodeConfig().boost(0.7, False) == 0.0  # n-best rescoring: no prefix-guided search to boost
    assert DecodeConfig(hotword_boost=1.5).boost(0.0, True) == 1.5
    with pytest.raises(ConfigError, match=r"decode.hotword_boost: must be >= 0"):
        DecodeConfig(hotword_boost=-1.0).validate("decode")


def _late_phrase_script(tok, end: int, behind: float) -> dict:
    """An LLM that ends after "dog" or "ease" (equally likely), or, `behind` logits lower, goes on after "dog" with
    " heldiocog" and then ends."""
    (dog,), (ease,), phrase = _ids(tok, "dog"), _ids(tok, "ease"), _ids(tok, " heldiocog")
    assert len({dog, ease, end, *phrase}) == len(phrase) + 3  # the script keys on the previous token
    script = {None: {dog: 30.0, ease: 30.0}, dog: {end: 30.0, phrase[0]: 30.0 - behind}, ease: {end: 30.0}}
    for a, b in zip(phrase, [*phrase[1:], end]):
        script[a] = {b: 30.0}
    return script


def test_a_beam_that_begins_a_phrase_is_searched_to_its_end(model):
    """Two short hypotheses end at the second step, ahead per token of the beam that has just begun the listed phrase;
    transformers' beam search, which assumes a running beam only loses score, stopped there."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    batch = random_batch(model, ["dog heldiocog"], frames=[30], seed=1)
    batch.hotwords = [["heldiocog"]]
    cfg = DecodeConfig(num_beams=2, ctc_weight=0.0, hotword_boost=3.0)
    gen = base_lm(model.llm).generation_config
    with torch.no_grad(), ScriptedLLM(model, _late_phrase_script(tok, end, 4.0)):
        assert model.transcribe(batch, cfg).llm == ["dog heldiocog"]
        assert model.transcribe(batch, dataclasses.replace(cfg, hotword_boost=0.0)).llm in (["dog"], ["ease"])
        gen.early_stopping = True  # an LLM's generation_config may stop a search once num_beams hypotheses end
        try:
            assert model.transcribe(batch, cfg).llm == ["dog heldiocog"]
        finally:
            gen.early_stopping = False


def test_a_boosted_beam_search_decodes_a_batch_as_alone(model):
    """A beam far behind that the boost lifts past the finished ones: found whatever else the batch holds (a bound
    on its future score taken from the batch's longest cap would stop it alone and not in the batch)."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    batch = random_batch(model, ["dog heldiocog", "dog"], frames=[30, 300], seed=1)
    batch.hotwords = [["heldiocog"], []]
    cfg = DecodeConfig(num_beams=2, ctc_weight=0.0, hotword_boost=3.0)
    with torch.no_grad(), ScriptedLLM(model, _late_phrase_script(tok, end, 12.0)):
        together = model.transcribe(batch, cfg).llm
        alone = [model.transcribe(batch.select([i]), cfg).llm[0] for i in range(2)]
    assert together == alone == ["dog heldiocog", "dog"]


def test_an_end_the_cap_forces_inside_a_phrase_gives_its_bonus_back(model):
    """The token cap ends the beam that has begun " heldiocog" two tokens in: that hypothesis keeps no bonus, and the
    search does not prefer it, cut off, to the hypotheses that ended by themselves."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    batch = random_batch(model, ["dog heldiocog"], frames=[30], seed=1)
    batch.hotwords = [["heldiocog"]]
    cfg = DecodeConfig(num_beams=2, ctc_weight=0.0, hotword_boost=3.0, max_new_tokens=3)
    with torch.no_grad(), ScriptedLLM(model, _late_phrase_script(tok, end, 4.0)):
        out = model.transcribe(batch, cfg)
    assert out.llm in (["dog"], ["ease"]) and out.truncated == [None]


def test_a_phrase_spelling_a_special_token_boosts_its_text_not_the_token(model):
    """A listed phrase that spells "<|im_end|>" is text, as the prompt's list renders it: its trie holds the text's
    tokens, and the boost never favours the end token (it had been that token, so a hypothesis ended early)."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    boost = HotwordBoost([["<|im_end|>"]], tok, 2.0, end, 1)
    assert boost.tokens(0).tolist() and end not in boost.tokens(0).tolist()
    assert _gains(boost, [], len(tok))[end] == 0.0
