"""How well overlapping long-audio windows' texts are joined (llmasr.data.window_join.seam): simulated seams scored by
WER against the full transcript, for the module's rule and for candidate rules.

    python bench/window_joins.py [--trials 200] [--overlap 0.5 1.0] [--seed 0] [--rules module previous ...]
                                 [--oracle]

Each trial is one seam. The transcript (the demo's phrase generator, English prose, Chinese or Japanese text) is
timed at a speaking rate drawn per trial (every token as long as its letters, within a jitter); window 1 ends at a
cut, in the gap after a word (`boundary`) or inside a word (`inword`), and window 2 starts `overlap` s earlier, as
plan_windows cuts without a pause. A token a window edge cuts comes out as the part heard (a fragment: "sto" of
"store", "re" of it), the whole word, or nothing, as the share heard makes likely (a character of a script without
spaces: itself, a wrong character, or nothing). Edge errors: `wrong`, one of each window's two edge tokens is
misrecognised (or written twice); `dropped`, one window loses 1-2 words at its overlap edge (a model trained on whole
utterances drops a cut word's neighbours): a word both texts hold is then likelier a chance match.

Rules: `module` (window_join.seam as it is), `previous` (the longest shared run near the edges, whatever its
neighbours), `two_or_more` (that, one-token runs refused, as transformers' chunk merge asks for two matches),
`disagree_N` (the module's rule with MAX_DISAGREE = N), `keep_both` (no join). Prints Markdown: per case and rule,
WER % of the joined text over the span both windows cover, and (errors per seam); with --oracle, the fewest errors
of any cut "left up to one token, right from another" (the floor for this kind of rule)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_commit  # noqa: E402

from llmasr.data import window_join  # noqa: E402
from llmasr.data.window_join import (  # noqa: E402
    CHARS_PER_SECOND,
    TOKENS_PER_SECOND,
    _glue,
    _norm,
    edge_tokens,
    shared_runs,
)
from llmasr.demo.synth import CorpusConfig, make_text  # noqa: E402
from llmasr.scoring import score_utterance
from llmasr.text_units import UNIT, uses_characters  # noqa: E402

# public-domain prose (the Gettysburg Address, the opening of Alice in Wonderland): many short words recur
PROSE = """four score and seven years ago our fathers brought forth on this continent a new nation conceived in
liberty and dedicated to the proposition that all men are created equal now we are engaged in a great civil war
testing whether that nation or any nation so conceived and so dedicated can long endure we are met on a great
battlefield of that war we have come to dedicate a portion of that field as a final resting place for those who here
gave their lives that that nation might live it is altogether fitting and proper that we should do this alice was
beginning to get very tired of sitting by her sister on the bank and of having nothing to do once or twice she had
peeped into the book her sister was reading but it had no pictures or conversations in it and what is the use of a
book thought alice without pictures or conversations so she was considering in her own mind as well as she could
for the hot day made her feel very sleepy and stupid whether the pleasure of making a daisy chain would be worth the
trouble of getting up and picking the daisies when suddenly a white rabbit with pink eyes ran close by her"""
ZH = (
    "今天天气很好我们一起去公园散步公园里有很多人有的在跑步有的在打太极拳还有的在湖边钓鱼我们走到湖边看见一只小船"
    "船上坐着一个老人他说他每天早上都来这里钓鱼已经钓了十年了我们问他今天钓到了几条鱼他笑着说今天还没有钓到但是"
    "天气这么好心情也很好我们在公园里走了一个小时然后去附近的饭馆吃了午饭饭馆的菜很好吃价格也不贵我们决定下个星期"
    "再来这里吃饭"
)
JA = (
    "今日はとてもいい天気ですね散歩に行きましょう公園にはたくさんの人がいて子供たちが元気に遊んでいます私たちは池の"
    "近くのベンチに座ってお弁当を食べましたそれから駅の近くの本屋に行って新しい本を買いました帰りに友達の家に寄って"
    "お茶を飲みながら話をしました明日は朝早く起きて山に登る予定です天気が良ければ富士山が見えるかもしれません"
)
# words per second (characters for the scripts without spaces): espeak's 130-210 wpm for the demo, conversational
# English, Mandarin's 4-6 syllables a second, Japanese at 6-9 characters a second
RATES = {"demo": (2.2, 3.5), "prose": (2.3, 3.3), "zh": (4.0, 6.0), "ja": (6.0, 9.0)}
ERRORS = ("none", "wrong", "dropped")
SIDE_S = 6.0  # audio of each window away from the seam (its far edge at a word boundary)


def transcript(kind: str, rng: np.random.Generator) -> list[str]:
    if kind == "demo":  # a long demo utterance is test clips joined (demo.long_audio.join_clips)
        return " ".join(make_text(rng, CorpusConfig()) for _ in range(12)).split()
    text = {"prose": PROSE, "zh": ZH, "ja": JA}[kind]
    units = UNIT.findall(text)
    start = int(rng.integers(0, len(units) - 80))
    return units[start : start + 80]


def heard(word: str, share: float, head: bool, cjk: bool, vocab: list[str], rng) -> list[str]:
    """What a window writes for `word` of which it heard `share` (its start when `head`, else its end)."""
    if cjk:
        if rng.random() > share:  # mostly heard: written, maybe as the wrong character
            return []
        return [word if rng.random() < 0.7 else str(rng.choice(vocab))]
    r = rng.random()
    whole, drop = 0.6 * share, 0.6 * (1 - share)  # the more heard, the likelier the word whole
    if r < whole:
        return [word]
    if r < whole + drop or len(word) < 3:
        return []
    n = min(len(word) - 1, max(1, round(share * len(word))))
    return [word[:n] if head else word[-n:]]


def edge_error(tokens: list[str], at_end: bool, vocab: list[str], rng) -> list[str]:
    """One of the two tokens at a window's edge misrecognised (or, a time in four, written twice)."""
    if not tokens:
        return tokens
    k = min(max(len(tokens) - 1 - int(rng.integers(0, 2)) if at_end else int(rng.integers(0, 2)), 0), len(tokens) - 1)
    if rng.random() < 0.75:
        return tokens[:k] + [str(rng.choice(vocab))] + tokens[k + 1 :]
    return tokens[: k + 1] + tokens[k:]


