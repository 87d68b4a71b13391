"""Word timestamps (llmasr.models.ctc_align): the Viterbi path is the best CTC path of the labels (against every path
enumerated), units are spelled in each kind of CTC vocabulary, spikes become word times, words end where their
sound ends (sound_ends over long_audio.speech_runs), and windows' times join where their texts join
(llmasr.data.window_join.join_words)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from llmasr.data.window_join import join_texts, join_words
from llmasr.models.ctc import build_ctc_tokenizer
from llmasr.models.ctc_align import WORD_TAIL_S, align_words, sound_ends, unit_labels, viterbi_path
from llmasr.models.ctc_config import CTCConfig
from llmasr.models.ctc_tiktoken import write_ranks
from llmasr.models.ctc_vocab import ctc_collapse
from tests.models.test_ctc import hf_tokenizer


def _path_score(lp, path):
    return sum(lp[t, s] for t, s in enumerate(path))


@pytest.mark.parametrize("labels", [[1], [1, 2], [1, 1], [2, 1, 2], [1, 1, 2]])
@pytest.mark.parametrize("seed", range(3))
def test_the_viterbi_path_is_the_best_path_that_spells_the_labels(labels, seed):
    rng = np.random.default_rng(seed)
    t_len, vocab, blank = 6, 3, 0
    lp = np.log(rng.dirichlet(np.ones(vocab), size=t_len))
    best = max(
        (_path_score(lp, p), p)
        for p in itertools.product(range(vocab), repeat=t_len)
        if ctc_collapse(p, blank) == labels
    )
    states = viterbi_path(lp, labels, blank)
    symbols = [blank if s % 2 == 0 else labels[s // 2] for s in states]
    assert ctc_collapse(symbols, blank) == labels
    assert _path_score(lp, symbols) == pytest.approx(best[0])
    assert list(np.diff(states)) == [d for d in np.diff(states) if 0 <= d <= 2]  # states only move forward


def test_frames_too_few_for_the_labels_give_no_path():
    lp = np.log(np.full((3, 3), 1 / 3))
    assert viterbi_path(lp, [1, 1, 2], blank=0) is None  # 1 _ 1 2 needs four frames
    assert viterbi_path(lp, [1, 2, 1], blank=0) is not None
    assert viterbi_path(lp, [], blank=0).tolist() == [0, 0, 0]


def _spikes(t_len: int, vocab: int, blank: int, where: dict[int, int]) -> torch.Tensor:
    """Log-probs that are blank everywhere but label where[t] at frame t."""
    p = np.full((t_len, vocab), 0.01 / (vocab - 1))
    p[:, blank] = 0.99
    for t, label in where.items():
        p[t] = 0.01 / (vocab - 1)
        p[t, label] = 0.99
    return torch.from_numpy(np.log(p))


def test_spikes_become_word_times_in_an_llm_vocabulary():
    tok = build_ctc_tokenizer(CTCConfig(vocab="llm"), hf_tokenizer())
    two, four, six = (tok.encode(w)[0] for w in ("two", "four", "six"))
    lp = _spikes(20, tok.vocab_size, tok.blank_id, {2: two, 3: two, 9: four, 15: six})
    words = align_words(tok, "two four six", lp, frame_seconds=0.06)
    assert words == [("two", 0.12, 0.24), ("four", 0.54, 0.6), ("six", 0.9, 0.96)]
    assert align_words(tok, "", lp, 0.06) == []
    assert align_words(tok, "two four six two four six two four six", lp[:8], 0.06) is None  # cannot fit 9 words


def test_units_of_a_token_list_with_a_separator_and_of_a_script_without_spaces(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(["<space>", "a", "b", "c", "中", "文"]) + "\n")
    tok = build_ctc_tokenizer(CTCConfig(vocab=str(path)))
    units, labels, owner = unit_labels(tok, "ab c中文")
    assert units == ["ab", "c", "中", "文"]  # a character of a script without spaces is a unit of its own
    assert labels == [1, 2, 0, 3, 4, 5]
    assert [list(o) for o in owner] == [[0], [0], [], [1], [2], [3]]  # the separator belongs to no word
    assert unit_labels(tok, "abz") is None  # a character the list lacks (and no <unk>): no times, not an error
    sep = tok.index["<space>"]
    lp = _spikes(12, tok.vocab_size, tok.blank_id, {1: 1, 2: 2, 4: sep, 6: 3, 8: 4, 10: 5})
    assert align_words(tok, "ab c中文", lp, 0.04) == [("ab", 0.04, 0.12), ("c", 0.24, 0.28), ("中", 0.32, 0.36),
                                                     ("文", 0.4, 0.44)]  # fmt: skip


def test_an_llm_token_that_merges_characters_times_each_of_them():
    """In the LLM's vocabulary a script without spaces is tokenized as the head learned it, the whole text at once:
    "你好" is one token, not two single characters (spelled one by one, the path was forced through labels the
    head never emits, and the times came out spread over the wrong frames)."""
    from llmasr.models.ctc_vocab import LLMCTCTokenizer
    from llmasr.testing.tiny_llm import train_bpe_tokenizer

    tok = LLMCTCTokenizer(train_bpe_tokenizer(["你好 世界 你好世界 中文 语音 识别"] * 50 + ["hello world"], 400))
    hello, world = tok.encode("你好世界")
    assert tok.encode("你好") == [hello] and tok.encode("世界") == [world]
    units, labels, owner = unit_labels(tok, "你好世界 hello")
    assert units == ["你", "好", "世", "界", "hello"] and labels == tok.encode("你好世界 hello")
    assert [list(o) for o in owner][:2] == [[0, 1], [2, 3]] and owner[-1] == range(4, 5)
    lp = _spikes(20, tok.vocab_size, tok.blank_id, {1: hello, 2: hello, 8: world})
    # the token's frames shared among its characters in order (the same span for both had timed them at once)
    assert align_words(tok, "你好世界", lp, 0.06) == [("你", 0.06, 0.12), ("好", 0.12, 0.18), ("世", 0.48, 0.51),
                                                     ("界", 0.51, 0.54)]  # fmt: skip


@pytest.mark.parametrize("kind", ["sentencepiece", "tiktoken"])
def test_a_piece_that_merges_characters_in_a_sentencepiece_or_tiktoken_vocabulary_times_each_of_them(tmp_path, kind):
    """SenseVoice's sentencepiece and Fun-ASR-Nano's tiktoken vocabularies merge characters of a script without
    spaces too, and sentencepiece puts a "▁" before a text's first character: the text is spelled whole, as the head
    learned it (spelled one by one, "你好" became two labels the head never emits and the times moved to other
    words' frames)."""
    if kind == "sentencepiece":
        import sentencepiece as spm

        spm.SentencePieceTrainer.train(sentence_iterator=iter(["你好世界 你好 世界 中文"] * 50), model_type="bpe",
                                       model_prefix=str(tmp_path / "sp"), vocab_size=14, hard_vocab_limit=False,
                                       character_coverage=1.0, minloglevel=2)  # fmt: skip
        path = str(tmp_path / "sp.model")
    else:
        merges = [
            m.encode() if isinstance(m, str) else m
            for m in (b"\xe4\xbd", "你", b"\xe5\xa5", "好", "你好", b"\xe4\xb8", "世", b"\xe7\x95", "界", "世界")
        ]
        path = str(write_ranks(tmp_path / "v.tiktoken", [bytes([b]) for b in range(256)] + merges))
    tok = build_ctc_tokenizer(CTCConfig(vocab=path))
    hello, world = tok.encode("你好世界")[-2:]
    assert tok.decode([hello]).strip() == "你好" and tok.decode([world]) == "世界"
    units, labels, owner = unit_labels(tok, "你好世界")
    assert labels == tok.encode("你好世界") and [list(o) for o in owner][-2:] == [[0, 1], [2, 3]]
    lp = _spikes(
        20, tok.vocab_size, tok.blank_id, {t: label for t, label in enumerate(labels[:-2])} | {6: hello, 12: world}
    )
    assert align_words(tok, "你好世界", lp, 0.06) == [("你", 0.36, 0.39), ("好", 0.39, 0.42), ("世", 0.72, 0.75),
                                                     ("界", 0.75, 0.78)]  # fmt: skip


def test_window_times_join_where_the_texts_join():
    left, right = "one two three four", "three four five six"  # the windows shared "three four"
    lw = [("one", 0.1, 0.2), ("two", 0.5, 0.6), ("three", 1.0, 1.1), ("four", 1.5, 1.6)]
    rw = [("three", 0.1, 0.2), ("four", 0.6, 0.7), ("five", 1.1, 1.2), ("six", 1.6, 1.7)]
    text = join_texts([left, right], [False, True], overlap=1.0)
    words = join_words([left, right], [lw, rw], [0.0, 0.9], [False, True], overlap=1.0)
    assert [w[0] for w in words] == text.split() == ["one", "two", "three", "four", "five", "six"]
    assert words[3:] == [("four", 1.5, 1.6), ("five", 2.0, 2.1), ("six", 2.5, 2.6)]  # the right window 0.9 s later
    apart = join_words([left, "seven"], [lw, [("seven", 0.2, 0.3)]], [0.0, 3.0], [False, False], overlap=1.0)
    assert apart[-1] == ("seven", 3.2, 3.3) and len(apart) == 5
    assert join_words([left, right], [lw, None], [0.0, 0.9], [False, True], overlap=1.0) is None


def test_words_end_where_their_sound_ends():
    runs = np.array([[0.30, 1.50], [2.10, 2.90]])  # two stretches of speech, a pause between
    words = [("one", 0.30, 0.42), ("two", 0.78, 0.90), ("three", 2.10, 2.28), ("four", 2.50, 2.56)]
    got = sound_ends(words, runs)
    # in running speech a word lasts until the next starts; before a pause, until the pause; starts never move
    assert got == [("one", 0.30, 0.78), ("two", 0.78, 1.5), ("three", 2.10, 2.5), ("four", 2.50, 2.9)]
    late = [("one", 0.30, 1.6)]  # the head's end already past the sound's: kept
    assert sound_ends(late, runs) == late
    long_run = np.array([[0.0, 9.0]])  # steady noise above the level after the word: the tail is capped
    assert sound_ends([("a", 0.1, 0.4)], long_run) == [("a", 0.1, round(0.4 + WORD_TAIL_S, 3))]
    at_start = [("a", 0.0, 2.10)]  # an end at the very start of the next stretch is not in it
    assert sound_ends(at_start, runs) == at_start
    assert sound_ends(words, np.zeros((0, 2))) == words and sound_ends(None, runs) is None


def test_full_width_punctuation_is_timed_apart_from_the_number_beside_it(tmp_path):
    """ "。2024" had been one unit: the number's time began at the full stop's label."""
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(["<space>", "好", "。", "2", "0", "4", "年"]) + "\n")
    tok = build_ctc_tokenizer(CTCConfig(vocab=str(path)))
    units, labels, _ = unit_labels(tok, "好。2024年")
    assert units == ["好", "。", "2024", "年"]
    lp = _spikes(16, tok.vocab_size, tok.blank_id, dict(zip([1, 3, 8, 9, 10, 11, 14], labels)))
    words = align_words(tok, "好。2024年", lp, 0.04)
    assert [w[0] for w in words] == units and words[2][1] == 0.32  # from its first digit's frame, not the stop's
