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
only where its word ends: a token that carries the word on ("Ann" then "a": Anna) gives its bonus back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmasr.scoring import is_no_space_char


@dataclass
class _Node:
    depth: int = 0
    done: int = 0  # tokens of the longest complete phrase on the path to here (0: none)
    word_end: bool = False  # the phrase complete here ends in a letter or digit: a joining token carries it on
    children: dict[int, _Node] = field(default_factory=dict)


def phrase_trie(phrases, tokenizer) -> _Node:
    """The token-id trie of `phrases` (each in its start-of-text and after-a-space spellings)."""
    root = _Node()
    for phrase in phrases:
        text = str(phrase).strip()
        if not text:
            continue
        for spelling in {tuple(tokenizer.encode(t, add_special_tokens=False)) for t in (text, " " + text)}:
            node = root
            for token in spelling:
                node = node.children.setdefault(token, _Node(node.depth + 1, node.done))
            node.done, node.word_end = node.depth, _word_char(text[-1])
    _inherit_done(root)
    return root


def _inherit_done(node: _Node) -> None:
    for child in node.children.values():
        child.done = max(child.done, node.done)
        _inherit_done(child)


@dataclass(frozen=True)
class _Match:
    banked: int  # tokens of completed phrase matches so far
    node: _Node  # where the current match stands (the root: none); Phi = boost * (banked + node.depth)


def _word_char(ch: str) -> bool:
    """A character a word goes on with (a letter or digit of a script written with spaces)."""
    return ch.isalnum() and not is_no_space_char(ch)


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


def _step(match: _Match, token: int, root: _Node, joins: torch.Tensor) -> _Match:
    child = match.node.children.get(token)
    if child is not None:
        return _Match(match.banked, child)
    # The match breaks: the complete phrase it passed (if any) stays banked, unless it ends right here and the token
    # carries its word on; the token may begin a new match.
    return _Match(match.banked + _kept(match.node, token, joins), root.children.get(token, root))


def _kept(node: _Node, token: int, joins: torch.Tensor) -> int:
    """What a match standing at `node` banks when `token` breaks it."""
    carried_on = node.word_end and node.done == node.depth and token < len(joins) and bool(joins[token])
    return 0 if carried_on else node.done


class HotwordBoost:
    """A transformers logits processor (generated ids [rows, n], scores [rows, V]); row r belongs to utterance
    r // num_beams, whose phrases are `phrases[utterance]` (empty: no boost for it). Rows that have ended are
    left alone."""

    def __init__(self, phrases: list[list[str]], tokenizer, boost: float, end_id: int, num_beams: int):
        self.boost, self.end_id, self.num_beams = float(boost), int(end_id), int(num_beams)
        self.tries = [phrase_trie(p, tokenizer) if p else None for p in phrases]
        self.joins = joining_tokens(tokenizer) if any(t is not None for t in self.tries) else torch.zeros(0, dtype=bool)
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
        add = torch.zeros_like(scores)
        seen = {}
        for r, ids in enumerate(input_ids.tolist()):
            utt = r // self.num_beams
            root = self.tries[utt]
            if root is None or self.end_id in ids:
                continue
            match = self._match(utt, tuple(ids), root)
            seen[(utt, tuple(ids))] = match
            node = match.node
            # Every token breaks the match (giving back its unfinished part) unless it continues it; a token that
            # begins a phrase earns one token's worth; the end token only gives back.
            add[r] = self.boost * (node.done - node.depth)
            if node.word_end and node.done == node.depth:  # a token that carries the phrase's word on: all back
                joining = torch.zeros(scores.shape[1], dtype=torch.bool)
                joining[: min(len(self.joins), scores.shape[1])] = self.joins[: scores.shape[1]]
                add[r, joining.to(add.device)] = -self.boost * node.depth
            starts = [t for t in root.children if t < scores.shape[1]]
            add[r, starts] += self.boost
            add[r, [t for t in node.children if t < scores.shape[1]]] = self.boost
            add[r, self.end_id] = self.boost * (node.done - node.depth)
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
        return _step(self._match(utt, prefix[:-1], root), prefix[-1], root, self.joins)
