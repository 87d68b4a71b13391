import math
import random
import re

import pytest

from llmasr.models.chat_template import PromptError
from llmasr.models.prompt import AUDIO_PLACEHOLDER, PromptBuilder
from llmasr.models.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_dir):
    return load_tokenizer(tiny_llm_dir)


def test_prompt_matches_chat_template_around_audio(tokenizer):
    pb = PromptBuilder(tokenizer, task="Transcribe the audio.")
    enc = pb.encode("zero one two")
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": f"Transcribe the audio.\n{AUDIO_PLACEHOLDER}"},
            {"role": "assistant", "content": "zero one two"},
        ],
        tokenize=False,
    )
    before, after = rendered.split(AUDIO_PLACEHOLDER)
    assert tokenizer.decode(enc.ids[: enc.audio_pos]) == before
    # The text after the audio is the rest of the prompt, the target and the end-of-turn token.
    assert tokenizer.decode(enc.ids[enc.audio_pos :]).startswith(after.split("zero")[0])
    target = enc.ids[enc.target_start :]
    assert target[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(target[:-1]) == "zero one two"


def test_inference_prompt_is_training_prompt_prefix(tokenizer):
    pb = PromptBuilder(tokenizer)
    train = pb.encode("seven eight")
    infer = pb.encode(None)
    assert infer.ids == train.ids[: train.target_start]
    assert infer.target_start == len(infer.ids)
    assert infer.audio_pos == train.audio_pos


def test_end_token_is_template_end_of_turn_and_decode_stops_there(tokenizer):
    pb = PromptBuilder(tokenizer)
    assert pb.end_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer.encode("nine", add_special_tokens=False) + [pb.end_id] + tokenizer.encode("junk")
    assert pb.decode(ids) == "nine"


def test_a_hypothesis_cut_inside_a_character_decodes_without_a_replacement_character(tokenizer):
    """The tiny tokenizer spells a Chinese character in three byte tokens, as Qwen's does a rare one: a hypothesis
    cut after one or two of them (the length cap, the repetition stop) had ended in U+FFFD, written into hyp.txt
    and results.jsonl; the CTC branch's text on the LLM's tokens likewise."""
    from llmasr.models.ctc_vocab import LLMCTCTokenizer

    pb, ctc = PromptBuilder(tokenizer), LLMCTCTokenizer(tokenizer)
    ids = tokenizer.encode("天气", add_special_tokens=False)
    assert len(ids) == 6 and tokenizer.decode(ids[:4]).endswith("\ufffd")  # bytes: the cut is inside 气
    for cut, text in [(1, ""), (2, ""), (3, "天"), (4, "天"), (5, "天"), (6, "天气")]:
        assert pb.decode(ids[:cut] + [pb.end_id]) == text and ctc.decode(ids[:cut]) == text
    assert pb.decode(ids[1:]) == "气"  # a stray continuation byte in front spells nothing either


def test_per_utterance_task_prompt(tokenizer):
    pb = PromptBuilder(tokenizer, task="Transcribe the audio.")
    a = pb.encode("one", task="Translate the audio.")
    b = pb.encode("one")
    assert a.ids != b.ids
    assert "Translate" in tokenizer.decode(a.ids[: a.audio_pos])


def test_system_prompt_rendered(tokenizer):
    pb = PromptBuilder(tokenizer, system="You are a helpful assistant.")
    enc = pb.encode(None)
    assert "<|im_start|>system\nYou are a helpful assistant." in tokenizer.decode(enc.ids)


def test_per_utterance_system_message(tokenizer):
    """A manifest line's own system message (ChatML lines) replaces the builder's for that utterance only."""
    pb = PromptBuilder(tokenizer, system="You are a helpful assistant.")
    own = pb.encode("one", system="You transcribe court hearings.")
    text = tokenizer.decode(own.ids)
    assert "court hearings" in text and "helpful" not in text
    assert pb.encode("one", system="You are a helpful assistant.").ids == pb.encode("one").ids
    assert "<|im_start|>system" not in tokenizer.decode(pb.encode(None, system="").ids)  # "": no system message
    with_list = pb.encode(None, hotwords=["Qwen"], system="You transcribe court hearings.")
    assert "court hearings" in tokenizer.decode(with_list.ids) and with_list.hotwords == ("Qwen",)
    assert pb.encode("one").ids != own.ids  # the cache keeps the two apart


@pytest.mark.parametrize("bad", ["", "   ", None, 5])
def test_empty_or_non_text_transcript_is_an_error(tokenizer, bad):
    pb = PromptBuilder(tokenizer)
    if bad is None:
        return  # None is the inference prompt, not an error
    with pytest.raises(PromptError, match="empty or non-text transcript"):
        pb.encode(bad)


def test_missing_chat_template_is_a_clear_error(tiny_llm_no_template_dir):
    tok = load_tokenizer(tiny_llm_no_template_dir)
    with pytest.raises(PromptError, match="has no chat template.*model.prompt.chat_template"):
        PromptBuilder(tok, source=str(tiny_llm_no_template_dir))


def test_chat_template_from_recipe_fixes_a_base_tokenizer(tiny_llm_no_template_dir, tmp_path):
    from llmasr.testing.tiny_llm import CHATML_TEMPLATE

    path = tmp_path / "chatml.jinja"
    path.write_text(CHATML_TEMPLATE)
    pb = PromptBuilder(load_tokenizer(tiny_llm_no_template_dir), chat_template=str(path))
    assert pb.encode("one").target_start > 0
    with pytest.raises(PromptError, match="file not found"):
        PromptBuilder(load_tokenizer(tiny_llm_no_template_dir), chat_template=str(tmp_path / "nope.jinja"))


def test_chat_template_file_not_in_utf8_is_named(tiny_llm_no_template_dir, tmp_path):
    """A template file saved in a local code page reached the user as a raw UnicodeDecodeError naming no file."""
    from llmasr.testing.tiny_llm import CHATML_TEMPLATE

    path = tmp_path / "chatml.jinja"
    path.write_bytes(("{#- 聊天模板 -#}" + CHATML_TEMPLATE).encode("gbk"))
    with pytest.raises(PromptError, match=re.escape(f"model.prompt.chat_template: {path}: not UTF-8 text")):
        PromptBuilder(load_tokenizer(tiny_llm_no_template_dir), chat_template=str(path))


def test_template_that_drops_user_content_is_rejected(tokenizer):
    template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(PromptError, match="placeholder 0 times"):
        PromptBuilder(tokenizer, chat_template=template)


# ------------------------------------------------------------------------------------------------------ hotwords


@pytest.fixture
def hw_tokenizer(tiny_llm_dir):
    return load_tokenizer(tiny_llm_dir)  # its own: other tests set the module tokenizer's chat template


def test_hotwords_render_before_task_and_empty_list_is_the_plain_prompt(hw_tokenizer):
    pb = PromptBuilder(hw_tokenizer, task="Transcribe the audio.", hotwords_template="Hotwords: {hotwords}. ")
    plain = pb.encode("zero one")
    assert pb.encode("zero one", hotwords=[]) == plain
    enc = pb.encode("zero one", hotwords=["nine", "four five"])
    head = hw_tokenizer.decode(enc.ids[: enc.audio_pos])
    assert "Hotwords: nine, four five. Transcribe the audio.\n" in head
    assert enc.hotwords == ("nine", "four five") and enc.hotwords_dropped == 0
    # The labels are the target alone: the list only moves where they start.
    assert enc.ids[enc.target_start :] == plain.ids[plain.target_start :]
    assert enc.target_start > plain.target_start


def test_hotwords_inference_prompt_is_training_prompt_prefix(hw_tokenizer):
    pb = PromptBuilder(hw_tokenizer)
    train = pb.encode("seven eight", hotwords=["eight", "three"])
    infer = pb.encode(None, hotwords=["eight", "three"])
    assert infer.ids == train.ids[: train.target_start] and infer.audio_pos == train.audio_pos


def test_hotword_token_cap_drops_longest_first(hw_tokenizer):
    phrases = ["one", "three four five six seven", "two", "eight nine"]
    joined = ", ".join(["one", "two", "eight nine"])
    cap = len(hw_tokenizer.encode(joined, add_special_tokens=False))
    pb = PromptBuilder(hw_tokenizer, hotwords_max_tokens=cap)
    enc = pb.encode(None, hotwords=phrases)
    assert enc.hotwords == ("one", "two", "eight nine") and enc.hotwords_dropped == 1
    tight = PromptBuilder(hw_tokenizer, hotwords_max_tokens=cap - 1)
    enc = tight.encode(None, hotwords=phrases)
    assert enc.hotwords == ("one", "two") and enc.hotwords_dropped == 2
    assert PromptBuilder(hw_tokenizer, hotwords_max_tokens=1).encode(None, hotwords=["three four five"]).hotwords == ()


def test_a_list_every_utterance_shares_is_capped_once(hw_tokenizer, monkeypatch):
    """`--hotwords FILE` gives every line the same list: capping it re-encodes the list once per phrase dropped
    (seconds for a list of a thousand), which was paid again for every utterance."""
    words = "zero one two three four five six seven eight nine".split()
    phrases = [f"{words[i % 10]} {words[i // 10 % 10]}" for i in range(60)]
    pb = PromptBuilder(hw_tokenizer, hotwords_max_tokens=12)
    first = pb.encode(None, hotwords=phrases)
    assert first.hotwords_dropped > 40
    calls = []
    real = hw_tokenizer.encode
    monkeypatch.setattr(hw_tokenizer, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = pb.encode(None, hotwords=phrases)
    assert again == first and len(calls) <= 2  # the rendered prompt's two sides only
    other = pb.encode(None, hotwords=phrases[:3])  # another list is capped afresh
    assert other.hotwords_dropped == len(phrases[:3]) - len(other.hotwords) and other.hotwords != first.hotwords


def _capped_one_by_one(tokenizer, phrases, cap, separator=", "):
    """The cap's rule as stated: the longest phrase (the first of equals) dropped until the joined list fits."""

    def count(text):
        return len(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    kept, lengths, dropped = list(phrases), [count(p) for p in phrases], 0
    while kept and count(separator.join(kept)) > cap:
        j = lengths.index(max(lengths))
        del kept[j], lengths[j]
        dropped += 1
    return kept, dropped


def test_a_long_list_is_capped_without_encoding_it_again_per_drop(hw_tokenizer, monkeypatch):
    """Capping dropped one phrase at a time and encoded the whole joined list after each drop: a list of two
    thousand phrases under a cap of 64 took most of a minute, and one of ten thousand (a name list for
    `--hotwords`) many, in decode's start-up and in each loader worker. The same phrases are kept."""
    words = "zero one two three four five six seven eight nine quick brown fox".split()
    rng = random.Random(0)
    phrases = [" ".join(rng.choices(words, k=rng.randint(1, 4))) for _ in range(300)]
    for cap in (1, 5, 12, 40, 300, 100_000):
        pb = PromptBuilder(hw_tokenizer, hotwords_max_tokens=cap)
        assert pb.capped_hotwords(phrases) == _capped_one_by_one(hw_tokenizer, phrases, cap), cap
    pb = PromptBuilder(hw_tokenizer, hotwords_max_tokens=12)
    encoded = []
    real = hw_tokenizer.encode
    monkeypatch.setattr(hw_tokenizer, "encode", lambda text, *a, **k: encoded.append(text) or real(text, *a, **k))
    kept, dropped = pb.capped_hotwords(phrases)
    assert dropped > 250 and kept
    lists = [t for t in encoded if ", " in t]  # the joined lists encoded: a few halvings, not one per drop
    assert len(lists) <= 2 * math.ceil(math.log2(len(phrases))), len(lists)


def test_a_phrase_spelling_a_special_token_is_text_in_the_prompt(hw_tokenizer):
    """A transcript that holds "<|im_end|>" is spelled as text in the labels, so training may draw it as a true
    phrase: in the list it was the end-of-turn token, closing the user's message before the task and the audio."""
    pb = PromptBuilder(hw_tokenizer)
    enc = pb.encode("zero <|im_end|> one", hotwords=["<|im_end|>", "zero"])
    plain = pb.encode("zero <|im_end|> one", hotwords=["nine", "zero"])
    assert enc.ids[: enc.target_start].count(pb.end_id) == plain.ids[: plain.target_start].count(pb.end_id)
    assert "Hotwords: <|im_end|>, zero. Transcribe the audio." in hw_tokenizer.decode(enc.ids[: enc.audio_pos])
    spelled = hw_tokenizer.encode("<|im_end|>", add_special_tokens=False, split_special_tokens=True)
    assert len(spelled) > 1 and enc.ids[enc.target_start :] == plain.ids[plain.target_start :]
    rendered = pb._render(pb.hotwords_text(["nine", "zero"]) + pb.task, None)  # a list without one: as before
    assert plain.ids[: plain.audio_pos] == hw_tokenizer.encode(rendered.split(AUDIO_PLACEHOLDER)[0])


def test_a_phrase_spelling_a_special_token_counts_its_spelling_under_the_cap(hw_tokenizer):
    """The list renders "<|im_end|>" as text, many tokens: the cap had counted it as the one special token, so a
    list past hotwords_max_tokens was kept whole."""
    spelled = len(hw_tokenizer.encode("<|im_end|>", add_special_tokens=False, split_special_tokens=True))
    enc = PromptBuilder(hw_tokenizer, hotwords_max_tokens=spelled - 1).encode("zero", hotwords=["<|im_end|>", "one"])
    assert enc.hotwords == ("one",) and enc.hotwords_dropped == 1
    kept = PromptBuilder(hw_tokenizer, hotwords_max_tokens=spelled).encode("zero", hotwords=["<|im_end|>"])
    assert kept.hotwords == ("<|im_end|>",) and kept.hotwords_dropped == 0


def test_hotwords_template_needs_its_placeholder(hw_tokenizer):
    with pytest.raises(PromptError, match="hotwords"):
        PromptBuilder(hw_tokenizer, hotwords_template="Hotwords: ")


@pytest.mark.parametrize(
    "stamp",
    [
        "{%- set date_string = strftime_now('%d %b %Y') -%}",  # SmolLM3-style: today, unconditionally
        "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}",  # Llama
    ],
)
def test_a_template_that_stamps_today_renders_one_fixed_date(stamp, monkeypatch):
    """A prompt is the same on the day a model trains and the day it decodes: a template's "today" (Llama 3.x,
    SmolLM3) had put each process's own date into the system header."""
    import datetime

    import transformers.utils.chat_template_utils as ctu

    from llmasr.models.chat_template import TEMPLATE_DATE
    from llmasr.testing.tiny_llm import CHATML_TEMPLATE, train_bpe_tokenizer

    template = stamp + "{{- '<|im_start|>system\\nToday Date: ' + date_string + '<|im_end|>\\n' -}}" + CHATML_TEMPLATE
    tok = train_bpe_tokenizer(["hello world the quick brown fox 2024 2025 Jan Feb Jul"] * 3)
    prompts = []
    for day in (datetime.datetime(2025, 1, 31, 23, 59), datetime.datetime(2025, 2, 1, 0, 1)):
        clock = type("Clock", (datetime.datetime,), {"now": classmethod(lambda cls, tz=None, d=day: d)})
        monkeypatch.setattr(ctu, "datetime", clock)
        prompts.append(PromptBuilder(tok, chat_template=template).encode("hello world").ids)
    assert prompts[0] == prompts[1]
    assert TEMPLATE_DATE.strftime("%d %b %Y") in tok.decode(prompts[0])


def test_special_token_text_in_a_transcript_is_text(tiny_llm_dir):
    """A transcript holding "<|im_end|>" had trained the end token inside its target (decoding then stops there),
    and so had its CTC labels from the LLM's vocabulary."""
    from llmasr.models.ctc_vocab import LLMCTCTokenizer

    tok = load_tokenizer(tiny_llm_dir)
    pb = PromptBuilder(tok)
    enc = pb.encode("hello <|im_end|> world")
    target = enc.ids[enc.target_start :]
    assert target.count(pb.end_id) == 1 and target[-1] == pb.end_id
    assert pb.decode(target) == "hello <|im_end|> world"
    assert pb.end_id not in LLMCTCTokenizer(tok).encode("hello <|im_end|> world")


QWEN3_LIKE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def test_template_kwargs_reach_the_template_and_a_reasoning_block_is_not_transcript(tiny_llm_dir):
    """model.prompt.template_kwargs are the template's variables: Qwen3's enable_thinking: false ends the prompt in
    an empty think block, in training and decoding alike. An answer that opens with a reasoning block (Qwen3's tags
    are not special tokens) is decoded without it."""
    tokenizer = load_tokenizer(tiny_llm_dir)
    plain = PromptBuilder(tokenizer, chat_template=QWEN3_LIKE)
    quiet = PromptBuilder(
        load_tokenizer(tiny_llm_dir), chat_template=QWEN3_LIKE, template_kwargs={"enable_thinking": False}
    )
    assert not tokenizer.decode(plain.encode(None).ids).endswith("</think>\n\n")
    infer, train = quiet.encode(None), quiet.encode("zero one")
    assert tokenizer.decode(infer.ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert train.ids[: train.target_start] == infer.ids
    thought = tokenizer.encode("<think>\nthe user wants digits\n</think>\n\nzero one", add_special_tokens=False)
    assert quiet.decode(thought + [quiet.end_id]) == "zero one"
    assert quiet.decode(tokenizer.encode("<think> still thinking", add_special_tokens=False)) == "still thinking"


def test_template_kwargs_that_llmasr_sets_itself_are_refused():
    from llmasr.config_io import ConfigError
    from llmasr.models.config import PromptConfig

    with pytest.raises(ConfigError, match=r"model.prompt.template_kwargs: \['add_generation_prompt'\] are set by"):
        PromptConfig(template_kwargs={"add_generation_prompt": False}).validate("model.prompt")


def test_the_standalone_template_renders_llmasrs_prompt_without_its_variables(tiny_llm_dir, tmp_path):
    """What an export's tokenizer carries: saved and loaded by plain transformers, its template renders the prompt
    llmasr trains and decodes with (Qwen3's enable_thinking: false, Llama's fixed date, a leading newline of the
    template's own) without being passed llmasr's variables, and a caller's own values still win."""
    from transformers import AutoTokenizer

    dated = "\n{% if date_string is defined %}Today Date: {{ date_string }}\n{% endif %}" + QWEN3_LIKE
    quiet = PromptBuilder(
        load_tokenizer(tiny_llm_dir), chat_template=dated, system="Be brief.",
        template_kwargs={"enable_thinking": False, "tags": {"lang": ["en", None]}},
    )  # fmt: skip
    tokenizer = quiet.tokenizer
    tokenizer.chat_template = quiet.standalone_template()
    tokenizer.save_pretrained(str(tmp_path))
    plain = AutoTokenizer.from_pretrained(str(tmp_path))
    messages = quiet._messages(quiet.task, None)
    text = plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == quiet._render(quiet.task, None)
    assert text.startswith("\nToday Date: 26 Jul 2024\n") and text.endswith("assistant\n<think>\n\n</think>\n\n")
    thinking = plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert thinking == text.removesuffix("<think>\n\n</think>\n\n")
    with pytest.raises(PromptError, match=r"template_kwargs: \['two words'\] are not names a chat template can read"):
        PromptBuilder(load_tokenizer(tiny_llm_dir), template_kwargs={"two words": 1})  # at start-up, not at export


def test_decoded_text_keeps_the_spaces_its_tokens_spell(tmp_path):
    """A tokenizer_config.json that switches on transformers' clean-up of spaces (Llama 3's sets
    clean_up_tokenization_spaces, which transformers applied to its BPE decode for many releases; the second key
    forces that here) had joined " 's", " ," and " '" to the word before: a hypothesis and the CTC branch's text lost
    spaces the transcript has ("the word'social'": one word where the reference holds two)."""
    import json

    from llmasr.models.ctc_vocab import LLMCTCTokenizer
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    path = write_tiny_llm_dir(tmp_path / "llm", texts=["the word social it is a test they do not know"])
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["clean_up_tokenization_spaces"] = True
    config["clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"] = True
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = load_tokenizer(path)
    transcript = "the word 'social' , it 's a test , they do n't know ."
    assert tok.decode(tok.encode(transcript, add_special_tokens=False)) != transcript  # the clean-up is on
    pb = PromptBuilder(tok)
    enc = pb.encode(transcript)
    assert pb.decode(enc.ids[enc.target_start :]) == transcript
    ctc = LLMCTCTokenizer(tok)
    assert ctc.decode(ctc.encode(transcript)) == transcript


def test_threads_sharing_a_builder_count_what_one_counts(tiny_llm_dir):
    """A fast tokenizer sets whether it splits special-token text on every call; two threads counting prompts with
    one builder (ranks as threads, a server's workers) tokenized with each other's setting, and a prompt whose list
    spells <|im_end|> counted as one whose special token it is (or the reverse)."""
    import threading

    builder = PromptBuilder(load_tokenizer(tiny_llm_dir))  # a tokenizer of its own: other tests set a template
    asked = [(None, [f"say <|im_end|> {i}", f"word{i}"], None) for i in range(40)] + [(None, None, None)]
    want = builder.prompt_sizes(asked)
    got, start = [], threading.Barrier(4)

    def count():
        start.wait()
        for _ in range(30):
            got.append(
                (builder.prompt_sizes(asked), [len(builder.encode(None, hotwords=h).ids) for _, h, _ in asked[:3]])
            )

    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = [len(builder.encode(None, hotwords=h).ids) for _, h, _ in asked[:3]]
    assert len(got) == 120 and all(g == (want, alone) for g in got)


# Llama 2's layout: the answer follows the instruction after a space and ends with " " + the end token.
SPACED = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<|im_start|>[INST] ' + message['content'] + ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- ' ' + message['content'].strip() + ' <|im_end|>' -}}"
    "{%- endif -%}{%- endfor -%}"
)
# A generation prompt that stops before the space its answers start with.
COLON = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'User: ' + message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' + message['content'] + '<|im_end|>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)


def _metaspace_tokenizer():
    """A sentencepiece-style tokenizer (Metaspace: a word's space is its "▁"), as Llama 2 and Mistral have."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmasr.testing.tiny_llm import CHATML_SPECIALS, DEFAULT_CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=CHATML_SPECIALS, show_progress=False)
    tok.train_from_iterator(DEFAULT_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )


@pytest.mark.parametrize("template", [SPACED, COLON])
@pytest.mark.parametrize("kind", ["byte_bpe", "metaspace"])
def test_an_answer_is_tokenized_as_the_template_renders_the_whole_conversation(tiny_llm_dir, kind, template):
    """A template that writes the answer after a space ("[/INST] the quick", "Assistant: the quick") renders " the"
    as one token; the transcript tokenized on its own had trained "t", "he" (and no space before the end token):
    not what the template, the LLM's instruction tuning or a plain apply_chat_template user writes there. The
    decode prompt stays the training sequence's prefix, and the decoded text is the transcript."""
    tok = load_tokenizer(tiny_llm_dir) if kind == "byte_bpe" else _metaspace_tokenizer()
    pb = PromptBuilder(tok, chat_template=template)
    target = "the quick brown fox"
    enc = pb.encode(target)
    rendered = tok.apply_chat_template(pb._messages(pb.task, target), tokenize=False)
    after = rendered.split(AUDIO_PLACEHOLDER)[1]
    whole = tok.encode(after, add_special_tokens=False)
    assert enc.ids[enc.audio_pos :] == whole[: whole.index(pb.end_id) + 1]
    assert pb.encode(None).ids == enc.ids[: enc.target_start]
    assert pb.decode(enc.ids[enc.target_start :]) == target


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"enable_thinking": True}])
def test_a_template_that_writes_the_answer_right_after_its_header_adds_no_spacing(tiny_llm_dir, kwargs):
    """ChatML (Qwen2.5), the Qwen3 layout and Nano's write the answer right after "assistant\\n": its tokens are
    the transcript's own, as the whole conversation renders them."""
    from llmasr.convert.nano_config import NANO_CHAT_TEMPLATE

    for template in (None, QWEN3_LIKE, NANO_CHAT_TEMPLATE):
        tok = load_tokenizer(tiny_llm_dir)
        pb = PromptBuilder(tok, chat_template=template, template_kwargs=kwargs)
        assert (pb.answer_lead, pb.answer_trail) == ("", "")
        enc = pb.encode(" zero one ")
        assert enc.ids[enc.target_start :] == tok.encode("zero one", add_special_tokens=False) + [pb.end_id]


def test_template_reads_names_what_a_template_reads_and_none_where_it_cannot_parse():
    """check lists the render variables a template reads: transformers' {% generation %} tag and loop controls
    parse; a tag of another renderer's leaves what it reads untold (None: check then lists every variable)."""
    from llmasr.models.chat_template import template_reads

    qwen3 = "{% for m in messages %}{% if enable_thinking is false %}{% break %}{% endif %}{% endfor %}"
    assert template_reads(qwen3) == {"messages", "enable_thinking"}
    dated = "{% generation %}{{ date_string }}{% endgeneration %}{% set x = 1 %}{{ x }}"
    assert template_reads({"default": dated, "tool_use": "{{ tools }}"}) == {"date_string", "tools"}
    assert template_reads("{% unknown_tag %}") is None
