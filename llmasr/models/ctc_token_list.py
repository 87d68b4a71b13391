"""Token-list CTC vocabularies: a FunASR tokens.json (a JSON list) or a text file of one token a line (optionally
"token id"), read as FunASR's CharTokenizer reads its list (a word that is an entry is one label, any other is
spelled in its characters) and written back as its sentence_postprocess writes text."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from llmasr.config_io import ConfigError
from llmasr.errors import EVERY_RANK
from llmasr.models.ctc_vocab import BLANK_NAMES, SEPARATOR_NAMES, CTCTokenizer, WordSpelling
from llmasr.text_files import not_utf8

log = logging.getLogger(__name__)


class TokenListCTCTokenizer(CTCTokenizer):
    def __init__(self, path: str, blank_name: str | None = None):
        self.path = path
        self.tokens = read_token_list(path)
        index: dict[str, int] = {}
        for i, tok in enumerate(self.tokens):
            index.setdefault(tok, i)
        self.index = index
        if repeats := [(tok, index[tok], i) for i, tok in enumerate(self.tokens) if index[tok] != i]:
            # the head's row of a later copy is never a target: text spells the token as its first id
            shown = ", ".join(f"{tok!r} at ids {first} and {later}" for tok, first, later in repeats[:3])
            log.warning(
                "CTC vocabulary %s: %d token(s) stand more than once (%s%s): the text is spelled with each one's "
                "first id, and the head's rows of the later ids are never trained towards (a head trained with this "
                "list would have learnt them the same way)", path, len(repeats), shown,
                ", ..." if len(repeats) > 3 else "", extra=EVERY_RANK,
            )  # fmt: skip
        if blank_name is not None and blank_name not in index:
            raise ConfigError(f"model.ctc.blank: {blank_name!r} is not an entry of the token list {path}")
        blank = next((index[b] for b in ([blank_name] if blank_name else BLANK_NAMES) if b in index), None)
        self.blank_id = len(self.tokens) if blank is None else blank
        self.vocab_size = len(self.tokens) + (1 if blank is None else 0)
        self.unk_id = index.get("<unk>")
        self.sep = next((s for s in SEPARATOR_NAMES if s in index), None)

    def _char_id(self, ch: str, word: str) -> int:
        if ch in self.index:
            return self.index[ch]
        if self.unk_id is not None:
            return self.unk_id
        other = next((c for c in (ch.lower(), ch.upper()) if c != ch and c in self.index), None)
        cased = f" (the list has {other!r}: write the transcripts in its case)" if other is not None else ""
        raise ValueError(
            f"CTC vocabulary {self.path}: character {ch!r} (in {word!r}) is not in the token list{cased} and the list "
            f"has no <unk>; add it to the list or add an <unk> token"
        )

    def unknown_parts(self, word: str) -> list[str]:
        if word in self.index or self.unk_id is None:  # without <unk> encode refuses the word instead
            return []
        return [ch for ch in word if ch not in self.index]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        index = self.index
        for n, word in enumerate(text.split()):
            if n and self.sep is not None:
                ids.append(index[self.sep])
            if word in index:
                ids.append(index[word])
            else:
                try:
                    chars = list(map(index.__getitem__, word))
                except KeyError:  # a character the list lacks: <unk>, or the error naming it
                    chars = [self._char_id(ch, word) for ch in word]
                ids += chars
        return ids

    def word_spelling(self) -> WordSpelling:
        """Word by word by construction: each word is looked up (or spelled in characters) alone, the separator
        token between two."""
        return WordSpelling(self.encode, self.encode, (self.index[self.sep],) if self.sep is not None else ())

    spells_separator = True  # encode puts the list's separator token between words (a seg_dict's pieces do not)

    def encode_unit(self, unit: str, spaced: bool) -> tuple[list[int], list[int]]:
        sep = [self.index[self.sep]] if spaced and self.sep is not None else []
        return self.encode(unit), sep

    def decode(self, ids: Sequence[int]) -> str:
        """Text as FunASR's sentence_postprocess writes it: <unk>, <s>, </s> and <OOV> left out, "@@" pieces glued
        to the next one, words spaced, no space next to a CJK piece (a character, or a word of them) nor between two
        pieces of digits (a number the seg_dict spells digit by digit, "35"), and letters spelled one by one ("a b c":
        an abbreviation the seg_dict lacks) joined into one upper-case word, "ABC" (a separator token is a space).
        Where FunASR glues digits to a Latin word too ("iphone15") or spaces a character outside the basic CJK block
        ("𠮶 hello"), a space is kept, and none is added."""
        pieces = [self.tokens[int(i)] for i in ids if int(i) != self.blank_id and 0 <= int(i) < len(self.tokens)]
        pieces = [p for p in pieces if p not in DROPPED_PIECES]
        if self.sep is not None and self.spells_separator:
            return re.sub(r" +", " ", "".join(" " if p == self.sep else p.removesuffix("@@") for p in pieces)).strip()
        text = ""
        for prev, p in zip([None, *pieces], pieces):
            glue = prev is None or prev.endswith("@@") or _is_cjk(prev) or _is_cjk(p) or _digits(prev) and _digits(p)
            text += ("" if glue else " ") + p.removesuffix("@@")
        # a reference's "ABC" is one unit, and "a b c" had scored as three (one substitution, two insertions)
        return _SPELLED_LETTERS.sub(lambda m: m.group().replace(" ", "").upper(), text)


DROPPED_PIECES = frozenset({"<unk>", "<s>", "</s>", "<OOV>"})  # sentence_postprocess leaves them out of the text
# Two or more single Latin letters one space apart, as FunASR's abbr_dispose finds them
_SPELLED_LETTERS = re.compile(r"(?<![A-Za-z])[A-Za-z](?: [A-Za-z])+(?![A-Za-z])")


def _digits(piece: str) -> bool:
    return piece.isascii() and piece.isdigit()


def _is_cjk(piece: str) -> bool:
    """A piece of CJK characters only: a word of them ("你好") glues to its neighbours as a character does."""
    return bool(piece) and all(ord(ch) >= 0x2E80 for ch in piece)


def _token_id(fields: list[str]) -> bool:
    """Whether a token list's line (split) is "token id"."""
    return len(fields) == 2 and fields[1].lstrip("-").isdigit()


