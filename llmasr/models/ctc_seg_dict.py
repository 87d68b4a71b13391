"""A token list read through a FunASR seg_dict (`model.ctc.seg_dict`): Paraformer-large's and SeACo-Paraformer's
tokenizer (CharTokenizer with `seg_dict_file`), whose tokens.json holds Chinese characters and English word pieces
("he@@", "llo").

FunASR's rule (funasr.tokenizer.char_tokenizer.seg_tokenize), which this follows: the text is split on spaces and
each word lower-cased; a word the seg_dict lists becomes its pieces; any other word that starts with a Chinese
character, a Latin letter or a digit is looked up character by character (a character the seg_dict lacks becomes
<unk>), and any other word becomes <unk>. Without the seg_dict an English word outside the list would be spelled
in letters and read back letter by letter. One difference: runs of spaces separate words here, where FunASR's
split on single spaces makes an <unk> of the empty word between two of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmasr.config_io import ConfigError
from llmasr.models.ctc_token_list import TokenListCTCTokenizer
from llmasr.models.ctc_vocab import WordSpelling

# FunASR's pattern: the word starts with a Chinese character, a Latin letter or a digit
_LOOKED_UP_BY_CHARACTER = re.compile(r"[\u4E00-\u9FA5A-Za-z0-9]")


def read_seg_dict(path: str | Path) -> dict[str, list[str]]:
    """`word piece piece ...` lines -> {word: pieces}; a word listed twice keeps its last line, as in FunASR."""
    out: dict[str, list[str]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"model.ctc.seg_dict: cannot read {path}: {err}") from err
    for line in lines:
        fields = line.split()
        if fields:
            out[fields[0]] = fields[1:]
    if not out:
        raise ConfigError(f"model.ctc.seg_dict: {path} holds no entries")
    return out


class SegDictCTCTokenizer(TokenListCTCTokenizer):
    """A token list whose text is cut into its entries by a seg_dict, as FunASR's CharTokenizer cuts it."""

    def __init__(self, path: str, seg_dict: str, blank_name: str | None = None):
        super().__init__(path, blank_name)
        self.seg_dict_path = seg_dict
        self.seg_dict = read_seg_dict(seg_dict)
        strays = sorted({p for pieces in self.seg_dict.values() for p in pieces if p not in self.index})
        if strays and self.unk_id is None:
            raise ConfigError(
                f"model.ctc.seg_dict: {seg_dict} spells words with pieces the token list {path} lacks (e.g. "
                f"{', '.join(map(repr, strays[:5]))}) and the list has no <unk>; use the seg_dict of that token list"
            )

    def pieces(self, text: str) -> list[str]:
        """FunASR's seg_tokenize over `text`'s words."""
        out: list[str] = []
        for word in text.split():
            word = word.lower()
            if word in self.seg_dict:
                out += self.seg_dict[word]
            elif _LOOKED_UP_BY_CHARACTER.match(word):
                for ch in word:
                    out += self.seg_dict.get(ch, ["<unk>"])
            else:
                out.append("<unk>")
        return out

    def unknown_parts(self, word: str) -> list[str]:
        """The word when the seg_dict lacks it, or spells it with a piece the list lacks; looked up by character
        (a CJK word), its characters that are."""
        if self.unk_id is None:  # encode refuses such a word instead
            return []
        if _LOOKED_UP_BY_CHARACTER.match(word.lower()) and word.lower() not in self.seg_dict:
            return [ch for ch in word.lower() if not self._spelled(ch)]
        return [] if self._spelled(word) else [word]

    def _spelled(self, text: str) -> bool:
        """Whether encode spells `text` without <unk>: no piece of it is <unk> or missing from the list."""
        pieces = self.pieces(text)
        return "<unk>" not in pieces and all(p in self.index for p in pieces)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.pieces(text):
            if piece in self.index:
                ids.append(self.index[piece])
            elif self.unk_id is not None:
                ids.append(self.unk_id)
            else:
                raise ValueError(
                    f"CTC vocabulary {self.path}: {piece!r} (from {text!r} through {self.seg_dict_path}) is not in "
                    "the token list and the list has no <unk>"
                )
        return ids

    spells_separator = False  # pieces carry their own joins ("@@"): decode spaces words as FunASR does

    def word_spelling(self) -> WordSpelling:
        """Word by word by construction (pieces looks each word up alone), no separator between."""
        return WordSpelling(self.encode, self.encode)

    def encode_unit(self, unit: str, spaced: bool) -> tuple[list[int], list[int]]:
        return self.encode(unit), []  # pieces carry their own joins ("@@"): no separator token
