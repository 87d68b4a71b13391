"""The start-up count of each line's CTC labels asks each distinct word once where the vocabulary spells word by word
(llmasr.data.ctc_frames.WordCounts), and encodes the line whole where it does not: its verdicts and counts are the
whole line's, line for line."""

from __future__ import annotations

import pytest

from llmasr.data.ctc_frames import CTCSpelling, WordCounts, frames_needed
from llmasr.data.dataset import CTCRule
from llmasr.models.ctc import build_ctc_tokenizer
from llmasr.models.ctc_config import CTCConfig
from llmasr.models.ctc_seg_dict import SegDictCTCTokenizer
from llmasr.models.ctc_tiktoken import TiktokenCTCTokenizer
from llmasr.models.ctc_token_list import TokenListCTCTokenizer
from llmasr.models.ctc_vocab import LLMCTCTokenizer, SentencePieceCTCTokenizer
from llmasr.testing.tiny_llm import (
    train_bpe_tokenizer,
    train_char_bpe_tokenizer,
    train_gpt2_style_bpe_tokenizer,
    train_unigram_tokenizer,
)
from llmasr.testing.tiny_nano import write_tiktoken

# Punctuation on words, Chinese without spaces, mixed scripts, repeated words and letters (within a word and across
# two: "a a", "ab ba"), characters no vocabulary here lists (ß, é, emoji, Korean), a word that is a separator token,
# combining marks, digits, and whitespace other than one space between words
CORPUS = [
    "hello, world!", "(ann) don't stop", "she said: 'yes'.", "the the the", "a a a", "ab ba", "aab bba",
    "你好世界", "我用iPhone拍照", "我用 iPhone 15 拍照", "ok好的 好的ok", "好好 好好", "straße café", "cafe\u0301 ok",
    "emoji 😀 here", "한국어 text", "| word | word", "<space> x", "1 22 333", "mississippi", "x", "  padded  line ",
    "two  spaces", "tab\there", "nbsp\u00a0here", "ok", "hello hello, hello!", "。，、", "a-b a_b a.b",
]  # fmt: skip
KNOWN = "abcdefghijklmnopqrstuvwxyz,.!'()|:你好世界我用拍照的0123456789"


def whole(rule, text: str) -> tuple[str | None, int]:
    """The count before: the line encoded whole (the dataset's rule), then frames_needed."""
    ids = rule(text.strip())
    return (ids, 0) if isinstance(ids, str) else (None, frames_needed(ids))


def assert_same_as_whole_lines(tokenizer, lines=CORPUS, counted_at_least: int = 10) -> None:
    """Every line's verdict and count, word by word, equal the whole line's; and word by word did count lines (no
    silent fall back to whole lines everywhere)."""
    rule = CTCRule(tokenizer)
    spell = CTCSpelling(rule, count=True)
    assert spell.words is not None
    counted = 0
    for text in [*lines, *lines]:  # twice: the second time from the words kept
        by_words = spell.words(text.strip())
        assert by_words is None or by_words == whole(rule, text)[1], text
        counted += by_words is not None
        assert (spell(text), spell.need) == whole(rule, text), text
    assert counted >= 2 * counted_at_least


def token_list(path, tokens: list[str]) -> str:
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "head",
    [
        ["<blank>", "<unk>", "<space>"],  # letters, <unk>, a separator between words
        ["<blank>", "<unk>"],  # no separator: "a a" is a repeat across two words
        ["<blank>"],  # no <unk>: a line with a character the list lacks is refused
        ["<blank>", "<unk>", "|", "hello", "world", "ok"],  # whole words as tokens; "|" the separator
    ],
)
def test_token_lists_count_as_whole_lines(tmp_path, head):
    path = token_list(tmp_path / "tokens.txt", [*head, *KNOWN])
    assert_same_as_whole_lines(TokenListCTCTokenizer(path))


def test_unk_as_the_blank_is_refused_as_whole_lines_refuse_it(tmp_path):
    path = token_list(tmp_path / "tokens.txt", ["<unk>", "<space>", *KNOWN])  # SenseVoiceSmall's head: <unk> blank
    assert_same_as_whole_lines(TokenListCTCTokenizer(path, blank_name="<unk>"))


def test_a_seg_dict_counts_as_whole_lines(tmp_path):
    tokens = ["<blank>", "<s>", "</s>", "he@@", "llo", "wor@@", "ld", "o@@", "k", *"你好世界我用拍照的", "<unk>"]
    path = token_list(tmp_path / "tokens.txt", tokens)
    seg = tmp_path / "seg_dict"
    seg.write_text("hello he@@ llo\nworld wor@@ ld\nok o@@ k\n" + "".join(f"{c} {c}\n" for c in "你好世界我用拍照的"))
    assert_same_as_whole_lines(SegDictCTCTokenizer(path, str(seg)))