def simulate(kind: str, cut: str, errors: str, overlap: float, rng) -> tuple[str, str, str]:
    """(reference, left window's text, right window's text) of one seam."""
    cjk = kind in ("zh", "ja")
    words = transcript(kind, rng)
    vocab = sorted(set(words))
    rate = rng.uniform(*RATES[kind])
    lengths = np.array([1.0 if cjk else len(w) + 2.0 for w in words])  # letters plus a syllable's worth of gap
    durs = lengths / lengths.mean() / rate * rng.uniform(0.8, 1.2, len(words))
    gap = 0.25 * durs  # the silence-ish stretch a word ends with
    ends = np.cumsum(durs)
    starts = ends - durs
    k = int(np.searchsorted(ends, ends[-1] / 2))  # the word the cut falls in or after
    cut_s = ends[k] - gap[k] * rng.uniform(0, 1) if cut == "boundary" else starts[k] + durs[k] * rng.uniform(0.2, 0.7)
    lo = int(np.searchsorted(starts, cut_s - overlap - SIDE_S))
    hi = int(np.searchsorted(ends, cut_s + SIDE_S))
    a, b = cut_s, cut_s - overlap  # window 1 ends at a, window 2 starts at b

    def side(t: float, keep_before: bool) -> list[str]:
        out = []
        for i in range(lo, hi):
            s, e = starts[i], ends[i] - gap[i]  # the word's sound
            if (e <= t) if keep_before else (s >= t):
                out.append(words[i])
            elif s < t < e:
                share = (t - s) / (e - s) if keep_before else (e - t) / (e - s)
                out += heard(words[i], share, keep_before, cjk, vocab, rng)
        return out

    left, right = side(a, True), side(b, False)
    if errors == "wrong":
        left, right = edge_error(left, True, vocab, rng), edge_error(right, False, vocab, rng)
    elif errors == "dropped":  # one window loses the words it heard at its overlap edge, as LLM-ASR often does
        n = int(rng.integers(1, 3))
        left, right = (left[:-n], right) if rng.random() < 0.5 else (left, right[n:])
    sep = "" if cjk else " "
    return sep.join(words[lo:hi]), sep.join(left), sep.join(right)


# -- rules: (left, right, max_tokens) -> (characters of left kept, characters of right dropped) or None ----------
def previous_seam(left: str, right: str, max_tokens: int):
    """The rule before this evaluation: the longest shared run within EDGE_TOKENS of both edges, whatever its
    neighbours (a lone chance "the" cut "i went to the sto" + "store and the car" to "i went to the car")."""
    a, b, na, nb = edge_tokens(left, right, max_tokens)
    best = None
    for i, j, length, after, before in shared_runs(na, nb):  # the module's runs, ranked by length alone
        key = (length, -(after + before), i, j)
        best = key if best is None or key > best else best
    return None if best is None else (a[best[2] - 1].end(), b[best[3] - 1].end())


