"""Hotword boosting inside the search: each token that extends a biasing phrase of the utterance earns a bonus, and
a match that breaks off before its phrase is complete gives its bonus back.

The prompt tells the LLM which phrases may occur; a small or lightly fine-tuned LLM often cannot act on that (it
must match a rare word's sound to its spelling). The boost acts where the spelling is known: the search itself. A
hypothesis h is worth

    Phi(h) = boost * (tokens of h inside completed phrase matches + tokens of the phrase match h ends in)

and each step adds Phi(h c) - Phi(h) to candidate c's score (the end token: the unfinished match is given back).
Summed over a hypothesis this is boost * (tokens of completed phrases): a phrase that is only begun earns nothing,
so the boost pulls towards a phrase only as far as the other scores (the LLM's, the CTC head's) let it finish. With
CTC guidance the boost is added to the joint score of the candidates the audio supports; a distractor the audio
does not support stays out of reach.

Phrases are matched as token ids of the LLM tokenizer, as they would be written at the start of the text and after
a space (byte-level BPE tokenizers spell the two differently). A phrase that ends in a letter or digit is complete
only where its word ends: a token that carries the word on ("Ann" then "a": Anna) gives its bonus back. The
phrases form an Aho-Corasick automaton: when a match breaks off, a phrase that begins or ends inside it is still
found; matches never overlap, so no token is paid twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmasr.scoring import is_no_space_char


@dataclass(eq=False)
class _Node:
    depth: int = 0
    done: int = 0  # tokens of the longest complete phrase that begins this node's path (0: none)
    word_end: bool = False  # the phrase complete here ends in a letter or digit: a joining token carries it on
    children: dict[int, _Node] = field(default_factory=dict)
    # The longest proper suffix of this path that begins a phrase (the root's: none).
    fail: _Node | None = field(default=None, repr=False)


def phrase_trie(phrases, tokenizer, joins: torch.Tensor | None = None) -> _Node:
    """The token-id trie of `phrases` (each in its start-of-text and after-a-space spellings), with Aho-Corasick
    failure links, so that a phrase that begins inside a broken-off match is still found."""
    joins = joining_tokens(tokenizer) if joins is None else joins
    root = _Node()
    for phrase in phrases:
        text = str(phrase).strip()
        if not text:
            continue
        for spelling in {tuple(tokenizer.encode(t, add_special_tokens=False)) for t in (text, " " + text)}:
            node = root
            for token in spelling:
                node = node.children.setdefault(token, _Node(node.depth + 1))
            node.done, node.word_end = node.depth, _word_char(text[-1])
    _link(root, joins)
    return root


def _link(root: _Node, joins: torch.Tensor) -> None:
    """Breadth first: each node inherits the complete phrase its path begins with (not across a token that carries
    that phrase's last word on) and gets its failure link."""
    todo = [root]
    while todo:
        node = todo.pop(0)
        for token, child in node.children.items():
            if not (node.done == node.depth and node.word_end and _joins(token, joins)):
                child.done = max(child.done, node.done)
            f = node.fail
            while f is not None and token not in f.children:
                f = f.fail
            child.fail = f.children[token] if f is not None else root
            todo.append(child)


@dataclass(frozen=True)
class _Match:
    banked: int  # tokens of completed phrase matches so far
    node: _Node  # where the current match stands (the root: none); Phi = boost * (banked + node.depth)


def _word_char(ch: str) -> bool:
    """A character a word goes on with (a letter or digit of a script written with spaces)."""
    return ch.isalnum() and not is_no_space_char(ch)


def _joins(token: int, joins: torch.Tensor) -> bool:
    return token < len(joins) and bool(joins[token])


def joining_tokens(tokenizer) -> torch.Tensor:
    """Per token id, whether its text starts with a letter or digit of a script written with spaces (it carries
    the word before it on); cached on the tokenizer. A tokenizer that cannot decode ids: none."""
    cached = getattr(tokenizer, "_llmasr_joining", None)
    if cached is None:
        try:
            texts = tokenizer.batch_decode([[t] for t in range(len(tokenizer))])
        except (AttributeError, TypeError, NotImplementedError):
            texts = []
        cached = torch.tensor([bool(t) and _word_char(t[0]) for t in texts], dtype=torch.bool)
        try:
            tokenizer._llmasr_joining = cached
        except AttributeError:
            pass
    return cached


def _step(match: _Match, token: int, joining: bool) -> _Match:
    """The match after `token` (`joining`: the token carries the word before it on).

    A token that continues the match extends it. Otherwise the match breaks: walking its failure links (ever shorter
    suffixes of it), each complete phrase found is banked, unless a banked one already covers its tokens or it ends
    right here and the token carries its word on, and the first suffix the token continues, clear of banked tokens,
    is the new match (the root: none). Matches never overlap, so the boost never pays a token twice.
    """
    node = match.node
    banked, free = match.banked, 0  # free: where in node's path the tokens not yet banked begin
    f = node
    while True:
        start = node.depth - f.depth
        child = f.children.get(token)
        if child is not None and start >= free:
            return _Match(banked, child)
        carried_on = joining and f.word_end and f.done == f.depth
        if f.done and start >= free and not carried_on:
            banked, free = banked + f.done, start + f.done
        if f.fail is None:  # the root: no match
            return _Match(banked, f)
        f = f.fail


class HotwordBoost:
    """A transformers logits processor (generated ids [rows, n], scores [rows, V]); row r belongs to utterance
    r // num_beams, whose phrases are `phrases[utterance]` (empty: no boost for it). Rows that have ended are
    left alone."""

    def __init__(self, phrases: list[list[str]], tokenizer, boost: float, end_id: int, num_beams: int):
        self.boost, self.end_id, self.num_beams = float(boost), int(end_id), int(num_beams)
        listed = any(phrases)
        self.joins = joining_tokens(tokenizer) if listed else torch.zeros(0, dtype=torch.bool)
        self.tries = [phrase_trie(p, tokenizer, self.joins) if p else None for p in phrases]
        self.matches: dict[tuple[int, tuple[int, ...]], _Match] = {}

    def tokens(self, utt: int) -> torch.Tensor:
        """Every token id that spells a phrase of utterance `utt` (for a search that scores only some candidates:
        a boost on a token it never scores would be lost)."""
        found, todo = set(), [self.tries[utt]] if self.tries[utt] is not None else []
        while todo:
            node = todo.pop()
            found.update(node.children)
            todo.extend(node.children.values())
        return torch.tensor(sorted(found), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[1]
        add = torch.zeros_like(scores)
        joining = torch.zeros(vocab, dtype=torch.bool)
        joining[: min(len(self.joins), vocab)] = self.joins[:vocab]
        joining = joining.to(add.device)
        seen = {}
        for r, ids in enumerate(input_ids.tolist()):
            utt = r // self.num_beams
            root = self.tries[utt]
            if root is None or self.end_id in ids:
                continue
            match = self._match(utt, tuple(ids), root)
            seen[(utt, tuple(ids))] = match
            now = match.banked + match.node.depth
            # A token no suffix of the match goes on with ends it (the end token too, which carries nothing on);
            # the tokens some suffix of it does go on with are stepped one by one.
            ended = self.boost * (_step(match, -1, False).banked - now)
            add[r] = ended
            add[r, joining] = self.boost * (_step(match, -1, True).banked - now)
            f = match.node
            while f is not None:
                for token in f.children:
                    if token < vocab:
                        after = _step(match, token, _joins(token, self.joins))
                        add[r, token] = self.boost * (after.banked + after.node.depth - now)
                f = f.fail
            add[r, self.end_id] = ended
        self.matches = seen
        if not seen:
            return scores
        return torch.where(torch.isfinite(scores), scores + add, scores)

    def _match(self, utt: int, prefix: tuple[int, ...], root: _Node) -> _Match:
        known = self.matches.get((utt, prefix))
        if known is not None:
            return known
        if not prefix:
            return _Match(0, root)
        token = prefix[-1]
        return _step(self._match(utt, prefix[:-1], root), token, _joins(token, self.joins))
