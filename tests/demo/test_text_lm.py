"""The demo LLM: word-level Qwen2-style tokenizer, ChatML, exact reload, and a text LM whose loss falls."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

from llmasr.demo import text_lm
from llmasr.demo.synth import DIGITS, WORDS, CorpusConfig, make_text
from llmasr.demo.text_lm import TextLMConfig, TextLMError
from llmasr.models.prompt import PromptBuilder


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = np.random.default_rng(0)
    return [make_text(rng, CorpusConfig()) for _ in range(300)]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return text_lm.train_word_tokenizer(texts)


def tiny_cfg(**kw) -> TextLMConfig:
    base = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, batch_size=8)
    return TextLMConfig(**{**base, **kw})


def test_every_corpus_word_is_one_token(tokenizer):
    for word in DIGITS + WORDS:
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
        assert len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1, word
    ids = tokenizer.encode("three one four door open", add_special_tokens=False)
    assert len(ids) == 5


def test_round_trip_including_unseen_text(tokenizer):
    for text in ["nine nine two", "Zebra, xylophone! 42\n\n  é 中", "  leading and  double  spaces"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None  # byte-level: nothing is out of vocabulary


def test_chatml_specials_and_template(tokenizer):
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "red door"}], tokenize=False
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nred door<|im_end|>\n"
    # The project's prompt builder accepts it and ends answers with <|im_end|>.
    prompt = PromptBuilder(tokenizer)
    assert prompt.end_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    enc = prompt.encode("three one")
    assert enc.ids[enc.target_start :] == [*tokenizer.encode("three one", add_special_tokens=False), prompt.end_id]


def test_saved_directory_reloads_identically(tmp_path, tokenizer, texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    model = text_lm.new_qwen2(tokenizer, tiny_cfg())
    write_tiny_llm_dir(tmp_path, model=model, tokenizer=tokenizer)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    samples = texts[:20] + ["Zebra, xylophone! 42\n\n  é 中", "<|im_start|>user\nTranscribe the audio.\n<|im_end|>"]
    for text in samples:
        assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert loaded.chat_template == tokenizer.chat_template
    assert len(loaded) == len(tokenizer)
    lm = AutoModelForCausalLM.from_pretrained(str(tmp_path), local_files_only=True)
    assert lm.config.model_type == "qwen2" and lm.config.vocab_size == len(tokenizer)


def test_chat_examples_train_only_assistant_text(tokenizer, texts):
    rng = np.random.default_rng(0)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for _ in range(20):
        ids, train = text_lm.chat_example(tokenizer, texts, rng, repeat_fraction=0.5)
        assert len(ids) == len(train)
        trained = [i for i, t in zip(ids, train) if t]
        assert trained and trained[-1] == end
        rendered = tokenizer.decode(ids)
        assert rendered.startswith("<|im_start|>") and rendered.count("<|im_start|>assistant\n") >= 1
        assert "Transcribe" not in rendered  # the speech task's prompt is never part of pretraining


def test_lm_loss_falls(tokenizer, texts):
    torch.manual_seed(0)
    model = text_lm.new_qwen2(tokenizer, tiny_cfg())
    losses = text_lm.pretrain_lm(model, tokenizer, texts, tiny_cfg(steps=40, lr=5e-3, warmup=5), log=lambda m: None)
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3])


def test_empty_text_is_an_error(tokenizer):
    with pytest.raises(TextLMError, match="no text"):
        text_lm.train_word_tokenizer(["", "  "])
    with pytest.raises(TextLMError, match="no text"):
        text_lm.pretrain_lm(text_lm.new_qwen2(tokenizer, tiny_cfg()), tokenizer, [" "], tiny_cfg(steps=1))


def test_spelled_words_encode_in_their_pieces_and_the_others_stay_whole():
    from llmasr.demo.hotword_split import SYLLABLES

    texts = ["keltrix seven two", "water black velmont", "three four", "open door"] * 5
    tok = text_lm.train_word_tokenizer(texts, {k: SYLLABLES[k] for k in ("keltrix", "velmont")})
    pieces = [tok.decode([i]) for i in tok.encode("keltrix seven water", add_special_tokens=False)]
    assert pieces == ["kel", "trix", " seven", " water"]
    assert len(tok.encode("velmont", add_special_tokens=False)) == 2
    assert tok.decode(tok.encode("water velmont keltrix", add_special_tokens=False)) == "water velmont keltrix"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a device every write to fails, disk full)")
def test_a_full_disk_names_the_llm_directory(tmp_path, texts):
    """The demo said only "SafetensorError: Error while serializing: I/O error: No space left on device"."""
    out = tmp_path / "llm"
    out.mkdir()
    (out / "config.json").symlink_to("/dev/full")
    with pytest.raises(OSError) as err:
        text_lm.build_text_lm(out, texts[:50], tiny_cfg(steps=1), log=lambda m: None)
    assert err.value.filename == str(out) and err.value.errno == errno.ENOSPC
