"""What a tokenizer's tokens spell, read once for the hotword boost (llmasr.models.hotword_boost, hotword_text): each
token's text and bytes, the tokens indexed by the characters they hold, and how each token steps a byte match (its
characters and their word classes, worked out once here rather than at every search step). Also the UTF-8 and word
character rules both matches read.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import weakref
from typing import NamedTuple

import torch

from llmasr.text_units import is_no_space_char

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


def is_word_char(ch: str) -> bool:
    """A character a word goes on with, for both matches' word rules: a letter, mark or digit (Unicode's L, M and N
    categories, as a regular expression's \\w reads them) of a script written with spaces."""
    return unicodedata.category(ch)[0] in "LMN" and not is_no_space_char(ch)


_is_word = functools.lru_cache(maxsize=1 << 14)(is_word_char)


@functools.lru_cache(maxsize=4096)
def word_bytes(data: bytes) -> bool:
    """Whether `data` is one whole character that is_word_char accepts (bytes that are none, or a character cut
    short, are no word character)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(text) == 1 and is_word_char(text)


@functools.lru_cache(maxsize=1 << 14)
def char_word(data: bytes) -> bool | None:
    """Whether bytes `data`, as many as their first byte asks for, are a word character (None: they are no
    character)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return is_word_char(text) if len(text) == 1 else None


def last_lead(data) -> int:
    """How far from the end of UTF-8 bytes `data` its last character's first byte stands (0: none within a
    character's length)."""
    for back in range(1, min(4, len(data)) + 1):
        if data[-back] & 0xC0 != 0x80:
            return back
    return 0


def _unfinished(data: bytes) -> bytes:
    """The bytes at the end of `data` that begin a character they do not finish (b"": none)."""
    back = last_lead(data)
    return data[-back:] if back and back < char_length(data[-back]) else b""


def char_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _units(data: bytes):
    """(start, end, whole) of each character of UTF-8 bytes `data`: a first byte and the continuation bytes it asks
    for. A character cut short by a byte that continues none, and a stray continuation byte, are characters of their
    own (no word characters, and none a phrase holds); only the last may be unfinished (not whole: bytes to come may
    finish it)."""
    i, n = 0, len(data)
    while i < n:
        need = 1 if data[i] & 0xC0 == 0x80 else char_length(data[i])
        j = i + 1
        while j < n and j - i < need and data[j] & 0xC0 == 0x80:
            j += 1
        yield i, j, j - i == need or j < n
        i = j


