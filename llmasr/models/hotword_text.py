"""Hotword boosting for phrases of scripts written without spaces (Chinese, Japanese, Thai...), matched on the text's
bytes rather than on token ids.

A byte-level BPE tokenizer merges the characters of such a script across a phrase's edges: "通义千问" alone is two
tokens, but "我用通义千问吧" may be "我用通义" "千问吧", and no token of the phrase's own spelling appears. Matching the
bytes every token spells finds the phrase however the text around it was cut, a character split over two byte tokens
included. The matching is llmasr.models.hotword_boost's (leftmost first, longest first, a broken-off match given back),
over a trie of the phrases' UTF-8 bytes whose nodes are worth the characters they hold: such a phrase earns the
boost once per character (its tokens depend on the text around it), a character's share spread over its bytes, so
that a character spelled in byte tokens pulls the search from its first byte on. A token steps the match through all
its bytes.

What each token earns after a match standing at a node is stepped only for the tokens that can go on with it: those
beginning with a byte that the match, or a place past the root it falls back to, goes on with. Any other token ends
the match, earning what the end token earns, and then earns what it would at the root, where only the tokens holding
a phrase's first character, or ending in some of its bytes, earn anything (text_gains; tests/models/test_hotword_text.py
checks every token).

A phrase with Latin letters or digits at an edge ("iPhone手机", "小米14") keeps the token match's word rules on bytes:
it begins only where no word is under way and is complete only where its word ends, a word's letters and digits
being ASCII's here. A phrase of a spaced script that shares text with such a phrase ("iPhone" beside "iPhone手机")
is matched on bytes with it where both can be found sharing it (byte_phrases), so that no text is paid twice; one
with another spaced script's letter at an edge ("Café" beside "Café咖啡") keeps those it shares text with on token
ids instead.
"""

from __future__ import annotations

import re
import unicodedata
import weakref

import torch

