"""Scoring: the alignment, hand-computed WER/CER, auto unit choice, corpus totals."""

import random

import pytest

from llmasr.scoring import EditOp, align, edit_counts, score_corpus, score_utterance
from llmasr.text_units import choose_unit, normalize, uses_characters


def test_wer_hand_computed():
    # ref "the cat sat on the mat" (6 words), hyp "the cat sit on mat": sat->sit (sub), "the" dropped (del).
    s = score_utterance("the cat sat on the mat", "the cat sit on mat")
    assert s.unit == "wer" and s.ref_len == 6
    assert (s.substitutions, s.deletions, s.insertions) == (1, 1, 0)
    assert s.errors == 2 and s.rate == pytest.approx(2 / 6)
    # "a b c d" -> "a c d e": deleting b and inserting e (2) beats three substitutions.
    s = score_utterance("a b c d", "a c d e")
    assert (s.substitutions, s.deletions, s.insertions) == (0, 1, 1) and s.rate == pytest.approx(0.5)
    s = score_utterance("a b c d", "a b c d")
    assert s.errors == 0 and s.rate == 0
    s = score_utterance("a b c d", "")
    assert (s.substitutions, s.deletions, s.insertions) == (0, 4, 0) and s.rate == 1.0
    s = score_utterance("Hello, World!", "hello world")  # normalised before scoring
    assert s.errors == 0


def test_cer_for_languages_without_spaces():
    assert uses_characters("今天天气很好") and uses_characters("สวัสดีครับ") and uses_characters("こんにちは")
    assert not uses_characters("hello world") and not uses_characters("안녕 하세요")
    s = score_utterance("今天 天气很好", "今天天气不好")  # spaces ignored in character units
    assert s.unit == "cer" and s.ref_len == 6
    assert (s.substitutions, s.deletions, s.insertions) == (1, 0, 0)
    assert s.rate == pytest.approx(1 / 6)
    s = score_utterance("abc", "abd", metric="cer")
    assert s.unit == "cer" and s.errors == 1 and s.ref_len == 3
    assert choose_unit("你好", "wer") == "wer"
    with pytest.raises(ValueError):
        choose_unit("x", "bleu")


def test_ideographic_zero_and_iteration_marks_count_one_character_each():
    """〇 and 々 sit in the CJK symbols block, not among the ideographs: each is still one character of the text (they
    had joined into one unit, "〇〇")."""
    s = score_utterance("二〇〇八年", "二零零八年")
    assert (s.unit, s.ref_len, s.substitutions, s.deletions, s.insertions) == ("cer", 5, 2, 0, 0)
    assert score_utterance("時々々", "時時時").ref_len == 3
    assert uses_characters("〇") and uses_characters("\U00031350")  # CJK extension H


def test_bopomofo_and_archaic_kana_count_one_character_each():
    """Bopomofo (zhuyin) is written without spaces, in Taiwanese Mandarin transcripts too ("ㄉ" for 的), and so are
    hentaigana: a run of them had been one word, so a missed letter cost the whole run and scored in words."""
    s = score_utterance("好ㄉㄅㄆ", "好ㄉㄅ")
    assert (s.unit, s.ref_len, s.deletions, s.substitutions) == ("cer", 4, 1, 0)
    s = score_utterance("ㄅㄆㄇ", "ㄅㄆ")
    assert (s.unit, s.ref_len, s.errors) == ("cer", 3, 1)
    assert uses_characters("\U0001b002") and uses_characters("\u31a0") and not uses_characters("\u3130")


def test_code_switched_text_counts_words_whole_and_characters_one_each():
    """auto: in an utterance scored in characters, an English word or a number is one unit (the code-switching
    convention): a wrong English word is one error, not one a letter; `cer` asked for counts letters."""
    s = score_utterance("我喜欢 python", "我喜欢 java")
    assert (s.unit, s.ref_len, s.errors) == ("cer", 4, 1)
    s = score_utterance("我喜欢python", "我喜欢 python")  # a space next to a character carries nothing
    assert s.errors == 0 and s.ref_len == 4
    assert score_utterance("2024年", "2025年").errors == 1
    s = score_utterance("我喜欢 python", "我喜欢 java", metric="cer")
    assert (s.ref_len, s.errors) == (9, 6)
    # a Chinese hypothesis of an English reference: a character each, not one "word" per run
    s = score_utterance("hello", "你好世界")
    assert (s.unit, s.substitutions, s.insertions) == ("wer", 1, 3)
    assert score_utterance("hello world", "hello  world", metric="wer").errors == 0