def two_or_more(left: str, right: str, max_tokens: int):
    """The previous rule with no one-token run (transformers' chunk merge asks for two matching tokens)."""
    a = [m for m in UNIT.finditer(left) if _norm(m.group())][-max_tokens:]
    b = [m for m in UNIT.finditer(right) if _norm(m.group())]
    cut = previous_seam(left, right, max_tokens)
    if cut is None:
        return None
    i = next(k for k, m in enumerate(a) if m.end() == cut[0])
    j = next(k for k, m in enumerate(b) if m.end() == cut[1])
    return cut if i > 0 and j > 0 and _norm(a[i - 1].group()) == _norm(b[j - 1].group()) else None


def max_disagree(n: int) -> Callable:
    """The module's rule with MAX_DISAGREE at `n` (4: no one-token run refused; 0: only uncontradicted ones kept)."""

    def rule(left: str, right: str, max_tokens: int):
        kept, window_join.MAX_DISAGREE = window_join.MAX_DISAGREE, n
        try:
            return window_join.seam(left, right, max_tokens)
        finally:
            window_join.MAX_DISAGREE = kept

    return rule


def keep_both(left: str, right: str, max_tokens: int):
    return None


RULES: dict[str, Callable] = {
    "module": window_join.seam,
    "previous": previous_seam,
    "two_or_more": two_or_more,
    "disagree_0": max_disagree(0),
    "disagree_1": max_disagree(1),
    "disagree_4": max_disagree(4),
    "keep_both": keep_both,
}


def oracle(ref: str, left: str, right: str, max_tokens: int) -> int:
    """The fewest errors of any join that keeps a prefix of left's tokens and a suffix of right's (cut within
    `max_tokens` + 2 of the edges: farther cuts only lose more)."""
    a, b = UNIT.findall(left), UNIT.findall(right)
    cjk = uses_characters(ref)
    best = None
    for i in range(max(0, len(a) - max_tokens - 2), len(a) + 1):
        for j in range(min(len(b), max_tokens + 2) + 1):
            s = score_utterance(ref, ("" if cjk else " ").join(a[:i] + b[j:]))
            n = s.substitutions + s.deletions + s.insertions
            best = n if best is None else min(best, n)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--overlap", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--oracle", action="store_true", help="add the oracle column (minutes: every cut is scored)")
    args = ap.parse_args(argv)
    names = args.rules + (["oracle"] if args.oracle else [])
    print(f"join WER % (errors per seam), {args.trials} seams a case")
    print("| overlap s | text | cut | edge errors | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    totals = {n: [0, 0] for n in names}
    cases = [(o, k, c, e) for o in args.overlap for k in RATES for c in ("boundary", "inword") for e in ERRORS]
    for overlap, kind, cut, errors in cases:
        rng = np.random.default_rng([args.seed, list(RATES).index(kind), cut == "inword", ERRORS.index(errors)])
        seams = [simulate(kind, cut, errors, overlap, rng) for _ in range(args.trials)]
        counts = {n: [0, 0] for n in names}
        for ref, left, right in seams:
            rate = CHARS_PER_SECOND if uses_characters(right) else TOKENS_PER_SECOND
            max_tokens = math.ceil(rate * overlap) + 1
            for n in args.rules:
                c = RULES[n](left, right, max_tokens)
                s = score_utterance(ref, _glue(left, right) if c is None else _glue(left[: c[0]], right[c[1] :]))
                counts[n][0] += s.substitutions + s.deletions + s.insertions
                counts[n][1] += s.ref_len
            if "oracle" in counts:
                counts["oracle"][0] += oracle(ref, left, right, max_tokens)
                counts["oracle"][1] += score_utterance(ref, ref).ref_len
        cells = []
        for n in names:
            e, r = counts[n]
            totals[n][0] += e
            totals[n][1] += r
            cells.append(f"{100 * e / r:.2f} ({e / args.trials:.2f})")
        print(f"| {overlap:g} | {kind} | {cut} | {errors} | " + " | ".join(cells) + " |")
    cells = [f"{100 * e / r:.2f} ({e / (args.trials * len(cases)):.2f})" for e, r in totals.values()]
    print("| all | | | | " + " | ".join(cells) + " |")
    print_commit()


if __name__ == "__main__":
    main()
