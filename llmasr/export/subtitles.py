"""Subtitles (SubRip .srt, WebVTT .vtt) from a transcript's word timestamps.

    from llmasr.export.subtitles import subtitles
    asr = Transcriber.load("exp/run/export", timestamps=True)
    (row,) = asr.transcripts(["talk.wav"])
    open("talk.srt", "w", encoding="utf-8").write(subtitles(row, "srt"))

Words are grouped into cues as subtitle style guides ask: a cue ends after a sentence's end, before a pause of
CueRules.pause_s or more, before it would last longer than max_seconds, or before its text would pass max_lines lines
of line_columns columns (a character of a wide script, CJK, takes two: 21 Chinese characters a line against 42
Latin). A cue's text is the transcript's own (its spacing and punctuation), wrapped into lines at the space or
character nearest the middle.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from llmasr.atomic_file import write_atomic
from llmasr.text_units import is_no_space_char

FORMATS = ("srt", "vtt")
CLOSERS = "'\"”’»›)]}」』）］｝】》〉〕〗〙〛"
SENTENCE_END = re.compile(f"[.?!…。？！｡][{re.escape(CLOSERS)}]*$")  # on the cue's text: "。」" ends a sentence
# What a line or a cue may not begin with, where it stays with the character before: a combining mark (Thai's vowels
# and tone marks above and below a letter), the long-vowel mark and small kana (Japanese line-breaking rules)
NO_LINE_START = set("ーぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿｧｨｩｪｫｯｬｭｮｰ")


@dataclass(frozen=True)
class CueRules:
    line_columns: int = 42
    max_lines: int = 2
    max_seconds: float = 7.0
    pause_s: float = 0.5


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # lines joined by "\n"


class Untimed(ValueError):
    """A transcript with text but no word times (the CTC head could not align it), or no timestamps asked for."""


def columns(text: str) -> int:
    """Display columns: a wide character (CJK) takes two, a mark drawn on the letter before it (Thai's) none."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if _on_letter(ch) else 1 for ch in text)


def _on_letter(ch: str) -> bool:
    return unicodedata.category(ch) in ("Mn", "Me", "Cf")


def _joins_before(ch: str) -> bool:
    """`ch` belongs to the character before it: a mark drawn on it (Thai's), small kana, the long-vowel mark."""
    return ch in NO_LINE_START or unicodedata.category(ch) in ("Mn", "Mc", "Me")


def _cannot_begin(unit: str) -> bool:
    """A cue may not begin with the timed unit `unit`: one that joins the character before, or one of closing
    punctuation alone (CJK's "。" and "」" are units of their own; "¿Qué" or '"Stop' may begin one)."""
    closing = ("Pe", "Pf", "Po")
    return _joins_before(unit[0]) or all(ch in CLOSERS or unicodedata.category(ch) in closing for ch in unit)


def cues(row: dict, rules: CueRules = CueRules(), *, untimed_whole: bool = False) -> list[Cue]:
    """The cues of one transcript row (`Transcriber.transcripts` with timestamps, a results.jsonl line, or a JSON line
    of `llmasr transcribe --timestamps`): its "hyp" (or "text") and its "timestamps" ([word, start s, end s] each). No
    text, no cues. Text without word times (the CTC head could not align it) raises Untimed, or with `untimed_whole`
    is one cue over the whole clip ("duration")."""
    text = " ".join((row["hyp"] if "hyp" in row else row.get("text") or "").split())
    words = row.get("timestamps")
    if not text:
        return []
    if "timestamps" not in row:  # never asked for: no alignment failed, and one cue over the clip would hide that
        raise Untimed(
            'no "timestamps" in the row: its word times were not asked for; transcribe with '
            "Transcriber.load(DIR, timestamps=True), or llmasr decode / llmasr transcribe --timestamps"
        )
    if not words:
        if untimed_whole and row.get("duration"):
            return [Cue(0.0, float(row["duration"]), _wrap(text, rules.line_columns, rules.max_lines))]
        raise Untimed("no word times for its text (the CTC head could not align it)" if words is None
                      else "its text has no timed words")  # fmt: skip
    spans = _spans(text, [w[0] for w in words])
    out, first = [], 0
    for k in range(1, len(words) + 1):
        if k < len(words) and not _ends_cue(text, spans, words, first, k, rules):
            continue
        start, end = float(words[first][1]), float(words[k - 1][2])
        if k < len(words):  # shown until the next cue begins at the latest
            end = min(end, float(words[k][1]))
        out.append(
            Cue(
                start,
                max(end, start + 0.001),
                _wrap(_cue_text(text, spans, words, first, k), rules.line_columns, rules.max_lines),
            )
        )
        first = k
    return out


def _ends_cue(text: str, spans, words, first: int, k: int, rules: CueRules) -> bool:
    """Whether the cue holding words[first:k] ends before word k."""
    if _cannot_begin(words[k][0]):  # a closing quote, a full stop or a mark stays with the unit before
        return False
    if words[k][1] <= words[first][1]:  # it would take no time (units at a long-audio seam): shown with the next
        return False
    if SENTENCE_END.search(_cue_text(text, spans, words, first, k)) or words[k][1] - words[k - 1][2] >= rules.pause_s:
        return True
    if words[k][2] - words[first][1] > rules.max_seconds:
        return True
    # the lines as they would be wrapped, not their columns summed: words do not fill each line to its last column
    lines = _wrap(_cue_text(text, spans, words, first, k + 1), rules.line_columns, rules.max_lines).split("\n")
    return any(columns(line) > rules.line_columns for line in lines)


def _spans(text: str, units: list[str]) -> list[tuple[int, int]] | None:
    """Where each timed word lies in the transcript, in order; None where one is not found as written."""
    at, out = 0, []
    for unit in units:
        i = text.find(unit, at)
        if i < 0:
            return None
        out.append((i, i + len(unit)))
        at = i + len(unit)
    return out


def _cue_text(text: str, spans, words, first: int, stop: int) -> str:
    if spans is not None:  # the transcript's own spacing and punctuation between the words
        return text[spans[first][0] : spans[stop - 1][1]]
    out = ""
    for word, *_ in words[first:stop]:  # words not found as written: spaced but within a script without spaces
        out += word if not out or (is_no_space_char(out[-1]) and is_no_space_char(word[0])) else " " + word
    return out


def _wrap(text: str, width: int, lines: int = 2) -> str:
    """`text` in up to `lines` lines where it is wider than `width` columns, broken at a space or between two
    characters of a script without spaces (never after an opening bracket nor before what cannot begin a line): of
    the breaks where the lines then fit, after punctuation first, then at a space (Thai's words run on between its
    spaces), else where the lines are nearest even."""
    total = columns(text)
    if total <= width or lines < 2:
        return text
    breaks, seen = [], 0  # (where the second line starts, the first line's columns, its rank: lower is preferred)
    for i, ch in enumerate(text[:-1]):
        seen += columns(ch)
        after = text[i - 1] if ch.isspace() and i else ch
        punct = unicodedata.category(after)[0] == "P" and unicodedata.category(after) not in ("Ps", "Pi")
        if ch.isspace():
            breaks.append((i + 1, seen - 1, 0 if punct else 1))
        elif is_no_space_char(text[i + 1]) and not _joins_before(text[i + 1]) and (is_no_space_char(ch) or punct):
            breaks.append((i + 1, seen, 0 if punct else 2))
    if not breaks:  # one long word
        return text
    even = total / lines  # the first line's share
    fitting = [b for b in breaks if b[1] <= width and total - b[1] <= width * (lines - 1)]
    cut = min(fitting or breaks, key=lambda b: (b[2], abs(b[1] - even)) if fitting else abs(b[1] - even))
    return f"{text[: cut[0]].rstrip()}\n{_wrap(text[cut[0] :].lstrip(), width, lines - 1)}"


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def subtitles(row: dict, fmt: str, rules: CueRules = CueRules(), *, untimed_whole: bool = False) -> str:
    """One transcript row as the text of an .srt or .vtt file (an empty one where nothing was said); `untimed_whole`
    as cues takes it."""
    fmt = _known(fmt)  # before the cues: a mistyped format is said whatever the row
    return _file_text(cues(row, rules, untimed_whole=untimed_whole), fmt)


def _known(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"subtitle format {fmt!r}: one of {', '.join(FORMATS)}")
    return fmt


def _file_text(found: list[Cue], fmt: str) -> str:
    """`found` as the text of an .srt or .vtt file."""
    sep = "," if fmt == "srt" else "."
    texts = [c.text if fmt == "srt" else _vtt_escaped(c.text) for c in found]
    blocks = [f"{_clock(c.start, sep)} --> {_clock(c.end, sep)}\n{t}\n" for c, t in zip(found, texts, strict=True)]
    if fmt == "srt":
        return "\n".join(f"{i}\n{block}" for i, block in enumerate(blocks, start=1))
    return "WEBVTT\n\n" + "\n".join(blocks)


def subtitle_name(key, fmt: str) -> str:
    """The file name of a decoded row's subtitles: KEY.FMT, the key's slashes (either way) written as "_" (a key is
    no path), so that two keys may name one file (spk1/utt1 and spk1_utt1)."""
    return f"{str(key).replace('/', '_').replace(chr(92), '_')}.{fmt}"


def decode_subtitles(results: str | Path, folder: str | Path, fmt: str) -> int:
    """Each row of a decode's `results` (results.jsonl of `llmasr decode --timestamps`) as folder/KEY.srt (or .vtt;
    subtitle_name); how many cues in all. A row the head could not align gets one cue over its audio; a row with
    text and no "timestamps" at all (a decode without them) is a ValueError naming its line, before any file."""
    fmt, folder = _known(fmt), Path(folder)
    total, written, texts = 0, {}, {}
    for n, line in enumerate(Path(results).read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        target = folder / subtitle_name(row["key"], fmt)
        if target in written:
            raise ValueError(f"{results}:{n}: key {row['key']!r} would write {target}, as line {written[target]} did")
        written[target] = n
        try:
            texts[target], count = row_subtitles(row, fmt)
        except Untimed:  # a decode without word times: refused before any file, as `decode --subtitles` is
            raise ValueError(
                f'{results}:{n}: key {row["key"]!r}: no "timestamps": a decode without word times; '
                "decode again with llmasr decode --timestamps (decode.timestamps: true)"
            ) from None
        total += count
    folder.mkdir(parents=True, exist_ok=True)
    for target, text in texts.items():
        write_atomic(target, text)  # a stopped run leaves no half a file
    return total


def row_subtitles(row: dict, fmt: str) -> tuple[str, int]:
    """A decoded row's subtitle file text (one cue over its audio where its text has no word times) and its cues."""
    found = cues(row, untimed_whole=True)
    return _file_text(found, _known(fmt)), len(found)


def _vtt_escaped(text: str) -> str:
    """WebVTT reads `<` as a tag and `&` as an entity: written as entities, as the format asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def subtitle_paths(audio: list[str], fmt: str, folder: Path) -> list[Path]:
    """Where the subtitles of each of `audio` go: FOLDER/STEM.FMT. ValueError naming both files where two would be
    one file (a/x.wav and b/x.flac), rather than the second overwriting the first; one file named twice (a list
    that repeats it, ./x.wav and x.wav) writes the same subtitles twice."""
    out, seen = [], {}
    for path in audio:
        target = folder / f"{Path(path).stem}.{fmt}"
        if target in seen and os.path.realpath(seen[target]) != os.path.realpath(path):
            raise ValueError(f"{seen[target]} and {path} would both write {target}: give them different names (or "
                             "transcribe them in two runs with different --subtitles-dir)")  # fmt: skip
        seen[target] = path
        out.append(target)
    return out
