"""The class of a bad line's reason: what the bad-data counts (training's and decoding's BadDataTracker, `llmasr data
check`'s by-reason table) count it under. Reasons carry paths, numbers and details that vary line by line; the class
is short and stable."""

from __future__ import annotations

import re

# (substring of the reason, category) in priority order; reasons carry paths and details that vary per line.
REASON_CATEGORIES = (
    ("a Git LFS pointer", "Git LFS pointer, not audio"),  # first: its advice names a folder, whose name may be any
    ("file not found", "audio file not found"),
    ("is a directory", "audio file not found"),
    ("empty audio", "empty audio"),
    ("empty range", "empty audio"),
    ("non-finite samples", "corrupt audio"),
    ("corrupt", "unreadable or corrupt audio"),
    ("unreadable", "unreadable or corrupt audio"),
    ("too short for one feature frame", "audio too short"),
    ("past the end", "segment outside the audio"),
    ("past the audio", "segment outside the audio"),
    ("lhotse cut: type", "unsupported lhotse record"),  # its advice names channels: it is no channel of a cut
    ("cancel when averaged", "channels that cancel (anti-phase)"),  # before "channel": no channel is bad
    ("channel", "bad channel"),
    ("NUL character", "NUL in a path"),  # before the fallback, which had cut the path out: "audio path  holds a ..."
    ("malformed JSON", "malformed line"),
    ("given twice", "field given twice"),
    ("not UTF-8", "malformed line"),
    ("expected a JSON object", "malformed line"),
    ("missing field", "missing field"),
    ("name two languages", "two languages for one line"),  # its head had been the category "fields 'lang'"
    ("name one setting and disagree", "fields that disagree"),
    ("contradicts 'end' - 'start'", "fields that disagree"),  # its head had been the category "'duration'"
    ("empty target", "empty target"),
    ("is empty", "empty target"),
    # a list's field by any name (hotwords, a cut's custom.hotwords, asr_hotwords); an item's index had made a
    # category of its own ("field 'hotwords'[] is an empty phrase")
    ("hotwords'[", "bad hotwords list"),
    ("hotwords' must be", "bad hotwords list"),
    ("non-text target", "non-text target"),
    ("is not text", "non-text target"),
    ("must be", "wrong field type or value"),
    ("CTC", "target outside the CTC vocabulary"),
    ("LLM's context", "transcript past the LLM's context"),
    ("prompt builder", "target rejected by the LLM tokenizer"),
    ("lhotse", "unsupported lhotse record"),
    ("unknown duration", "unknown duration"),
    ("manifest duration", "manifest duration wrong"),
    ("Whisper window", "audio longer than the Whisper window"),
)


def reason_category(reason: str) -> str:
    """A short, stable class of a bad-item reason, for counting."""
    for needle, category in REASON_CATEGORIES:
        if needle in reason:
            return category
    head = re.split(r"[:(]", reason, maxsplit=1)[0]
    head = re.sub(r"\S*[/\\]\S*|\d+(\.\d+)?", "", head).strip()  # drop paths and numbers
    return head or "other"
