"""The decode folder pseudo-labels are made from (llmasr.export.pseudo_labels): results.jsonl's rows, each checked
to hold what is read of it, wer.json, and the decoded manifest's line of each row, checked to be the one decoded."""

from __future__ import annotations

from pathlib import Path

from llmasr.data.audio import MAX_OVERSHOOT_S, AudioError, probe_duration
from llmasr.data.manifest import Manifest
from llmasr.data.records import BadRecord, is_number
from llmasr.data.stated_duration import DURATION_SLACK_S, durations_disagree
from llmasr.export.decode_folders import RESULTS, SUMMARY, results_problem
from llmasr.text_files import json_lines

BAD = "bad.jsonl"


class PseudoLabelError(ValueError):
    """A decode folder, manifest or threshold that cannot give pseudo-labels."""


def read_results(decoded: Path) -> list[dict]:
    """The decode folder's results.jsonl rows, each checked (_row_problem), each manifest line once."""
    if why := results_problem(decoded):
        raise PseudoLabelError(f"{decoded}: {why}")
    path = decoded / RESULTS
    rows, first = [], {}
    for n, row in json_lines(path, PseudoLabelError):
        if isinstance(row, dict) and "line" not in row:
            raise PseudoLabelError(
                f"{path}:{n}: no `line` (a decode by an older llmasr): decode again to take lines back to the manifest"
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
            ("duration", "a number of seconds", is_number(row.get("duration"))),
            ("avg_logprob", "a number or null", row.get("avg_logprob") is None or is_number(row["avg_logprob"])),
            ("windows", "a count of windows", "windows" not in row or is_number(row["windows"])),
        )
        if not ok
    ]
    windows = row.get("window_confidence")
    if windows is not None and not (
        isinstance(windows, list)
        and all(
            isinstance(w, dict) and "avg_logprob" in w and (w["avg_logprob"] is None or is_number(w["avg_logprob"]))
            for w in windows
        )
    ):
        wrong.append(("window_confidence", "a list of {start, end, avg_logprob}"))
    texts = row.get("window_texts")
    if texts is not None and not (isinstance(texts, list) and texts and all(_window_text(w) for w in texts)):
        wrong.append(("window_texts", "a list of {start, end, hyp}"))
    elif texts is not None and isinstance(windows, list) and len(windows) != len(texts):
        wrong.append(("window_confidence", f"a list as long as window_texts ({len(texts)})"))
    if (
        not wrong
        and texts is None
        and is_number(row.get("windows"))
        and row["windows"] > 1
        and not row.get("no_speech")
    ):
        return (
            f"decoded in {row['windows']:g} windows, with no `window_texts` (a decode by an older llmasr): decode "
            "again for a training line a window"
        )
    if not wrong:
        return None
    name, want = wrong[0]
    return f"field '{name}' must be {want}, got {row.get(name)!r:.60}"


def bad_lines(decoded: Path) -> set[int] | None:
    """The manifest lines the decode folder's bad.jsonl lists (lines it could not decode); None where it has none."""
    path = decoded / BAD
    if not path.is_file():
        return None
    lines = set()
    for n, row in json_lines(path, PseudoLabelError):
        if not isinstance(row, dict) or not isinstance(row.get("line"), int):
            raise PseudoLabelError(f"{path}:{n}: not a row of `llmasr decode` (a JSON object with its `line`)")
        lines.add(row["line"])
    return lines


def decoded_manifest(decoded: Path, summary: dict) -> Path:
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


def line_of(lines: Manifest, row: dict, where: str):
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


def decoded_end(utt, row: dict, where: str) -> float | None:
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


def _window_text(w) -> bool:
    """Whether `w` is a window_texts entry pseudo-labels can read."""
    return (
        isinstance(w, dict)
        and all(is_number(w.get(k)) for k in ("start", "end"))
        and w["end"] > w["start"] >= 0
        and (w.get("hyp") is None or isinstance(w["hyp"], str))
    )
