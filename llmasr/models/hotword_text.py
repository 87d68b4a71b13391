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

A phrase with letters or digits of a script written with spaces at an edge ("iPhone手机", "小米14", "Москва大学")
keeps the token match's word rules on bytes: it begins only where no word is under way and is complete only where its
word ends, a word's characters being Unicode's letters, marks and digits (is_word_char). Those rules are read per
whole character: a character's first bytes cannot tell a letter from punctuation ("，" is EF BC 8C, "Ａ" EF BC A1), so
the character a text has begun and not finished (a byte token's) is stepped as no word character until it is whole,
and stepped again, from the place before it, once it is (Place). A phrase of a spaced script that shares text with
such a phrase ("iPhone" beside "iPhone手机") is matched on bytes with it where both can be found sharing it
(byte_phrases), so that no text is paid twice.
"""

from __future__ import annotations

import unicodedata
from typing import NamedTuple

import torch

from llmasr.models.hotword_tokens import (
    Plan,
    TokenIndex,
    char_length,
    char_word,
    is_word_char,
    last_lead,
    split_chars,
    word_bytes,
)
from llmasr.models.hotword_trie import Node, chain, ends_word, transition, walk, walk_steps
from llmasr.text_units import uses_characters


def is_text_phrase(text: str) -> bool:
    """A phrase matched on bytes: one that holds a character of a script written without spaces (the tokenizer's
    merges reach across its characters), read composed (NFC)."""
    text = unicodedata.normalize("NFC", text)
    return bool(text) and uses_characters(text)


def _apart(text: str, at: int) -> bool:
    """Whether no match begins or ends at `at` inside `text`: both characters around it are word characters (the
    word rules of both matches)."""
    return 0 < at < len(text) and is_word_char(text[at - 1]) and is_word_char(text[at])


def byte_phrases(texts) -> set[str]:
    """The phrases of a list (stripped) matched on bytes: those is_text_phrase accepts, and with them every other whose
    edges allow it that shares text with one of them, or with one that joins them, where the word rules let both be
    found there: inside it, holding it, or overlapping its start or end ("iPhone" beside "iPhone手机", "Café" beside
    "Café咖啡"; not "iPhone" beside "iPhone15手机", nor "Pro" beside "o手机": neither begins or ends inside a word). On
    two matches both would pay for the text they share. Phrases are compared composed (NFC), as both matches find
    them."""
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
        # side, every start overlapping an end); found where no word goes on across either end
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
    return {t for t, form in forms.items() if shared.find(form) in joined}


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


# A character's share of the boost over its UTF-8 bytes, by its length: binary fractions, so that gains add up
# exactly. The last byte's share is the largest: the byte that tells the character from its neighbours.
_SHARES = {1: (1.0,), 2: (0.5, 0.5), 3: (0.25, 0.25, 0.5), 4: (0.25, 0.25, 0.25, 0.25)}
# The worth of an ASCII character or a word character (a letter, mark or digit of a script written with spaces: é,
# Cyrillic, Greek): a byte-level BPE spells such words several characters a token (English about four), a Chinese
# character or a full-width mark about one a token, and the token match pays per token
SPACED_WORTH = 0.25


class _CharWords:
    """The word rules of a byte trie (Node.words), read per whole character of its paths: a byte carries a word on,
    or ends one, as its character does; a character a path has begun and not finished goes as the symbol after the
    path says (`joining`: the text's character it is part of)."""

    @staticmethod
    def _lead(path: tuple[int, ...], i: int) -> int:
        start = i
        while start > 0 and i - start < 3 and path[start] & 0xC0 == 0x80:
            start -= 1
        return start

    def carries(self, path: tuple[int, ...], i: int, joining: bool) -> bool:
        start = self._lead(path, i)
        end = start + char_length(path[start])
        return word_bytes(bytes(path[start:end])) if end <= len(path) else joining

    def ends(self, path: tuple[int, ...], i: int) -> bool:
        start = self._lead(path, i)
        return start + char_length(path[start]) == i + 1 and word_bytes(bytes(path[start : i + 1]))


CHAR_WORDS = _CharWords()


def text_trie(phrases) -> Node:
    """The byte trie of `phrases` (each stripped; those byte_phrases chose), each as given and composed (NFC: the
    form text is written in, and the one Qwen's tokenizers normalize to; a list copied from decomposed text, a macOS
    file name's, had never matched): a node is worth the characters its path holds (an ASCII or word character
    SPACED_WORTH), a character's share spread over its bytes (_SHARES). The root reads the word rules of
    hotword_trie per whole character (CHAR_WORDS)."""
    root = Node(words=CHAR_WORDS)
    for phrase in phrases:
        text = str(phrase).strip()
        for form in dict.fromkeys((text, unicodedata.normalize("NFC", text))):
            _insert(root, form.encode("utf-8"))
    return root


def _insert(root: Node, data: bytes) -> None:
    node, text = root, data.decode("utf-8")
    for ch in text:
        spelled, worth = ch.encode("utf-8"), SPACED_WORTH if ch.isascii() or is_word_char(ch) else 1.0
        for byte, share in zip(spelled, _SHARES[len(spelled)]):
            node = node.children.setdefault(byte, Node(node.path + (byte,), node.weight + worth * share))
    if text:
        node.complete, node.word_end = True, node.word_end or is_word_char(text[-1])


class Place(NamedTuple):
    """Where a byte match stands after a text: `node`, the match at the text's last whole character; `unit`, the
    bytes of a character the text has begun and not finished (b"": none), not stepped yet (its first bytes cannot
    say whether it is a word character); `after`, at the root, whether the text's last whole character is a word
    character (a phrase beginning with one cannot begin after it)."""

    node: Node
    unit: bytes = b""
    after: bool = False


def _place(root: Node, node: Node, unit: bytes, after: bool) -> Place:
    return Place(node, unit, after and node is root)  # past the root the match's own path says it


def reading(root: Node, place: Place) -> tuple[float, Node]:
    """(weight banked, node) of the match at `place` as its text reads so far: an unfinished character's bytes
    stepped as those of no word character, so that a character spelled in byte tokens pulls the search from its first
    byte on. Stepped again from the place once the character is whole (step_token)."""
    return walk(root, place.node, place.unit)


def _settle(root: Node, node: Node, data: bytes) -> tuple[float, Node]:
    """(weight banked, node) of bytes `data` that are no whole character (a character cut short, a stray byte, or
    one the text ends inside) stepped from `node` as no word character's. No phrase holds them: a match standing
    inside them ends there."""
    banked, node = walk(root, node, data)
    if node.path and not _ends_char(node.path):
        gained, node = transition(root, node, -1, False, False)
        banked += gained
    return banked, node


def step_token(root: Node, place: Place, index: TokenIndex, token: int) -> tuple[float, Place]:
    """(weight banked, the next place) of token id `token` (its bytes: index.bytes) after a match at `place`: the
    bytes of each character it finishes stepped one by one with that character's word rules (a character the place
    had begun among them), a character it begins and does not finish kept unstepped in the place; a token that
    spells nothing (a special token) ends the text, and the match. Its characters and their classes are its Plan
    (index.plans; after a character the place began, the Plan of what follows the bytes that finish it), else are
    split here. Not kept: what a byte does at a node is (transition); kept per place and token, every token a row is
    computed for had stayed, up to the vocabulary times the trie over a long decode."""
    banked, node, unit, after = _advance(root, place, index, token)
    return banked, _place(root, node, unit, after)


def _advance(root: Node, place: Place, index: TokenIndex, token: int) -> tuple[float, Node, bytes, bool]:
    """step_token's (weight banked, node, unit, after) before they are made a Place."""
    node, unit, after = place
    spelled = index.bytes[token] if token < len(index.bytes) else None
    if not spelled:
        banked, node = _settle(root, node, unit) if unit else (0, node)
        gained, node = transition(root, node, -1, False, False)
        return banked + gained, root, b"", False
    banked, plan = 0, index.plans[token]
    if unit:  # the token's first continuation bytes finish the character begun, or it is cut short
        lead, plan = index.continued.get(token, (0, plan))
        need = char_length(unit[0]) - len(unit)
        take = min(lead, need)
        if take < need and take == len(spelled):  # still unfinished
            return 0, node, unit + spelled, after
        banked, node, after = _finish(root, node, unit + spelled[:take], after)
        spelled = spelled[take:]
        if not spelled:
            return banked, node, b"", after
        plan = plan if take == lead else None
    if plan is not None:
        gained, node, tail, after = _follow(root, node, after, plan)
        return banked + gained, node, tail, after
    for char, word, whole in split_chars(spelled):
        if whole is None:
            return banked, node, char, after
        if whole:  # a character: a match standing inside it goes on, or ended before it
            for byte in char:
                gained, node = transition(root, node, byte, word, after)
                banked += gained
        else:
            gained, node = _settle(root, node, char)
            banked += gained
        after = word
    return banked, node, b"", after


def _finish(root: Node, node: Node, char: bytes, after: bool) -> tuple[float, Node, bool]:
    """(weight banked, node, whether it is a word character) of the character a text had begun, finished by the
    first bytes of a token (`char`: all its bytes) or cut short by them, stepped from `node`. Kept on the root: every
    token that goes on with a character begun asks it, and few characters finish one."""
    key = ("finish", node, char, after)
    known = root.memo.get(key)
    if known is None:
        word = char_word(char) if len(char) == char_length(char[0]) else None
        if word is None:  # cut short, or no character: no phrase holds it
            known = (*_settle(root, node, char), False)
        else:
            banked = 0
            for byte in char:
                gained, node = transition(root, node, byte, word, after)
                banked += gained
            known = (banked, node, word)
        root.memo[key] = known
    return known


def _follow(root: Node, node: Node, after: bool, plan: Plan) -> tuple[float, Node, bytes, bool]:
    """(weight banked, node, the bytes of a character begun, whether the last whole character is a word character) of
    a token's Plan stepped from `node` (`after`: the text before it ends in a word character)."""
    steps, tail, last = plan
    if steps.__class__ is bytes:  # no word character: a byte's word flags change nothing
        banked, node = walk(root, node, steps)
    else:
        banked, node = walk_steps(root, node, steps, after)
    return banked, node, tail, after if last is None else last


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
    root: Node, place: Place, index: TokenIndex
) -> tuple[float, float, Place | None, torch.Tensor, torch.Tensor]:
    """What each next token earns after a match at `place` (its worth: what `reading` reads), whatever was banked
    before it, as (a shift, the shift of a joining token, a place at the root, ids, their gains): every token earns
    its shift plus what it earns at that place (`text_gains(root, that place, ...)`; None: 0), except the ids given,
    which earn their gains. Kept on the root.

    At the root the ids are the tokens holding a phrase's first character where a phrase may begin (TokenIndex.
    starting), or ending in some of its first bytes: any other token leaves the root as it found it. Past it a token
    whose first byte goes on with no place of the match but the root ends the match (banking what the end token
    banks, or a joining token, which carries a phrase's last word on: the second shift) and then steps from the root,
    as it would there; so only the tokens going on from a place past the root are stepped: those beginning with a
    character a phrase goes on with there, or with a byte of one (a token that holds part of a character). After an
    unfinished character, a token that does not go on with it cuts it short, ending the match in it, and then steps
    from the root; of those going on with it, only the ones that earn otherwise are stepped (_finishing)."""
    key = ("text_gains", place)
    known = root.memo.get(key)
    if known is None:
        known = root.memo[key] = _text_gains(root, place, index)
    return known


def _text_gains(root: Node, place: Place, index: TokenIndex):
    node = place.node
    read, at = reading(root, place)
    if place.unit:
        ended = joined = transition(root, at, -1, False, False)[0] - at.weight
        base, ids = Place(root), _finishing(root, place, index, read + ended + at.weight)
    elif node is root:
        ended = joined = 0
        base, ids = None, set()
        for ch in _next_chars(root):
            ids.update(index.starting(ch))
            spelled = ch.encode("utf-8")
            for k in range(1, len(spelled)):
                ids.update(index.trailing.get(spelled[:k], ()))
    else:
        ended = transition(root, node, -1, False, False)[0] - node.weight
        joined = transition(root, node, -1, True, False)[0] - node.weight
        base, ids = Place(root, b"", ends_word(root, node.path, len(node.path) - 1)), set()
        for joining in (False, True):  # a joining token may break a word's match where another would not
            for _, state in chain(root, node, joining)[:-1]:  # the places past the root
                ids.update(t for byte in state.children for t in index.partial.get(byte, ()))
                if _ends_char(state.path):
                    for ch in _next_chars(state):
                        ids.update(index.first.get(ch, ()))
    order = sorted(ids)
    worth, gains, plans, unit, after = read + at.weight, [], index.plans, place.unit, place.after
    for t in order:
        plan = None if unit else plans[t]
        if plan is not None:  # _follow, inline: the common case, stepped thousands of times a row
            steps, tail, _ = plan
            if steps.__class__ is bytes:
                banked, reached = walk(root, node, steps)
            else:
                banked, reached = walk_steps(root, node, steps, after)
        else:
            banked, reached, tail, _ = _advance(root, place, index, t)
        gained, reached = walk(root, reached, tail) if tail else (0, reached)  # reading the place reached
        gains.append(banked + gained + reached.weight - worth)
    return ended, joined, base, torch.tensor(order, dtype=torch.long), torch.tensor(gains, dtype=torch.float64)


def _finishing(root: Node, place: Place, index: TokenIndex, cut: float) -> set[int]:
    """The tokens that go on with the character `place` has begun and earn other than what cutting it short earns
    (`cut`, banked, then the token's own gain at the root, where its first continuation bytes are stray): those
    whose finished (or cut short) character goes on with a match or begins one, or banks another weight (it carries
    a phrase's last word on), or is a word character that a word character at the start of the rest carries on; and
    those that leave the character unfinished, or whose rest has no Plan (TokenIndex.finishing)."""
    node, unit, after = place
    ids = set()
    for head, (every, alone, worded) in index.finishing(char_length(unit[0]) - len(unit)).items():
        ids.update(alone)
        banked, reached, word = _finish(root, node, unit + head, after)
        if reached is not root or banked != cut:
            ids.update(every)
        elif word:
            ids.update(worded)
    return ids


def _ends_char(path: tuple[int, ...]) -> bool:
    """Whether the UTF-8 bytes `path` end at a character's end (the next byte begins a character)."""
    back = last_lead(path)
    return back == char_length(path[-back]) if back else not path
