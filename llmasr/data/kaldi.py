"""Kaldi data directory (wav.scp + text [+ segments]) -> FunASR-style jsonl, with every skipped key reported. Without
a text file the records have no target: audio for `llmasr decode` to transcribe (training refuses them)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path

from llmasr.atomic_file import manifest_writer
from llmasr.data.audio import missing_audio
from llmasr.data.piped_files import PipedFile, PipeRefused, read_as_file
from llmasr.data.records import BadRecord
from llmasr.text_files import key_text_lines

log = logging.getLogger(__name__)

OFFSET = re.compile(r":[0-9]+$")  # Kaldi's ClassifyRxfilename: FILE:OFFSET is an offset into FILE, whatever its name


def _read_kaldi_table(path: Path, what: str, dups: list[BadRecord]) -> dict[str, tuple[int, str]]:
    table: dict[str, tuple[int, str]] = {}
    for lineno, key, value in key_text_lines(path, KaldiError):
        if key in table:
            dups.append(
                BadRecord(
                    str(path),
                    lineno,
                    f"duplicate_keys: {what} key {key!r} repeated (first seen on line {table[key][0]}, which is kept)",
                    key,
                )
            )
            continue
        table[key] = (lineno, value)
    return table


class KaldiError(ValueError):
    """A Kaldi data directory file that cannot be read (named with its line)."""


REASONS = (
    "missing_text", "missing_audio", "empty_text", "unsupported", "bad_segments", "duplicate_keys", "no_segments",
)  # fmt: skip


class _Skipped:
    """The keys skipped per reason, and the BadRecords (file:line: reason) in the order they were found."""

    def __init__(self):
        self.keys: dict[str, list[str]] = {r: [] for r in REASONS}
        self.problems: list[BadRecord] = []

    def skip(self, reason: str, file: Path, lineno: int, key: str, detail: str) -> None:
        self.keys[reason].append(key)
        self.problems.append(BadRecord(str(file), lineno, f"{reason}: {detail}", key))

    def duplicates(self, dups: list[BadRecord]) -> None:
        self.problems.extend(dups)
        self.keys["duplicate_keys"].extend(bad.key or "" for bad in dups)

    def counts(self, written: int) -> dict:
        """kaldi_to_jsonl's result; each reason with skipped keys is logged once."""
        counts: dict = {"written": written}
        for reason in REASONS:
            keys = self.keys[reason]
            counts[reason] = len(keys)
            counts[f"{reason}_keys"] = keys[:5]
            if keys:
                log.warning(
                    "kaldi_to_jsonl: skipped %d key(s): %s (e.g. %s)",
                    len(keys),
                    reason.replace("_", " "),
                    ", ".join(keys[:5]),
                )
        counts["problems"] = self.problems[:20]
        return counts