def test_a_number_with_a_decimal_point_or_digit_groups_is_one_word():
    """ "3.5" is one reference word, as in jiwer, WeNet and sclite: split at its point it had counted two (N 5 for
    "it costs 3.5 dollars", and "35" two errors in it); "1,000,000" had counted three, and "1000000" three errors."""
    s = score_utterance("It costs 3.5 dollars.", "it costs 35 dollars")
    assert (s.ref_len, s.substitutions, s.deletions, s.insertions) == (4, 1, 0, 0)
    s = score_utterance("a population of 1,000,000 people", "A population of 1000000 people")
    assert (s.ref_len, s.errors) == (5, 0)
    assert normalize("version 2.0, released 2024.") == "version 2.0 released 2024"  # a point at a word's edge goes
    assert normalize("1, 2, 3") == "1 2 3" and normalize("١٢٫٥") == "١٢٫٥"  # Arabic decimal separator
    s = score_utterance("人口约2.5亿", "人口约2.5亿")
    assert (s.unit, s.ref_len, s.errors) == ("cer", 5, 0)


def test_corpus_totals_are_sums_not_means():
    corpus, scores = score_corpus([("a b c d", "a b x d"), ("e f", ""), ("g", "g h i")])
    assert [s.errors for s in scores] == [1, 2, 2]
    assert corpus.ref_len == 7 and corpus.errors == 5
    assert (corpus.substitutions, corpus.deletions, corpus.insertions) == (1, 2, 2)
    assert corpus.rate == pytest.approx(5 / 7)
    assert corpus.name == "WER" and corpus.n_utts == 3 and corpus.sentence_errors == 3
    assert "WER 71.43% [ 5 / 7 words, 1 sub, 2 del, 2 ins ] over 3 utterances" in corpus.summary()


def test_mixed_corpus_is_reported_as_mer():
    corpus, _ = score_corpus([("你好世界", "你好世界"), ("hello there", "hello")])
    assert corpus.name == "MER" and corpus.ref_len == 6 and corpus.errors == 1
    assert "1 scored in words, 1 in characters" in corpus.summary()
    corpus, _ = score_corpus([("你好世界", "你好")], metric="auto")
    assert corpus.name == "CER" and corpus.rate == pytest.approx(0.5)


def test_empty_reference_counts_insertions():
    s = score_utterance("", "uh")
    assert s.insertions == 1 and s.ref_len == 0 and s.rate == 1.0


def test_an_empty_reference_scores_a_chinese_hypothesis_in_characters():
    """A silent clip of a Chinese test set: its hallucinated sentence counts a character each (it had counted one
    "word"), and the clip does not make the corpus a mixed one (MER)."""
    from llmasr.scoring_bias import score_biased

    s = score_utterance("", "我们去北京。")
    assert (s.unit, s.insertions) == ("cer", 5)
    assert score_biased(s, ["北京"]).phrases.leaked == 1  # a listed phrase said over silence is a leak
    corpus, _ = score_corpus([("你好世界", "你好世界"), ("", "我们去北京")])
    assert corpus.name == "CER" and corpus.errors == 5 and corpus.ref_len == 4
    assert score_utterance("", "uh huh").unit == "wer" and score_utterance("  ", "").insertions == 0
    # with no reference to go by, the hypotheses' unit names the metric; a requested unit always does
    assert score_corpus([("", "今天天气很好")])[0].name == "CER"
    assert score_corpus([("", "a b")], metric="cer")[0].summary().startswith("CER 200.00% [ 2 / 0 characters")


