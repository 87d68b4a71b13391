"""Scoring against biasing lists (hotwords): B-WER / U-WER, phrase recall and precision, distractor leaks.

Each utterance has its own list of phrases (what was rendered into its prompt). A phrase is normalised like the
transcripts (text_units.normalize) and cut into units as they are (text_units.tokens under the metric asked for: with
"auto" each character of a script written without spaces and each other word, so "New York" is two words inside a
Chinese sentence scored in characters); a multi-word phrase matches a contiguous span. Phrases equal after normalisation
count once; a phrase with no unit left (punctuation only) cannot be scored and is counted as such.

On the alignment of scoring.align (the one the WER counts come from), following Le et al. 2021 (trie-based deep
biasing):
- a reference unit is *biased* when it lies inside an occurrence of a phrase of the list in the reference;
- a substitution or deletion is a B error when its reference unit is biased, else a U error;
- an insertion is a B error when the inserted unit lies inside an occurrence of a list phrase in the hypothesis
  (a hotword said where nobody said it) or falls strictly inside an occurrence in the reference (it splits the
  phrase: "new big york"), else a U error;
- where alignments of the same cost differ only in where a run of insertions or deletions sits beside matched or
  substituted units ("new york" against "new new york": the first "new" or the second inserted), the one that
  leaves each reference occurrence whole is read (whole_phrases): an insertion beside a phrase counts U, as does a
  deletion of a unit repeated beside it, and the phrase is recalled. A phrase said whole is no biasing error, so
  B errors and recall agree; Levenshtein's own tie-break had put the insertion inside a phrase at its left edge
  (B, not recalled) and outside at its right edge (U, recalled);
- B-WER = B errors / biased reference units, U-WER = U errors / the other reference units; B + U errors are the
  WER's errors, utterances without a list contributing to U only.
The insertion rule is llmasr's: the scorer released with that paper (fbai-speech is21_deep_bias/score.py) counts an
insertion to B only when the inserted word is a list word the reference holds, so an inserted distractor is U there.
Phrases: a reference occurrence is *recalled* when the alignment matches all its units, in order and without a
gap, to an occurrence of the phrase in the hypothesis. Recall = recalled / occurrences in the references;
precision = recalled / occurrences in the hypotheses. A *distractor* is a list phrase absent from the reference;
it *leaks* when it occurs in the hypothesis: leak rate = leaked distractors / distractors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from llmasr.scoring import EditOp, UttScore, plural
from llmasr.text_units import normalize, tokens


@dataclass
class Side:
    """Reference units and errors on one side of the biased / unbiased split."""

    units: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float | None:
        """Errors per reference unit; None without reference units (errors are still counted)."""
        return self.errors / self.units if self.units else None

    def add(self, other: Side) -> None:
        self.units += other.units
        self.substitutions += other.substitutions
        self.deletions += other.deletions
        self.insertions += other.insertions

    def to_dict(self, metric: str) -> dict:
        return dict(
            metric=metric, rate=self.rate, errors=self.errors, ref_units=self.units,
            substitutions=self.substitutions, deletions=self.deletions, insertions=self.insertions,
        )  # fmt: skip

    def summary(self, metric: str, what: str) -> str:
        rate = "n/a" if self.rate is None else f"{100 * self.rate:.2f}%"
        return (
            f"{metric} {rate} [ {self.errors} / {self.units} {what}, "
            f"{self.substitutions} sub, {self.deletions} del, {self.insertions} ins ]"
        )


@dataclass
class PhraseCounts:
    ref_occurrences: int = 0
    hyp_occurrences: int = 0
    recalled: int = 0  # reference occurrences matched in the hypothesis (= correct hypothesis occurrences)
    distractors: int = 0  # list phrases absent from the reference
    leaked: int = 0  # distractors that occur in the hypothesis
    leak_occurrences: int = 0  # their occurrences in the hypothesis

    def add(self, other: PhraseCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class BiasedUttScore:
    biased: Side
    unbiased: Side
    phrases: PhraseCounts
    listed: int  # phrases scored (distinct after normalisation)
    unscorable: int  # phrases with no unit after normalisation
    missed: list[str] = field(default_factory=list)  # reference occurrences not recalled (normalised phrases)
    leaked: list[str] = field(default_factory=list)  # distractors found in the hypothesis

    def to_row(self) -> dict:
        """The per-utterance fields of results.jsonl."""
        return dict(
            b_errors=self.biased.errors, b_units=self.biased.units, u_errors=self.unbiased.errors,
            u_units=self.unbiased.units, recalled=self.phrases.recalled, ref_occurrences=self.phrases.ref_occurrences,
            hyp_occurrences=self.phrases.hyp_occurrences, missed=self.missed, leaked=self.leaked,
        )  # fmt: skip


class Units:
    """A unit sequence and where each unit occurs: a phrase is tried only where its first unit is, so a long list
    (one shared by every utterance) costs little per utterance."""

    def __init__(self, seq: list[str]):
        self.seq = seq
        self.at: dict[str, list[int]] = {}
        for i, u in enumerate(seq):
            self.at.setdefault(u, []).append(i)

    def __len__(self) -> int:
        return len(self.seq)

    def find(self, phrase: tuple[str, ...], *, overlapping: bool) -> list[int]:
        """Start indices of `phrase`, left to right (non-overlapping ones only unless `overlapping`)."""
        n, out, free = len(phrase), [], 0
        for i in self.at.get(phrase[0], ()):
            if (overlapping or i >= free) and tuple(self.seq[i : i + n]) == phrase:
                out.append(i)
                free = i + n
        return out


@lru_cache(maxsize=1 << 16)
def _phrase(phrase: str, unit: str) -> tuple[tuple[str, ...], str]:
    norm = normalize(phrase)
    return tuple(tokens(norm, unit)), norm


def phrase_units(phrases, unit: str) -> tuple[dict[tuple[str, ...], str], int]:
    """{units: normalised phrase} of the distinct scorable phrases, and the number with no unit."""
    out: dict[tuple[str, ...], str] = {}
    empty = 0
    for phrase in phrases:
        units, norm = _phrase(phrase, unit)
        if units:
            out.setdefault(units, norm)
        else:
            empty += 1
    return out, empty


@lru_cache(maxsize=1 << 10)
def _phrase_table(phrases: tuple[str, ...], unit: str) -> tuple[dict, int, dict[str, list[tuple[str, ...]]]]:
    """phrase_units' answer for a list, and its phrases by their first unit: a list shared by many utterances (one
    --hotwords file for all) is read once."""
    units, empty = phrase_units(phrases, unit)
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for k, phrase in enumerate(units):
        by_first.setdefault(phrase[0], []).append((k, phrase))
    return units, empty, by_first


def _present(by_first: dict, *seqs: Units) -> list[tuple[str, ...]]:
    """The phrases, in their list's order, whose first unit one of `seqs` holds: no other occurs in them. Each
    phrase is looked for five times an utterance: with a long list, trying only these is what keeps it cheap."""
    found = {kp for seq in seqs for u in seq.at if u in by_first for kp in by_first[u]}
    return [phrase for _, phrase in sorted(found)]


def _spans(seq: Units, phrases) -> tuple[list[bool], list[bool]]:
    """(inside[k]: unit k lies in an occurrence of a phrase, interior[k]: units k and k+1 lie in the same one)."""
    inside, interior = [False] * len(seq), [False] * len(seq)
    for units in phrases:
        for s in seq.find(units, overlapping=True):
            for k in range(s, s + len(units)):
                inside[k] = True
                interior[k] = interior[k] or k < s + len(units) - 1
    return inside, interior


def _prev_ref(ops: list[EditOp], k: int) -> int:
    """The reference unit the ops before `k` passed last (-1: none): an insertion at `k` sits after it."""
    return next((op.ref for op in reversed(ops[:k]) if op.ref is not None), -1)


def _transposed(ops: list[EditOp]) -> list[EditOp]:
    """The alignment of hypothesis to reference: a deletion becomes an insertion, so _slide moves deletions too."""
    return [EditOp({"ins": "del", "del": "ins"}.get(op.kind, op.kind), op.hyp, op.ref) for op in ops]


def _slide(ops: list[EditOp], k: int, e: int, step: int, ref: list, hyp: list) -> list[EditOp] | None:
    """The insertions ops[k:e] moved one op left (step -1) or right (+1) across the equal or substitution beside
    them, where the alignment costs the same (its reference unit stays matched, or stays substituted); None where it
    would cost more or no such op is there."""
    at = k - 1 if step < 0 else e
    if not 0 <= at < len(ops) or ops[at].kind not in ("equal", "sub"):
        return None
    i, j, n = ops[at].ref, ops[at].hyp, e - k
    moved = j + n if step < 0 else j - n  # the hypothesis unit reference unit i pairs with after the move
    if (ref[i] == hyp[j]) != (ref[i] == hyp[moved]):
        return None
    pair = EditOp("equal" if ref[i] == hyp[moved] else "sub", i, moved)
    if step < 0:  # [X(i, j), ins j+1..j+n] -> [ins j..j+n-1, X(i, j+n)]
        return ops[:at] + [EditOp("ins", None, j + m) for m in range(n)] + [pair] + ops[e:]
    # [ins j-n..j-1, X(i, j)] -> [X(i, j-n), ins j-n+1..j]
    return ops[:k] + [pair] + [EditOp("ins", None, moved + 1 + m) for m in range(n)] + ops[at + 1 :]


def whole_phrases(ops: list[EditOp], ref: list, hyp: list, in_ref: list[bool], interior: list[bool]):
    """`ops` with each run of insertions inside a reference phrase occurrence (`interior` of the unit before it),
    and each run of deletions of biased units (`in_ref`), moved out of the phrase across matched or substituted
    units where an alignment of the same cost has it there (the whole run, else the most of it from its edge; the
    nearest such place, the left one on a tie). "new york" against "new new york" inserts "new" before the phrase,
    "new new york" against "new york" deletes the "new" before it. The error counts stay; which of the equal-cost
    alignments Levenshtein returned had decided B or U, and whether the phrase was recalled."""
    ops, k = list(ops), 0
    while k < len(ops):
        kind, e = ops[k].kind, k
        while e < len(ops) and ops[e].kind == kind:
            e += 1
        moved = None
        if kind == "ins" and _inside(ops, k, interior):
            moved = _out_of_phrase(ops, k, e, lambda o, a, b: not _inside(o, a, interior), ref, hyp)
        elif kind == "del" and any(in_ref[op.ref] for op in ops[k:e]):
            flipped = _out_of_phrase(
                _transposed(ops), k, e, lambda o, a, b: not any(in_ref[op.hyp] for op in o[a:b]), hyp, ref
            )
            moved = None if flipped is None else _transposed(flipped)
        ops, k = (ops, e) if moved is None else (moved, 0)  # a part moved: the rest of its run is looked at again
    return ops


def _inside(ops: list[EditOp], k: int, interior: list[bool]) -> bool:
    prev = _prev_ref(ops, k)
    return prev >= 0 and interior[prev]


def _out_of_phrase(ops: list[EditOp], k: int, e: int, out, ref: list, hyp: list) -> list[EditOp] | None:
    """`ops` with the insertions ops[k:e], or the most of them from one edge of the run, slid to the nearest place
    `out`(ops, start, end) accepts where an alignment of the same cost has them; None where none is reached."""
    for m in range(e - k, 0, -1):
        found = []
        for step, a0, b0 in ((-1, k, k + m), (1, e - m, e)):
            moved, a, b = ops, a0, b0
            while moved is not None:
                moved = _slide(moved, a, b, step, ref, hyp)
                a, b = a + step, b + step
                if moved is not None and out(moved, a, b):
                    found.append((abs(a - a0), moved))
                    break
        if found:
            return min(found, key=lambda f: f[0])[1]
    return None


def split_errors(score: UttScore, ref: Units, hyp: Units, phrases) -> tuple[Side, Side]:
    """(biased, unbiased) units and errors of one scored utterance (its units `ref`, `hyp`) under its phrases
    (tuples of units)."""
    in_ref, interior = _spans(ref, phrases)
    in_hyp, _ = _spans(hyp, phrases)
    b, u = Side(units=sum(in_ref)), Side(units=len(ref) - sum(in_ref))
    prev = -1  # the last reference unit passed: an insertion sits between it and the next
    for op in score.alignment:
        if op.kind == "ins":
            side = b if in_hyp[op.hyp] or (prev >= 0 and interior[prev]) else u
            side.insertions += 1
            continue
        prev = op.ref
        side = b if in_ref[op.ref] else u
        if op.kind == "sub":
            side.substitutions += 1
        elif op.kind == "del":
            side.deletions += 1
    return b, u


def count_phrases(
    score: UttScore, ref: Units, hyp: Units, phrases: dict, present: list | None = None
) -> tuple[PhraseCounts, list, list]:
    """Occurrences, recalled occurrences and leaks of the phrases ({units: text}); the missed and leaked texts.
    `present`: the phrases that may occur in `ref` or `hyp` (_present's), in the list's order; None: any."""
    hyp_of_ref = {op.ref: op.hyp for op in score.alignment if op.kind == "equal"}
    counts, missed, leaked = PhraseCounts(), [], []
    counts.distractors = len(phrases) - len(phrases if present is None else present)  # in neither: no more to count
    for units in phrases if present is None else present:
        text = phrases[units]
        in_ref, in_hyp = ref.find(units, overlapping=False), hyp.find(units, overlapping=False)
        counts.ref_occurrences += len(in_ref)
        counts.hyp_occurrences += len(in_hyp)
        if not in_ref:
            counts.distractors += 1
            counts.leaked += bool(in_hyp)
            counts.leak_occurrences += len(in_hyp)
            leaked += [text] * bool(in_hyp)
            continue
        for s in in_ref:
            # every unit matched to consecutive hypothesis units: an occurrence there, even one overlapping the
            # leftmost ones counted above ("bora bora" at 1 of "bora bora bora"); recalled ones never overlap, so
            # recalled <= hyp_occurrences
            start = hyp_of_ref.get(s)
            ok = start is not None and all(hyp_of_ref.get(s + k) == start + k for k in range(len(units)))
            counts.recalled += ok
            missed += [] if ok else [text]
    return counts, missed, leaked


def score_biased(score: UttScore, phrases) -> BiasedUttScore:
    """B/U split and phrase counts of one scored utterance under its biasing list (strings; may be empty)."""
    units, empty, by_first = _phrase_table(tuple(phrases), score.metric)
    ref, hyp = Units(tokens(score.ref_norm, score.metric)), Units(tokens(score.hyp_norm, score.metric))
    present = _present(by_first, ref, hyp)
    score = replace(score, alignment=whole_phrases(score.alignment, ref.seq, hyp.seq, *_spans(ref, present)))
    biased, unbiased = split_errors(score, ref, hyp, present)
    counts, missed, leaked = count_phrases(score, ref, hyp, units, present)
    return BiasedUttScore(biased, unbiased, counts, len(units), empty, missed, leaked)


def _pct(num: int, den: int) -> str:
    return f"{100 * num / den:.2f}%" if den else "n/a"


@dataclass
class BiasedCorpus:
    """Corpus totals: sums over utterances, never means of rates."""

    metric: str = "WER"  # the corpus metric's name (WER, CER, MER): B-/U- are prefixed to it
    unit_name: str = "words"
    biased: Side = field(default_factory=Side)
    unbiased: Side = field(default_factory=Side)
    phrases: PhraseCounts = field(default_factory=PhraseCounts)
    utterances_with_list: int = 0
    listed: int = 0
    unscorable: int = 0

    def add(self, utt: BiasedUttScore) -> None:
        self.biased.add(utt.biased)
        self.unbiased.add(utt.unbiased)
        self.phrases.add(utt.phrases)
        self.utterances_with_list += bool(utt.listed or utt.unscorable)
        self.listed += utt.listed
        self.unscorable += utt.unscorable

    @property
    def errors(self) -> int:
        return self.biased.errors + self.unbiased.errors

    def rates(self) -> dict:
        p = self.phrases
        return dict(
            recall=p.recalled / p.ref_occurrences if p.ref_occurrences else None,
            precision=p.recalled / p.hyp_occurrences if p.hyp_occurrences else None,
            leak_rate=p.leaked / p.distractors if p.distractors else None,
        )

    def to_dict(self) -> dict:
        return dict(
            biased=self.biased.to_dict(f"B-{self.metric}"), unbiased=self.unbiased.to_dict(f"U-{self.metric}"),
            **self.rates(), **vars(self.phrases), utterances_with_list=self.utterances_with_list,
            phrases_listed=self.listed, phrases_unscorable=self.unscorable,
        )  # fmt: skip

    def summary_lines(self) -> list[str]:
        p = self.phrases
        lines = [
            f"{self.biased.summary(f'B-{self.metric}', f'biased {self.unit_name}')}  "
            f"{self.unbiased.summary(f'U-{self.metric}', f'other {self.unit_name}')}",
            f"hotwords: recall {_pct(p.recalled, p.ref_occurrences)} ({p.recalled}/{p.ref_occurrences} in the "
            f"references), precision {_pct(p.recalled, p.hyp_occurrences)} ({p.recalled}/{p.hyp_occurrences} in "
            f"the hypotheses), leaks {p.leaked} of {plural(p.distractors, 'distractor')} "
            f"({_pct(p.leaked, p.distractors)}, {plural(p.leak_occurrences, 'occurrence')}); "
            f"{plural(self.listed, 'phrase')} in {plural(self.utterances_with_list, 'list')}",
        ]
        if self.unscorable:
            lines[-1] += f"; {plural(self.unscorable, 'phrase')} with nothing left after normalisation not scored"
        return lines


def hotword_list(value, where: str) -> list[str]:
    """A row's `hotwords` value as a list of strings (None: no list); anything else is an error naming `where`."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{where}: hotwords must be a list of strings, got {value!r}")
    return value


def score_lists(scores: list[UttScore], lists: list[list[str]], metric: str, unit_name: str):
    """Corpus totals and per-utterance scores of scored utterances under their lists (one list per score)."""
    if len(scores) != len(lists):
        raise ValueError(f"{len(scores)} scored utterances but {len(lists)} hotword lists")
    corpus = BiasedCorpus(metric, unit_name)
    out = []
    for score, phrases in zip(scores, lists):
        utt = score_biased(score, phrases)
        corpus.add(utt)
        out.append(utt)
    return corpus, out
