"""Pseudo-labels from a decode: the manifest lines whose transcripts the LLM wrote whole and was sure of, as a FunASR
jsonl training manifest with the LLM's text as each line's target (noisy-student training on untranscribed audio).

A line is taken from the decoded manifest by results.jsonl's `line` (llmasr.export.pseudo_label_inputs), so its
audio, span, channel, language, task prompt and biasing list are the ones decoded (a line without its own `prompt`
or `lang` gets the decode's --task or --language, so that training asks it as the decode did). A long recording
decoded in windows gives a training line a window (its span, its own text; keyed as Kaldi keys segments, by its
start and end in the recording, in centiseconds): written whole it would be too long to train on, and one unsure
window would cost the rest. Left out, each counted by its reason: what a gate found no speech in, an empty
transcript, one a guard cut (the length cap, the repetition stop: a cut text is a wrong label), one holding control
or invisible format characters (an LLM's byte token writes them; training's transcript check names the same ones),
and with a threshold on decode.confidence's `avg_logprob` the utterances or windows below it. With references (a
labelled dev set decoded the same way) the report gives the error rate of the lines kept against all of them: what
the threshold buys.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from llmasr.atomic_file import manifest_writer
from llmasr.config_paths import output_file_problem
from llmasr.data.manifest import Manifest
from llmasr.data.records import language_of, missing_hint, task_of
from llmasr.data.transcript_text import has_invisible
from llmasr.export.decode_folders import read_summary
from llmasr.export.pseudo_label_inputs import (
    BAD,
    RESULTS,
    PseudoLabelError,
    bad_lines,
    decoded_end,
    decoded_manifest,
    line_of,
    read_results,
)
from llmasr.scoring import plural, score_corpus

__all__ = ["RESULTS", "LabelFilter", "PseudoLabelError", "PseudoLabels", "pseudo_labels"]

REASONS = {
    "no_speech": "no speech (a gate)",
    "empty": "empty transcript",
    "truncated": "cut by a guard (length cap, repetition stop)",
    "invisible": "invisible or control characters (training's transcript check warns of them)",
    "low_confidence": "avg_logprob below the threshold",
}

# the decode's flag (its wer.json key) -> the line field it stood for where a line gave none of its own
FIELDS = {"task": "prompt", "language": "lang"}


@dataclass(frozen=True)
class LabelFilter:
    """Which decoded lines, or windows of a long recording, become training lines. `min_avg_logprob`: their
    avg_logprob (decode --confidence) must reach it; None takes every transcript written whole."""

    min_avg_logprob: float | None = None
    keep_truncated: bool = False

    def reason(self, row: dict) -> str | None:
        """Why results.jsonl's `row` (or a window of one, as _pieces reads it) is left out, or None."""
        if row.get("no_speech"):
            return "no_speech"
        if not str(row.get("hyp") or "").strip():
            return "empty"
        if row.get("truncated") and not self.keep_truncated:
            return "truncated"
        if has_invisible(str(row["hyp"])):  # an LLM's byte token (U+0013): training would learn to write it
            return "invisible"
        if self.min_avg_logprob is None:
            return None
        avg = row.get("avg_logprob")
        return "low_confidence" if avg is None or avg < self.min_avg_logprob else None


