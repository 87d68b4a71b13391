"""The top-level fields of a manifest line that its format's parser reads (llmasr.data.records), and what to say of
any other: a field no parser reads changes nothing, so `llmasr data check` and train.log name it, with the field it
may have meant (a letter or two, or its case, off) or the other format that reads it."""

from __future__ import annotations

import json

# The top-level fields each format's parser reads (llmasr.data.records): any other is left unread. A misspelt one
# ("hotword", "Prompt") would change nothing, so `llmasr data check` names them (unread_fields).
FUNASR_FIELDS = frozenset(
    ("key", "source", "target", "duration", "source_len", "target_len", "prompt", "task", "lang", "language",
     "text_language", "channel", "start", "end", "hotwords", "system")
)  # fmt: skip
CHATML_FIELDS = frozenset(
    ("messages", "key", "duration", "speech_length", "text_length", "lang", "language", "text_language", "hotwords",
     "asr_hotwords")
)  # fmt: skip


def _edits(a: str, b: str) -> int:
    """Edits (a letter inserted, dropped, changed, or two neighbours swapped) from `a` to `b`: a misspelt field name
    is a letter or two off the one it meant."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, start=1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def near_field(name: str) -> str | None:
    """The field llmasr reads nearest an unread field `name`, where it is a letter or two (or its case) off: one for a
    name of up to four letters, whose every field two edits away is another word ("id" is two from "end")."""
    most = 1 if len(name) <= 4 else 2
    scored = sorted((_edits(name.lower(), k), k) for k in FUNASR_FIELDS | CHATML_FIELDS)
    return scored[0][1] if scored[0][0] <= most else None


def unread_text(name: str, lines: int, first: str) -> str:
    """A field no parser reads, on `lines` lines from `first` (manifest:line), and the field it may have meant; one
    the other format reads (a FunASR line's `asr_hotwords`, a ChatML line's `target`) is said to be that format's."""
    near = near_field(name)
    text = f"{name}: {lines} line{'s' if lines != 1 else ''}, first at {first}"
    if near == name:
        other = "ChatML (messages)" if name in CHATML_FIELDS else "FunASR jsonl (source, target)"
        return f"{text} (read in {other} lines only)"
    return text + (f" (did you mean '{near}'?)" if near else "")


# What other toolkits' manifests call a FunASR field (WeNet's wav/txt, NeMo's audio_filepath/text, Kaldi's utterance
# ids), said when a line lacks the field and holds one of these instead.
OTHER_NAMES = {
    "key": ("id", "utt", "utt_id", "uttid", "utterance_id", "audio_id"),
    "source": ("wav", "audio", "audio_filepath", "audio_path", "wav_path", "path", "file"),
    "target": ("text", "txt", "transcript", "transcription", "sentence"),
}


def stand_in(rec: dict, name: str) -> tuple[str, bool] | None:
    """The field a FunASR line lacking `name` gives in its place: (field, True) for `name` misspelt, (field, False)
    for another toolkit's name for it (OTHER_NAMES); None when it gives neither."""
    unread = [f for f in rec if f not in FUNASR_FIELDS]
    typo = next((f for f in unread if near_field(f) == name), None)
    if typo is not None:
        return typo, True
    other = next((f for f in unread if f.lower() in OTHER_NAMES.get(name, ())), None)
    return None if other is None else (other, False)


def missing_text(rec: dict, name: str, needs: str) -> str:
    """A FunASR line's missing field `name`, and the field the line gives in its place (stand_in)."""
    text = f"missing field '{name}' ({needs})"
    found = stand_in(rec, name)
    if found is None:
        return text
    field, typo = found
    if typo:
        return f"{text}; the line has '{field}': did you mean '{name}'?"
    return f"{text}; the line has '{field}', which llmasr does not read: rename it '{name}'"


def unread_fields(rec) -> list[str]:
    """The top-level fields of a FunASR jsonl or ChatML record (a parsed line) that its parser does not read; a
    lhotse cut's are lhotse's own, and not listed."""
    if not isinstance(rec, dict) or is_cut(rec):
        return []
    known = CHATML_FIELDS if "messages" in rec else FUNASR_FIELDS
    return [name for name in rec if name not in known]


def is_cut(rec: dict) -> bool:
    return "supervisions" in rec or "recording" in rec or str(rec.get("type", "")).endswith("Cut")


STAND_IN_LINES = 1000  # lines without a target looked at for a transcript under another name


def target_stand_in(manifest) -> str | None:
    """The field that lines without a `target` hold their transcript in (a misspelling, or another toolkit's name
    such as NeMo's `text`), from the first such line that has one; None when none of the first lines does."""
    base = getattr(manifest, "base", manifest)
    seen = 0
    for i in range(len(base) if hasattr(base, "raw_line") else 0):
        try:
            rec = json.loads(base.raw_line(i))
        except ValueError:
            continue
        if not isinstance(rec, dict) or "target" in rec or "messages" in rec or is_cut(rec):
            continue
        if (found := stand_in(rec, "target")) is not None:
            return found[0]
        seen += 1
        if seen >= STAND_IN_LINES:
            break
    return None


NOT_JSON_LINES = "one JSON document, not JSON Lines (one JSON object a line)"
SEGMENT_LINES = (
    "a corpus index such as WenetSpeech.json (audios[].segments[]) wants one line per segment: key (its sid), source "
    "(the audio's path), target (text), start and end (begin_time, end_time)"
)


def json_document(first: bytes, lines: str = SEGMENT_LINES) -> str | None:
    """Why a file whose first line is `first` is one JSON document rather than JSON Lines (a pretty-printed object
    opening with '{' alone, or an array), or UTF-16 text, with what to write instead (`lines`: what the file's lines
    are, said after an object over many lines; a manifest's by default); None otherwise. Every line of
    such a file had been a bad line of its own, none saying so (json reads bytes in UTF-16 too, so most lines of an
    English UTF-16 file had parsed, each shifted by the byte its line end left, and a Chinese line had not)."""
    if first.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in first:  # a BOM, or a NUL byte of each ASCII one
        return (
            "UTF-16 text (Windows Notepad's 'Unicode'), not UTF-8: JSON reads some of its lines and misreads the rest "
            "(any character outside ASCII); save it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8"
        )
    head = first.strip().removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        return f"{NOT_JSON_LINES}: it is a JSON array; write each element on a line of its own, e.g. jq -c '.[]'"
    if head == b"{":
        return f"{NOT_JSON_LINES}: an object over many lines; {lines}"
    return None
