"""Pseudo-labels from a decode: the manifest lines whose transcripts the LLM wrote whole and was sure of, as a FunASR
jsonl training manifest with the LLM's text as each line's target (noisy-student training on untranscribed audio).

A line is taken from the decoded manifest by results.jsonl's `line`, so its audio, span, channel, language, task
prompt and biasing list are the ones decoded; its key, and its span's length, must be the ones decoded there, and
its audio where this run reads it (a line of no audio would only be found by training). Left out, each counted by its
reason: what a gate found no speech in, an empty transcript, one a guard cut (the length cap, the repetition stop: a
cut text is a wrong label), and with a threshold on decode.confidence's `avg_logprob` the utterances, or the windows
of a long recording, below it. With references (a labelled dev set decoded the same way) the report gives the error
rate of the lines kept against all of them: what the threshold buys.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from llmasr.atomic_file import manifest_writer
from llmasr.config_paths import output_file_problem
from llmasr.data.audio import MAX_OVERSHOOT_S, AudioError, probe_duration
from llmasr.data.manifest import Manifest
from llmasr.data.records import DURATION_SLACK_S, BadRecord, _is_number, durations_disagree, missing_hint
from llmasr.export.decode_folders import earlier_folders
from llmasr.scoring import plural, score_corpus

RESULTS, SUMMARY = "results.jsonl", "wer.json"
REASONS = {
    "no_speech": "no speech (a gate)",
    "empty": "empty transcript",
    "truncated": "cut by a guard (length cap, repetition stop)",
    "low_confidence": "avg_logprob below the threshold",
    "low_confidence_window": "a window's avg_logprob below the threshold",
}


class PseudoLabelError(ValueError):
    """A decode folder, manifest or threshold that cannot give pseudo-labels."""


@dataclass(frozen=True)
class LabelFilter:
    """Which decoded lines become training lines. `min_avg_logprob`: the utterance's and, decoded in windows, each
    window's avg_logprob (decode --confidence) must reach it; None takes every transcript written whole."""

    min_avg_logprob: float | None = None
    keep_truncated: bool = False

    def reason(self, row: dict) -> str | None:
        """Why results.jsonl's `row` is left out, or None."""
        if row.get("no_speech"):
            return "no_speech"
        if not str(row.get("hyp") or "").strip():
            return "empty"
        if row.get("truncated") and not self.keep_truncated:
            return "truncated"
        if self.min_avg_logprob is None:
            return None
        avg = row.get("avg_logprob")
        if avg is None or avg < self.min_avg_logprob:
            return "low_confidence"
        windows = [w["avg_logprob"] for w in row.get("window_confidence") or ()]
        if any(w is not None and w < self.min_avg_logprob for w in windows):
            return "low_confidence_window"
        return None