@dataclass
class PseudoLabels:
    """What pseudo_labels wrote: training lines kept of those offered (a decoded line each, a window each of one
    decoded in windows), seconds kept, lines left out by reason, and with references the error rates of the
    decoded lines kept whole and of all."""

    output: Path
    decoded: int = 0
    offered: int = 0
    kept: int = 0
    seconds: float = 0.0
    left_out: Counter = field(default_factory=Counter)
    rate_kept: str | None = None
    rate_all: str | None = None
    not_decoded: int = 0  # manifest lines bad.jsonl lists (with no bad.jsonl: every line not in results.jsonl)
    # manifest lines in neither results.jsonl nor bad.jsonl (added since the decode, or rows taken out of
    # results.jsonl), and the first of them as manifest:line
    undecoded: int = 0
    first_undecoded: str | None = None
    windowed: int = 0  # decoded lines decoded in windows (long recordings), a training line a window
    windows: int = 0  # their windows
    cut_in_speech: int = 0  # kept windows a neighbour overlaps (cut without a pause)
    part_kept: int = 0  # scored lines decoded in windows of which some windows were left out
    hotwords_file: str | None = None  # the decode's --hotwords FILE, the list of lines without their own
    file_listed: int = 0  # kept training lines decoded with it, which do not carry it
    # the decode's --task / --language (wer.json), written as the `prompt` / `lang` of kept lines without their own,
    # so that training asks each line as the decode did
    asked: dict = field(default_factory=dict)
    asked_lines: int = 0  # kept training lines given one of them
    collapsed: int = 0  # kept transcripts whose whitespace (newlines, tabs, spaces in a row) became one space

    def report(self, filt: LabelFilter) -> str:
        offered = plural(self.offered, "line" if self.windowed else "decoded line")
        lines = [
            f"pseudo-labels: {self.kept} of {offered} kept ({self.seconds / 3600:.2f} h) in {self.output}"
            + ("" if filt.min_avg_logprob is None else f", avg_logprob >= {filt.min_avg_logprob:g}")
        ]
        if self.windowed:
            one = self.windowed == 1
            lines.append(
                f"  {plural(self.windowed, 'long recording')} of the {plural(self.decoded, 'decoded line')} "
                f"{'was' if one else 'were'} decoded in windows: a line a window ({self.windows} windows), keyed "
                "KEY-START-END (centiseconds)"
            )
        if self.cut_in_speech:
            lines.append(
                f"  note: {plural(self.cut_in_speech, 'kept window')} {'was' if self.cut_in_speech == 1 else 'were'} "
                "cut without a pause (they overlap a neighbour): a word at that edge may be heard in part; decode "
                "with --vad, or decode.window_split_pause, for windows cut at pauses"
            )
        lines += [f"  left out, {REASONS[k]}: {n}" for k, n in self.left_out.most_common()]
        if self.collapsed:
            lines.append(
                f"  {plural(self.collapsed, 'kept transcript')} written with the whitespace the LLM wrote (newlines, "
                "tabs, spaces in a row) as one space between words, as scoring reads it"
            )
        if self.not_decoded:
            lines.append(f"  manifest lines not in {RESULTS} (bad at decoding, see {BAD}): {self.not_decoded}")
        if self.undecoded:
            lines.append(
                f"  manifest lines in neither {RESULTS} nor {BAD}, not written: {self.undecoded} (first: "
                f"{self.first_undecoded}): lines added to the manifest since the decode (decode them), or rows taken "
                f"out of {RESULTS}"
            )
        if self.file_listed:
            one = self.file_listed == 1
            lines.append(
                f"  note: {plural(self.file_listed, 'kept line')} {'was' if one else 'were'} decoded with --hotwords "
                f"{self.hotwords_file}'s list (none of {'its' if one else 'their'} own), which the training lines do "
                "not carry: give it to training as a line's `hotwords`, or let data.hotwords draw lists"
            )
        if self.asked_lines:
            given = " and ".join(f"--{k} {v!r} as `{FIELDS[k]}`" for k, v in self.asked.items())
            own = "its own carries" if self.asked_lines == 1 else "their own carry"
            lines.append(f"  {plural(self.asked_lines, 'kept line')} without {own} the decode's {given}")
        if self.rate_all is not None:
            part = (
                f" ({plural(self.part_kept, 'recording')} kept in part, in neither: a window has no reference of its "
                "own)"
                if self.part_kept
                else ""
            )
            lines.append(f"  against the references: kept {self.rate_kept}; all decoded {self.rate_all}{part}")
        return "\n".join(lines)


