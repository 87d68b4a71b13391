"""Transcripts the LLM's tokenizer cannot write. A byte-level tokenizer (Qwen's, Llama 3's) or one with byte fallback
spells any text; a SentencePiece model without byte fallback, a WordLevel or WordPiece vocabulary maps what it has
no token for to its unk token, and training then teaches the LLM to write that token there, silently: the WER counts
each such word as an error ever after (scoring drops "<unk>"). A BPE with no unk token (and no byte fallback) writes
nothing at all for a character it lacks, and training teaches the LLM to leave it out. The start-up screen
(llmasr.data.screen), `llmasr check` and `llmasr data check` name those transcripts.

It stays a warning, never a refusal by data.max_bad_fraction: that bounds the lines a run cannot train on at all
(skipped), and these train on every other token; a closed vocabulary whose unk stands for the words it lacks may be
meant (a word-level LM's out-of-vocabulary word). The warning says the share, so a corpus mostly written in unk (a
language the tokenizer lacks) reads as the wrong LLM it is.

Cheap at scale: a tokenizer that writes every character (byte-level, byte fallback) or refuses none skips the pass
(read from the tokenizer's own pipeline, not its name). Otherwise each distinct character is asked once where the
model spells characters (BPE, Unigram: a character it has alone it has in any word), each distinct
whitespace-separated word where it spells words (WordLevel, WordPiece after a whitespace split), and a transcript is
tokenized whole, with the offsets that name what became unk (or its pieces against their tokens, for what was
dropped), only where one of those was refused (or a composing normaliser may join its characters)."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable

SHOWN = 10  # characters or words named, most lines first
FIRST = 5  # lines named
_WHITESPACE_SPLITS = {"Whitespace", "WhitespaceSplit", "BertPreTokenizer"}
_COMPOSING = {"NFC", "NFKC", "Precompiled"}  # may join a character to the one before it


def _types(node) -> list[dict]:
    """The components of a normalizer or pre-tokenizer (a Sequence's, flattened)."""
    if not node:
        return []
    inner = node.get("normalizers") or node.get("pretokenizers")
    return [t for n in inner for t in _types(n)] if inner is not None else [node]


def _drops(model: dict) -> bool:
    """Whether a tokenizer.json model writes no token for a character it lacks: a BPE without an unk token."""
    return model.get("type") == "BPE" and not model.get("unk_token")


def pipeline_spec(tokenizer) -> dict:
    """The tokenizer's tokenizers pipeline as its tokenizer.json writes it ({} for a slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def unk_reach(tokenizer, spec: dict | None = None) -> tuple[str | None, str]:
    """(how transcripts are asked: "char", "word" or "line"; None where the tokenizer writes every character, or
    has no unk token and drops none), and why, in words. Read from the tokenizer's pipeline (its tokenizer.json), not
    from its name. `spec`: its pipeline_spec, where already read."""
    backend, unk = getattr(tokenizer, "backend_tokenizer", None), getattr(tokenizer, "unk_token_id", None)
    if backend is None:  # a slow (Python) tokenizer: no pipeline to read, each transcript tokenized whole
        return ("line", "a tokenizer without a tokenizers pipeline") if unk is not None else (None, "no unk token")
    spec = pipeline_spec(tokenizer) if spec is None else spec
    model, vocab = spec.get("model") or {}, backend.get_vocab(with_added_tokens=False)
    kind = model.get("type")
    pre, norm = _types(spec.get("pre_tokenizer")), _types(spec.get("normalizer"))
    if kind == "BPE" and any(p.get("type") == "ByteLevel" for p in pre + norm):
        from tokenizers.pre_tokenizers import ByteLevel

        if all(c in vocab for c in ByteLevel.alphabet()):
            return None, "a byte-level BPE (every byte has a token)"
    if model.get("byte_fallback") and all(f"<0x{b:02X}>" in vocab for b in range(256)):
        return None, f"a {kind} with byte fallback (every byte has a token)"
    drops = _drops(model)
    if unk is None and not drops:
        return None, "no unk token"
    lacks = "a BPE without an unk token or byte fallback" if drops else None
    if kind == "Unigram" or (kind == "BPE" and not model.get("continuing_subword_prefix")
                             and not model.get("end_of_word_suffix")):  # fmt: skip
        return "char", lacks or f"a {kind} without byte fallback: a character it lacks is unk"
    splits = any(p.get("type") in _WHITESPACE_SPLITS or (p.get("type") == "Metaspace" and p.get("split", True))
                 for p in pre)  # fmt: skip
    if splits:
        return "word", lacks or f"a {kind} vocabulary: a word it cannot spell is unk"
    return "line", lacks or f"a {kind} vocabulary without a whitespace split"


def _bare(token: str, at: int, prefix: str, suffix: str) -> str:
    """A BPE token's text without its continuing-subword prefix (after a word's first) or end-of-word suffix."""
    if prefix and at and token.startswith(prefix):
        token = token[len(prefix) :]
    return token[: -len(suffix)] if suffix and token.endswith(suffix) else token


class LLMUnk:
    """`unknown(target)`: what of a transcript the LLM's tokenizer spells as its unk token (or, `drops`, the
    characters it writes no token for), as training tokenizes it (`wrap`: the text its labels spell,
    llmasr.models.prompt.PromptBuilder.answer_text); [] for none. Build it with `of`, which gives None where the
    tokenizer writes any text."""

    def __init__(self, tokenizer, mode: str, why: str, wrap: Callable[[str], str] | None = None, source: str = "",
                 spec: dict | None = None):  # fmt: skip
        self.tokenizer, self.mode, self.why, self.source = tokenizer, mode, why, source
        self.wrap = wrap or str.strip
        spec = pipeline_spec(tokenizer) if spec is None else spec
        self.drops = _drops(spec.get("model") or {})
        self.unk_id = None if self.drops else int(tokenizer.unk_token_id)
        self.unk = "" if self.drops else str(tokenizer.unk_token)
        self._units: dict[str, bool] = {}  # character or word -> whether the tokenizer spells it unk (or drops it)
        self._known: set[str] = set()  # the characters spelled (char mode's fast test)
        norm = _types(spec.get("normalizer")) if mode == "char" else []
        self._composes = any(n.get("type") in _COMPOSING for n in norm)
        # its words added as tokens are matched before the model: never dropped
        self._added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if not t.special]

    @classmethod
    def of(cls, tokenizer, wrap=None, source: str = "the LLM's tokenizer") -> LLMUnk | None:
        spec = pipeline_spec(tokenizer)  # read once, for the reach and the pass
        mode, why = unk_reach(tokenizer, spec)
        return None if mode is None else cls(tokenizer, mode, why, wrap, source, spec=spec)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def _refused(self, unit: str) -> bool:
        got = self._units.get(unit)
        if got is None:
            got = self._units[unit] = bool(self._dropped(unit)) if self.drops else self.unk_id in self._ids(unit)
            if not got and self.mode == "char":
                self._known.add(unit)
        return got

    def unknown(self, target: str) -> list[str]:
        if self.mode == "char":
            refused = any([self._refused(c) for c in set(target) - self._known])  # each new character asked
            if not refused and not (self._composes and not unicodedata.is_normalized("NFKC", target)):
                return []
        elif self.mode == "word" and not any(self._refused(w) for w in set(target.split())):
            return []
        return self._whole(target)

    def _whole(self, target: str) -> list[str]:
        """What became unk (or was dropped) in the transcript tokenized whole, as training tokenizes it."""
        text = self.wrap(target)
        if self.drops:
            return list(dict.fromkeys(self._dropped(text)))
        if getattr(self.tokenizer, "is_fast", False):
            got = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
            spans = [
                text[a:b].strip() for i, (a, b) in zip(got["input_ids"], got["offset_mapping"]) if i == self.unk_id
            ]
            return list(dict.fromkeys(s or self.unk for s in spans))
        if self.unk_id not in self._ids(text):
            return []
        return [w for w in dict.fromkeys(target.split()) if self.unk_id in self._ids(w)] or [target.strip()]

    def _dropped(self, text: str) -> list[str]:
        """The characters of `text` its BPE writes no token for: each pre-tokenized piece against the concatenation
        of the tokens the model gives it, which leaves out what it lacks (tokens' offsets shift past such a gap)."""
        backend = self.tokenizer.backend_tokenizer
        for word in self._added:
            text = text.replace(word, " ")
        text = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
        pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
        model = backend.model
        prefix, suffix = model.continuing_subword_prefix or "", model.end_of_word_suffix or ""
        dropped = []
        for piece in pieces:
            spelled = "".join(_bare(t.value, i, prefix, suffix) for i, t in enumerate(model.tokenize(piece)))
            at = 0  # the tokens spell a subsequence of the piece: what they skip was dropped
            for c in piece:
                if at < len(spelled) and spelled[at] == c:
                    at += 1
                else:
                    dropped.append(c)
        return dropped

    def text(self, lines: int, total: int, first: list[str], parts: list[tuple[str, int]]) -> str:
        """The warning: `lines` of `total` transcripts hold unk, the `first` of them (manifest:line), and what became
        unk with the lines holding it ((text, lines) each)."""
        shown = sorted(parts, key=lambda p: (-p[1], p[0]))
        named = "; ".join(f"{p!r} in {n} line{'s' * (n != 1)}" for p, n in shown[:SHOWN])
        more = f"; and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
        share = f"{100 * lines / total:.2f}%" if total else "?"
        if self.drops:
            what = (
                f"characters {self.source} drops ({self.why}): it writes no token for them, so training teaches the "
                "LLM to leave them out and the WER counts each word that held one as an error"
            )
            named = f"Dropped: {named}"
        else:
            what = (
                f"text {self.source} cannot write ({self.why}): it tokenizes it as its unk token {self.unk!r} (id "
                f"{self.unk_id}), so training teaches the LLM to write {self.unk!r} there and the WER counts each such "
                "word as an error"
            )
            named = f"Spelled {self.unk!r}: {named}"
        return (
            f"{lines} of {total} transcripts ({share}) hold {what}. First: {', '.join(first[:FIRST])}. {named}{more}. "
            "Normalise the transcripts to text the tokenizer has, use an LLM whose tokenizer spells it (a byte-level "
            "one, as Qwen's or Llama 3's), or add the missing tokens to the tokenizer and the LLM's embeddings "
            "(tokenizer.add_tokens, model.resize_token_embeddings, save_pretrained) and point model.llm.path at that "
            "folder"
        )


def unk_of_prompt(prompt) -> LLMUnk | None:
    """The LLMUnk of a prompt builder's tokenizer (llmasr.models.prompt.PromptBuilder), asking of each transcript the
    text its labels spell; None where the tokenizer spells any text (or the builder has no tokenizer to ask)."""
    tokenizer = getattr(prompt, "tokenizer", None)
    return None if tokenizer is None else LLMUnk.of(tokenizer, prompt.answer_text, prompt.source)


def gather_unk(found: dict, unknown: list[str], index) -> None:
    """Count one transcript's unk `unknown` into `found` ({"lines": count, "first": [indices], "parts": {text:
    [lines, first index]}})."""
    if not unknown:
        return
    found["lines"] = found.get("lines", 0) + 1
    first = found.setdefault("first", [])
    if len(first) < FIRST:
        first.append(index)
    for part in unknown:
        found.setdefault("parts", {}).setdefault(part, [0, index])[0] += 1


def merge_unk(into: dict, part: dict) -> None:
    """Add a rank's share of gather_unk's findings (indices ordered) into `into`."""
    if not part:
        return
    into["lines"] = into.get("lines", 0) + part["lines"]
    into["first"] = sorted(into.get("first", []) + part["first"])[:FIRST]
    for text, (n, first) in part["parts"].items():
        seen = into.setdefault("parts", {}).setdefault(text, [0, first])
        seen[0], seen[1] = seen[0] + n, min(seen[1], first)
