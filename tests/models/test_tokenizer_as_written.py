"""The LLM's tokenizer as its folder's tokenizer.json writes it (llmasr.models.tokenizer.as_written): transformers 5
loads a qwen2 folder with Qwen2Tokenizer, which keeps the file's vocabulary under Qwen's own normaliser and
pre-tokenizer, and only the added tokens tokenizer_config.json lists. Tiny folders in a Qwen release's on-disk layout
and in the layout llmasr.testing writes, read by the real loader, against `tokenizers.Tokenizer.from_file`."""

from __future__ import annotations

import logging

import pytest
from tokenizers import Tokenizer

from llmasr.models.llm import load_llm
from llmasr.models.tokenizer import load_tokenizer
from llmasr.testing.tiny_llm import train_gpt2_style_bpe_tokenizer, write_qwen_layout_llm_dir, write_tiny_llm_dir

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "call 2024 now, it's (really) fine!",
    "cafe\u0301 and café",  # a combining accent: NFC composes it where the file says NFC
    "ﬁne １２３",  # NFKC would rewrite these; neither file says NFKC
    "<|im_start|>user\nhi<|im_end|>\n",
    "a<|endoftext|>b",
    "x<tool_call>y</tool_call>",  # added, not special
    "to zanzibar and back",  # added to tokenizer.json alone
    "a\n\nb  c",
]


def file_ids(folder, text):
    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def assert_as_written(folder):
    tok = load_tokenizer(folder)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == file_ids(folder, text), (folder.name, text)
    return tok


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_a_qwen_release_folder_tokenizes_as_its_tokenizer_json(arch, tmp_path):
    """The pipeline of a Qwen2.5 / Qwen3 file (NFC; Split, ByteLevel) is Qwen2Tokenizer's own: the class is kept."""
    tok = assert_as_written(write_qwen_layout_llm_dir(tmp_path / arch, arch=arch))
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.encode("cafe\u0301", add_special_tokens=False) == tok.encode("café", add_special_tokens=False)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_a_token_added_to_tokenizer_json_alone_is_kept(arch, tmp_path, caplog):
    """Qwen2Tokenizer takes added tokens from tokenizer_config.json's added_tokens_decoder where it has one: a token
    tokenizer.json adds besides (the embedding row is there) had been spelled in pieces."""
    folder = write_qwen_layout_llm_dir(tmp_path / arch, arch=arch, added=("zanzibar",))
    with caplog.at_level(logging.WARNING, logger="llmasr.models.tokenizer"):
        tok = assert_as_written(folder)
    assert "the added token 'zanzibar' (id 305)" in caplog.text and "TokenizersBackend.from_pretrained" in caplog.text
    assert len(tok) == 306 and tok.decode(tok.encode("to zanzibar", add_special_tokens=False)) == "to zanzibar"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.unk_token is None
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_qwen2_folder_with_another_pipeline_is_read_as_written(tmp_path, caplog):
    """A qwen2 folder whose tokenizer.json has a GPT-2 style ByteLevel pipeline, no normaliser. Qwen2Tokenizer had
    imposed NFC and Qwen's split on it (a combining accent composed into a letter the model never saw that way), and
    the model build and the data's text side both read it so."""
    folder = write_tiny_llm_dir(tmp_path / "qwen2", tokenizer=train_gpt2_style_bpe_tokenizer([]))
    with caplog.at_level(logging.WARNING, logger="llmasr.models.tokenizer"):
        assert_as_written(folder)
    assert "its normalizer; its pre_tokenizer" in caplog.text
    tok = load_llm(folder, pretrained=False)[1]  # the model's build reads the same
    assert tok.encode("cafe\u0301", add_special_tokens=False) == file_ids(folder, "cafe\u0301")


def test_llmasr_testing_tiny_qwen_folders_load_with_the_class_a_real_qwen_folder_gets(tmp_path, caplog):
    """The tiny qwen2 folder the tests train with has Qwen's pipeline, so it loads with Qwen2Tokenizer as a real
    Qwen2.5 folder does, with no warning, and tokenizes as its file."""
    folder = write_tiny_llm_dir(tmp_path / "qwen2")
    with caplog.at_level(logging.WARNING, logger="llmasr.models.tokenizer"):
        tok = load_tokenizer(folder)
    assert type(tok).__name__ == "Qwen2Tokenizer" and not caplog.text
    assert all(tok.encode(t, add_special_tokens=False) == file_ids(folder, t) for t in TEXTS[:4])
