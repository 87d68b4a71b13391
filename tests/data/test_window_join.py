"""Joining long audio's windows: texts said once where two windows overlap, timed units cut where the texts are."""

from __future__ import annotations

import pytest

from llmasr.data.window_join import join_pair, join_texts, join_words
from llmasr.text_units import UNIT


@pytest.mark.parametrize(
    "left, right, joined",
    [
        ("one two three four", "three four five six", "one two three four five six"),  # the shared run once
        ("the cat sat on th", "at on the mat", "the cat sat on the mat"),  # half words at the seam are dropped
        ("Hello, World.", "world! Again", "Hello, World. Again"),  # compared without case and punctuation
        ("a b c", "d e f", "a b c d e f"),  # nothing shared: both whole
        ("今天天气", "天气很好", "今天天气很好"),  # characters of scripts without spaces, joined without one
        ("go left go right", "go right go", "go left go right go"),  # the longest shared run, not the first
        ("", "only right", "only right"),
        # punctuation inside the overlap is looked past (a lone "，" or "-" had broken the run: all said twice)
        ("今天天气很好，我们去公园", "很好，我们去公园玩吧", "今天天气很好，我们去公园玩吧"),
        ("and then we went - to the park", "we went - to the park today", "and then we went - to the park today"),
        ("我们开会了。", "下次再说。", "我们开会了。下次再说。"),  # no space after CJK punctuation either
        ("他说：", "好的", "他说：好的"),
    ],
)
def test_join_pair(left, right, joined):
    assert join_pair(left, right, 6) == joined


def test_join_pair_looks_only_near_the_seam():
    # "alpha" is shared, but 7 words from the end of the left text: beyond what a 6-token overlap can hold
    assert join_pair("alpha b c d e f g", "alpha h", 6) == "alpha b c d e f g alpha h"
    # of two equal runs, the one nearest the seam is the overlap
    assert join_pair("x y a b", "a b z", 6) == "x y a b z"


@pytest.mark.parametrize(
    "left, right, joined",
    [
        # a lone "the" both texts hold, its neighbours all different, is a chance match: words had been lost ("i went
        # to the car", "put it on the hall"); the cut word's start gives way to the whole word instead
        ("i went to the sto", "store and the car", "i went to the store and the car"),
        ("put it on the ta", "table in the hall", "put it on the table in the hall"),
        ("she sat on the so", "sofa by the fire", "she sat on the sofa by the fire"),
        ("we drove home slowly", "owly and then", "we drove home slowly and then"),  # a cut word's end gives way too
        # a lone shared word beside one misheard neighbour is still the overlap
        ("open the big red door", "red dour and the", "open the big red dour and the"),
    ],
)
def test_a_lone_shared_word_its_neighbours_contradict_is_no_overlap(left, right, joined):
    assert join_texts([left, right], [False, True], 1.0) == joined
    timed = [[(u, 0.1 * k, 0.1 * k + 0.05) for k, u in enumerate(UNIT.findall(t))] for t in (left, right)]
    words = join_words([left, right], timed, [0.0, 2.0], [False, True], 1.0)
    assert [w[0] for w in words] == UNIT.findall(joined)  # the times cut where the text is


def test_a_fast_overlap_in_a_script_without_spaces_is_said_once():
    """A second of Japanese holds about ten characters: the join looks that far (it had looked 6 characters and
    written the overlap twice)."""
    texts = ["今日はとてもいい天気ですね", "とてもいい天気ですね散歩に行きましょう"]
    assert join_texts(texts, [False, True], 1.0) == "今日はとてもいい天気ですね散歩に行きましょう"
    # Thai is written without spaces between words too: its characters are the units (the overlap had been kept)
    thai = ["วันนี้อากาศดีมาก เราจะไปเที่ยวสวน", "ไปเที่ยวสวนสาธารณะกัน"]
    assert join_texts(thai, [False, True], 1.0) == "วันนี้อากาศดีมาก เราจะไปเที่ยวสวนสาธารณะกัน"


@pytest.mark.parametrize("overlapped", [False, True])
def test_chinese_takes_no_space_beside_latin_words_or_numbers_at_a_seam(overlapped):
    """Chinese writes a Latin word or a number beside its characters without a space ("我用iPhone手机", "2024年", as
    FunASR's sentence_postprocess writes them): a seam there had put one into the text that neither window wrote
    ("我用 iPhone手机", "今天很好。 2024年"). English beside English, and Thai beside a Latin word, keep theirs."""
    cases = [
        (["我用", "iPhone手机打电话"], "我用iPhone手机打电话"),
        (["我用iPhone", "手机打电话"], "我用iPhone手机打电话"),
        (["价格是", "2999元"], "价格是2999元"),
        (["今天天气很好。", "2024年会更好"], "今天天气很好。2024年会更好"),
        (["他说OK", "，我们走"], "他说OK，我们走"),
        (["東京の", "Tower"], "東京のTower"),
        (["iPhone", "Pro"], "iPhone Pro"),
        (["สวัสดี", "hello"], "สวัสดี hello"),
    ]
    for texts, joined in cases:
        assert join_texts(texts, [False, overlapped], 1.0) == joined, texts
        timed = [[(u, k, k + 0.5) for k, u in enumerate(UNIT.findall(t))] for t in texts]
        words = join_words(texts, timed, [0.0, 5.0], [False, overlapped], 1.0)
        assert [w[0] for w in words] == UNIT.findall(joined), texts  # one timed unit per unit of the text


