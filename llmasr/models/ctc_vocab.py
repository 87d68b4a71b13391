"""CTC vocabularies: how a CTC head's label ids spell text (`model.ctc.vocab`; built by
llmasr.models.ctc.build_ctc_tokenizer).

- "llm": the LLM tokenizer's ids; blank appended as id len(tokenizer).
- a path ending ".model": a sentencepiece model; blank = its <blank>/<blk> piece if it has one, else appended.
- a path ending ".tiktoken": a byte-level BPE file (llmasr.models.ctc_tiktoken); blank = the head's last output.
- any other path: a token list (llmasr.models.ctc_token_list: one token per line, optionally "token id" as in
  units.txt, or a FunASR tokens.json JSON list). Blank = the index of "<blank>"/"<blk>" if listed, else appended.
  Text is split on spaces; a word in the list is one token, any other word is split into characters. Characters
  not in the list map to "<unk>" when listed, else raise an error naming the character and the file. If the list
  has a word separator ("<space>", "▁" or "|") it is placed between words.

`blank` (model.ctc.blank) names the entry of a sentencepiece model or token list that is the blank instead: a head
trained with another one as its blank (SenseVoiceSmall's CTC head uses `<unk>`, id 0).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Sequence
from typing import NamedTuple

from llmasr.config_io import ConfigError
from llmasr.models.prompt import spelled

BLANK_NAMES = ("<blank>", "<blk>")
SEPARATOR_NAMES = ("<space>", "▁", "|")
# The pre-tokenizer regexes (GPT-2's, Qwen2's, Llama 3's) under which a piece never spans a space but for starting
# at one, and no match looks behind: a line's pieces are its words', each but the first with the space before it
WORDWISE_SPLITS = frozenset(
    {
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
        r"""|\s*[\r\n]+|\s+(?!\S)|\s+""",
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
        r"""|\s*[\r\n]+|\s+(?!\S)|\s+""",
    }
)
_WORDWISE_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD"}  # nothing composes across a space


def ctc_collapse(ids: Sequence[int], blank_id: int) -> list[int]:
    """Frame-wise ids -> label ids: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for i in ids:
        i = int(i)
        if i != prev and i != blank_id:
            out.append(i)
        prev = i
    return out


class WordSpelling(NamedTuple):
    """How a vocabulary spells a transcript word by word: encode(text) is first(w1), between, rest(w2), between,
    rest(w3), ... over text.split(), a word's labels independent of its neighbours'. `spaced`: only where the words
    stand one " " apart (rest spells a word with the space before it); other whitespace is encoded whole."""

    first: Callable[[str], list[int]]
    rest: Callable[[str], list[int]]
    between: tuple[int, ...] = ()
    spaced: bool = False


class CTCTokenizer:
    """A CTC vocabulary: `vocab_size` counts the blank; ids are in [0, vocab_size)."""

    vocab_size: int
    blank_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Label ids (blanks are dropped) -> text."""
        raise NotImplementedError

    def decode_ctc(self, ids: Sequence[int]) -> str:
        """Raw frame-wise (argmax) ids -> text: repeats merged, blanks dropped."""
        return self.decode(ctc_collapse(ids, self.blank_id))

    def encode_unit(self, unit: str, spaced: bool) -> tuple[list[int], list[int]]:
        """One unit of a transcript (a word, or a character of a script written without spaces) spelled as in running
        text, after a space when `spaced`: (its labels, the word-separator labels before it)."""
        return self.encode((" " if spaced else "") + unit), []

    def unknown_parts(self, word: str) -> list[str]:
        """The characters or words of one whitespace-free `word` that encode spells <unk>: the head learns <unk>
        for them and its text leaves them out. None here: a byte-level vocabulary spells every text."""
        return []

    def word_spelling(self) -> WordSpelling | None:
        """How encode spells a transcript word by word (so a count of its labels may ask each distinct word once);
        None where a word's labels may depend on its neighbours."""
        return None


