"""Scoring transcripts: a minimum edit alignment, per-utterance and corpus-level WER/CER.

Texts are normalised and cut into units by llmasr.text_units ("wer" words, "cer" characters, "auto" both as the
script asks). An utterance whose reference holds characters of a script written without spaces counts as scored in
characters, any other in words. The corpus rate is total errors / total reference units; when both kinds occur the
summary calls it a mixed error rate (MER) and gives the counts of each.

The alignment (`align`: one Levenshtein alignment, unit by unit, computed by rapidfuzz as jiwer does) is the one
owner of edit operations: the substitution/deletion/insertion counts are read off it, and so is the hotword scoring
(llmasr.scoring_bias), so the two never disagree.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

from rapidfuzz.distance import Levenshtein

from llmasr.text_units import choose_unit, normalize, tokens


@dataclass
class UttScore:
    unit: str  # "wer" or "cer"
    ref_len: int  # reference units
    hyp_len: int
    substitutions: int
    deletions: int
    insertions: int
    ref_norm: str
    hyp_norm: str
    alignment: list = field(default_factory=list, repr=False)  # EditOps over tokens(ref_norm/hyp_norm, metric)
    metric: str = "auto"  # as requested: how the texts were cut into units (tokens)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference unit (errors when the reference is empty, so an inserted word still counts)."""
        return self.errors / self.ref_len if self.ref_len else float(self.errors)


class EditOp(NamedTuple):
    """One step of an alignment: kind "equal", "sub", "del" (ref only) or "ins" (hyp only), with unit indices."""

    kind: str
    ref: int | None
    hyp: int | None


def align(ref: list[str], hyp: list[str]) -> list[EditOp]:
    """A minimum edit (Levenshtein, unit costs) alignment of two unit sequences, one EditOp per unit, in order:
    every reference index and every hypothesis index appears exactly once. Ties between alignments of equal cost
    are broken as jiwer breaks them (the same rapidfuzz opcodes over the same integer ids), so counts match it."""
    ids: dict[str, int] = {}
    r = [ids.setdefault(u, len(ids)) for u in ref]
    h = [ids.setdefault(u, len(ids)) for u in hyp]
    ops: list[EditOp] = []
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(r, h):
        if tag in ("equal", "replace"):
            if i2 - i1 != j2 - j1:  # rapidfuzz pairs replaced units one to one; anything else is a bug there
                raise RuntimeError(f"alignment block {tag} {i1}:{i2} vs {j1}:{j2} has unequal lengths")
            kind = "equal" if tag == "equal" else "sub"
            ops.extend(map(_new_op, zip(repeat(kind), range(i1, i2), range(j1, j2))))
        elif tag == "delete":
            ops.extend(map(_new_op, zip(repeat("del"), range(i1, i2), repeat(None))))
        else:
            ops.extend(map(_new_op, zip(repeat("ins"), repeat(None), range(j1, j2))))
    return ops


# EditOp((kind, ref, hyp)) made in C, as its own __new__ makes it: align makes one a unit, without a Python call each
_new_op = functools.partial(tuple.__new__, EditOp)


def edit_counts(ops: list[EditOp]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of an alignment."""
    kinds = [op.kind for op in ops]
    return kinds.count("sub"), kinds.count("del"), kinds.count("ins")


def score_utterance(reference: str, hypothesis: str, metric: str = "auto") -> UttScore:
    ref_norm, hyp_norm = normalize(reference), normalize(hypothesis)
    # An empty reference (a silent clip) has no script to go by: the hypothesis's decides, so a hallucinated Chinese
    # sentence counts a character each, not one "word".
    unit = choose_unit(ref_norm if ref_norm.strip() else hyp_norm, metric)
    ref, hyp = tokens(ref_norm, metric), tokens(hyp_norm, metric)
    ops = align(ref, hyp)
    s, d, i = edit_counts(ops)
    return UttScore(unit, len(ref), len(hyp), s, d, i, ref_norm, hyp_norm, ops, metric)


@dataclass
class CorpusScore:
    metric: str  # as requested: auto | wer | cer
    n_utts: int = 0
    ref_len: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    by_unit: dict = field(default_factory=lambda: {"wer": 0, "cer": 0})  # utterances scored in each unit
    # utterances with an empty reference, by the unit their hypothesis was scored in: they name the metric only
    # when no reference has a script to go by
    empty_by_unit: dict = field(default_factory=lambda: {"wer": 0, "cer": 0})
    sentence_errors: int = 0

    def add(self, score: UttScore) -> None:
        self.n_utts += 1
        self.ref_len += score.ref_len
        self.substitutions += score.substitutions
        self.deletions += score.deletions
        self.insertions += score.insertions
        if score.ref_len:  # an empty reference has no script: it does not make a corpus mixed (MER)
            self.by_unit[score.unit] += 1
        else:
            self.empty_by_unit[score.unit] += 1
        self.sentence_errors += int(score.errors > 0)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / self.ref_len if self.ref_len else (float(self.errors) if self.errors else 0.0)

    @property
    def units(self) -> dict:
        """Utterances scored in each unit that name the metric: those with a reference, or, when no reference has a
        script to go by, the empty ones by their hypotheses."""
        return dict(self.by_unit if any(self.by_unit.values()) else self.empty_by_unit)

    @property
    def name(self) -> str:
        """WER, CER, or MER when utterances were scored in both units (the requested unit, when one was)."""
        if self.metric in ("wer", "cer"):
            return self.metric.upper()
        return rate_name(self.units["wer"], self.units["cer"])

    @property
    def unit_name(self) -> str:
        return {"WER": "words", "CER": "characters", "MER": "units"}[self.name]

    def to_dict(self) -> dict:
        return {
            "metric": self.name,
            "requested": self.metric,
            "rate": self.rate,
            "errors": self.errors,
            "ref_units": self.ref_len,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "utterances": self.n_utts,
            "utterances_scored_in_words": self.by_unit["wer"],
            "utterances_scored_in_characters": self.by_unit["cer"],
            "sentence_error_rate": self.sentence_errors / self.n_utts if self.n_utts else 0.0,
        }

    def summary(self) -> str:
        line = (
            f"{self.name} {100 * self.rate:.2f}% [ {self.errors} / {self.ref_len} {self.unit_name}, "
            f"{self.substitutions} sub, {self.deletions} del, {self.insertions} ins ] "
            f"over {plural(self.n_utts, 'utterance')}"
        )
        if self.name == "MER":
            line += f" ({self.by_unit['wer']} scored in words, {self.by_unit['cer']} in characters)"
        return line


def kaldi_key(key) -> str:
    """A key a "key text" line can hold: whitespace in it would move words of the key into the text."""
    return "_".join(str(key).split()) or "_"


def plural(n: int, noun: str) -> str:
    """A count in a report line: "1 window", "2 windows"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def rate_name(in_words: int, in_characters: int) -> str:
    """The error rate's name for utterances scored in words and in characters: WER, CER, or MER for both."""
    if in_words and in_characters:
        return "MER"
    return "CER" if in_characters else "WER"


def score_corpus(pairs, metric: str = "auto") -> tuple[CorpusScore, list[UttScore]]:
    """pairs: iterable of (reference, hypothesis). Returns the corpus totals and the per-utterance scores."""
    corpus = CorpusScore(metric)
    scores = []
    with collector_paused():
        for ref, hyp in pairs:
            s = score_utterance(ref, hyp, metric)
            corpus.add(s)
            scores.append(s)
    return corpus, scores


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic collector off while many objects are made that live on and hold no cycle (each utterance's
    score, its alignment a tuple a unit): its passes walked them again and again as they grew, for nothing to free."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
