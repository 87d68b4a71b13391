"""Hotword scoring: B/U split of each error kind in and out of phrases, insertion rule, phrase recall / precision /
leaks, character units, B + U == total, alignments given by hand, and the README's worked example."""

import random
import re
from pathlib import Path

import pytest

from llmasr.scoring import EditOp, UttScore, score_corpus, score_utterance
from llmasr.scoring_bias import Units, hotword_list, phrase_units, score_biased, score_lists

README = Path(__file__).resolve().parents[1] / "README.md"


def biased(ref: str, hyp: str, phrases: list[str], metric: str = "auto"):
    return score_biased(score_utterance(ref, hyp, metric), phrases)


def split(b):
    """((B sub, del, ins, units), (U sub, del, ins, units))."""
    return tuple((s.substitutions, s.deletions, s.insertions, s.units) for s in (b.biased, b.unbiased))


def test_substitutions_and_deletions_follow_the_reference_word():
    b = biased("please call anna smith today", "please fall ana smith", ["Anna Smith"])
    # call->fall (U sub), anna->ana (B sub), smith ok, today deleted (U del)
    assert split(b) == ((1, 0, 0, 2), (1, 1, 0, 3))
    b = biased("please call anna smith", "please call smith", ["anna smith"])
    assert split(b) == ((0, 1, 0, 2), (0, 0, 0, 2))


def test_insertions_count_to_b_inside_a_hyp_phrase_or_splitting_a_ref_phrase():
    b = biased("call bob", "call bob anna", ["anna"])  # a list phrase inserted: B
    assert split(b) == ((0, 0, 1, 0), (0, 0, 0, 2))
    assert b.biased.rate is None and b.biased.errors == 1  # no biased words, the error still counted
    b = biased("call bob", "call bob now", ["anna"])  # any other word inserted: U
    assert split(b) == ((0, 0, 0, 0), (0, 0, 1, 2))
    b = biased("go to new york now", "go to new big york now", ["New York"])  # splits the phrase: B
    assert split(b) == ((0, 0, 1, 2), (0, 0, 0, 3))
    b = biased("go to new york now", "go to the new york now", ["New York"])  # next to it, not inside: U
    assert split(b) == ((0, 0, 0, 2), (0, 0, 1, 3))
    assert b.phrases.recalled == 1 and b.missed == []


def test_multi_word_phrase_partially_recognised():
    b = biased("new york city is big", "new yolk city is big", ["new york"])
    assert split(b) == ((1, 0, 0, 2), (0, 0, 0, 3))
    p = b.phrases
    assert (p.ref_occurrences, p.hyp_occurrences, p.recalled, p.distractors) == (1, 0, 0, 0)
    assert b.missed == ["new york"]
    # every unit matched, but a word between them: not the phrase in the hypothesis
    b = biased("new york", "new big york", ["new york"])
    assert b.phrases.recalled == 0 and b.phrases.hyp_occurrences == 0


def test_repeated_phrase_is_counted_per_occurrence():
    b = biased("anna met anna and anna", "anna met ana and anna", ["Anna"])
    assert split(b) == ((1, 0, 0, 3), (0, 0, 0, 2))
    p = b.phrases
    assert (p.ref_occurrences, p.hyp_occurrences, p.recalled) == (3, 2, 2)
    assert b.missed == ["anna"]
    # the phrase in the hypothesis elsewhere than in the reference is not a recall
    b = biased("anna came late", "late came anna", ["anna"])
    assert (b.phrases.ref_occurrences, b.phrases.hyp_occurrences, b.phrases.recalled) == (1, 1, 0)