from llmasr.models.hotword_trie import Node, chain, transition
from llmasr.scoring import is_no_space_char, uses_characters

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback
# The bytes a word goes on with, on bytes: ASCII letters and digits (a byte of another script's letter cannot be told
# from its punctuation's before the character is whole)
WORD_BYTES = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _ascii_word(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _byte_edge(ch: str) -> bool:
    """A phrase's edge the byte match keeps the rules of: a character of a script written without spaces (none to
    keep), an ASCII one (its word rules are kept on bytes) or no letter or digit (none to keep)."""
    return is_no_space_char(ch) or ch.isascii() or not ch.isalnum()


def is_text_phrase(text: str) -> bool:
    """A phrase matched on bytes: one that holds a character of a script written without spaces (the tokenizer's
    merges reach across its characters) and whose edges the byte match keeps the rules of (_byte_edge), read composed
    (NFC: a decomposed "é" ends in a combining mark, which is no letter). One with a letter or digit of another spaced
    script at an edge ("Москва大学") stays on token ids, whose word rules read it."""
    text = unicodedata.normalize("NFC", text)
    return bool(text) and uses_characters(text) and _byte_edge(text[0]) and _byte_edge(text[-1])


def _apart(text: str, at: int) -> bool:
    """Whether no match begins or ends at `at` inside `text`: both characters around it are ASCII letters or digits
    (the word rules of both matches)."""
    return 0 < at < len(text) and _ascii_word(text[at - 1]) and _ascii_word(text[at])


def byte_phrases(texts) -> set[str]:
    """The phrases of a list (stripped) matched on bytes: those is_text_phrase accepts, and with them every other whose
    edges allow it that shares text with one of them, or with one that joins them, where the word rules let both be
    found there: inside it, holding it, or overlapping its start or end ("iPhone" beside "iPhone手机", not "iPhone"
    beside "iPhone15手机", nor "Pro" beside "o手机": neither begins or ends inside a word). On two matches both would
    pay for the text they share. A phrase whose edge the byte match cannot keep the rules of ("Café", "Москва大学")
    stays on token ids, and with it every phrase it shares text with ("Café咖啡", "大学"), and so on. Phrases are
    compared composed (NFC), as both matches find them."""
    forms = {t: unicodedata.normalize("NFC", t) for t in texts if t}
    text = {form for form in forms.values() if is_text_phrase(form)}
    if len(text) in (0, len(set(forms.values()))):  # every phrase is a text phrase, or none is
        return {t for t, form in forms.items() if form in text}
    shared = _Groups(forms.values())  # phrases that can be found sharing text
    lengths = sorted({len(form) for form in forms.values()})
    starts: dict[str, list[str]] = {}  # a phrase's proper beginnings
    for form in shared.up:
        for k in range(1, len(form)):
            starts.setdefault(form[:k], []).append(form)
    for form in shared.up:
        # another phrase inside this one, or this one's end overlapping another's start (and so, read from the other
        # side, every start overlapping an end); found where no ASCII letter or digit goes on across either end
        for i in range(len(form)):
            for n in lengths:
                if i + n <= len(form) and form[i : i + n] in shared.up:
                    if not _apart(form, i) and not _apart(form, i + n):
                        shared.join(form, form[i : i + n])
        for k in range(1, len(form)):
            for other in starts.get(form[k:], ()):
                both = form + other[len(form) - k :]
                if not _apart(both, k) and not _apart(both, len(form)):
                    shared.join(form, other)
    joined = {shared.find(form) for form in text}
    kept_off = {shared.find(form) for form in shared.up if not (_byte_edge(form[0]) and _byte_edge(form[-1]))}
    return {t for t, form in forms.items() if shared.find(form) in joined and shared.find(form) not in kept_off}


class _Groups:
    """Union-find over strings: `up`, each one's way to its group's representative (find)."""

    def __init__(self, items):
        self.up = {item: item for item in items}

    def find(self, item: str) -> str:
        while self.up[item] != item:
            self.up[item] = item = self.up[self.up[item]]
        return item

    def join(self, a: str, b: str) -> None:
        self.up[self.find(a)] = self.find(b)


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
    of a character they do not finish; `joining`, per id, whether its bytes begin with a WORD_BYTES byte (it carries
    a word on)."""

    def __init__(self, spelled: list[bytes | None]):
        self.bytes = spelled
        self.holding: dict[str, list[int]] = {}
        self.partial: dict[int, list[int]] = {}
        self.first: dict[str, list[int]] = {}
        self.trailing: dict[bytes, list[int]] = {}
        self.texts = [data.decode("utf-8", errors="replace") if data else "" for data in spelled]
        self.joining = torch.tensor([bool(data) and data[0] in WORD_BYTES for data in spelled], dtype=torch.bool)
        self._starting: dict[str, list[int]] = {}
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

    def ends_word(self, token: int) -> bool:
        """Whether token `token`'s bytes end in a WORD_BYTES byte (a joining token after it carries its word on)."""
        data = self.bytes[token] if 0 <= token < len(self.bytes) else None
        return bool(data) and data[-1] in WORD_BYTES

    def starting(self, ch: str) -> list[int]:
        """The ids whose text holds `ch` where a phrase may begin with it: anywhere, but for an ASCII letter or digit
        only at a word's start (the text's first character, or after one that is no ASCII letter or digit). Found
        once per character outside `holding`."""
        if is_no_space_char(ch):
            return self.holding.get(ch, [])
        found = self._starting.get(ch)
        if found is None:
            found = self._starting[ch] = [i for i, text in enumerate(self.texts) if _begins_in(text, ch)]
        return found


def _begins_in(text: str, ch: str) -> bool:
    k = text.find(ch)
    while k >= 0:
        if k == 0 or not _ascii_word(ch) or not _ascii_word(text[k - 1]):
            return True
        k = text.find(ch, k + 1)
    return False


def token_index(tokenizer) -> TokenIndex:
    return kept_for(tokenizer, "index", lambda: TokenIndex(token_bytes(tokenizer)))


# A character's share of the boost over its UTF-8 bytes, by its length: binary fractions, so that gains add up
# exactly. The last byte's share is the largest: the byte that tells the character from its neighbours.
_SHARES = {1: (1.0,), 2: (0.5, 0.5), 3: (0.25, 0.25, 0.5), 4: (0.25, 0.25, 0.25, 0.25)}
# An ASCII character's worth: a byte-level BPE spells English text about four characters a token, a Chinese one
# about a character a token, and the token match pays per token
ASCII_WORTH = 0.25


def _last_lead(data) -> int:
    """How far from the end of UTF-8 bytes `data` its last character's first byte stands (0: none within a
    character's length)."""
    for back in range(1, min(4, len(data)) + 1):
        if data[-back] & 0xC0 != 0x80:
            return back
    return 0


def _unfinished(data: bytes) -> bytes:
    """The bytes at the end of `data` that begin a character they do not finish (b"": none)."""
    back = _last_lead(data)
    return data[-back:] if back and back < _char_length(data[-back]) else b""


def _char_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def text_trie(phrases) -> Node:
    """The byte trie of `phrases` (each stripped; those byte_phrases chose), each as given and composed (NFC: the
    form text is written in, and the one Qwen's tokenizers normalize to; a list copied from decomposed text, a macOS
    file name's, had never matched): a node is worth the characters its path holds (an ASCII one ASCII_WORTH), a
    character's share spread over its bytes (_SHARES). The root's joining and ending symbols are WORD_BYTES: the
    word rules of hotword_trie, kept on bytes."""
    root = Node(joining=WORD_BYTES, ending=WORD_BYTES)
    for phrase in phrases:
        text = str(phrase).strip()
        for form in dict.fromkeys((text, unicodedata.normalize("NFC", text))):
            _insert(root, form.encode("utf-8"))
    return root


def _insert(root: Node, data: bytes) -> None:
    node, text = root, data.decode("utf-8")
    for ch in text:
        spelled, worth = ch.encode("utf-8"), ASCII_WORTH if ch.isascii() else 1.0
        for byte, share in zip(spelled, _SHARES[len(spelled)]):
            node = node.children.setdefault(byte, Node(node.path + (byte,), node.weight + worth * share))
    if text:
        node.complete, node.word_end = True, node.word_end or _ascii_word(text[-1])


def step_token(root: Node, node: Node, spelled: bytes | None, after_word: bool) -> tuple[int, Node]:
    """(weight banked, the next node) of a token spelling `spelled` after a match at `node` (`after_word`: the text
    before it ends in a WORD_BYTES byte): its bytes stepped one by one; a token that spells nothing (a special token)
    ends the match. Not kept: what a byte does at a node is (transition); kept per node and token, every token a row
    is computed for had stayed, up to the vocabulary times the trie over a long decode."""
    if not spelled:
        return transition(root, node, -1, False, False)
    banked, state = 0, node
    for byte in spelled:
        joining = byte in WORD_BYTES
        gained, state = transition(root, state, byte, joining, after_word)
        banked, after_word = banked + gained, joining
    return banked, state


def _next_chars(node: Node) -> set[str]:
    """The whole characters some phrase goes on with after `node` (a node between two characters)."""
    found, todo = set(), [(child, (byte,)) for byte, child in node.children.items()]
    while todo:
        child, seq = todo.pop()
        if _ends_char(child.path):
            found.add(bytes(seq).decode("utf-8", errors="replace"))
        else:
            todo.extend((grand, seq + (byte,)) for byte, grand in child.children.items())
    return found


def text_gains(
    root: Node, node: Node, index: TokenIndex, after_word: bool
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """What each next token earns after a match at `node` (`after_word`: the text ends in a WORD_BYTES byte), whatever
    was banked before it, as (a shift, the shift of a joining token, ids, their gains): every token earns its shift
    plus what it earns at the root after that text (`text_gains(root, root, ...)`: 0 but for the ids given there),
    except the ids given, which earn their gains. Kept on the root.

    At the root the ids are the tokens holding a phrase's first character where a phrase may begin (TokenIndex.
    starting), or ending in some of its first bytes: any other token leaves the root as it found it. Elsewhere a token
    whose first byte goes on with no place of the match but the root ends the match (banking what the end token
    banks, or a joining token, which carries a phrase's last word on: the second shift) and then steps from the root,
    as it would there; so only the tokens going on from a place past the root are stepped: those beginning with a
    character a phrase goes on with there, or with a byte of one (a token that holds part of a character)."""
    after_word = after_word and node is root  # past the root, the match's own last byte says it
    key = ("text_gains", node, after_word)
    known = root.memo.get(key)
    if known is None:
        ended = transition(root, node, -1, False, False)[0] - node.weight
        joined = transition(root, node, -1, True, False)[0] - node.weight
        ids = set()
        if node is root:
            for ch in _next_chars(root):
                ids.update(index.starting(ch))
                spelled = ch.encode("utf-8")
                for k in range(1, len(spelled)):
                    ids.update(index.trailing.get(spelled[:k], ()))
        for joining in (False, True):  # a joining token may break a word's match where another would not
            for _, state in chain(root, node, joining)[:-1]:  # the places past the root
                ids.update(t for byte in state.children for t in index.partial.get(byte, ()))
                if _ends_char(state.path):
                    for ch in _next_chars(state):
                        ids.update(index.first.get(ch, ()))
        order = sorted(ids)
        after = after_word if node is root else node.path[-1] in WORD_BYTES
        gains = []
        for t in order:
            banked, reached = step_token(root, node, index.bytes[t], after)
            gains.append(banked + reached.weight - node.weight)
        known = (ended, joined, torch.tensor(order, dtype=torch.long), torch.tensor(gains, dtype=torch.float64))
        root.memo[key] = known
    return known


def _ends_char(path: tuple[int, ...]) -> bool:
    """Whether the UTF-8 bytes `path` end at a character's end (the next byte begins a character)."""
    back = _last_lead(path)
    return back == _char_length(path[-back]) if back else not path