class LLMCTCTokenizer(CTCTokenizer):
    """The LLM's own (Hugging Face) tokenizer, with the blank appended after its last id."""

    def __init__(self, tokenizer, lead: str = ""):
        self.tokenizer = tokenizer
        self.blank_id = len(tokenizer)
        self.vocab_size = self.blank_id + 1
        # the whitespace the chat template writes before an answer (PromptBuilder.answer_lead): the LLM's target
        # spells its first word with it (" the", not "t" "he"), and CTC guidance scores the LLM's tokens as labels
        self.lead = lead

    def encode(self, text: str) -> list[int]:
        # spelled as the LLM's target is (prompt.PromptBuilder): special-token text is text
        return list(self.tokenizer(self.lead + text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def word_spelling(self) -> WordSpelling | None:
        """Word by word where the pipeline is one whose pieces never span a space (a byte-level BPE split by GPT-2's,
        Qwen2's or Llama 3's regex, a Unicode normal form at most) and no added token it matches (the non-special
        ones: special-token text is text) holds whitespace or strips it; read from its tokenizer.json."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow tokenizer: no pipeline to read
            return None
        spec = json.loads(backend.to_str())
        model, pre = spec.get("model") or {}, _components(spec.get("pre_tokenizer"))
        if model.get("type") != "BPE" or model.get("dropout") or not (_gpt2_split(pre) or _regex_then_bytes(pre)):
            return None
        if any(n.get("type") not in _WORDWISE_NORMALIZERS for n in _components(spec.get("normalizer"))):
            return None
        for token in spec.get("added_tokens") or []:  # matched before the pipeline: one may join or strip a space
            if not token.get("special") and (
                token.get("lstrip") or token.get("rstrip") or any(c.isspace() for c in token["content"])
            ):
                return None

        def rest(word: str) -> list[int]:
            return list(self.tokenizer(" " + word, add_special_tokens=False, split_special_tokens=True)["input_ids"])

        return WordSpelling(self.encode, rest, spaced=True)

    def decode(self, ids: Sequence[int]) -> str:
        text = spelled(self.tokenizer, [int(i) for i in ids if int(i) != self.blank_id])
        return text[len(self.lead) :] if self.lead and text.startswith(self.lead) else text

    def spell_units(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[range]] | None:
        """`text`'s labels as the head learned them, the whole text tokenized at once (byte-level BPE merges the
        characters of a script written without spaces: "你好" is one token, not "你" and "好"), each with the units
        its characters cover (indices into `spans`, (start, end) characters); None from a tokenizer without
        offsets (a slow one: units are then spelled one by one)."""
        n = len(self.lead)
        try:
            enc = self.tokenizer(
                self.lead + text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
        except (NotImplementedError, ValueError, TypeError):
            return None
        offsets = [(max(a - n, 0), max(b - n, 0)) for a, b in enc["offset_mapping"]]  # in `text`, the lead before it
        return label_owners([(t, a, b) for t, (a, b) in zip(enc["input_ids"], offsets)], spans)


def _components(node) -> list[dict]:
    """The components of a tokenizer.json normalizer or pre-tokenizer (a Sequence's, flattened)."""
    if not node:
        return []
    inner = node.get("normalizers") or node.get("pretokenizers")
    return [c for n in inner for c in _components(n)] if inner is not None else [node]


def _gpt2_split(pre: list[dict]) -> bool:
    """ByteLevel alone, splitting by its own (GPT-2's) regex."""
    return len(pre) == 1 and pre[0].get("type") == "ByteLevel" and pre[0].get("use_regex", True)


def _regex_then_bytes(pre: list[dict]) -> bool:
    """A Split by one of WORDWISE_SPLITS keeping each match a piece, then ByteLevel without its own split."""
    if len(pre) != 2 or [p.get("type") for p in pre] != ["Split", "ByteLevel"] or pre[1].get("use_regex", True):
        return False
    split = pre[0]
    regex = (split.get("pattern") or {}).get("Regex")
    return regex in WORDWISE_SPLITS and split.get("behavior") == "Isolated" and not split.get("invert")


def label_owners(tokens: list[tuple[int, int, int]], spans: list[tuple[int, int]]) -> tuple[list[int], list[range]]:
    """Labels given as (id, start, end) characters of a text -> (ids, the units each covers: indices into `spans`,
    (start, end) characters; a label of no width covers the character it stands at)."""
    labels, owners = [], []
    for token, a, b in tokens:
        covered = [k for k, (s, e) in enumerate(spans) if s < max(b, a + 1) and e > a]
        labels.append(int(token))
        owners.append(range(covered[0], covered[-1] + 1) if covered else range(0))
    return labels, owners


def byte_to_char_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) UTF-8 byte offsets into `text` -> the characters they touch (a part of a character counts)."""
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8")))
    out = []
    for a, b in spans:
        first = bisect.bisect_right(starts, a) - 1
        out.append((first, max(first, bisect.bisect_left(starts, b))))
    return out


class SentencePieceCTCTokenizer(CTCTokenizer):
    def __init__(self, path: str, blank: str | None = None):
        import sentencepiece as spm

        self.path = path
        try:
            self.sp = spm.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as err:  # sentencepiece's own error ("could not parse ModelProto")
            raise ConfigError(f"CTC vocabulary {path}: not a readable sentencepiece model ({err})") from err
        size = self.sp.get_piece_size()
        pieces = [blank] if blank is not None else BLANK_NAMES
        own = [i for i in map(self.sp.piece_to_id, pieces) if self.sp.id_to_piece(i) in pieces]
        if blank is not None and not own:
            raise ConfigError(f"model.ctc.blank: {blank!r} is not a piece of the sentencepiece model {path}")
        self.blank_id = own[0] if own else size
        self.vocab_size = size if own else size + 1

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text, out_type=int))

    def unknown_parts(self, word: str) -> list[str]:
        for kind in ("immutable_proto", "proto"):  # the name of the pieces' form before and after sentencepiece 0.2.1
            try:
                pieces = self.sp.encode(word, out_type=kind).pieces
            except (ValueError, RuntimeError, TypeError, AttributeError):
                continue
            unk = self.sp.unk_id()
            return [p.surface for p in pieces if p.id == unk and p.surface]
        return []

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) != self.blank_id])

    def spell_units(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[range]] | None:
        """`text`'s labels as the head learned them, the whole text encoded at once (a piece may merge characters of
        a script written without spaces, and a character alone gets the "▁" a text's start gets), with the units
        each covers (LLMCTCTokenizer.spell_units); None when this sentencepiece gives no offsets."""
        for kind in ("immutable_proto", "proto"):  # the name of the offsets' form before and after sentencepiece 0.2.1
            try:
                pieces = self.sp.encode(text, out_type=kind).pieces
            except (ValueError, RuntimeError, TypeError, AttributeError):
                continue
            chars = byte_to_char_spans(text, [(p.begin, p.end) for p in pieces])
            return label_owners([(p.id, a, b) for p, (a, b) in zip(pieces, chars)], spans)
        return None
