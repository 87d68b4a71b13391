"""Special-token tags written into transcripts: SenseVoiceSmall's raw output begins with its language, emotion, event
and ITN tags (`<|zh|><|NEUTRAL|><|Speech|><|woitn|>`), and Whisper's or an LLM's special tokens (`<|en|>`,
`<|endoftext|>`) come with text pasted from their outputs. A vocabulary that holds them spells them, so training
teaches the LLM (and the CTC head) to write them: nothing else says so, since the lines are not bad. The screen and
`llmasr data check` name them (scoring drops them: llmasr.scoring)."""

from __future__ import annotations

import re

TAG = re.compile(r"<\|[^|<>\s]{1,40}\|>")
SHOWN = 8  # tags named, most lines first


def tags_in(text: str) -> list[str]:
    """The distinct tags of `text`, in order."""
    return list(dict.fromkeys(TAG.findall(text))) if "<|" in text else []


def gather_tags(found: dict, text, where) -> None:
    """Count `text`'s tags into `found` (tag -> [lines, `where` of the first line holding it])."""
    for tag in tags_in(text) if isinstance(text, str) else ():
        found.setdefault(tag, [0, where])[0] += 1


def tags_text(found: list[tuple[str, int, str]]) -> str:
    """What train.log and `llmasr data check` say of the tags ((tag, lines holding it, the first one's place) each)."""
    shown = sorted(found, key=lambda f: (-f[1], f[0]))
    parts = "; ".join(f"{tag} in {n} line{'s' * (n != 1)} (first: {first})" for tag, n, first in shown[:SHOWN])
    more = f"; and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
    return (
        f"transcripts hold special-token tags, which training teaches the model to write as text: {parts}{more}. "
        "Transcripts made with SenseVoiceSmall begin with its language, emotion, event and ITN tags: strip them "
        "first (FunASR's rich_transcription_postprocess); keep them only if the model is to write them"
    )