def _chars(data: bytes) -> tuple[tuple[bytes, bool, bool | None], ...]:
    """(bytes, a word character, whole) of each character of `data` (_units): whole is True for a character, False
    for bytes that are none, None for the last one when unfinished."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # part of a character, or bytes that are none
        pass
    else:
        return tuple((ch.encode("utf-8"), _is_word(ch), True) for ch in text)
    out = []
    for start, end, whole in _units(data):
        char = data[start:end]
        one = whole and word_bytes(char) or whole and _is_char(char)
        out.append((char, whole and word_bytes(char), True if one else False if whole else None))
    return tuple(out)


# _chars kept per text: what a token with no Plan, or one finishing a character the text before it began, steps
split_chars = functools.lru_cache(maxsize=1 << 15)(_chars)


def _is_char(data: bytes) -> bool:
    try:
        return len(data.decode("utf-8")) == 1
    except UnicodeDecodeError:
        return False


class Plan(NamedTuple):
    """How a token steps a byte match where no character is begun (hotword_text.step_token), its characters and
    their classes read once, with the tokenizer's index: `steps`, its bytes when none of its characters is a word
    character (each stepped as no word's, the old per-byte stepping), else (byte, joining, after a word) per byte,
    the last None where the text before the token says it; `tail`, the bytes of a character it begins and does not
    finish; `after`, whether its last whole character is a word character (None: it has none)."""

    steps: bytes | tuple[tuple[int, bool, bool | None], ...]
    tail: bytes
    after: bool | None


_STEPS: dict[tuple, tuple] = {}  # Plan steps, one tuple each: a vocabulary's plans share them


def token_plan(data: bytes | None) -> Plan | None:
    """The Plan of a token spelling `data`; None for one that spells nothing, or holds bytes that are no character (a
    character cut short, a stray continuation byte), which step_token splits as it meets them."""
    if not data:
        return None
    try:
        if not any(map(_is_word, data.decode("utf-8"))):  # most tokens: whole characters, none of a word
            return Plan(data, b"", False)
    except UnicodeDecodeError:
        pass
    parts = _chars(data)
    tail = parts[-1][0] if parts[-1][2] is None else b""
    chars = parts[:-1] if tail else parts
    if not all(whole for _, _, whole in chars):
        return None
    if not any(word for _, word, _ in chars):
        return Plan(data[: len(data) - len(tail)], tail, False if chars else None)
    steps, after = [], None
    for char, word, _ in chars:
        for byte in char:
            step = (byte, word, after if word else False)
            steps.append(_STEPS.setdefault(step, step))
        after = word
    return Plan(tuple(steps), tail, after)


def _byte_level_alphabet() -> dict[str, int]:
    """The printable stand-in of each byte in byte-level BPE vocabularies (GPT-2's convention, which Qwen and Llama-3
    keep): printable Latin-1 bytes stand for themselves, the others for 256, 257, ... in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def token_texts(tokenizer) -> list[str]:
    """Each token's text as it reads after another token (SentencePiece drops a word's space when its token is
    decoded alone, "▁is" reading "is"); "" where a tokenizer cannot say. Kept for the tokenizer (kept_for)."""

    def decoded():
        try:
            anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
            head = tokenizer.decode(anchor)
            texts = tokenizer.batch_decode([anchor + [t] for t in range(len(tokenizer))])
        except (AttributeError, TypeError, NotImplementedError, IndexError):
            return [""] * len(tokenizer)
        return [t[len(head) :] if t.startswith(head) else "" for t in texts]

    return kept_for(tokenizer, "texts", decoded)


def opener_chars(tokenizer) -> dict[str, frozenset[str]]:
    """Per word character w, the characters c that one of the tokenizer's tokens joins to a word beginning with w
    (its text c, w, ...; c neither a word character nor whitespace). Qwen's and GPT-4-style pre-tokenizers keep one
    such character with the letters after it ('(ann', '"Qwen', '-based'), so a phrase written right after it may
    begin inside a token that starts with c. Kept for the tokenizer (kept_for)."""

    def read():
        found: dict[str, set[str]] = {}
        for t in token_texts(tokenizer):
            if len(t) >= 2 and not t[0].isspace() and not _is_word(t[0]) and _is_word(t[1]):
                found.setdefault(t[1], set()).add(t[0])
        return {w: frozenset(cs) for w, cs in found.items()}

    return kept_for(tokenizer, "openers", read)


# What is read once from a tokenizer's vocabulary (its texts, bytes, index and token edges, the tries of its recent
# lists), held weakly by the tokenizer rather than as its attributes: a tokenizer pickled into loader workers does not
# carry them.
_BY_TOKENIZER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def kept_for(tokenizer, name: str, make):
    """`make()`, made once for `tokenizer` and kept under `name` until tokens are added to it (add_tokens: all that
    was read from it is then read again); a tokenizer that cannot be held weakly gets it made afresh."""
    try:
        kept = _BY_TOKENIZER.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be held weakly, or hashed: read afresh
        return make()
    size = len(tokenizer)
    if kept.get("size") != size:  # tokens added since (add_tokens): what was read is stale
        kept.clear()
        kept["size"] = size
    if name not in kept:
        kept[name] = make()
    return kept[name]


def token_bytes(tokenizer) -> list[bytes | None]:
    """Per token id, the bytes its text adds (None: a special token, which spells no text). Read from the vocabulary
    (byte-level pieces, SentencePiece pieces with byte fallback, or pieces that are bytes, as tiktoken-based
    tokenizers give), so a token holding part of a character has its bytes too; checked against the tokenizer's own
    decoding, which stands in where the two disagree (a vocabulary of another kind: a token that holds part of a
    character then spells nothing). An added token that is not special spells its decoded text."""
    return kept_for(tokenizer, "bytes", lambda: _read_bytes(tokenizer))


def _read_bytes(tokenizer) -> list[bytes | None]:
    size = len(tokenizer)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, token in added.items() if getattr(token, "special", True)}
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    table = _byte_level_alphabet()
    # an added token's piece is its text, not the vocabulary's spelling: its decoding says what it spells
    plain = [i for i in range(size) if i not in special and i not in added and pieces[i]]
    named = [i for i in plain if isinstance(pieces[i], str)]
    byte_level = all(ch in table for i in named for ch in pieces[i])
    spelled: dict[int, bytes | None] = {i: None for i in range(size) if i in added and i not in special}
    for i in plain:
        piece = pieces[i]
        if isinstance(piece, (bytes, bytearray)):  # tiktoken-based tokenizers (Qwen-1's): the piece is its bytes
            spelled[i] = bytes(piece)
        elif not isinstance(piece, str):
            spelled[i] = None  # a piece of no known kind: its decoding stands in
        elif byte_level:
            spelled[i] = bytes(table[ch] for ch in piece)
        else:
            byte = _BYTE_TOKEN.fullmatch(piece)
            spelled[i] = bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode()
    texts = token_texts(tokenizer)
    out: list[bytes | None] = [None] * size
    for i, data in spelled.items():
        if data is None:
            agrees = False
        else:
            try:
                agrees = data.decode("utf-8") == texts[i]
            except UnicodeDecodeError:  # part of a character: its decoding cannot show its bytes
                agrees = "\ufffd" in texts[i] or not texts[i]
        if agrees:
            out[i] = data
        elif texts[i] and "\ufffd" not in texts[i]:
            out[i] = texts[i].encode()
    return out


