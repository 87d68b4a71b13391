"""CTC-guided decoding and the decoding guards, on models whose outputs are known: CTC prefix scores against brute
force, an LLM scripted to insert a word against an oracle CTC head, batched == one-by-one, truncations named."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import llmasr
from llmasr.config_io import ConfigError
from llmasr.models import ctc_guidance
from llmasr.models.adaptors import ADAPTOR_TYPES
from llmasr.models.ctc_guidance import rescore_nbest
from llmasr.models.ctc_prefix import CTCPrefixScorer, PrefixState
from llmasr.models.ctc_token_list import TokenListCTCTokenizer
from llmasr.models.ctc_vocab import SentencePieceCTCTokenizer, ctc_collapse
from llmasr.models.decode_guards import MAX_TOKENS, REPETITION, repeated_tail
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.scripted_llm import ScriptedLLM, chain_script
from llmasr.testing.tiny_funasr import SENSEVOICE_BPE, tiny_sensevoice_conf, write_funasr_dir
from llmasr.testing.tiny_recipe import OracleCTCHead, random_batch, tiny_model_section

TARGETS = ["zero one two", "three four", "five six seven eight", "nine"]


@pytest.fixture
def model(tiny_llm_dir):
    torch.manual_seed(0)
    return llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.3)).eval()


def _spell(scorer, utt, labels) -> PrefixState:
    state = scorer.initial(utt)
    for c in labels:
        state = scorer.extend([utt], [state], torch.tensor([[c]])).state(0, 0)
    return state


def test_prefix_scores_equal_brute_force_over_every_frame_path():
    torch.manual_seed(0)
    steps, vocab, blank = 5, 4, 3
    log_probs = torch.randn(2, steps, vocab, dtype=torch.float64).log_softmax(-1)
    lens = torch.tensor([5, 4])  # the second row is padded: its scores must ignore the last frame
    scorer = CTCPrefixScorer(log_probs, lens, blank)
    for utt in range(2):
        n = int(lens[utt])
        spelled: dict[tuple, float] = {}
        for path in itertools.product(range(vocab), repeat=n):
            p = math.exp(sum(float(log_probs[utt, t, c]) for t, c in enumerate(path)))
            key = tuple(ctc_collapse(path, blank))
            spelled[key] = spelled.get(key, 0.0) + p
        for labels in [(0,), (0, 0), (0, 1), (1, 0, 1), (2, 2), (0, 1, 2, 0)]:
            state = _spell(scorer, utt, labels)
            prefix = sum(p for y, p in spelled.items() if y[: len(labels)] == labels)
            assert math.exp(state.psi) == pytest.approx(prefix, rel=1e-9, abs=1e-12), (utt, labels)
            assert math.exp(scorer.final(utt, state)) == pytest.approx(spelled.get(labels, 0.0), rel=1e-9, abs=1e-12)


def _inserting_model(model, batch, inserted: str):
    """For a one-utterance batch: the oracle CTC head spelling the reference put in place, and the LLM scripted
    to say the reference, then `inserted`, then stop (a ScriptedLLM context)."""
    ref = batch.targets[0]
    enc_len = int(model.encoder(batch.feats, batch.feat_lens)[1][0])
    model._modules["ctc_head"] = OracleCTCHead(model.ctc_tokenizer, {enc_len: ref})
    tokens = model.prompt.tokenizer.encode(f"{ref} {inserted}", add_special_tokens=False)
    script = chain_script(tokens, model.prompt.end_id)
    # After the reference the LLM prefers the inserted word, with the end token a clear second.
    ref_len = len(model.prompt.tokenizer.encode(ref, add_special_tokens=False))
    script[tokens[ref_len - 1]][model.prompt.end_id] = 25.0
    return ScriptedLLM(model, script)


@pytest.mark.parametrize("beams", [1, 3])
def test_ctc_guidance_removes_the_insertion_the_llm_alone_makes(model, beams):
    batch = random_batch(model, ["three four"], frames=[30], seed=1)
    with torch.no_grad(), _inserting_model(model, batch, "nine"):
        alone = model.transcribe(batch, DecodeConfig(num_beams=beams, ctc_weight=0.0))
        guided = model.transcribe(batch, DecodeConfig(num_beams=beams, ctc_weight=0.5))
    assert alone.llm == ["three four nine"]  # the scripted insertion
    assert guided.llm == ["three four"] and guided.ctc == ["three four"]
    assert "CTC prefix scoring (ctc_weight 0.5)" in guided.mode and "CTC" not in alone.mode
    assert guided.truncated == [None]


@pytest.mark.parametrize("beams", [1, 3])
def test_a_word_the_audio_holds_is_reached_though_the_llm_ranks_it_last(model, beams, monkeypatch):
    """The LLM says "three nine" and puts " four" at the bottom of its ranking, far below CANDIDATES; the audio
    says "three four": its tokens are candidates because the CTC head gives them on some frame."""
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    batch = random_batch(model, ["three four"], frames=[30], seed=1)
    enc_len = int(model.encoder(batch.feats, batch.feat_lens)[1][0])
    model._modules["ctc_head"] = OracleCTCHead(model.ctc_tokenizer, {enc_len: "three four"})
    script = chain_script(tok.encode("three nine", add_special_tokens=False), end)
    four = tok.encode(" four", add_special_tokens=False)
    script[tok.encode("three", add_special_tokens=False)[-1]][four[0]] = -12.0
    cfg = DecodeConfig(num_beams=beams, ctc_weight=0.9)
    with torch.no_grad(), ScriptedLLM(model, script):
        guided = model.transcribe(batch, cfg)
        monkeypatch.setattr(ctc_guidance, "AUDIO_TOKEN_PROB", 2.0)  # no audio tokens: the LLM's top ones only
        top_only = model.transcribe(batch, cfg)
    assert guided.llm == ["three four"]
    assert top_only.llm != ["three four"]


def test_the_audio_tokens_scored_are_those_where_the_hypothesis_stands(model):
    """Of the tokens the audio holds, a prefix is offered those on the frames its next label can take: the empty
    prefix the first word's, "three four" the last word's, never one it has long passed or is far from."""
    tok = model.prompt.tokenizer
    frames = 40
    log_probs = OracleCTCHead(model.ctc_tokenizer, {frames: "three four nine"})(torch.zeros(1, frames, 1),
                                                                                  torch.tensor([frames]))  # fmt: skip
    scorer = CTCPrefixScorer(log_probs, torch.tensor([frames]), model.ctc_tokenizer.blank_id)
    guide = ctc_guidance.CTCPrefixGuide(scorer, 0.5, model.prompt.end_id, 1)
    first, nine = tok.encode("three", add_special_tokens=False), tok.encode(" nine", add_special_tokens=False)
    at_start = set(guide._reachable(0, scorer.initial(0)).tolist())
    assert first[0] in at_start and not at_start & set(nine)
    later = set(guide._reachable(0, _spell(scorer, 0, tok.encode("three four", add_special_tokens=False))).tolist())
    assert nine[0] in later and first[0] not in later


def test_frame_support_skips_only_frames_where_no_token_can_reach_the_threshold():
    """Frames where the blank holds more than 1 - p are not scanned; the tokens found equal a scan of every frame,
    with a frame on the line (blank 0.99, one token 0.01) and a padded second utterance."""
    torch.manual_seed(0)
    blank, vocab, frames = 2, 30, 12
    logits = torch.randn(2, frames, vocab)
    logits[:, ::2, blank] += 12.0  # every other frame: a confident blank
    log_probs = logits.log_softmax(-1)
    log_probs[0, 4] = float("-inf")
    log_probs[0, 4, blank], log_probs[0, 4, 7] = math.log1p(-0.01), math.log(0.01)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([frames, 7]), blank)
    for b, n in enumerate([frames, 7]):
        full = log_probs[b, :n] >= math.log(0.01)
        full[:, blank] = False
        frame, token = ctc_guidance.frame_support(scorer, 0.01)[b]
        assert set(zip(frame.tolist(), token.tolist())) == {(int(t), int(c)) for t, c in full.nonzero()}
    log_probs[1, 0] = torch.tensor([0.0 if c == 5 else -9.0 for c in range(vocab)]).log_softmax(-1)
    no_frames = CTCPrefixScorer(log_probs, torch.tensor([frames, 0]), blank)
    assert ctc_guidance.frame_support(no_frames, 0.01)[1][0].numel() == 0  # padding holds no token


def test_a_padded_candidate_row_keeps_token_zero(model):
    """Rows hold candidate lists of different lengths, padded with id 0; the padding must not overwrite the score
    of token 0 where it is a real candidate (batched decoding then differed from one-by-one)."""
    assert model.ctc_tokenizer.blank_id != 0
    frames, vocab = 20, len(model.prompt.tokenizer)
    log_probs = OracleCTCHead(model.ctc_tokenizer, {frames: "three four"})(torch.zeros(2, frames, 1),
                                                                         torch.tensor([frames, frames]))  # fmt: skip
    scorer = CTCPrefixScorer(log_probs, torch.tensor([frames, frames]), model.ctc_tokenizer.blank_id)
    wide = torch.arange(1, 40)  # utterance 1 scores many more tokens, so utterance 0's row is padded
    guide = ctc_guidance.CTCPrefixGuide(scorer, 0.5, model.prompt.end_id, 1, [torch.tensor([], dtype=torch.long), wide])
    scores = torch.zeros(2, vocab)
    scores[0, 0] = 5.0  # token 0 is the LLM's first choice on row 0
    out = guide(torch.zeros(2, 0, dtype=torch.long), scores)
    assert torch.isfinite(out[0, 0]) and torch.isfinite(out[1, wide]).all()


@pytest.mark.parametrize("beams", [1, 3])
def test_guided_batched_equals_one_by_one_and_guidance_changes_the_output(model, beams):
    batch = random_batch(model, TARGETS, frames=[12, 20, 16, 9], seed=5)
    cfg = DecodeConfig(num_beams=beams, ctc_weight=0.5, max_new_tokens=6)
    together = model.transcribe(batch, cfg)
    alone = [model.transcribe(batch.select([i]), cfg) for i in range(len(TARGETS))]
    assert together.llm == [a.llm[0] for a in alone]
    assert together.truncated == [a.truncated[0] for a in alone]
    plain = model.transcribe(batch, DecodeConfig(num_beams=beams, ctc_weight=0.0, max_new_tokens=6))
    assert plain.llm != together.llm  # the random CTC head does steer the random LLM


def test_default_weight_is_on_with_a_ctc_head_and_refused_without_one(model, tiny_llm_dir):
    assert DecodeConfig().guidance(True, True) > 0 and DecodeConfig().guidance(False, True) == 0.0
    assert DecodeConfig().guidance(True, False) == 0.0  # n-best rescoring needs a beam
    batch = random_batch(model, TARGETS[:2])
    assert "CTC prefix scoring" in model.transcribe(batch, DecodeConfig(max_new_tokens=3)).mode
    torch.manual_seed(0)
    plain = llmasr.build_model(tiny_model_section(tiny_llm_dir)).eval()
    assert plain.transcribe(random_batch(plain, TARGETS[:2]), DecodeConfig(max_new_tokens=3)).mode == "greedy"
    with pytest.raises(ConfigError, match="needs a CTC head, and this model has none"):
        plain.transcribe(random_batch(plain, TARGETS[:2]), DecodeConfig(ctc_weight=0.3))
    with pytest.raises(ConfigError, match="set num_beams >= 2"):
        DecodeConfig(ctc_weight=0.3).guidance(True, False)
    with pytest.raises(ConfigError, match=r"\(got 1; --beam 2 on the command line, Transcriber num_beams=2\)"):
        DecodeConfig(ctc_weight=0.3).guidance(True, False)  # the flag a command line sets it with is named
    with pytest.raises(ConfigError, match=r"decode.ctc_weight: must be in \[0, 1\]"):
        DecodeConfig(ctc_weight=1.5).validate("decode")


def test_nbest_rescoring_picks_the_hypothesis_the_ctc_head_spells(model):
    tok = model.ctc_tokenizer
    frames = OracleCTCHead(tok, {20: "three four"})(torch.zeros(1, 20, 1), torch.tensor([20]))
    nbest = [[("three four nine", -0.1), ("three four", -2.0), ("three", -1.0)]]
    assert rescore_nbest(nbest, frames, torch.tensor([20]), tok, 0.0) == [0]
    assert rescore_nbest(nbest, frames, torch.tensor([20]), tok, 0.5) == [1]


def test_nbest_rescoring_of_text_the_ctc_vocabulary_cannot_spell(tmp_path):
    """A hypothesis holding a character the CTC vocabulary lacks: with blank = <unk> (SenseVoice) its id had become
    a label equal to the blank, scored above probability 1 and picked; with no <unk> at all it stopped the decode."""
    d = write_funasr_dir(tmp_path / "sv", model="SenseVoiceSmall", encoder_conf=tiny_sensevoice_conf())
    sp = SentencePieceCTCTokenizer(str(d / SENSEVOICE_BPE), "<unk>")
    ref = sp.encode("one two")
    path = [sp.blank_id, *[x for k in ref for x in (k, sp.blank_id)], *[sp.blank_id] * 4]
    frames = torch.full((1, len(path), sp.vocab_size), -12.0)
    frames[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    frames = frames.log_softmax(-1)
    assert sp.blank_id in sp.encode("onely twoy")  # "ly"/"y" outside the stand-in's pieces: <unk>, the blank
    nbest = [[("one two", -1.0), ("onely twoy", -2.0)]]
    assert rescore_nbest(nbest, frames, torch.tensor([len(path)]), sp, 0.5) == [0]
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["<blank>", *"abcdefghijklmnopqrstuvwxyz", "<space>"]))  # no <unk>
    letters = TokenListCTCTokenizer(str(tokens))
    frames = OracleCTCHead(letters, {30: "hello world"})(torch.zeros(1, 30, 1), torch.tensor([30]))
    nbest = [[("hello, world", -0.5), ("hello world", -3.0)]]
    assert rescore_nbest(nbest, frames, torch.tensor([30]), letters, 0.3) == [1]


def test_repeated_tail():
    assert repeated_tail([5, 1, 2, 3, 1, 2, 3, 1, 2, 3], 3) and not repeated_tail([5, 1, 2, 3, 1, 2, 3, 1, 2, 3], 4)
    assert repeated_tail([7] * 6, 3) and not repeated_tail([7] * 5, 3) and not repeated_tail([7, 8, 7], 2)
    # a word and its comma are two tokens, counted like one word: six "yeah," are speech, ten a loop
    assert not repeated_tail([5] + [1, 2] * 6, 5) and repeated_tail([5] + [1, 2] * 10, 5)
    sentence = list(range(100, 112))  # a looping sentence of 12 tokens: five copies end it, four do not
    assert repeated_tail([5] + sentence * 5, 5) and not repeated_tail([5] + sentence * 4, 5)
    assert repeated_tail(list(range(100, 132)) * 2, 2) and not repeated_tail(list(range(100, 133)) * 2, 2)
    one, zero = 19, 18  # "1000000" in a vocabulary of single digits: six zeros are a number, not a loop
    assert not repeated_tail([one] + [zero] * 6, 5) and not repeated_tail([one] + [zero] * 9, 5)
    assert repeated_tail([one] + [zero] * 10, 5)


def test_a_looping_llm_is_stopped_and_each_stop_is_named(model):
    tok = model.prompt.tokenizer
    a, b = tok.encode(" one", add_special_tokens=False)[0], tok.encode(" two", add_special_tokens=False)[0]
    loop = {None: {a: 30.0}, a: {b: 30.0}, b: {a: 30.0}}  # "one two one two ..." and never the end token
    batch = random_batch(model, TARGETS[:2], frames=[40, 60], seed=2)
    with torch.no_grad(), ScriptedLLM(model, loop):
        stopped = model.transcribe(batch, DecodeConfig(ctc_weight=0.0, repeat_limit=2))
        capped = model.transcribe(batch, DecodeConfig(ctc_weight=0.0, repeat_limit=0, max_new_tokens=5))
        ids = model.generate_ids(batch.select([0]), ctc_weight=0.0, repeat_limit=2)
    assert stopped.truncated == [REPETITION, REPETITION]
    assert stopped.llm == [tok.decode([a, b] * 6).strip()] * 2  # two tokens count as a word: the sixth copy ends it
    assert ids[0][:13] == [a, b] * 6 + [model.prompt.end_id]
    assert capped.truncated == [MAX_TOKENS, MAX_TOKENS] and capped.llm[0] == tok.decode([a, b, a, b, a]).strip()


@pytest.mark.parametrize(
    "adaptor, compress", [(a, "none") for a in ADAPTOR_TYPES] + [("linear", "avg_no_blank"), ("qformer", "avg")]
)
def test_guided_decoding_with_every_adaptor_and_ctc_compress(tiny_llm_dir, adaptor, compress):
    torch.manual_seed(0)
    section = tiny_model_section(tiny_llm_dir, adaptor=adaptor, ctc_weight=0.3)
    section["adaptor"]["ctc_compress"] = compress
    m = llmasr.build_model(section).eval()
    batch = random_batch(m, TARGETS, frames=[12, 20, 16, 9], seed=5)
    cfg = DecodeConfig(num_beams=2, ctc_weight=0.5, max_new_tokens=4)
    together = m.transcribe(batch, cfg)
    assert together.llm == [m.transcribe(batch.select([i]), cfg).llm[0] for i in range(len(TARGETS))]
    assert together.mode == "beam 2 + CTC prefix scoring (ctc_weight 0.5)"


def _word_vocabulary_model(tiny_llm_dir, tmp_path):
    """The tiny model with a CTC head over a word list (its own vocabulary, not the LLM's: n-best rescoring)."""
    vocab = tmp_path / "words.txt"
    vocab.write_text("\n".join(["<blank>", "<unk>", "<space>", "three", "four", "nine"]) + "\n")
    torch.manual_seed(0)
    section = tiny_model_section(tiny_llm_dir, ctc_weight=0.3)
    section["ctc"]["vocab"] = str(vocab)
    m = llmasr.build_model(section).eval()
    return m


def test_a_word_vocabulary_head_rescores_the_nbest_and_removes_the_insertion(tiny_llm_dir, tmp_path):
    m = _word_vocabulary_model(tiny_llm_dir, tmp_path)
    assert m.ctc_tokenizer.encode("three four") == [3, 2, 4]
    batch, head = random_batch(m, ["three four"], frames=[30], seed=1), m.ctc_head
    with torch.no_grad(), _inserting_model(m, batch, "nine"):
        alone = m.transcribe(batch, DecodeConfig(num_beams=3, ctc_weight=0.0))
        guided = m.transcribe(batch, DecodeConfig(num_beams=3, ctc_weight=0.5))
    assert alone.llm == ["three four nine"] and guided.llm == ["three four"]
    assert guided.mode == "beam 3 + CTC n-best rescoring (ctc_weight 0.5)"
    with pytest.raises(ConfigError, match="set num_beams >= 2"):
        m.transcribe(batch, DecodeConfig(ctc_weight=0.5))
    assert m.transcribe(batch, DecodeConfig(max_new_tokens=3)).mode == "greedy"  # the default needs a beam here
    m._modules["ctc_head"] = head  # the trained-shape random head again: batched == one-by-one on any lengths
    together = random_batch(m, TARGETS, frames=[12, 20, 16, 9], seed=5)
    cfg = DecodeConfig(num_beams=3, ctc_weight=0.5, max_new_tokens=5)
    assert m.transcribe(together, cfg).llm == [m.transcribe(together.select([i]), cfg).llm[0] for i in range(4)]


def test_nbest_rescoring_weighs_the_llms_whole_log_probability(tiny_llm_dir, tmp_path, monkeypatch):
    """Beam scores come divided by length ** length_penalty; an unset penalty is generate's 1.0 and is undone as such
    (it was taken for 0: the CTC score met the LLM's mean per token, not its sum)."""
    import llmasr.models.llm_search as llm_search

    m = _word_vocabulary_model(tiny_llm_dir, tmp_path)
    batch, seen = random_batch(m, ["three four"], frames=[30], seed=1), []
    real = llm_search.rescore_nbest
    monkeypatch.setattr(llm_search, "rescore_nbest", lambda hyps, *a: seen.append(hyps) or real(hyps, *a))
    cfg = DecodeConfig(num_beams=3, ctc_weight=0.5, max_new_tokens=6)
    for penalty in (None, 1.0, 0.0):
        m.llm.generation_config.length_penalty = penalty
        with torch.no_grad():
            m.transcribe(batch, cfg)
    m.llm.generation_config.length_penalty = None
    with torch.no_grad():  # a penalty given to generate is the one its scores were divided by
        m.transcribe(batch, cfg, length_penalty=0.0)
    unset, one, none, given = ({text: score for text, score in hyps[0]} for hyps in seen)
    assert unset == pytest.approx(one) and len(unset) == 3 and given == pytest.approx(none)
    both = one.keys() & none.keys()  # 0: the beams ranked by sums already; the hypotheses they share score alike
    assert both and all(one[t] == pytest.approx(none[t], rel=1e-5) for t in both)


def test_recipe_and_command_refuse_guidance_the_model_cannot_take(tmp_path, capsys):
    from llmasr.recipe import load_recipe

    data = {"model": {"ctc": {"weight": 0.0}}, "decode": {"ctc_weight": 0.5}}
    with pytest.raises(ConfigError, match="needs a CTC head"):
        load_recipe(data=data)
    data = {"model": {"ctc": {"weight": 0.3, "vocab": str(tmp_path)}}, "decode": {"ctc_weight": 0.5}}
    with pytest.raises(ConfigError, match="set num_beams >= 2"):
        load_recipe(data=data)
    # ... but beams rescored by such a head are a decode setting it can take: validation's greedy pass goes
    # unguided (it had refused the recipe, saying num_beams was 1)
    data["decode"]["num_beams"] = 4
    recipe = load_recipe(data=data)
    assert recipe.decode.greedy(llm_vocab=False).ctc_weight == 0.0 and recipe.decode.greedy().ctc_weight == 0.5


def test_word_timestamps_without_a_ctc_head_are_refused_in_the_recipe_and_can_be_turned_off():
    """decode.timestamps with model.ctc.weight 0 had passed check, training and export, and then every decode of the
    export failed, with no flag to turn the saved setting off."""
    from llmasr.commands.decode import build_parser
    from llmasr.recipe import load_recipe

    with pytest.raises(ConfigError, match=r"decode.timestamps: word times come from the CTC head, and this recipe"):
        load_recipe(data={"model": {"ctc": {"weight": 0.0}}, "decode": {"timestamps": True}})
    args = ["--model", "m", "--data", "d.jsonl", "--output", "o"]
    assert build_parser().parse_args([*args, "--no-timestamps"]).timestamps is False
    assert build_parser().parse_args(args).timestamps is None  # the model's own setting


def test_a_run_saved_with_timestamps_and_no_ctc_head_still_resumes_and_exports(tmp_path, caplog):
    """An older llmasr let such a run train: its RUN_DIR/recipe.yaml is read with timestamps off (and a warning),
    so resume compares, and export and decode --checkpoint load it."""
    import logging

    import yaml

    from llmasr.recipe import Recipe, load_recipe
    from llmasr.train import resume_recipe as rr

    saved = tmp_path / "run" / "recipe.yaml"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    saved.write_text(yaml.safe_dump({"model": {"ctc": {"weight": 0.0}}, "decode": {"timestamps": True}}))
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        assert load_recipe(saved, saved=True).decode.timestamps is False
    assert "decode.timestamps is true but the model has no CTC head to time words: read as false" in caplog.text
    assert (
        rr.check_resume_recipe(load_recipe(data={"model": {"ctc": {"weight": 0.0}}}), tmp_path / "run" / "checkpoints")
        == []
    )
    with pytest.raises(ConfigError, match="decode.timestamps: word times come from the CTC head"):
        load_recipe(saved)  # as a new run's recipe it is refused
    assert Recipe.saved_data({"decode": {"timestamps": True}, "model": {"ctc": {"weight": 0.3}}}, "r.yaml")[
        "decode"
    ] == {"timestamps": True}