def test_join_texts_dedups_only_overlapped_seams():
    texts = ["we go to the", "the park and the", "the lake"]
    # The second seam met at a pause: "the the" was said twice, and stays
    assert join_texts(texts, [False, True, False], 1.0) == "we go to the park and the the lake"
    assert join_texts(texts, [False, True, True], 1.0) == "we go to the park and the lake"
    assert join_texts(["solo"], [False], 1.0) == "solo"
    with pytest.raises(ValueError, match="2 texts and 1 overlap flags"):
        join_texts(["a", "b"], [False], 1.0)


def test_joined_times_stay_one_per_unit_where_punctuation_meets_at_a_seam():
    """Two units meet at a seam without a space and the text has one unit there where the windows timed two
    (full-width letters, "ＡＢ" + "cd"): the times had kept both, one more than the text's units, and the next
    overlapped seam then cut the times one unit short of the text ("好" lost). Full-width punctuation meeting there
    ("。" + "《") stays two units, each with its window's time."""
    texts = ["他说ＡＢ", "cd很好", "很好看"]
    timed = [[(u, 0.1 * k, 0.1 * k + 0.05) for k, u in enumerate(UNIT.findall(t))] for t in texts]
    text = join_texts(texts, [False, False, True], 1.0)
    words = join_words(texts, timed, [0.0, 5.0, 9.0], [False, False, True], 1.0)
    assert text == "他说ＡＢcd很好看"
    assert [w[0] for w in words] == UNIT.findall(text)
    assert words[2] == ("ＡＢcd", 0.2, 5.05) and words[-2:] == [("好", 5.2, 5.25), ("看", 9.2, 9.25)]
    texts = ["他说。", "《红楼梦》很好", "很好看"]
    timed = [[(u, 0.1 * k, 0.1 * k + 0.05) for k, u in enumerate(UNIT.findall(t))] for t in texts]
    text = join_texts(texts, [False, False, True], 1.0)
    words = join_words(texts, timed, [0.0, 5.0, 9.0], [False, False, True], 1.0)
    assert text == "他说。《红楼梦》很好看"
    assert [w[0] for w in words] == UNIT.findall(text)
    assert words[2:4] == [("。", 0.2, 0.25), ("《", 5.0, 5.05)]
    assert words[-2:] == [("好", 5.6, 5.65), ("看", 9.2, 9.25)]


def test_full_width_punctuation_is_a_unit_of_its_own_and_joins_chinese_and_mixed_text():
    """Full-width punctuation glued to a Latin word or a number had made one unit of both ("。2024"), so the
    number's time covered the full stop; a full-width comma or full stop inside a number stays in it ("1，000")."""
    assert UNIT.findall("你好。2024年") == ["你", "好", "。", "2024", "年"]
    assert UNIT.findall("我用iPhone，很好（真的）") == ["我", "用", "iPhone", "，", "很", "好", "（", "真", "的", "）"]
    assert UNIT.findall("共1，000元，3．5折") == ["共", "1，000", "元", "，", "3．5", "折"]
    assert UNIT.findall("1：2") == ["1", "：", "2"]
    texts = ["今天是2024年。iPhone", "。iPhone发布了，价格1，000元"]  # the windows shared "。iPhone"
    timed = [[(u, 0.1 * k, 0.1 * k + 0.05) for k, u in enumerate(UNIT.findall(t))] for t in texts]
    text = join_texts(texts, [False, True], 1.0)
    words = join_words(texts, timed, [0.0, 1.0], [False, True], 1.0)
    assert text == "今天是2024年。iPhone发布了，价格1，000元"
    assert [w[0] for w in words] == UNIT.findall(text)
    assert ("2024", 0.3, 0.35) in words and ("1，000", 1.8, 1.85) in words


def test_joined_word_times_never_go_back_at_a_seam():
    """Each window times the overlap with its own context, so the left window's last kept word could end after the
    right window's first word began (subtitle cues that overlap): the two meet at the middle of the time both claim,
    and no later word starts before the one before it ends."""
    left, right = "one two three four", "three four five six"
    lw = [("one", 0.1, 0.2), ("two", 0.5, 0.6), ("three", 1.0, 1.1), ("four", 1.5, 2.3)]  # "four" heard long
    rw = [("three", 0.1, 0.2), ("four", 0.6, 0.7), ("five", 1.0, 1.2), ("six", 1.6, 1.7)]
    words = join_words([left, right], [lw, rw], [0.0, 0.9], [False, True], overlap=1.0)
    assert [w[0] for w in words] == ["one", "two", "three", "four", "five", "six"]
    assert words[3] == ("four", 1.5, 2.0) and words[4] == ("five", 2.0, 2.1)  # both claim 1.9-2.1: they meet at 2.0
    assert all(a[2] <= b[1] and b[1] <= b[2] for a, b in zip(words, words[1:]))
    # the left word claims past the right one's end: the right one is pushed after it, never before its start
    lw[3] = ("four", 2.15, 2.4)
    words = join_words([left, right], [lw, rw], [0.0, 0.9], [False, True], overlap=1.0)
    assert words[3:] == [("four", 2.15, 2.15), ("five", 2.15, 2.15), ("six", 2.5, 2.6)]
    assert all(a[2] <= b[1] and b[1] <= b[2] for a, b in zip(words, words[1:]))
