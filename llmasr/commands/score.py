"""`llmasr score REF HYP [HYP ...]`: score hypotheses against references by key, as `llmasr decode` scores its own,
and compare systems on the same utterances (each against the first)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmasr.atomic_file import write_atomic
from llmasr.command_run import command
from llmasr.config_paths import output_file_problem
from llmasr.data.hotwords import read_phrase_file
from llmasr.scoring import collector_paused
from llmasr.scoring_inputs import EXAMPLES, MISSING, pair, read_hypotheses, read_references
from llmasr.scoring_report import SystemScore, compare
from llmasr.text_units import METRICS
from llmasr.written_by import KEY, written_by


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmasr score",
        description="Score hypotheses against references, matched by key, with llmasr decode's normalisation, units "
        "and bootstrap intervals; given several systems, compare each with the first on the same utterances.",
    )
    p.add_argument("ref", help="references: a manifest (its `target`; `lang` groups the rates), a decode folder (its "
                   "results.jsonl's `ref`) or a 'key text' file (Kaldi's text)")  # fmt: skip
    p.add_argument("hyps", nargs="+", metavar="hyp", help="hypotheses of each system: a decode folder or its "
                   "results.jsonl, a 'key text' file (hyp.txt, FunASR's 1best_recog/text) or a jsonl of key and text "
                   "lines; the first is the baseline the others are compared with")  # fmt: skip
    p.add_argument("--metric", choices=METRICS, default="auto",
                   help="scoring units, as decode.metric: auto (words, or characters for Chinese/Japanese/Thai "
                   "lines), wer, cer (default: auto)")  # fmt: skip
    p.add_argument("--missing", choices=MISSING, default="refuse",
                   help="a reference key with no hypothesis: refuse (default), empty (scored as all deleted), skip "
                   "(every system scored on the keys all of them have)")  # fmt: skip
    p.add_argument(
        "--show",
        type=int,
        default=5,
        metavar="N",
        help="utterances listed that each compared system made most worse and most better (default 5)",
    )
    p.add_argument("--hotwords", metavar="FILE", help="a biasing list (one phrase a line) for every reference "
                   "without its own `hotwords`: B-/U- rates and hotword recall, as llmasr decode --hotwords scores "
                   "them")  # fmt: skip
    p.add_argument(
        "--errors",
        type=int,
        default=10,
        metavar="N",
        help="each system's N most frequent substitutions, deletions and insertions (default 10; 0: none)",
    )
    p.add_argument("--names", metavar="A,B,...", help="a short name for each system, in order (default: A, B, C, ...)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    return p


@command("llmasr score")
def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    for flag, value in (("--show", args.show), ("--errors", args.errors)):
        if value < 0:
            p.error(f"{flag}: a count, not {value}")
    if args.json and (unwritable := output_file_problem(Path(args.json), [Path(args.ref), *map(Path, args.hyps)])):
        p.error(f"--json {args.json}: {unwritable}")
    if len(set(args.hyps)) != len(args.hyps):
        p.error("a hypothesis given twice: each system once")
    names = [n.strip() for n in args.names.split(",")] if args.names else [_letter(i) for i in range(len(args.hyps))]
    if len(names) != len(args.hyps) or len(set(names)) != len(names) or not all(names):
        p.error(f"--names {args.names}: one name for each of the {len(args.hyps)} systems, each its own")
    with collector_paused():  # what it reads and scores lives to the end and holds no cycle
        return _score(args, names)


def _score(args: argparse.Namespace, names: list[str]) -> int:
    refs, unscored = read_references(args.ref, read_phrase_file(args.hotwords) if args.hotwords else None)
    hyps = {name: read_hypotheses(name) for name in args.hyps}
    kept, texts, left = pair(refs, hyps, args.missing, tuple(key for key, _ in unscored))
    unscored = [where for _, where in unscored]
    systems = [
        SystemScore(name, path, [{"key": r.key, "ref": r.text, "hyp": hyp, "lang": r.lang, "lang_label": r.lang_label,
                                  "hotwords": r.hotwords} for r, hyp in zip(kept, texts[path])], args.metric)
        for name, path in zip(names, args.hyps)
    ]  # fmt: skip
    text = [f"references: {args.ref}: {len(refs)} with a transcript" + _unscored(unscored)]
    text += [f"{system.name}: {system.path}" for system in systems]
    text += _left_lines(left, len(refs))
    summary = {"ref": args.ref, "systems": [], "comparisons": [], **left, "unscored": unscored}
    for system in systems:
        lines, fields = system.report(args.errors)
        text += lines
        summary["systems"].append(fields)
    for other in systems[1:]:
        lines, fields = compare(systems[0], other, args.show)
        text += lines
        summary["comparisons"].append(fields)
    print("\n".join(text))
    if args.json:
        summary[KEY] = written_by()
        write_atomic(Path(args.json), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return 0


def _unscored(places: list[str]) -> str:
    if not places:
        return ""
    return f"; {len(places)} line(s) without one, not scored (first {places[0]})"


def _left_lines(left: dict, total: int) -> list[str]:
    """What pairing by key left out: keys scored as all deleted, keys skipped, hypotheses of no reference."""
    out = []
    for name, keys in left["missing"].items():
        if keys:
            out.append(f"warning: {name}: {len(keys)} of {total} reference keys have no hypothesis, scored as all "
                       f"deleted (--missing empty): {_keys(keys)}")  # fmt: skip
    if left["skipped"]:
        out.append(f"warning: {len(left['skipped'])} of {total} reference keys lack a hypothesis in some system, "
                   f"left out of every system's score (--missing skip): {_keys(left['skipped'])}")  # fmt: skip
    for name, keys in left["extra"].items():
        if keys:
            out.append(f"note: {name}: {len(keys)} hypotheses of keys no reference has, not scored: {_keys(keys)}")
    return out


def _letter(i: int) -> str:
    """A, B, ... Z, then S27, S28, ..."""
    return chr(ord("A") + i) if i < 26 else f"S{i + 1}"


def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:EXAMPLES]) + (", ..." if len(keys) > EXAMPLES else "")


if __name__ == "__main__":
    raise SystemExit(main())
