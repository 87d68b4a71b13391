"""What is wrong with the text of the transcripts: shapes that training teaches the LLM to write as they stand, that
nobody meant, and that scoring hides (it drops tags, collapses whitespace, normalises Unicode). The start-up screen
(train.log, `llmasr check`) and `llmasr data check` find them in one pass over the transcripts (`gather_text`) and
name them with how to fix them (`text_warnings`); nothing is rewritten.

- Special-token tags: SenseVoiceSmall's raw output begins with its language, emotion, event and ITN tags
  (`<|zh|><|NEUTRAL|><|Speech|><|woitn|>`), and Whisper's or an LLM's special tokens (`<|en|>`, `<|endoftext|>`)
  come with text pasted from their outputs. A vocabulary that holds them spells them.
- Whitespace other than one space between words (tabs, newlines, carriage returns, no-break or ideographic spaces,
  spaces in a row): a byte-level tokenizer spells each as written. A transcript's ends are stripped before it is
  tokenized (llmasr.models.prompt.PromptBuilder.answer_text), so only whitespace inside it counts. `llmasr data
  kaldi` writes Kaldi's text collapsed.
- Invisible format characters: zero-width space, word joiner, a byte-order mark, soft hyphen, and the bidirectional
  controls (Unicode's Bidi_Control: marks, embeddings, overrides, isolates). Text pasted from web pages and word
  processors carries them; a tokenizer spells each, so the model learns to write characters nobody sees. The joiners
  U+200C and U+200D are left alone: Persian, the Indic scripts and emoji are written with them.
- Decomposed Unicode (not NFC: "e" and a combining U+0301 for "é"): a tokenizer that does not compose it (Llama 3's,
  a WordLevel vocabulary; Qwen's applies NFC itself) trains the decomposed form, and the model then writes text that
  looks right but matches no composed text (hotwords, search).
- Spaces between Chinese or Japanese characters: word-segmented text, as AISHELL's transcripts are. Unsegmented
  corpora hardly hold any (spaces sit beside Latin words and numbers there), so a share of the lines holding them
  is a segmented corpus, whose spaces the LLM learns to write.
- Full-width Latin letters and digits ("２０２４年", "ＡＩ"): Chinese and Japanese corpora write some, others the
  ASCII forms, and a mix of them teaches the LLM both spellings of one number; scoring's NFKC reads them alike, a
  biasing phrase's boost does not. Full-width punctuation ("，。！？") is how those scripts are written: not named.

Cheap at scale: a line is tested by a few C-level scans ("<|" in it, str.isprintable, two spaces in a row, and for
non-ASCII lines NFC's quick check and one regular expression); only a line that fails one is looked at closer (the
format characters are not printable, so only such a line is searched for them).
Findings are counts: name -> [lines holding it, the first one's place] (an index, or manifest:line), which the
ranks sharing a screen add up as they add up the fields no parser reads.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

TAG = re.compile(r"<\|[^|<>\s]{1,40}\|>")
SHOWN = 8  # tags named, most lines first

# Whitespace, by the names a warning gives it; any other character str.split() splits on is named by its code point
SPACES = {"\t": "tab", "\n": "newline", "\r": "carriage return"}
_ODD_SPACE = re.compile(r"[^\S ]")  # whitespace other than a space: each is not printable, and str.split() splits it
RUN = "spaces in a row"
WHITESPACE = "whitespace"  # lines holding any of those
DECOMPOSED = "not NFC"
# Invisible format characters, as re reads them (the fix the warning gives uses this class): the C0 and C1 control
# characters that are not whitespace (an LLM's byte token can write U+0002 into a pseudo-label), soft hyphen, Arabic
# letter mark, zero-width space, LRM/RLM, the embeddings and overrides, word joiner, the isolates, BOM. Not
# U+200C/U+200D.
_INVISIBLE_CLASS = (
    r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u061c\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]"
)
_INVISIBLE = re.compile(_INVISIBLE_CLASS)
INVISIBLE = "invisible"  # lines holding any; each character is counted as "invisible U+XXXX NAME"
INVISIBLE_FIX = f"re.sub(r'{_INVISIBLE_CLASS}', '', text)"
# Chinese and Japanese characters (kana, CJK extension A and the unified ideographs, compatibility ideographs): the
# class the fix given in the warning removes spaces between
_CJK_CLASS = r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]"  # escapes re reads, as the warning writes them
_CJK_SPACED = re.compile(f"{_CJK_CLASS} +{_CJK_CLASS}")
_CJK_CHAR = re.compile(_CJK_CLASS)
CJK, CJK_SPACED = "CJK", "spaced CJK"  # lines holding those characters; lines with spaces between two of them
CJK_FIX = f"re.sub(r'(?<={_CJK_CLASS}) +(?={_CJK_CLASS})', '', text)"
_WIDE_CLASS = r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]"  # full-width digits and Latin letters
_WIDE = re.compile(_WIDE_CLASS)
WIDE = "full-width"  # lines holding any
WIDE_FIX = f"re.sub(r'{_WIDE_CLASS}', lambda m: chr(ord(m[0]) - 0xFEE0), text)"
APPLY = (
    " on each transcript (a FunASR jsonl line's `target`, a ChatML line's assistant content; lhotse cuts: "
    "`CutSet.from_file(IN).transform_text(f).to_file(OUT)`)"
)


def tags_in(text: str) -> list[str]:
    """The distinct tags of `text`, in order."""
    return list(dict.fromkeys(TAG.findall(text))) if "<|" in text else []


def has_invisible(text: str) -> bool:
    """Whether `text` holds an invisible format character (a control character among them) that gather_text names."""
    return not text.isprintable() and _INVISIBLE.search(text) is not None


def gather_text(found: dict, text, where) -> None:
    """Count what is wrong with transcript `text` into `found` (name -> [lines holding it, `where` of the first]):
    its tags, the whitespace in it other than one space between words, its invisible format characters, whether it
    is not NFC, whether it holds Chinese or Japanese characters and spaces between two of them, and full-width
    letters or digits."""
    if not isinstance(text, str):
        return
    for tag in tags_in(text) if "<|" in text else ():
        found.setdefault(tag, [0, where])[0] += 1
    if not text.isprintable() or "  " in text:  # every whitespace character but the space is not printable
        inner = text.strip()
        kinds = {SPACES.get(c) or _code_name(c) for c in _ODD_SPACE.findall(inner)}
        kinds.update([RUN] if "  " in inner else [])
        for kind in kinds | ({WHITESPACE} if kinds else set()):
            found.setdefault(kind, [0, where])[0] += 1
        if hidden := _INVISIBLE.findall(text):  # a second scan: one regex of both is slower
            for kind in {f"{INVISIBLE} {_code_name(c)}" for c in hidden} | {INVISIBLE}:
                found.setdefault(kind, [0, where])[0] += 1
    if text.isascii():
        return
    if not unicodedata.is_normalized("NFC", text):
        found.setdefault(DECOMPOSED, [0, where])[0] += 1
    if _CJK_CHAR.search(text) is not None:
        found.setdefault(CJK, [0, where])[0] += 1
        if " " in text and _CJK_SPACED.search(text) is not None:
            found.setdefault(CJK_SPACED, [0, where])[0] += 1
    if _WIDE.search(text) is not None:
        found.setdefault(WIDE, [0, where])[0] += 1


def _code_name(c: str) -> str:
    return f"U+{ord(c):04X} {unicodedata.name(c, 'control character')}"


def _is_space_kind(name: str) -> bool:
    return name in SPACES.values() or name == RUN or name.startswith("U+")


def _lines(n: int) -> str:
    return f"{n} line{'s' * (n != 1)}"


def text_warnings(found: dict, place: Callable = str) -> list[tuple[str, str]]:
    """(heading, warning) for each shape that `found` (gather_text's) holds: tags, whitespace, invisible format
    characters, decomposed Unicode, spaced Chinese or Japanese, full-width letters and digits. `place`: a finding's
    first place -> manifest:line."""
    said = []
    tags = [(t, n, place(first)) for t, (n, first) in found.items() if TAG.fullmatch(t)]
    if tags:
        said.append(("special-token tags in transcripts", tags_text(tags)))
    if WHITESPACE in found:
        kinds = sorted(((n, k, first) for k, (n, first) in found.items() if _is_space_kind(k)), key=lambda x: -x[0])
        parts = "; ".join(f"{k} in {_lines(n)} (first: {place(first)})" for n, k, first in kinds)
        said.append((
            "whitespace in transcripts",
            f"transcripts hold whitespace other than one space between words ({_lines(found[WHITESPACE][0])}), "
            "which training teaches the LLM to write as it stands (scoring collapses whitespace, so the WER does not "
            f"show it): {parts}. Collapse it, as `llmasr data kaldi` does for Kaldi's text: `' '.join(text.split())`"
            f"{APPLY}",
        ))  # fmt: skip
    if INVISIBLE in found:
        kinds = sorted((-n, k, first) for k, (n, first) in found.items() if k.startswith(f"{INVISIBLE} U+"))
        parts = "; ".join(f"{k.removeprefix(INVISIBLE + ' ')} in {_lines(-n)} (first: {place(first)})"
                          for n, k, first in kinds)  # fmt: skip
        said.append((
            "invisible characters in transcripts",
            f"transcripts hold invisible format characters ({_lines(found[INVISIBLE][0])}): {parts}. Text pasted from "
            "web pages and word processors carries them; a tokenizer spells each, so training teaches the LLM to "
            "write characters nobody sees (scoring drops them, a zero-width space or a control character as a "
            "space, so the WER does not "
            "show it). The joiners U+200C and U+200D, which Persian, Indic scripts and emoji need, are not among "
            f"them. Remove them: `{INVISIBLE_FIX}`{APPLY} (where a zero-width space stands for a space between two "
            "words, replace it with one first)",
        ))  # fmt: skip
    if DECOMPOSED in found:
        n, first = found[DECOMPOSED]
        said.append((
            "transcripts not in Unicode NFC",
            f"transcripts are not in Unicode NFC ({_lines(n)}, first: {place(first)}): they hold decomposed "
            "characters (a letter and a combining mark: 'e' + U+0301 for 'é'). An LLM tokenizer that does not compose "
            "them (Llama 3's, a WordLevel vocabulary; Qwen's applies NFC itself) trains the decomposed form, and the "
            "model then writes text that looks right but matches no composed text (hotwords, search; scoring "
            f"normalises it, so the WER does not show it). Compose them: `unicodedata.normalize('NFC', text)`{APPLY}",
        ))  # fmt: skip
    if CJK_SPACED in found:
        n, first = found[CJK_SPACED]
        of = found[CJK][0]
        said.append((
            "spaces between Chinese or Japanese characters",
            f"{n} of the {of} transcripts holding Chinese or Japanese characters ({100 * n / of:.1f}%) have spaces "
            f"between two of them (first: {place(first)}): word-segmented text, as AISHELL's transcripts are. "
            "Training teaches the LLM to write those spaces (character error rates ignore them, so the CER does not "
            f"show it). Unless the model is to write segmented text, remove them: `{CJK_FIX}`{APPLY}",
        ))  # fmt: skip
    if WIDE in found:
        n, first = found[WIDE]
        said.append((
            "full-width letters and digits",
            f"{_lines(n)} hold{'s' * (n == 1)} full-width Latin letters or digits ('２０２４', 'ＡＩ'; first: "
            f"{place(first)}), which training teaches the LLM to write as they stand; where other lines write "
            "'2024', it learns two spellings of one number (scoring's NFKC reads them alike, so the WER does not "
            "show it; a biasing phrase is boosted in the spelling it is listed in). Unless the model is to write "
            "them, make them ASCII "
            f"(full-width punctuation, '，。', stays): `{WIDE_FIX}`{APPLY}",
        ))  # fmt: skip
    return said


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