def kaldi_to_jsonl(
    wav_scp: str | Path,
    text: str | Path | None,
    out_jsonl: str | Path,
    *,
    segments: str | Path | None = None,
    base_dir: str | Path | None = None,
    utt2dur: str | Path | None = None,
    utt2lang: str | Path | None = None,
) -> dict:
    """Convert a Kaldi data dir (wav.scp + text [+ segments]) to FunASR-style jsonl.

    Relative audio paths in wav.scp are resolved against `base_dir` (default: the current directory, Kaldi's
    convention of running from the recipe folder) and written absolute. With `segments`, each segment becomes a
    record with start/end/duration (seconds into its recording; an end of -1 means "to the end of the file").
    `text` None: every recording (or segment) is written without a target, for decoding. `utt2dur` (Kaldi's
    `<key> <seconds>` lines, utils/data/get_utt2dur.sh) gives the records whose duration the rest leaves unknown
    theirs, so that training does not open every file's header at start-up; a segment's own end - start stays.
    `utt2lang` (`<key> <language>` lines, as Kaldi's language-ID recipes write them) gives each record its `lang`,
    which decoding rates each language by.

    Nothing is dropped silently. The returned dict has `written` and, for each reason a key is skipped, a count
    and the first five keys (`<reason>` and `<reason>_keys`):
      missing_text   audio (wav.scp / segments) but no transcript in `text`
      missing_audio  a transcript (or segment) whose audio key is not in wav.scp (or segments)
      empty_text     a transcript line with no words
      unsupported    wav.scp entries that are offsets (`FILE:123`), or pipe commands (`... |`) not read as a file
      bad_segments   segments lines that do not parse
      duplicate_keys a key repeated within one file (the first is kept)
    A pipe command that only decodes a file llmasr reads (sph2pipe, flac, sox: llmasr.data.pipe_commands) is read
    as that file, its channel pick and time range written on the line (a segment's times add to the range's start);
    `piped_read_as_files` counts them (`piped_read_as_files_by_tool` per tool). Then
    `audio_not_found` and its first keys: wav.scp lines whose audio file is not there (their records written
    all the same), `problems`: the first 20 BadRecords (file:line: reason), and with `utt2dur`,
    `durations_from_utt2dur` and `durations_unknown` (records written without a duration: utt2dur lacks their key),
    and with `utt2lang`, `languages_from_utt2lang` and `languages_unknown` (records written without a `lang`).
    Every reason is also logged once as a warning.
    """
    wav_scp, out_jsonl = Path(wav_scp), Path(out_jsonl)
    text = Path(text) if text is not None else None
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    skipped = _Skipped()
    dups: list[BadRecord] = []
    wavs = _read_kaldi_table(wav_scp, "wav.scp", dups)
    texts = _read_kaldi_table(text, "text", dups) if text is not None else None
    segs = _read_kaldi_table(Path(segments), "segments", dups) if segments is not None else {}
    durs = _read_kaldi_table(Path(utt2dur), "utt2dur", dups) if utt2dur is not None else None
    langs = _read_kaldi_table(Path(utt2lang), "utt2lang", dups) if utt2lang is not None else None
    skipped.duplicates(dups)

    # With segments, a recording without a usable path is counted by its segments (or as no_segments), not twice.
    sources, why, piped = _audio_sources(wavs, wav_scp, base, skipped if segments is None else _Skipped())
    if segments is None:
        records = _recording_records(wavs, texts, (sources, piped), wav_scp, text, skipped)
    else:
        records = _segment_records(segs, wavs, texts, (sources, why, piped), (wav_scp, Path(segments)), text, skipped)
    found = _fill_durations(records, durs, Path(utt2dur)) if durs is not None else None
    named = _fill_languages(records, langs, Path(utt2lang)) if langs is not None else None
    gone = _audio_not_found(records, wavs, sources, wav_scp, base)
    written = _write_jsonl(records, texts, text, out_jsonl, skipped)
    counts = skipped.counts(written)
    counts.update(_piped_counts(piped))
    counts.update(audio_not_found=len(gone), audio_not_found_keys=[bad.key for bad in gone[:5]])
    counts["problems"] = (gone + skipped.problems)[:20]
    if found is not None:
        unknown = sum(1 for r in records if "duration" not in r)
        counts.update(durations_from_utt2dur=found, durations_unknown=unknown)
        if unknown:
            log.warning("kaldi_to_jsonl: %d record(s) not in %s: written without a duration (training probes their "
                        "audio headers)", unknown, utt2dur)  # fmt: skip
    if named is not None:
        unnamed = sum(1 for r in records if "lang" not in r)
        counts.update(languages_from_utt2lang=named, languages_unknown=unnamed)
        if unnamed:
            log.warning("kaldi_to_jsonl: %d record(s) not in %s: written without a lang (decode's results rate them "
                        "as a group of their own)", unnamed, utt2lang)  # fmt: skip
    return counts


def _piped_counts(piped: dict[str, PipedFile]) -> dict:
    """How many wav.scp pipe commands were read as the files they decode, per tool (logged: not a silent change)."""
    tools = Counter(p.read.tool for p in piped.values())
    if piped:
        log.info("kaldi_to_jsonl: %d wav.scp pipe command(s) read as the files they decode (%s)", len(piped),
                 ", ".join(f"{tool}: {n}" for tool, n in tools.items()))  # fmt: skip
    return {"piped_read_as_files": len(piped), "piped_read_as_files_by_tool": dict(tools)}


def _audio_not_found(records: list[dict], wavs: dict, sources: dict, wav_scp: Path, base: Path) -> list[BadRecord]:
    """The wav.scp lines whose audio file is not there (one stat per recording a record reads). Their records are
    written all the same (training names each such line's missing file), but named here: a wav.scp of relative
    paths read from another folder than the recipe's gives a manifest of files that are not there."""
    used = {r["source"] for r in records}
    gone: list[BadRecord] = []
    for key, path in sources.items():
        if path not in used or (why := missing_audio(path)) is None:
            continue
        lineno, value = wavs[key]
        hint = "" if Path(os.path.expanduser(value)).is_absolute() else (
            f" (relative wav.scp paths are read from {base}: run from the folder the Kaldi recipe ran in, or pass "
            "--base-dir)"
        )  # fmt: skip
        gone.append(BadRecord(str(wav_scp), lineno, f"audio_not_found: {key}: {path} is not there ({why.reason})"
                              f"{hint}", key))  # fmt: skip
    if gone:
        log.warning("kaldi_to_jsonl: %d recording(s) whose audio file is not there, written all the same (e.g. %s)",
                    len(gone), gone[0])  # fmt: skip
    return gone