def test_a_tiktoken_vocabulary_counts_as_whole_lines(tmp_path):
    path = write_tiktoken(tmp_path / "v.tiktoken", CORPUS[:12], merges=60)
    assert_same_as_whole_lines(TiktokenCTCTokenizer(str(path), vocab_size=256 + 60 + 4))


@pytest.mark.parametrize("lead", ["", "\n", " "])
@pytest.mark.parametrize("train", [train_bpe_tokenizer, train_gpt2_style_bpe_tokenizer])
def test_byte_level_llm_tokenizers_count_as_whole_lines(train, lead):
    """Qwen's pipeline (NFC, its Split regex, ByteLevel) and GPT-2's, after the chat template's answer lead."""
    assert_same_as_whole_lines(LLMCTCTokenizer(train(CORPUS[:12], 400), lead))


def test_a_wrong_word_count_fails_the_comparison(tmp_path, monkeypatch):
    """The comparison catches a count that drops the frame between equal labels of two words ("a a")."""
    path = token_list(tmp_path / "tokens.txt", ["<blank>", "<unk>", *KNOWN])  # no separator
    real = WordCounts.__call__
    monkeypatch.setattr(WordCounts, "__call__", lambda self, text: None if (n := real(self, text)) is None else n - 1)
    with pytest.raises(AssertionError):
        assert_same_as_whole_lines(TokenListCTCTokenizer(path))


class CountingRule(CTCRule):
    """The dataset's rule, counting the lines it encodes whole."""

    whole_lines = 0

    def __call__(self, target):
        self.whole_lines += 1
        return super().__call__(target)


def sentencepiece_model(tmp_path) -> str:
    import sentencepiece as spm

    prefix = tmp_path / "bpe"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 4), model_prefix=str(prefix), vocab_size=60,
                                   model_type="bpe", hard_vocab_limit=False, minloglevel=2)  # fmt: skip
    return str(prefix.with_suffix(".model"))


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: SentencePieceCTCTokenizer(sentencepiece_model(tmp)),  # normalises the line through its own map
        lambda tmp: LLMCTCTokenizer(train_unigram_tokenizer(CORPUS)),  # Metaspace: "▁" prepended to the line
        lambda tmp: LLMCTCTokenizer(train_char_bpe_tokenizer(CORPUS)),
    ],
    ids=["sentencepiece", "hf-unigram", "hf-metaspace-bpe"],
)
def test_vocabularies_not_spelled_word_by_word_encode_every_line_whole(tmp_path, make):
    rule = CountingRule(make(tmp_path))
    spell = CTCSpelling(rule, count=True)
    assert spell.words is None
    for text in CORPUS:
        assert (spell(text), spell.need) == whole(rule, text)
    assert rule.whole_lines == 2 * len(CORPUS)  # each line once by the count, once by `whole`


def test_an_added_token_that_strips_a_space_falls_back():
    """An added token matched before the pipeline that takes the space after it ("<x> world" spells "world", not
    " world") makes a word's labels depend on its neighbour: such a tokenizer is encoded whole."""
    from tokenizers import AddedToken

    tok = train_bpe_tokenizer(CORPUS[:12], 400)
    assert LLMCTCTokenizer(tok).word_spelling() is not None
    tok.add_tokens([AddedToken("<x>", rstrip=True, special=False)])
    ctc = LLMCTCTokenizer(tok)
    assert ctc.encode("<x> world") != ctc.encode("<x>") + ctc.encode(" world")  # what word by word would count
    assert ctc.word_spelling() is None
    rule = CountingRule(ctc)
    spell = CTCSpelling(rule, count=True)
    assert spell.words is None
    assert (spell("<x> world"), spell.need) == whole(rule, "<x> world")


def test_whitespace_other_than_one_space_is_encoded_whole(tmp_path):
    """A spelling that holds only for words one space apart (the space is part of the next word's labels) encodes
    a line with a tab or two spaces whole; a token list (split on any whitespace) does not need to."""
    spaced = ["two  spaces", "tab\there", "nbsp\u00a0here"]
    rule = CountingRule(LLMCTCTokenizer(train_bpe_tokenizer(CORPUS[:12], 400)))
    spell = CTCSpelling(rule, count=True)
    for text in spaced:
        spell(text)
    assert rule.whole_lines == len(spaced)
    spell("one space here")
    assert rule.whole_lines == len(spaced)
    letters = CountingRule(build_ctc_tokenizer(CTCConfig(vocab=token_list(tmp_path / "t.txt", ["<blank>", *KNOWN]))))
    spell = CTCSpelling(letters, count=True)
    for text in spaced[:2]:
        spell(text)
    assert letters.whole_lines == 0