def test_alignment_ops_hand_checked():
    ops = align("the cat sat on the mat".split(), "the cat sit on mat".split())
    assert [op.kind for op in ops] == ["equal", "equal", "sub", "equal", "del", "equal"]
    assert ops[2] == EditOp("sub", 2, 2) and ops[4] == EditOp("del", 4, None) and ops[5] == EditOp("equal", 5, 4)
    assert align(["a", "b"], []) == [EditOp("del", 0, None), EditOp("del", 1, None)]
    assert align([], ["x"]) == [EditOp("ins", None, 0)]
    assert align([], []) == []
    s = score_utterance("a b c d", "a c d e")
    assert [op.kind for op in s.alignment] == ["equal", "del", "equal", "equal", "ins"]
    assert edit_counts(s.alignment) == (s.substitutions, s.deletions, s.insertions)


def test_alignment_covers_every_unit_once_and_counts_agree_with_jiwer():
    """Random pairs over a 4-word vocabulary (many equal-cost alignments): each unit appears once, in order, equal
    ops pair equal units, and the counts are jiwer's (the same tie-breaking as before the alignment existed)."""
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(13)
    for _ in range(400):
        ref = [rng.choice("abcd") for _ in range(rng.randint(1, 9))]
        hyp = [rng.choice("abcd") for _ in range(rng.randint(1, 9))]
        ops = align(ref, hyp)
        assert [op.ref for op in ops if op.ref is not None] == list(range(len(ref)))
        assert [op.hyp for op in ops if op.hyp is not None] == list(range(len(hyp)))
        assert all((ref[op.ref] == hyp[op.hyp]) == (op.kind == "equal") for op in ops if op.kind in ("equal", "sub"))
        out = jiwer.process_words(" ".join(ref), " ".join(hyp))
        assert edit_counts(ops) == (out.substitutions, out.deletions, out.insertions)


def test_non_lexical_tags_are_no_words():
    """Kaldi, Switchboard and GigaSpeech transcripts mark noises and unknown words with bracketed tags; punctuation's
    rule had kept their letters, so a model that writes no tag lost "noise" and "unk" as deleted words."""
    assert normalize("Hello [noise] world <unk>") == "hello world"
    assert normalize("[LAUGHTER] I SAID <COMMA> HELLO <PERIOD> [vocalized-noise]") == "i said hello"
    assert normalize("［noise］ yes") == "yes"  # full-width brackets, as NFKC folds them
    assert normalize("<SIL>") == "" and normalize("[inaudible speech] ok") == "ok"
    s = score_utterance("so [noise] uh-huh <unk> right", "so uh huh right")
    assert (s.ref_len, s.errors) == (4, 0)
    # brackets that enclose no tag stay punctuation: their words are words
    assert normalize("x < y > z") == "x y z" and normalize("a [b c") == "a b c" and normalize("<>") == ""


def test_a_full_width_comma_or_full_stop_between_digits_scores_as_the_half_width_one():
    """NFKC reads "，" as "," and "．" as ".": "1，000" is the one number 1000 and "3，5" the number 35, as "1,000"
    and "3,5" are; "3．5" keeps its point. The ideographic comma "、" separates items of a list: "1、000" is two."""
    for full, half in (("1，000", "1,000"), ("3，5", "3,5"), ("3．5", "3.5"), ("共1，000元", "共1,000元")):
        assert normalize(full) == normalize(half), full
        assert score_utterance(half, full).errors == 0 and score_utterance(full, half, "wer").errors == 0
    assert normalize("1，000") == "1000" and normalize("3．5") == "3.5" and normalize("1、000") == "1 000"


def test_the_collector_is_paused_while_scoring_and_left_as_it_was():
    import gc

    from llmasr.scoring import collector_paused

    seen = []

    class Pairs:
        def __iter__(self):
            seen.append(gc.isenabled())
            yield ("a b", "a c")

    assert gc.isenabled()
    score_corpus(Pairs())
    assert seen == [False] and gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause leaves the outer's
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        score_corpus([("a", "a")])
        assert not gc.isenabled()  # a caller's own choice stands
    finally:
        gc.enable()