def _fill_durations(records: list[dict], table: dict, utt2dur: Path) -> int:
    """Give the records without a duration theirs from utt2dur (the utterance's seconds, a segment's too); returns
    how many it gave. A value that is not a positive number is refused with its line: a table this wrong is not one
    to take durations from. A segment running to its recording's end keeps none from a negative value: Kaldi's
    get_utt2dur.sh writes end - start from segments, -1 - start for it."""
    found = 0
    for r in records:
        if "duration" in r or r["key"] not in table:
            continue
        lineno, value = table[r["key"]]
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if "end" not in r and "start" in r and seconds < 0:
            continue  # a segment to its recording's end (end -1): get_utt2dur.sh wrote -1 - start, no duration
        if not (math.isfinite(seconds) and seconds > 0):
            raise KaldiError(f"{utt2dur}:{lineno}: {r['key']}: expected '<key> <seconds>' with seconds > 0, got "
                             f"{value!r}")  # fmt: skip
        r["duration"] = seconds
        found += 1
    return found


def _fill_languages(records: list[dict], table: dict, utt2lang: Path) -> int:
    """Give each record its language from utt2lang, as written (decoding reads "en", "English" and "en-US" alike);
    returns how many it gave. A key with no language is refused with its line."""
    named = 0
    for r in records:
        if r["key"] not in table:
            continue
        lineno, value = table[r["key"]]
        if not value.strip():
            raise KaldiError(f"{utt2lang}:{lineno}: {r['key']}: expected '<key> <language>', got no language")
        r["lang"] = " ".join(value.split())
        named += 1
    return named


def _audio_sources(wavs: dict, wav_scp: Path, base: Path, skipped: _Skipped) -> tuple[dict[str, str], dict, dict]:
    """(wav.scp key -> absolute audio path, for the entries that are plain paths or pipe commands read as their
    file; key -> why, for the others, which are skipped; key -> PipedFile, for those pipe commands)."""
    sources: dict[str, str] = {}
    why: dict[str, str] = {}
    piped: dict[str, PipedFile] = {}
    for key, (lineno, value) in wavs.items():
        if not value:
            why[key] = "no audio path"
        elif value == "-":
            why[key] = "'-' (standard input) is not an audio file"
        elif value.endswith("|"):
            try:
                piped[key] = read_as_file(value, base)
                sources[key] = piped[key].path
                continue
            except PipeRefused as err:
                why[key] = str(err)
        elif "|" in value:  # Kaldi refuses it too: a pipe command missing its closing '|'
            why[key] = f"{value[:60]!r} holds a '|' but does not end with one (a pipe command ends with '|')"
        elif OFFSET.search(value) or ".ark:" in value or value.endswith(".ark"):
            why[key] = f"{value[:60]!r}: Kaldi ark offsets are not supported (FILE:OFFSET is read as one); {ARK_ADVICE}"
        else:
            p = Path(os.path.expanduser(value))
            sources[key] = str(p if p.is_absolute() else (base / p).resolve())
            continue
        skipped.skip("unsupported", wav_scp, lineno, key, f"{key}: {why[key]}")
    return sources, why, piped


ARK_ADVICE = (
    "write each utterance to its own file and list those paths in wav.scp (with kaldiio: `for key, (rate, wave) in "
    "kaldiio.load_scp('wav.scp').items(): soundfile.write(f'{key}.wav', wave, rate)`)"
)