def test_a_phrase_matched_where_it_overlaps_an_earlier_occurrence_is_recalled():
    # "bora bora" is matched word for word to hypothesis words 1-2, which overlap the leftmost occurrence (0-1)
    score = score_utterance("i went to bora bora", "bora bora bora")
    assert [tuple(op) for op in score.alignment[-2:]] == [("equal", 3, 1), ("equal", 4, 2)]
    b = score_biased(score, ["Bora Bora"])
    p = b.phrases
    assert (p.ref_occurrences, p.hyp_occurrences, p.recalled) == (1, 1, 1) and b.missed == []
    b = biased("叫莉莉", "莉莉莉", ["莉莉"])  # characters: a doubled name after a substitution
    assert (b.phrases.recalled, b.missed) == (1, [])


def test_distractor_leaks_by_insertion_and_by_substitution():
    b = biased("call bob now", "call bob now zanzibar", ["Zanzibar", "Kubernetes"])
    p = b.phrases
    assert (p.distractors, p.leaked, p.leak_occurrences, p.hyp_occurrences, p.recalled) == (2, 1, 1, 1, 0)
    assert b.leaked == ["zanzibar"] and split(b)[0] == (0, 0, 1, 0)
    b = biased("call bob now", "call zanzibar now", ["Zanzibar"])  # replaces an unbiased word: U sub, a leak
    assert split(b) == ((0, 0, 0, 0), (1, 0, 0, 3)) and b.phrases.leaked == 1
    b = biased("zanzibar zanzibar", "zanzibar zanzibar", ["kubernetes", "zanzibar"])
    assert (b.phrases.distractors, b.phrases.leaked, b.phrases.recalled) == (1, 0, 2)


def test_character_units_for_scripts_without_spaces():
    # the phrase's space is ignored in characters
    b = biased("我们去北京大学", "我们去背景大学了", ["北京 大学", "上海"])
    assert b.biased.units == 4 and b.unbiased.units == 3
    assert split(b) == ((2, 0, 0, 4), (0, 0, 1, 3))  # 北京->背景 (B sub x2), 了 inserted (U)
    assert (b.phrases.ref_occurrences, b.phrases.recalled, b.phrases.distractors, b.phrases.leaked) == (1, 0, 1, 0)
    b = biased("我们去北京大学", "我们去北京大学", ["北京大学"])
    assert b.phrases.recalled == 1 and b.biased.errors == 0
    # a phrase matches words, not parts of them, in word units
    assert biased("joanna came", "joanna came", ["anna"]).biased.units == 0
    # and in code-switched text, scored in characters: an English phrase is a word, not letters inside others
    b = biased("我们 and 你们", "我们 band 你们", ["an", "and"])
    assert (b.biased.units, b.phrases.ref_occurrences, b.phrases.recalled, b.phrases.leaked) == (1, 1, 0, 0)
    assert split(b) == ((1, 0, 0, 1), (0, 0, 0, 4))


def test_phrases_normalised_deduplicated_and_unscorable_counted():
    units, empty = phrase_units(["Anna!", "anna", "ANNA", "...", "new  York"], "wer")
    assert units == {("anna",): "anna", ("new", "york"): "new york"} and empty == 1
    b = biased("anna", "anna", ["Anna", "anna", "?!"])
    assert (b.listed, b.unscorable, b.phrases.ref_occurrences) == (1, 1, 1)
    assert Units(list("aaaa")).find(("a", "a"), overlapping=True) == [0, 1, 2]
    assert Units(list("aaaa")).find(("a", "a"), overlapping=False) == [0, 2]
    assert Units(list("abab")).find(("a", "b"), overlapping=False) == [0, 2]
    assert Units(list("aab")).find(("x",), overlapping=True) == []