def read_token_list(path: str) -> list[str]:
    """A FunASR tokens.json (JSON list) or a text file with one token per line (optionally "token id")."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a BOM is not part of the first token
    except UnicodeDecodeError as err:  # a list saved in a local code page (GBK): the raw error named no file
        raise ConfigError(f"CTC vocabulary {path}: {not_utf8(err, path)}") from None
    tokens = None
    if text.lstrip().startswith("["):  # JSON, or a line list whose first token is e.g. [PAD]
        try:
            tokens = json.loads(text)
        except json.JSONDecodeError as err:
            if Path(path).suffix == ".json":
                raise ConfigError(f"CTC vocabulary {path}: not a valid JSON token list: {err}") from err
        if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            raise ConfigError(f"CTC vocabulary {path}: the JSON list must hold only strings")
    if tokens is None:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        pairs = [ln.split() for ln in lines]
        if pairs and all(_token_id(p) for p in pairs):
            ordered = sorted(pairs, key=lambda p: int(p[1]))
            for want, (token, given) in enumerate(ordered):  # an id is a head row: a gap would shift every later one
                if int(given) != want:
                    raise ConfigError(
                        f"CTC vocabulary {path}: ids must run 0, 1, 2, ... without a gap or a repeat; after "
                        f"{want} tokens the next is {token!r} with id {given} (expected {want})"
                    )
            tokens = [p[0] for p in ordered]
        else:
            # a token is cut from text at spaces, so one holding a space is never met: a "token id" file with a
            # line of another form had been read as a plain list, each "token id" line one token never met
            with_ids = any(_token_id(p) for p in pairs)
            for number, line in enumerate(text.splitlines(), 1):
                fields = line.split()
                if with_ids and fields and not _token_id(fields):
                    raise ConfigError(
                        f"CTC vocabulary {path}, line {number}: {line.strip()!r} is not 'token id', as other lines are"
                    )
                if len(fields) > 1 and not with_ids:
                    raise ConfigError(
                        f"CTC vocabulary {path}, line {number}: {line.strip()!r} is not one token (a token holds no "
                        "space): one token a line, or 'token id' on every line"
                    )
            tokens = lines
    if not tokens:
        raise ConfigError(f"CTC vocabulary {path}: no tokens")
    return tokens