def _recording_records(
    wavs: dict, texts: dict | None, paths: tuple[dict, dict], wav_scp: Path, text: Path | None, skipped: _Skipped
) -> list[dict]:
    """One record per whole recording (no segments file) that has both audio and a transcript (or any text);
    `paths`: _audio_sources' (paths, pipe commands read as files)."""
    sources, piped = paths
    records: list[dict] = []
    for key, (lineno, _) in wavs.items():
        if key not in sources:
            continue
        if texts is not None and key not in texts:
            skipped.skip("missing_text", wav_scp, lineno, key, f"{key}: in wav.scp but not in {text.name}")
            continue
        records.append({"key": key, "source": sources[key], **(piped[key].fields() if key in piped else {})})
    for key, (lineno, _) in (texts or {}).items():
        if key not in wavs:
            skipped.skip("missing_audio", text, lineno, key, f"{key}: in {text.name} but not in wav.scp")
    return records


def _segment_records(
    segs: dict, wavs: dict, texts: dict | None, paths: tuple[dict, dict], files: tuple[Path, Path],
    text: Path | None, skipped: _Skipped,
) -> list[dict]:  # fmt: skip
    """One record per segment whose line parses, whose recording has a readable path, and which has a transcript;
    `paths`: _audio_sources' (paths, why not, pipe commands read as files); `files`: the wav.scp and segments files."""
    (sources, why, piped), (wav_scp, segments) = paths, files
    records: list[dict] = []
    for seg, (lineno, value) in segs.items():
        parsed = _parse_segment(value)
        if parsed is None:
            skipped.skip(
                "bad_segments", segments, lineno, seg,
                f"{seg}: expected '<segment> <recording> <start> <end> [channel]'",
            )  # fmt: skip
            continue
        rec_id, start, end, channel = parsed
        if rec_id not in wavs:
            skipped.skip("missing_audio", segments, lineno, seg, f"{seg}: recording {rec_id!r} is not in wav.scp")
        elif rec_id not in sources:
            skipped.skip("unsupported", segments, lineno, seg, f"{seg}: recording {rec_id!r}: {why.get(rec_id)}")
        elif texts is not None and seg not in texts:
            skipped.skip("missing_text", segments, lineno, seg, f"{seg}: in segments but not in {text.name}")
        elif rec_id in piped:
            try:
                records.append({"key": seg, "source": sources[rec_id], **piped[rec_id].segment(start, end, channel)})
            except ValueError as err:
                skipped.skip("bad_segments", segments, lineno, seg, f"{seg}: recording {rec_id!r}: {err}")
        else:
            r = {"key": seg, "source": sources[rec_id], "start": start}
            if channel is not None:
                r["channel"] = channel
            if end != -1:
                r["end"] = end
                r["duration"] = round(end - start, 6)
            records.append(r)
    for key, (lineno, _) in (texts or {}).items():
        if key not in segs:
            skipped.skip("missing_audio", text, lineno, key, f"{key}: in {text.name} but not in segments")
    named = {parsed[0] for parsed in map(_parse_segment, (v for _, v in segs.values())) if parsed is not None}
    for key, (lineno, _) in wavs.items():  # a recording no segment names holds no utterance: counted, not lost
        if key not in named:
            skipped.skip("no_segments", wav_scp, lineno, key, f"{key}: a recording that no line of {segments.name} "
                         "names")  # fmt: skip
    return records


def _parse_segment(value: str) -> tuple[str, float, float, int | None] | None:
    """`<recording> <start> <end> [channel]` (after the segment key; Kaldi's extract-segments reads a 0-based channel
    of a multi-channel recording) -> its fields, or None when it does not parse."""
    parts = value.split()
    try:
        if len(parts) not in (3, 4):
            return None
        rec_id, start, end = parts[0], float(parts[1]), float(parts[2])
        channel = int(parts[3]) if len(parts) == 4 else None
    except ValueError:
        return None
    if not math.isfinite(start) or start < 0 or (end != -1 and not (math.isfinite(end) and end > start)):
        return None
    if channel is not None and channel < 0:
        return None
    return rec_id, start, end, channel


def _write_jsonl(records: list[dict], texts: dict | None, text: Path | None, out_jsonl: Path, skipped: _Skipped) -> int:
    """Write the records with their transcripts (empty ones skipped; none without a text file); return how many were
    written."""
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with manifest_writer(out_jsonl) as f:  # a cut-short manifest would read as a smaller corpus
        for r in records:
            lineno, target = texts[r["key"]] if texts is not None else (0, None)
            if target is not None and not target.strip():
                skipped.skip("empty_text", text, lineno, r["key"], f"{r['key']}: empty transcript")
                continue
            said = {"target": " ".join(target.split())} if texts is not None else {}  # Kaldi: any blank run splits
            rec = {"key": r.pop("key"), "source": r.pop("source"), **said, **r}
            f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            written += 1
    return written