@dataclass
class PseudoLabels:
    """What pseudo_labels wrote: lines kept of the rows decoded, seconds kept, rows left out by reason, and with
    references the error rates of the kept rows and of all."""

    output: Path
    decoded: int = 0
    kept: int = 0
    seconds: float = 0.0
    left_out: Counter = field(default_factory=Counter)
    rate_kept: str | None = None
    rate_all: str | None = None
    not_decoded: int = 0
    own_system: int = 0  # kept ChatML lines whose own system message a FunASR jsonl line has no field for
    windowed: int = 0  # kept lines decoded in windows: long recordings, one target each
    hotwords_file: str | None = None  # the decode's --hotwords FILE, the list of lines without their own
    file_listed: int = 0  # kept lines decoded with it, which their training lines do not carry

    def report(self, filt: LabelFilter) -> str:
        lines = [
            f"pseudo-labels: {self.kept} of {plural(self.decoded, 'decoded line')} kept ({self.seconds / 3600:.2f} h) "
            f"in {self.output}" + ("" if filt.min_avg_logprob is None else f", avg_logprob >= {filt.min_avg_logprob:g}")
        ]
        lines += [f"  left out, {REASONS[k]}: {n}" for k, n in self.left_out.most_common()]
        if self.not_decoded:
            lines.append(f"  manifest lines not in {RESULTS} (bad at decoding, see bad.jsonl): {self.not_decoded}")
        if self.windowed:
            lines.append(
                f"  note: {plural(self.windowed, 'kept line')} {'was' if self.windowed == 1 else 'were'} decoded in "
                "windows (long recordings), each written whole with one target: training skips a line past "
                "data.batching.max_duration or longer than one batch may hold (max_seconds, max_frames; `llmasr "
                "data check --recipe` counts them)"
            )
        if self.file_listed:
            one = self.file_listed == 1
            lines.append(
                f"  note: {plural(self.file_listed, 'kept line')} {'was' if one else 'were'} decoded with --hotwords "
                f"{self.hotwords_file}'s list (none of {'its' if one else 'their'} own), which the training lines do "
                "not carry: give it to training as a line's `hotwords`, or let data.hotwords draw lists"
            )
        if self.own_system:
            lines.append(
                f"  note: {plural(self.own_system, 'line')} had a system message of its own (ChatML), not "
                "carried: FunASR jsonl has no field for it, so training renders model.prompt.system"
            )
        if self.rate_all is not None:
            lines.append(f"  against the references: kept {self.rate_kept}; all decoded {self.rate_all}")
        return "\n".join(lines)


def pseudo_labels(decoded: Path, output: Path, filt: LabelFilter, manifest: Path | None = None) -> PseudoLabels:
    """Write `output` from the decode folder `decoded` (its results.jsonl, and its wer.json's manifest unless
    `manifest` is given) and return what was written. An `output` that is a folder, cannot be made, or is one of
    the inputs is refused before any work."""
    rows, summary = _results(decoded), _summary(decoded)
    if filt.min_avg_logprob is not None and rows and "avg_logprob" not in rows[0]:
        why = (
            "the CTC branch's transcripts have none (the LLM's, in the folder above, do): leave out "
            "--min-avg-logprob, or give that folder"
            if summary.get("branch") == "ctc"
            else "decode with --confidence (decode.confidence: true) to set --min-avg-logprob"
        )
        raise PseudoLabelError(f"{decoded / RESULTS}: no avg_logprob: {why}")
    source = manifest or _decoded_manifest(decoded, summary)
    if unwritable := output_file_problem(output, [decoded / RESULTS, source]):  # the manifest wer.json names too
        raise PseudoLabelError(f"--output {output}: {unwritable}")
    lines = Manifest.open(source, need_target=False)
    got = PseudoLabels(output=output, decoded=len(rows), not_decoded=max(len(lines) - len(rows), 0))
    got.hotwords_file = summary.get("hotwords_file")
    written, scored, kept, missing = [], [], [], []
    for n, row in enumerate(rows, start=1):
        utt = _line_of(lines, row, f"{decoded / RESULTS}:{n}")
        end = _decoded_end(utt, row, f"{decoded / RESULTS}:{n}")
        if row.get("ref") is not None:
            scored.append(row)
        if why := filt.reason(row):
            got.left_out[why] += 1
            continue
        kept.append(row)
        if not os.path.isfile(utt.source):  # read by the decode, but not from here: a training line of no audio
            missing.append(utt)
        written.append(json.dumps(_training_line(utt, row, end), ensure_ascii=False) + "\n")
        got.own_system += getattr(utt, "system", None) is not None
        got.windowed += int(row.get("windows", 1)) > 1
        got.file_listed += bool(got.hotwords_file) and utt.hotwords is None
        got.seconds += float(row["duration"])
    got.kept = len(kept)
    if scored:
        got.rate_all = _rate(scored)
        got.rate_kept = _rate([r for r in kept if r.get("ref") is not None]) or "no line with a reference"
    if missing:
        raise PseudoLabelError(_missing_audio(missing))
    if not kept:  # an empty manifest is refused by every tool that reads one: said here, with why
        raise PseudoLabelError(f"no line kept, nothing written:\n{got.report(filt)}")
    output.parent.mkdir(parents=True, exist_ok=True)  # a new folder, as output_file_problem allowed
    with manifest_writer(output) as f:
        f.write("".join(written).encode("utf-8"))
    return got