def pseudo_labels(decoded: Path, output: Path, filt: LabelFilter, manifest: Path | None = None) -> PseudoLabels:
    """Write `output` from the decode folder `decoded` (its results.jsonl, and its wer.json's manifest unless
    `manifest` is given) and return what was written. An `output` that is a folder, cannot be made, or is one of
    the inputs is refused before any work."""
    rows, summary = read_results(decoded), read_summary(decoded)
    if filt.min_avg_logprob is not None and rows and "avg_logprob" not in rows[0]:
        why = (
            "the CTC branch's transcripts have none (the LLM's, in the folder above, do): leave out "
            "--min-avg-logprob, or give that folder"
            if summary.get("branch") == "ctc"
            else "decode with --confidence (decode.confidence: true) to set --min-avg-logprob"
        )
        raise PseudoLabelError(f"{decoded / RESULTS}: no avg_logprob: {why}")
    source = manifest or decoded_manifest(decoded, summary)
    if unwritable := output_file_problem(output, [decoded / RESULTS, source]):  # the manifest wer.json names too
        raise PseudoLabelError(f"--output {output}: {unwritable}")
    lines = Manifest.open(source, need_target=False)
    got = PseudoLabels(output=output, decoded=len(rows))
    _count_undecoded(got, lines, rows, bad_lines(decoded))
    # a list the decode only scored against (--hotwords-unprompted) biased no transcript: nothing to carry
    got.hotwords_file = None if summary.get("hotwords_unprompted") else summary.get("hotwords_file")
    got.asked = {k: summary[k] for k in FIELDS if summary.get(k)}
    written, scored, whole, missing, keys = [], [], [], [], {}
    for n, row in enumerate(rows, start=1):
        where = f"{decoded / RESULTS}:{n}"
        utt = line_of(lines, row, where)
        end = decoded_end(utt, row, where)
        pieces = _pieces(row)
        got.offered += len(pieces)
        if len(pieces) > 1:
            got.windowed, got.windows = got.windowed + 1, got.windows + len(pieces)
        kept = []
        for piece in pieces:
            if why := filt.reason(piece):
                got.left_out[why] += 1
            else:
                kept.append(piece)
        if row.get("ref") is not None:
            scored.append(row)
            if len(kept) == len(pieces):
                whole.append(row)
            got.part_kept += 0 < len(kept) < len(pieces)
        if kept and not os.path.isfile(utt.source):  # read by the decode, not from here: a training line of no audio
            missing.append(utt)
        for piece in kept:
            line = _training_line(utt, piece, end, got.asked)
            if line["key"] in keys:  # a window's KEY-START-END that a decoded line of its own is keyed
                raise PseudoLabelError(
                    f"{where}: training line key {line['key']!r} is {keys[line['key']]}'s as well: rename one of "
                    "them in the manifest (a window of a long recording is keyed KEY-START-END, in centiseconds)"
                )
            keys[line["key"]] = where
            got.collapsed += line["target"] != piece["hyp"]
            written.append(json.dumps(line, ensure_ascii=False) + "\n")
            got.seconds += line["duration"]
            got.cut_in_speech += bool(piece.get("cut_in_speech"))
        got.kept += len(kept)
        if kept:
            # training lines, as `kept` counts them: a window each of a long recording
            got.file_listed += len(kept) * (bool(got.hotwords_file) and utt.hotwords is None)
            got.asked_lines += len(kept) * any(not _own(utt, FIELDS[k]) for k in got.asked)
    if scored:
        got.rate_all = _rate(scored)
        got.rate_kept = _rate(whole) or "no line with a reference"
    if missing:
        raise PseudoLabelError(_missing_audio(missing))
    if not got.kept:  # an empty manifest is refused by every tool that reads one: said here, with why
        raise PseudoLabelError(f"no line kept, nothing written:\n{got.report(filt)}")
    output.parent.mkdir(parents=True, exist_ok=True)  # a new folder, as output_file_problem allowed
    with manifest_writer(output) as f:
        f.write("".join(written).encode("utf-8"))
    return got


def _count_undecoded(got: PseudoLabels, lines: Manifest, rows: list[dict], bad: set[int] | None) -> None:
    """Count the manifest's lines that results.jsonl lacks: those bad.jsonl lists, and apart from them those it does
    not (a line added since the decode had been called bad at decoding)."""
    if bad is None:  # no bad.jsonl: nothing tells the two apart
        got.not_decoded = max(len(lines) - len(rows), 0)
        return
    decoded = {row["line"] for row in rows}
    numbers = [lines.lineno(i) for i in range(len(lines))]
    got.not_decoded = sum(n in bad and n not in decoded for n in numbers)
    undecoded = [n for n in numbers if n not in decoded and n not in bad]
    got.undecoded = len(undecoded)
    got.first_undecoded = f"{lines.path}:{undecoded[0]}" if undecoded else None


