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
a space (byte-level BPE tokenizers spell the two differently). The start-of-text spelling begins a match only where
no word is under way: at the start of the text, or after a token that does not end in a letter or digit (" jo" then
"ann" is Joann, not Ann). A phrase that ends in a letter or digit is complete only where its word ends: a token
that carries the word on ("Ann" then "a": Anna) gives its bonus back. Phrases
are found leftmost first, then longest first: when a match breaks off, a phrase that begins or ends inside it is
still found; matches never overlap, so no token is paid twice.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from llmasr.scoring import is_no_space_char

ROWS_KEPT = 64  # score rows a HotwordBoost keeps (one batch's search): a row is the LLM's vocabulary wide


@dataclass(eq=False)
class _Node:
    path: tuple[int, ...] = ()  # the tokens from the root to here
    complete: bool = False  # a phrase ends here
    word_end: bool = False  # that phrase ends in a letter or digit: a joining token carries it on
    children: dict[int, _Node] = field(default_factory=dict)
    joining: frozenset[int] = frozenset()  # the root's: the tokenizer's joining token ids
    ending: frozenset[int] = frozenset()  # the root's: the ids of tokens that end inside a word (word_ending_tokens)
    memo: dict = field(default_factory=dict, repr=False)  # the root's: _transition's answers

    @property
    def depth(self) -> int:
        return len(self.path)


def phrase_trie(phrases, tokenizer, edges: tuple[frozenset[int], frozenset[int]] | None = None) -> _Node:
    """The token-id trie of `phrases` (each in its start-of-text and after-a-space spellings); the root keeps the
    tokenizer's joining and word-ending tokens (`joining_tokens`, `word_ending_tokens`; `edges`: those id sets,
    computed once for many tries) for the matches stepped over it."""
    joining, ending = edges or (_ids(joining_tokens(tokenizer)), _ids(word_ending_tokens(tokenizer)))
    root = _Node(joining=joining, ending=ending)
    for phrase in phrases:
        text = str(phrase).strip()
        if not text:
            continue
        # special-token text in a phrase is text, as in the prompt's list: "<|im_end|>" boosting the end would cut
        spellings = {
            tuple(tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True)) for t in (text, " " + text)
        }
        for spelling in spellings:
            node = root
            for token in spelling:
                node = node.children.setdefault(token, _Node(node.path + (token,)))
            node.complete, node.word_end = True, node.word_end or _word_char(text[-1])
    return root


@dataclass(frozen=True)
class _Match:
    banked: int  # tokens of completed phrase matches so far
    node: _Node  # where the current match stands (the root: none); Phi = boost * (banked + node.depth)
    root: _Node


def _word_char(ch: str) -> bool:
    """A character a word goes on with (a letter or digit of a script written with spaces)."""
    return ch.isalnum() and not is_no_space_char(ch)


def _joins(token: int, joining: frozenset[int]) -> bool:
    return token in joining


def _ids(mask: torch.Tensor) -> frozenset[int]:
    return frozenset(mask.nonzero().flatten().tolist())


def joining_tokens(tokenizer) -> torch.Tensor:
    """Per token id, whether its text starts with a letter or digit of a script written with spaces (it carries
    the word before it on). A tokenizer that cannot decode ids: none."""
    return _token_edges(tokenizer)[0]


def word_ending_tokens(tokenizer) -> torch.Tensor:
    """Per token id, whether its text ends with a letter or digit of a script written with spaces (a joining token
    after it goes on with its word)."""
    return _token_edges(tokenizer)[1]