def _missing_audio(missing: list) -> str:
    first, more = missing[0], len(missing) - 1
    return (
        f"{first.manifest}:{first.line} (key {first.key!r}): audio {first.source} is not there{missing_hint(first)}"
        + (f", nor that of {plural(more, 'more line')} kept" if more else "")
        + ": a lhotse cut's relative path is read from the working directory (run from the one the decode ran "
        "in), a manifest's from its folder (give the decoded manifest itself with --manifest); nothing written"
    )


def _results(decoded: Path) -> list[dict]:
    path = decoded / RESULTS
    if not path.is_file() and (folders := [f for f in earlier_folders(decoded) if (f / RESULTS).is_file()]):
        raise PseudoLabelError(
            f"{decoded}: a decode of several manifests, with the {RESULTS} of each in a folder of its own: give one "
            f"of {', '.join(map(str, folders))}"
        )
    if not path.is_file():
        raise PseudoLabelError(f"{decoded}: no {RESULTS}: not the output folder of `llmasr decode`")
    rows, first = [], {}
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            try:
                row = json.loads(text)
            except ValueError as err:
                raise PseudoLabelError(f"{path}:{n}: not JSON ({err})") from None
            if isinstance(row, dict) and "line" not in row:
                raise PseudoLabelError(
                    f"{path}:{n}: no `line` (a decode by an older llmasr): decode again to take lines back to the "
                    "manifest"
                )
            if problem := _row_problem(row):  # an edited or foreign file: named here, not a bare error mid-way
                raise PseudoLabelError(f"{path}:{n}: {problem}")
            if (seen := first.setdefault(row["line"], n)) != n:  # one decode writes a line once: a file of two
                raise PseudoLabelError(
                    f"{path}:{n}: manifest line {row['line']} (key {row['key']!r}) again, first at line {seen}: the "
                    "rows of two decodes in one file would write its training line twice"
                )
            rows.append(row)
    return rows


def _row_problem(row) -> str | None:
    """What a results.jsonl row lacks that pseudo-labels read, or None."""
    if not isinstance(row, dict):
        return f"not a row of `llmasr decode` (a JSON object), got {type(row).__name__}"
    wrong = [
        (name, want)
        for name, want, ok in (
            ("line", "a line number", isinstance(row["line"], int) and not isinstance(row["line"], bool)),
            ("key", "a non-empty string", isinstance(row.get("key"), str) and row["key"] != ""),
            ("hyp", "a string or null", row.get("hyp") is None or isinstance(row["hyp"], str)),
            ("duration", "a number of seconds", _is_number(row.get("duration"))),
            ("avg_logprob", "a number or null", row.get("avg_logprob") is None or _is_number(row["avg_logprob"])),
            ("windows", "a count of windows", "windows" not in row or _is_number(row["windows"])),
        )
        if not ok
    ]
    windows = row.get("window_confidence")
    if windows is not None and not (
        isinstance(windows, list)
        and all(
            isinstance(w, dict) and "avg_logprob" in w and (w["avg_logprob"] is None or _is_number(w["avg_logprob"]))
            for w in windows
        )
    ):
        wrong.append(("window_confidence", "a list of {start, end, avg_logprob}"))
    if not wrong:
        return None
    name, want = wrong[0]
    return f"field '{name}' must be {want}, got {row.get(name)!r:.60}"