def _missing_audio(missing: list) -> str:
    first, more = missing[0], len(missing) - 1
    hint = missing_hint(first.source, first.manifest)
    return (
        f"{first.manifest}:{first.line} (key {first.key!r}): audio {first.source} is not there{hint}"
        + (f", nor that of {plural(more, 'more line')} kept" if more else "")
        + ": a lhotse cut's relative path is read from the working directory (run from the one the decode ran "
        "in), a manifest's from its folder (give the decoded manifest itself with --manifest); nothing written"
    )


def _pieces(row: dict) -> list[dict]:
    """The training lines results.jsonl's `row` offers, as LabelFilter reads them: the row itself, or for a long
    recording decoded in windows each window ({hyp, truncated, no_speech, avg_logprob}, and its `window` span in the
    decoded line's audio, and whether it was cut inside speech)."""
    texts = row.get("window_texts")
    if not texts:
        return [row]
    sure = row.get("window_confidence") or [{}] * len(texts)
    gated = bool(row.get("no_speech"))
    return [
        {"hyp": w["hyp"], "truncated": w.get("truncated"), "no_speech": gated or bool(w.get("ctc_gated")),
         "avg_logprob": c.get("avg_logprob"), "window": (w["start"], w["end"]), "cut_in_speech": w.get("cut_in_speech")}
        for w, c in zip(texts, sure)
    ]  # fmt: skip


def _training_line(utt, piece: dict, end: float | None, asked: dict) -> dict:
    """A FunASR jsonl line: the decoded line's audio (`end`: its span's, as decoded_end) and fields, the LLM's
    text as its target (its whitespace one space between words); for a window (_pieces) the window's span of it,
    keyed by its start and end. `asked`: the decode's {"task", "language"} given, the `prompt` / `lang` of a line
    without its own."""
    # one space between words: training would teach the LLM to write the newlines and runs of spaces it wrote
    line = {"key": utt.key, "source": str(Path(utt.source).resolve()), "target": " ".join(piece["hyp"].split())}
    if piece.get("window") is None:
        line["duration"] = round(float(piece["duration"]), 4)
        if utt.start:
            line["start"] = utt.start
        if end is not None:
            line["end"] = end
    else:
        start, stop = piece["window"]
        offset = float(utt.start or 0.0)
        line.update(duration=round(stop - start, 4), start=round(offset + start, 4), end=round(offset + stop, 4))
        # the span the line states, in its recording (as Kaldi keys segments), also for a window of a segment's line
        line["key"] = f"{utt.key}-{round(line['start'] * 100):07d}-{round(line['end'] * 100):07d}"
    for name in ("channel", "lang", "prompt", "hotwords", "system"):
        if getattr(utt, name) is not None:
            line[name] = getattr(utt, name)
    for flag, name in FIELDS.items():
        if flag in asked and not _own(utt, name):
            line[name] = asked[flag]
    return line


def _own(utt, name: str) -> bool:
    """Whether the line gives its own `prompt` / `lang`, as decoding read it (a blank prompt is none)."""
    return (task_of(utt) if name == "prompt" else language_of(utt)) is not None


def _rate(rows: list[dict]) -> str | None:
    """The error rate of `rows` in the unit the decode scored them in (results.jsonl's `unit`: all words, all
    characters, or both as --metric auto counts a mixed set); None for no rows."""
    if not rows:
        return None
    units = {r.get("unit") for r in rows}
    metric = "wer" if units == {"word"} else "cer" if units == {"char"} else "auto"
    corpus, _ = score_corpus([(r["ref"], r["hyp"]) for r in rows], metric)
    return f"{corpus.name} {100 * corpus.rate:.2f}% over {plural(len(rows), 'line')}"