class TokenIndex:
    """A tokenizer's tokens by what they spell: `holding[ch]`, the ids whose text holds character `ch` (characters of
    scripts written without spaces: most text phrases begin with one; `starting` finds the others); `partial[b]`, the
    ids whose bytes begin with byte `b` and are no whole text (part of a character at an edge); `first[ch]`, the ids
    whose text begins with the whole character `ch`; `trailing[bs]`, the ids whose bytes end in `bs`, the first bytes
    of a character they do not finish; `continuing`, the ids whose bytes begin inside a character (a continuation
    byte); `joining`, per id, whether its bytes begin with a whole word character (it carries a word on); `plans`,
    per id, how it steps a byte match (token_plan); `continued`, per continuing id, its leading continuation bytes
    (those that finish a character the text before it began) and the Plan of the bytes after them (steps b"": none)."""

    def __init__(self, spelled: list[bytes | None]):
        self.bytes = spelled
        self.holding: dict[str, list[int]] = {}
        self.partial: dict[int, list[int]] = {}
        self.first: dict[str, list[int]] = {}
        self.trailing: dict[bytes, list[int]] = {}
        self.texts = [data.decode("utf-8", errors="replace") if data else "" for data in spelled]
        self.joining = torch.tensor([bool(data) and _joins(data) for data in spelled], dtype=torch.bool)
        self.continuing = [i for i, data in enumerate(spelled) if data and data[0] & 0xC0 == 0x80]
        self.plans = [token_plan(data) for data in spelled]
        self.continued: dict[int, tuple[int, Plan | None]] = {}
        for i in self.continuing:
            data, lead = spelled[i], 1
            while lead < len(data) and data[lead] & 0xC0 == 0x80:
                lead += 1
            self.continued[i] = (lead, token_plan(data[lead:]) if lead < len(data) else Plan(b"", b"", None))
        self._starting: dict[str, list[int]] = {}
        self._finishing: dict[int, dict[bytes, tuple[list[int], list[int], list[int]]]] = {}
        for i, data in enumerate(spelled):
            if not data:
                continue
            begun = _unfinished(data)
            if begun:
                self.trailing.setdefault(begun, []).append(i)
            text = self.texts[i]
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.partial.setdefault(data[0], []).append(i)
            else:
                self.first.setdefault(text[0], []).append(i)
            for ch in set(text):
                if is_no_space_char(ch):
                    self.holding.setdefault(ch, []).append(i)

    def finishing(self, need: int) -> dict[bytes, tuple[list[int], list[int], list[int]]]:
        """The continuing ids by the bytes they give a character `need` bytes short of whole (their first `need`
        continuation bytes, or all, when fewer), each group as (its ids; those whose step no group decides: the ones
        leaving the character unfinished, and those whose rest has no Plan; those that finish it and go on with a
        word character, which a word character finished carries on). Found once per `need`."""
        found = self._finishing.get(need)
        if found is None:
            found = self._finishing[need] = {}
            for i, (lead, rest) in self.continued.items():
                data = self.bytes[i]
                every, alone, worded = found.setdefault(data[: min(lead, need)], ([], [], []))
                every.append(i)
                if rest is None or lead < need and lead == len(data):
                    alone.append(i)
                elif lead == need and rest.steps.__class__ is not bytes and rest.steps[0][2] is None:
                    worded.append(i)
        return found

    def starting(self, ch: str) -> list[int]:
        """The ids whose text holds `ch` where a phrase may begin with it: anywhere, but for a word character only at
        a word's start (the text's first character, or after one that is no word character). Found once per
        character outside `holding`."""
        if is_no_space_char(ch):
            return self.holding.get(ch, [])
        found = self._starting.get(ch)
        if found is None:
            found = self._starting[ch] = [i for i, text in enumerate(self.texts) if _begins_in(text, ch)]
        return found


def _joins(data: bytes) -> bool:
    """Whether bytes `data` begin with a whole word character (a character they only begin is taken for none, as
    step_token takes it until it is whole)."""
    start, end, whole = next(_units(data))
    return whole and word_bytes(data[start:end])


def _begins_in(text: str, ch: str) -> bool:
    k = text.find(ch)
    while k >= 0:
        if k == 0 or not is_word_char(ch) or not is_word_char(text[k - 1]):
            return True
        k = text.find(ch, k + 1)
    return False


def token_index(tokenizer) -> TokenIndex:
    return kept_for(tokenizer, "index", lambda: TokenIndex(token_bytes(tokenizer)))