def test_hand_built_alignments_decide_the_split():
    """ref "a b", hyp "b a" has two alignments of cost 2: two substitutions, or insert-match-delete. The split
    follows the one given: the scorer reads the alignment, it does not redo it."""
    ref, hyp = "a b", "b a"
    subs = [EditOp("sub", 0, 0), EditOp("sub", 1, 1)]
    shift = [EditOp("ins", None, 0), EditOp("equal", 0, 1), EditOp("del", 1, None)]
    # subs: a->b is U (reference "a" is not biased), b->a is B. shift: the inserted "b" is the list phrase in the
    # hypothesis (B), the deleted "b" a biased reference word (B), "a" matched.
    for ops, want in ((subs, ((1, 0, 0, 1), (1, 0, 0, 1))), (shift, ((0, 1, 1, 1), (0, 0, 0, 1)))):
        score = UttScore("wer", 2, 2, 0, 0, 0, ref, hyp, ops)
        got = score_biased(score, ["b"])
        assert split(got) == want and got.biased.errors + got.unbiased.errors == 2


def test_an_insertion_or_deletion_beside_a_phrase_is_u_whichever_equal_cost_alignment_was_given():
    """ "new york" against "new new york" aligns at the same cost with either "new" inserted: inside the phrase at its
    left edge (B, not recalled) or before it (U, recalled). Both ways round, and at either edge, it is read the
    second way: the phrase was said whole."""
    eq, ins, dele = (
        (lambda i, j: EditOp("equal", i, j)),
        (lambda j: EditOp("ins", None, j)),
        (lambda i: EditOp("del", i, None)),
    )
    cases = [  # (ref, hyp, the two alignments of the same cost)
        ("new york", "new new york", [eq(0, 0), ins(1), eq(1, 2)], [ins(0), eq(0, 1), eq(1, 2)]),
        ("new york", "new york york", [eq(0, 0), ins(1), eq(1, 2)], [eq(0, 0), eq(1, 1), ins(2)]),
        ("new new york", "new york", [eq(0, 0), dele(1), eq(2, 1)], [dele(0), eq(1, 0), eq(2, 1)]),
        ("new york york", "new york", [eq(0, 0), dele(1), eq(2, 1)], [eq(0, 0), eq(1, 1), dele(2)]),
    ]
    for ref, hyp, *alignments in cases:
        for ops in alignments:
            n_ins, n_del = sum(op.kind == "ins" for op in ops), sum(op.kind == "del" for op in ops)
            score = UttScore("wer", len(ref.split()), len(hyp.split()), 0, n_del, n_ins, ref, hyp, ops)
            got = score_biased(score, ["New York"])
            assert (got.biased.errors, got.unbiased.errors, got.phrases.recalled) == (0, 1, 1), (ref, hyp, ops)
        assert split(biased(ref, hyp, ["New York"]))[0][:3] == (0, 0, 0), (ref, hyp)  # as Levenshtein aligns it
    # an insertion no equal-cost alignment moves out of the phrase still splits it: B (the "new" beside it is U)
    b = biased("new york", "new new a york", ["New York"])
    assert (b.biased.insertions, b.unbiased.insertions, b.phrases.recalled) == (1, 1, 0)
    b = biased("new york", "new a new york", ["New York"])  # the run "a new" moves out whole: the phrase is said
    assert (b.biased.insertions, b.unbiased.insertions, b.phrases.recalled) == (0, 2, 1)