def _token_edges(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(joining_tokens, word_ending_tokens), cached on the tokenizer. A token's text is read after another token:
    SentencePiece tokenizers drop a word's leading space when its token is decoded alone ("▁is" reads "is")."""
    cached = getattr(tokenizer, "_llmasr_token_edges", None)
    if cached is None:
        try:
            anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
            head = tokenizer.decode(anchor)
            texts = tokenizer.batch_decode([anchor + [t] for t in range(len(tokenizer))])
            texts = [t[len(head) :] if t.startswith(head) else "" for t in texts]
        except (AttributeError, TypeError, NotImplementedError, IndexError):
            texts = []
        cached = tuple(torch.tensor([bool(t) and _word_char(t[k]) for t in texts], dtype=torch.bool) for k in (0, -1))
        try:
            tokenizer._llmasr_token_edges = cached
        except AttributeError:
            pass
    return cached


def _complete_prefix(root: _Node, path: tuple[int, ...], joining: bool) -> int:
    """Tokens of the longest phrase that `path` begins with and that is complete there: not carried on by the token
    after it (the path's next one, or one that is `joining` after the whole path); 0: none."""
    best, node = 0, root
    for i, token in enumerate(path):
        node = node.children[token]
        carried_on = _joins(path[i + 1], root.joining) if i + 1 < len(path) else joining
        if node.complete and not (node.word_end and carried_on):
            best = i + 1
    return best


def _step(match: _Match, token: int, joining: bool, after_word: bool) -> _Match:
    """The match after `token` (`joining`: the token carries the word before it on; `after_word`: the token before
    it ends inside a word, so a phrase's start-of-text spelling cannot begin at a joining token).

    A token that continues the match extends it. Otherwise the match begun at its path's first token ends: the
    longest phrase it began that is complete there is banked, and the tokens after that (after the first one, when
    none is complete), this token last, are matched again from the root. So phrases are found leftmost first and
    longest first, a phrase that begins or ends inside a broken-off match among them, and matches never overlap:
    the boost never pays a token twice.
    """
    gained, node = _transition(match.root, match.node, token, joining, after_word)
    return _Match(match.banked + gained, node, match.root)


def _transition(root: _Node, node: _Node, token: int, joining: bool, after_word: bool) -> tuple[int, _Node]:
    """(tokens banked, the next node) of `token` after `node`: what _step adds, whatever was banked before; kept
    on the root, as the search asks the same of every row at every step."""
    key = (node, token, joining, after_word)
    known = root.memo.get(key)
    if known is None:
        child = node.children.get(token)
        if child is not None and node is root and joining and after_word:
            child = None  # a word under way: "ann" after " jo" is no match of the phrase "ann"
        if child is not None:
            known = (0, child)
        elif node is root:
            known = (0, root)
        else:
            banked, rest = _broken(root, node, joining)
            gained, after = _transition(root, rest, token, joining, node.path[-1] in root.ending)
            known = (banked + gained, after)
        root.memo[key] = known
    return known


def _broken(root: _Node, node: _Node, joining: bool) -> tuple[int, _Node]:
    """(tokens banked, where the match stands) when the match at `node` ends before a token that continues none of
    it: its longest complete phrase banked and the tokens after that matched again from the root."""
    key = ("broken", node, joining)
    known = root.memo.get(key)
    if known is None:
        done = _complete_prefix(root, node.path, joining)
        banked, state, path = done, root, node.path
        for i in range(max(done, 1), len(path)):
            gained, state = _transition(root, state, path[i], _joins(path[i], root.joining), path[i - 1] in root.ending)
            banked += gained
        known = root.memo[key] = (banked, state)
    return known


def _chain(root: _Node, node: _Node, joining: bool) -> list[tuple[int, _Node]]:
    """(tokens banked so far, node) of each place a token that is `joining` (or not) may go on from, in order: the
    match itself, then where it stands after each break, down to the root. A token goes on from the first of them
    that has it as a child (what _transition finds, without a call per token); no phrase goes on with any other."""
    key = ("chain", node, joining)
    known = root.memo.get(key)
    if known is None:
        known, banked, state = [(0, node)], 0, node
        while state is not root:
            gained, state = _broken(root, state, joining)
            banked += gained
            known.append((banked, state))
        root.memo[key] = known
    return known


class HotwordBoost:
    """A transformers logits processor (generated ids [rows, n], scores [rows, V]); row r belongs to utterance
    r // num_beams, whose phrases are `phrases[utterance]` (empty: no boost for it). Rows that have ended are
    left alone."""

    def __init__(self, phrases: list[list[str]], tokenizer, boost: float, end_id: int, num_beams: int):
        self.boost, self.end_id, self.num_beams = float(boost), int(end_id), int(num_beams)
        listed = any(phrases)
        self.joins = joining_tokens(tokenizer) if listed else torch.zeros(0, dtype=torch.bool)
        self.joining = _ids(self.joins)
        self.ending = _ids(word_ending_tokens(tokenizer)) if listed else frozenset()
        self.tries = [_shared_trie(tokenizer, p, (self.joining, self.ending)) if p else None for p in phrases]
        self.spelled = [_spelled_ids(root) if root is not None else [] for root in self.tries]
        self.matches: dict[tuple[int, tuple[int, ...]], _Match] = {}
        # (trie, node, after_word) -> what each token earns there, a row of scores: the same few states (the root
        # above all) recur on every row and step, and writing thousands of a long list's gains anew each time had
        # cost more than the step of a small LLM
        self.rows: dict[tuple, torch.Tensor] = {}

    def tokens(self, utt: int) -> torch.Tensor:
        """Every token id that spells a phrase of utterance `utt` (for a search that scores only some candidates:
        a boost on a token it never scores would be lost)."""
        return torch.tensor(self.spelled[utt], dtype=torch.long)

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
            after_word = bool(ids) and ids[-1] in self.ending
            key = (root, match.node, after_word)
            row = self.rows.get(key)
            if row is None:
                row = self._row(root, match.node, after_word, joining, add)
                if len(self.rows) < ROWS_KEPT:
                    self.rows[key] = row
            add[r] = row
        self.matches = seen
        if not seen:
            return scores
        return torch.where(torch.isfinite(scores), scores + add, scores)

    def _row(self, root: _Node, node: _Node, after_word: bool, joining: torch.Tensor, like: torch.Tensor):
        """What each token earns after a match at `node` (_gains), as one row of `like`'s scores."""
        ended, joined, tokens, gains = _gains(root, node, after_word)
        row = torch.full_like(like[0], self.boost * ended)
        row[joining] = self.boost * joined
        inside = tokens < row.numel()
        row[tokens[inside].to(row.device)] = (self.boost * gains[inside]).to(dtype=row.dtype, device=row.device)
        row[self.end_id] = self.boost * ended
        return row

    def _match(self, utt: int, prefix: tuple[int, ...], root: _Node) -> _Match:
        known = self.matches.get((utt, prefix))
        if known is not None:
            return known
        if not prefix:
            return _Match(0, root, root)
        token, after_word = prefix[-1], len(prefix) > 1 and prefix[-2] in self.ending
        return _step(self._match(utt, prefix[:-1], root), token, _joins(token, self.joining), after_word)


def _gains(root: _Node, node: _Node, after_word: bool) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """What each next token earns after a match standing at `node` (`after_word`: its last token ends inside a word),
    in tokens, whatever was banked before it: (a token no phrase goes on with, the end token among them; a joining
    one of those; the ids some phrase goes on with; what each of them earns). Kept on the root: the answer depends
    on nothing else, and for a list of thousands its loop over the root's children had cost milliseconds a row and
    step."""
    key = ("gains", node, after_word)
    known = root.memo.get(key)
    if known is None:
        # A token no suffix of the match goes on with ends it (the end token too, which carries nothing on); the
        # tokens some suffix of it does go on with are stepped one by one.
        ended = _transition(root, node, -1, False, after_word)[0] - node.depth
        joined = _transition(root, node, -1, True, after_word)[0] - node.depth
        gains: dict[int, int] = {}  # the tokens some phrase goes on with, from the first place in the chain
        for joins in (False, True):
            for banked, state in reversed(_chain(root, node, joins)):
                if state is root and joins and after_word:
                    continue  # a joining token after a word's end goes on with that word, and begins no phrase
                for token, child in state.children.items():
                    if (token in root.joining) == joins:
                        gains[token] = banked + child.depth - node.depth
        ids = torch.tensor(list(gains), dtype=torch.long)
        known = root.memo[key] = (ended, joined, ids, torch.tensor(list(gains.values()), dtype=torch.float64))
    return known


def _keep_searching(is_early_stop_heuristic_unsatisfied, **_):
    return is_early_stop_heuristic_unsatisfied


@contextlib.contextmanager
def beam_search_to_the_caps(model):
    """transformers' beam search stops an utterance once its best running beam, assumed only to lose score from there
    on, cannot beat its finished ones (`_check_early_stop_heuristic`); a boost's gains break that assumption, and a
    beam that has just begun a phrase is cut before it can finish it. While active, every beam of `model` (a
    transformers model) runs until it ends (the guards end each at its utterance's cap): the search then depends on
    no other utterance's length, so a batch still decodes as its utterances would alone. A transformers without
    that method is left alone."""
    if not callable(getattr(type(model), "_check_early_stop_heuristic", None)):
        yield
        return
    model._check_early_stop_heuristic = _keep_searching
    try:
        yield
    finally:
        del model._check_early_stop_heuristic


# A tokenizer's tries of its recent lists. A `--hotwords` list is every utterance's: its phrases had been spelled
# again for each utterance of each batch, which for a list of thousands cost more than the search itself. Held by
# the tokenizer weakly, not as its attribute: a tokenizer pickled into loader workers does not carry them.
_TRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TRIES_KEPT = 8


def _shared_trie(tokenizer, phrases, edges) -> _Node:
    """phrase_trie(phrases, tokenizer, edges), built once for each of the tokenizer's recent lists (a trie's memo
    holds only what its phrases and the tokenizer decide, so utterances and batches may share it)."""
    key = tuple(str(p) for p in phrases)
    try:
        kept = _TRIES.setdefault(tokenizer, OrderedDict())
    except TypeError:  # a tokenizer that cannot be held weakly, or hashed: built afresh
        return phrase_trie(key, tokenizer, edges)
    root = kept.get(key)
    if root is None:  # the edges are the tokenizer's own (_token_edges, cached on it): the key needs only the list
        root = kept[key] = phrase_trie(key, tokenizer, edges)
    kept.move_to_end(key)
    while len(kept) > _TRIES_KEPT:
        kept.popitem(last=False)
    return root


def _spelled_ids(root: _Node) -> list[int]:
    known = root.memo.get("spelled")
    if known is None:
        known = root.memo["spelled"] = sorted(_spelled(root))
    return known


def _spelled(root: _Node) -> set[int]:
    found, todo = set(), [root]
    while todo:
        node = todo.pop()
        found.update(node.children)
        todo.extend(node.children.values())
    return found
