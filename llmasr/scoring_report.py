"""How a scored set of hypotheses is reported, in wer.txt's words: the rate with its bootstrap interval, the rate of
each language the references name, and (`llmasr score` with two systems or more) how each system differs from the
first on the same utterances: the change in rate with its paired interval, the probability of improvement, the
utterances it made better and worse, and the ones that changed most."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

from llmasr.data.languages import bare_label
from llmasr.scoring import CorpusScore, UttScore, score_corpus
from llmasr.scoring_bias import BiasedCorpus, score_lists
from llmasr.scoring_bootstrap import LEVEL, RESAMPLES, paired_change, rate_interval
from llmasr.text_units import tokens

NO_LANGUAGE = "(none)"  # the group of scored lines that give no `lang`


def interval_text(interval) -> str:
    if interval is None:
        return ""
    return f"; {LEVEL:.0%} CI {100 * interval[0]:.2f}-{100 * interval[1]:.2f}% ({RESAMPLES} utterance resamples)"


def add_languages(summary: dict, text: list[str], rows: list[dict], hyp_key: str, metric: str) -> None:
    """The rate of each language the scored lines name (their `lang`, llmasr.data.records.language_of), most
    utterances first, when they name more than one or only some name one: a mixed test set's one rate hides a
    language that is far worse. Each group is scored as the whole is (`metric`: auto picks WER or CER per line)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    labels: dict[str, set[str]] = {}  # the labels a group gathers that are more than its key's spelling ("zh-CN")
    for r in rows:
        if r["ref"] is not None:
            lang = r.get("lang") or NO_LANGUAGE
            groups.setdefault(lang, []).append((r["ref"], r[hyp_key]))
            label = " ".join(str(r.get("lang_label") or lang).split())
            if bare_label(label) != lang:  # "<|zh|>" and "ZH" are "zh" written alike; "zh-CN" and "Chinese" merged
                labels.setdefault(lang, set()).add(label)
    if len(groups) < 2:
        return
    order = sorted(groups, key=lambda lang: (-len(groups[lang]), lang))
    summary["by_language"] = {}
    text.append("by language (the lines' `lang`):")
    for lang in order:
        corpus, _ = score_corpus(groups[lang], metric)
        summary["by_language"][lang] = corpus.to_dict()
        spelled = ""
        if lang in labels:  # wer.json beside the groups, which stay score_corpus's
            summary.setdefault("language_labels", {})[lang] = sorted(labels[lang])
            spelled = f" (written {', '.join(sorted(labels[lang]))})"
        text.append(f"  {lang}{spelled}: {corpus.summary()}")


@dataclass
class SystemScore:
    """One system's hypotheses scored against the references (`rows`: key, ref, hyp, lang, lang_label each); `name`:
    what the report calls it, `path`: where its hypotheses were read."""

    name: str
    path: str
    rows: list[dict]
    metric: str
    corpus: CorpusScore = field(init=False)
    scores: list[UttScore] = field(init=False)

    def __post_init__(self):
        self.corpus, self.scores = score_corpus([(r["ref"], r["hyp"]) for r in self.rows], self.metric)

    @property
    def errors(self) -> list[int]:
        return [s.errors for s in self.scores]

    @cached_property
    def biased(self) -> tuple[BiasedCorpus, list] | None:
        """The B-/U- scores under the references' biasing lists (llmasr.scoring_bias), None where none has one."""
        lists = [list(r.get("hotwords") or ()) for r in self.rows]
        if not any(lists):
            return None
        return score_lists(self.scores, lists, self.corpus.name, self.corpus.unit_name)

    def report(self, most: int = 0) -> tuple[list[str], dict]:
        """wer.txt's lines of this system (its rate and interval, by language, with biasing lists B-/U- rates and
        phrase recall; its `most` frequent errors of each kind), and their wer.json fields."""
        interval = rate_interval(self.errors, [s.ref_len for s in self.scores])
        summary = {"name": self.name, "path": self.path, **self.corpus.to_dict(), "rate_ci95": interval}
        text = [f"{self.name}: {self.corpus.summary()}{interval_text(interval)}"]
        add_languages(summary, text, self.rows, "hyp", self.metric)
        if (hot := self.biased) is not None:
            summary["hotwords"] = hot[0].to_dict()
            text += [f"  {line}" for line in hot[0].summary_lines()]
        if most:
            lines, summary["frequent_errors"] = frequent_errors(self.scores, most)
            text += lines
        return text, summary