def test_b_plus_u_is_every_error_on_random_pairs():
    rng = random.Random(4)
    vocab = ["new", "york", "anna", "bob", "call", "now", "the"]
    lists = [["new york"], ["anna", "bob"], ["the", "new york", "zanzibar"], ["bob bob", "now"], []]
    pairs, phrase_lists = [], []
    for _ in range(300):
        pairs.append(tuple(" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 8))) for _ in range(2)))
        phrase_lists.append(rng.choice(lists))
    corpus, scores = score_corpus(pairs)
    hot, utts = score_lists(scores, phrase_lists, corpus.name, corpus.unit_name)
    for s, u in zip(scores, utts):
        assert u.biased.errors + u.unbiased.errors == s.errors and u.biased.units + u.unbiased.units == s.ref_len
        assert u.phrases.recalled <= min(u.phrases.ref_occurrences, u.phrases.hyp_occurrences)
    assert hot.errors == corpus.errors and hot.biased.units + hot.unbiased.units == corpus.ref_len
    assert hot.biased.substitutions + hot.unbiased.substitutions == corpus.substitutions
    assert hot.biased.insertions + hot.unbiased.insertions == corpus.insertions


def test_hotword_list_type_errors_name_the_utterance():
    assert hotword_list(None, "x") == [] and hotword_list(["a"], "x") == ["a"]
    with pytest.raises(ValueError, match=r"utterance 'u1': hotwords must be a list of strings, got 'anna'"):
        hotword_list("anna", "utterance 'u1'")
    with pytest.raises(ValueError, match="utterance 'u2'"):
        hotword_list(["anna", 3], "utterance 'u2'")
    with pytest.raises(ValueError, match="2 scored utterances but 1 hotword lists"):
        score_lists(score_corpus([("a", "a"), ("b", "b")])[1], [[]], "WER", "words")


def readme_example() -> tuple[list[tuple[list[str], str, str]], list[str]]:
    """The rows of the worked example's table (list, reference, hypothesis) and its summary block."""
    text = README.read_text()
    section = text[text.index("## Hotwords") :]
    section = section[section.index("### Scoring") :]
    example = section[section.index("Worked example") :]
    rows = []
    for line in example.splitlines()[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and not set(cells[0]) <= set("-") and cells[0] != "list":
            rows.append(([p.strip() for p in cells[0].split(",")], cells[1], cells[2]))
        elif rows and not line.strip().startswith("|"):
            break
    block = re.search(r"```\n(.*?)```", example, re.S)
    return rows, block.group(1).splitlines()


def test_readme_worked_example():
    rows, printed = readme_example()
    assert len(rows) == 2
    corpus, scores = score_corpus([(ref, hyp) for _, ref, hyp in rows])
    hot, utts = score_lists(scores, [phrases for phrases, _, _ in rows], corpus.name, corpus.unit_name)
    assert printed == [corpus.summary(), *hot.summary_lines()]
    # the numbers the README's prose gives
    assert (hot.biased.units, hot.biased.errors, hot.unbiased.units, hot.unbiased.errors) == (4, 2, 6, 2)
    assert hot.rates() == pytest.approx({"recall": 2 / 3, "precision": 2 / 3, "leak_rate": 0.5})
    assert utts[0].missed == ["anna karenina"] and utts[0].leaked == ["zanzibar"]


def test_phrases_are_looked_for_only_where_their_first_unit_is_and_score_as_if_looked_for_everywhere():
    """score_biased tries the phrases whose first unit the reference or hypothesis holds: it scores as the list's
    every phrase looked for in both (distractors counted, missed and leaked texts in the list's order)."""
    from dataclasses import replace

    from llmasr.scoring_bias import BiasedUttScore, _spans, count_phrases, split_errors, whole_phrases
    from llmasr.text_units import tokens

    rng = random.Random(0)
    vocab = ["new", "york", "bora", "anna", "的", "北京", "x", "y"]
    for metric in ("wer", "auto"):
        for _ in range(400):
            ref = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 9)))
            hyp = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 9)))
            phrases = [" ".join(rng.choice(vocab + ["zzz"]) for _ in range(rng.randint(1, 3))) for _ in range(12)]
            score = score_utterance(ref, hyp, metric)
            units, empty = phrase_units(phrases, metric)
            r, h = Units(tokens(score.ref_norm, metric)), Units(tokens(score.hyp_norm, metric))
            aligned = replace(score, alignment=whole_phrases(score.alignment, r.seq, h.seq, *_spans(r, units)))
            counts, missed, leaked = count_phrases(aligned, r, h, units)
            want = BiasedUttScore(*split_errors(aligned, r, h, units), counts, len(units), empty, missed, leaked)
            assert score_biased(score, phrases) == want, (ref, hyp, phrases)