def _summary(decoded: Path) -> dict:
    """The decode folder's wer.json, {} where there is none or it is no JSON object."""
    try:
        summary = json.loads((decoded / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _decoded_manifest(decoded: Path, summary: dict) -> Path:
    """The manifest the decode folder's wer.json (`summary`) names (an older decode wrote it as given, relative to
    the folder the decode ran in), which must still be there."""
    path = decoded / SUMMARY
    named = summary.get("manifest")
    if not isinstance(named, str) or not named:
        raise PseudoLabelError(f"{path}: no manifest named there: give the decoded manifest with --manifest")
    if not Path(named).is_file():
        raise PseudoLabelError(
            f"{path}: the decoded manifest it names, {named}, is not there (moved, or a relative path from another "
            "working directory): give it with --manifest"
        )
    return Path(named)


def _line_of(lines: Manifest, row: dict, where: str):
    """The manifest line results.jsonl's `row` was decoded from, checked to be it."""
    i = lines.index_of_line(int(row["line"]))
    try:
        utt = None if i is None else lines[i]
    except BadRecord as bad:  # a line that no longer parses
        utt = bad
    if isinstance(utt, BadRecord) or getattr(utt, "key", None) != row["key"]:
        held = "no record" if utt is None else "a bad line" if isinstance(utt, BadRecord) else f"key {utt.key!r}"
        raise PseudoLabelError(
            f"{where}: key {row['key']!r} was decoded from line {row['line']} of {lines.path}, which now holds "
            f"{held}: the manifest changed since the decode, or another was named (--manifest)"
        )
    return utt


def _decoded_end(utt, row: dict, where: str) -> float | None:
    """Where the audio decoded from a span line ends: its `end`, or the file's end where the span ran past it (the
    loader trims up to audio.MAX_OVERSHOOT_S; written as stated, the line's `duration` would contradict its span).
    A span that is not the audio decoded is a manifest changed since the decode. None: the line has no span."""
    seconds = float(row["duration"])
    if utt.end is None or not durations_disagree(utt.end - utt.start, seconds):
        return utt.end
    if 0 < utt.end - utt.start - seconds <= MAX_OVERSHOOT_S + DURATION_SLACK_S:
        try:
            if not durations_disagree(probe_duration(utt.source, utt.channel), utt.start + seconds):
                return round(utt.start + seconds, 4)
        except AudioError:  # not there: refused with the other lines whose audio is missing
            return utt.end
    raise PseudoLabelError(
        f"{where}: key {row['key']!r} (line {row['line']} of {utt.manifest}) now spans {utt.start:g}-{utt.end:g} s "
        f"({utt.end - utt.start:g} s), where the decode read {seconds:g} s of audio: the manifest changed since the "
        "decode (decode it again)"
    )


def _training_line(utt, row: dict, end: float | None) -> dict:
    """A FunASR jsonl line: the decoded line's audio (`end`: its span's, as _decoded_end) and fields, the LLM's
    text as its target."""
    line = {"key": utt.key, "source": str(Path(utt.source).resolve()), "target": row["hyp"]}
    line["duration"] = round(float(row["duration"]), 4)
    if utt.start:
        line["start"] = utt.start
    if end is not None:
        line["end"] = end
    for name in ("channel", "lang", "prompt", "hotwords"):
        if getattr(utt, name) is not None:
            line[name] = getattr(utt, name)
    return line


def _rate(rows: list[dict]) -> str | None:
    """The error rate of `rows` in the unit the decode scored them in (results.jsonl's `unit`: all words, all
    characters, or both as --metric auto counts a mixed set); None for no rows."""
    if not rows:
        return None
    units = {r.get("unit") for r in rows}
    metric = "wer" if units == {"word"} else "cer" if units == {"char"} else "auto"
    corpus, _ = score_corpus([(r["ref"], r["hyp"]) for r in rows], metric)
    return f"{corpus.name} {100 * corpus.rate:.2f}% over {plural(len(rows), 'line')}"