def compare(base: SystemScore, other: SystemScore, show: int) -> tuple[list[str], dict]:
    """How `other` differs from `base` on the same utterances: lines and their JSON fields. `show`: how many of the
    utterances each made most worse and most better are listed."""
    units = [s.ref_len for s in base.scores]
    change = paired_change(base.errors, other.errors, units)
    delta = other.corpus.rate - base.corpus.rate
    relative = f", {100 * delta / base.corpus.rate:+.1f}% relative" if base.corpus.rate else ""
    name = base.corpus.name
    within = (f"; {LEVEL:.0%} CI of the change {100 * change['low']:+.2f} to {100 * change['high']:+.2f} points"
              if change["low"] is not None else "")  # fmt: skip
    diffs = [b - a for a, b in zip(base.errors, other.errors)]
    better, worse = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
    text = [
        f"{other.name} against {base.name}: {name} {100 * base.corpus.rate:.2f}% -> {100 * other.corpus.rate:.2f}% "
        f"({100 * delta:+.2f} points{relative}){within} ({RESAMPLES} paired utterance resamples); fewer errors than "
        f"{base.name} in {100 * change['p_better']:.1f}% of them",
        f"  utterances: {better} with fewer errors, {worse} with more, {len(diffs) - better - worse} the same",
    ]
    out = {"base": base.name, "other": other.name, "rate_change": delta, "change_ci95": [change["low"],
           change["high"]], "p_better": change["p_better"], "better": better, "worse": worse,
           "same": len(diffs) - better - worse}  # fmt: skip
    if (hot := _biased_change(base, other)) is not None:
        text.append(hot[0])
        out["hotwords"] = hot[1]
    groups = _language_groups(base.rows)
    if len(groups) > 1:
        text.append("  by language (the lines' `lang`):")
        out["by_language"] = {}
        for lang, at in groups.items():
            a, b = [base.errors[i] for i in at], [other.errors[i] for i in at]
            ref = sum(units[i] for i in at)
            p = paired_change(a, b, [units[i] for i in at])["p_better"]
            ra, rb = (sum(a) / ref, sum(b) / ref) if ref else (float(sum(a)), float(sum(b)))
            out["by_language"][lang] = {"rate": [ra, rb], "p_better": p, "utterances": len(at)}
            text.append(f"    {lang}: {100 * ra:.2f}% -> {100 * rb:.2f}% over {len(at)} utterances; fewer errors in "
                        f"{100 * p:.1f}% of the resamples")  # fmt: skip
    for label, sign in (("worse", 1), ("better", -1)):
        order = sorted((i for i, d in enumerate(diffs) if d * sign > 0), key=lambda i: (-abs(diffs[i]), i))[:show]
        out[f"{label}_examples"] = [_example(base, other, i) for i in order]
        if order:
            text.append(f"  {label} in {other.name}, the largest changes first ({len(order)} of "
                        f"{better if sign < 0 else worse}; errors {base.name} -> {other.name}):")  # fmt: skip
            for i in order:
                row = base.rows[i]
                text += [f"    {row['key']} ({base.errors[i]} -> {other.errors[i]}) ref: {row['ref']}",
                         f"      {base.name}: {row['hyp']}", f"      {other.name}: {other.rows[i]['hyp']}"]  # fmt: skip
    return text, out


def _biased_change(base: SystemScore, other: SystemScore) -> tuple[str, dict] | None:
    """The change of the B- rate (the listed phrases' units) and of phrase recall, paired as the rate's is."""
    a, b = base.biased, other.biased
    if a is None:
        return None
    units = [u.biased.units for u in a[1]]
    change = paired_change([u.biased.errors for u in a[1]], [u.biased.errors for u in b[1]], units)
    rates = [c.biased.rate for c in (a[0], b[0])]
    recall = [c.rates()["recall"] for c in (a[0], b[0])]
    said = " -> ".join("n/a" if r is None else f"{100 * r:.2f}%" for r in rates)
    recalled = " -> ".join("n/a" if r is None else f"{100 * r:.2f}%" for r in recall)
    line = (f"  B-{a[0].metric} {said}, fewer biased errors in {100 * change['p_better']:.1f}% of the resamples; "
            f"hotword recall {recalled}")  # fmt: skip
    return line, {"biased_rate": rates, "p_better": change["p_better"], "recall": recall}


def frequent_errors(scores: list[UttScore], most: int) -> tuple[list[str], dict]:
    """The `most` frequent substitutions (reference unit -> hypothesis unit), deletions and insertions over the
    alignments the rate was counted on (units as scored: normalised words, or characters): lines and JSON fields."""
    found = {"substitutions": Counter(), "deletions": Counter(), "insertions": Counter()}
    for s in scores:
        ref, hyp = tokens(s.ref_norm, s.metric), tokens(s.hyp_norm, s.metric)
        for op in s.alignment:
            if op.kind == "sub":
                found["substitutions"][f"{ref[op.ref]} -> {hyp[op.hyp]}"] += 1
            elif op.kind == "del":
                found["deletions"][ref[op.ref]] += 1
            elif op.kind == "ins":
                found["insertions"][hyp[op.hyp]] += 1
    out = {kind: counts.most_common(most) for kind, counts in found.items()}
    text = [f"  {kind}: " + ", ".join(f"{unit} x{n}" for unit, n in top) for kind, top in out.items() if top]
    return text, out


def _language_groups(rows: list[dict]) -> dict[str, list[int]]:
    """Each language's row indices, most rows first (as add_languages orders its groups)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.get("lang") or NO_LANGUAGE, []).append(i)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _example(base: SystemScore, other: SystemScore, i: int) -> dict:
    row = base.rows[i]
    return {"key": row["key"], "ref": row["ref"], "hyps": [row["hyp"], other.rows[i]["hyp"]],
            "errors": [base.errors[i], other.errors[i]]}  # fmt: skip
