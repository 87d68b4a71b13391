"""Hotword boosting inside the search: each token that extends a biasing phrase of the utterance earns a bonus, and
a match that breaks off before its phrase is complete gives its bonus back.

The prompt tells the LLM which phrases may occur; a small or lightly fine-tuned LLM often cannot act on that (it
must match a rare word's sound to its spelling). The boost acts where the spelling is known: the search itself. A
hypothesis h is worth

    Phi(h) = boost * (tokens of h inside completed phrase matches + tokens of the phrase match h ends in)

and each step adds Phi(h c) - Phi(h) to candidate c's score (the end token: the unfinished match is given back).
Summed over a hypothesis this is boost * (tokens of completed phrases; characters, for a phrase matched on bytes
below): a phrase that is only begun earns nothing,
so the boost pulls towards a phrase only as far as the other scores (the LLM's, the CTC head's) let it finish. With
CTC guidance the boost is added to the joint score of the candidates the audio supports; a distractor the audio
does not support stays out of reach.

Phrases are matched as token ids of the LLM tokenizer, as they would be written at the start of the text and after a
space (byte-level BPE tokenizers spell the two differently), and after each character that a token of the tokenizer
joins to a word ('(ann': Qwen's split keeps one such character with the letters after it). The start-of-text
spelling begins a match only where no word is under way: at the start of the text, or after a token that does not
end in a letter or digit (" jo" then "ann" is Joann, not Ann). A phrase that ends in a letter or digit is complete
only where its word ends: a token that carries the word on ("Ann" then "a": Anna) gives its bonus back. Phrases are
found leftmost first, then longest first: when a match breaks off, a phrase that begins or ends inside it is still
found; matches never overlap, so no token is paid twice (llmasr.models.hotword_trie).

A phrase holding characters of a script written without spaces ("通义千问", "iPhone手机") is matched on the bytes the
tokens spell instead (llmasr.models.hotword_text), one boost per character (a quarter per ASCII one, or letter,
mark or digit of a spaced script), with the word rules above at its edges, read per whole character: the tokenizer
merges its characters with the text around it, so its own token ids need not appear where it is written. A phrase
that shares text with one of those ("iPhone") is matched with them.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

from llmasr.models.hotword_text import Place, byte_phrases, reading, step_token, text_gains, text_trie
from llmasr.models.hotword_tokens import is_word_char, kept_for, opener_chars, token_index, token_texts
from llmasr.models.hotword_trie import Node, chain, joins, transition

ROWS_KEPT = 64  # score rows a HotwordBoost keeps (one batch's search): a row is the LLM's vocabulary wide


def phrase_trie(phrases, tokenizer, edges: tuple[frozenset[int], frozenset[int]] | None = None) -> Node:
    """The token-id trie of `phrases` (each in its start-of-text and after-a-space spellings); the root keeps the
    tokenizer's joining and word-ending tokens (`joining_tokens`, `word_ending_tokens`; `edges`: those id sets,
    computed once for many tries) for the matches stepped over it."""
    joining, ending = edges or (_ids(joining_tokens(tokenizer)), _ids(word_ending_tokens(tokenizer)))
    root = Node(joining=joining, ending=ending)
    for phrase in phrases:
        text = str(phrase).strip()
        if not text:
            continue
        # special-token text in a phrase is text, as in the prompt's list: "<|im_end|>" boosting the end would cut
        spellings = {
            tuple(tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True)) for t in (text, " " + text)
        }
        spellings.update(_after_openers(text, tokenizer))
        for spelling in spellings:
            node = root
            for token in spelling:
                node = node.children.setdefault(token, Node(node.path + (token,), node.weight + 1))
            node.complete, node.word_end = True, node.word_end or is_word_char(text[-1])
    return root


def _after_openers(text: str, tokenizer) -> list[tuple[int, ...]]:
    """The spellings of phrase `text` right after a character that the tokenizer's pre-tokenizer joins to the word
    after it ('(' in '(ann', Qwen's split): where the phrase's first token then holds that character too, no
    start-of-text or after-a-space spelling is in the text. Such a spelling pays its first token as the phrase's (a
    token that is that character alone is no such spelling: the phrase's own spellings match after it). Only where
    the pre-tokenizer joins the character to the phrase's first word: Qwen's splits "'tea" as "'t" "ea" (English
    contractions), and a phrase "tea" does not begin inside "don't"."""
    openers = sorted(opener_chars(tokenizer).get(text[0], ())) if is_word_char(text[0]) else []
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if not openers or pre is None:
        return []
    pieces = len(pre.pre_tokenize_str(text))
    openers = [c for c in openers if len(pre.pre_tokenize_str(c + text)) == pieces]
    if not openers:
        return []
    texts = token_texts(tokenizer)
    encoded = tokenizer([c + text for c in openers], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [tuple(ids) for c, ids in zip(openers, encoded) if ids and texts[ids[0]] not in ("", c)]


@dataclass(frozen=True)
class _Match:
    banked: float  # the weight of completed phrase matches so far
    node: Node  # where the current match stands (the root: none); Phi = boost * (banked + node.weight)
    root: Node
    # a byte match's place (hotword_text.Place), which `banked` and `node` read (hotword_text.reading), and what it
    # had banked before the character the place has begun
    place: Place | None = None
    settled: float = 0


def _ids(mask: torch.Tensor) -> frozenset[int]:
    return frozenset(mask.nonzero().flatten().tolist())


def joining_tokens(tokenizer) -> torch.Tensor:
    """Per token id, whether its text starts with a word character (hotword_text.is_word_char: it carries the word
    before it on). A tokenizer that cannot decode ids: none."""
    return _token_edges(tokenizer)[0]


def word_ending_tokens(tokenizer) -> torch.Tensor:
    """Per token id, whether its text ends with a word character (a joining token after it goes on with its
    word)."""
    return _token_edges(tokenizer)[1]


def _token_edges(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(joining_tokens, word_ending_tokens), kept for the tokenizer (hotword_text.kept_for). A token's text is read
    after another token (token_texts): SentencePiece tokenizers drop a word's leading space when its token is decoded
    alone ("▁is" reads "is")."""

    def read():
        texts = token_texts(tokenizer)
        return tuple(torch.tensor([bool(t) and is_word_char(t[k]) for t in texts], dtype=torch.bool) for k in (0, -1))

    return kept_for(tokenizer, "edges", read)


def _step(match: _Match, token: int, joining: bool, after_word: bool) -> _Match:
    """The match after `token` (`joining`: the token carries the word before it on; `after_word`: the token before
    it ends inside a word, so a phrase's start-of-text spelling cannot begin at a joining token).

    A token that continues the match extends it. Otherwise the match begun at its path's first token ends: the
    longest phrase it began that is complete there is banked, and the tokens after that (after the first one, when
    none is complete), this token last, are matched again from the root. So phrases are found leftmost first and
    longest first, a phrase that begins or ends inside a broken-off match among them, and matches never overlap:
    the boost never pays a token twice.
    """
    gained, node = transition(match.root, match.node, token, joining, after_word)
    return _Match(match.banked + gained, node, match.root)


@dataclass(eq=False)
class _ListTries:
    """One list's tries: `tokens`, its phrases matched on token ids (None: none); `text`, those holding characters
    of scripts written without spaces and those sharing text with them, matched on bytes (llmasr.models.hotword_text;
    None: none); `spelled`, every token id that spells a phrase alone (HotwordBoost.tokens)."""

    tokens: Node | None
    text: Node | None
    spelled: list[int]


def list_tries(phrases, tokenizer, edges) -> _ListTries:
    """The tries of one list: each phrase (stripped) goes to the byte trie where byte_phrases chooses it, else to the
    token trie (phrase_trie)."""
    texts = [str(p).strip() for p in phrases]
    chosen = byte_phrases(texts)
    on_bytes = [t for t in texts if t in chosen]
    on_tokens = [t for t in texts if t and t not in chosen]
    tokens = phrase_trie(on_tokens, tokenizer, edges) if on_tokens else None
    spelled = _spelled(tokens) if tokens is not None else set()
    for text in on_bytes:  # the phrase alone, as a search that scores some candidates must see it
        for t in (text, " " + text):
            spelled.update(tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True))
    return _ListTries(tokens, text_trie(on_bytes) if on_bytes else None, sorted(spelled))


class HotwordBoost:
    """A transformers logits processor (generated ids [rows, n], scores [rows, V]); row r belongs to utterance
    r // num_beams, whose phrases are `phrases[utterance]` (empty: no boost for it). Rows that have ended are
    left alone. A phrase holding characters of a script written without spaces is matched on the text's bytes
    (hotword_text.byte_phrases), any other on token ids; a row earns what both give it."""

    def __init__(self, phrases: list[list[str]], tokenizer, boost: float, end_id: int, num_beams: int):
        self.boost, self.end_id, self.num_beams = float(boost), int(end_id), int(num_beams)
        listed = any(phrases)
        self.joins = joining_tokens(tokenizer) if listed else torch.zeros(0, dtype=torch.bool)
        self.joining = _ids(self.joins)
        self.ending = _ids(word_ending_tokens(tokenizer)) if listed else frozenset()
        lists = kept_for(tokenizer, "lists", OrderedDict) if listed else None  # looked up once for the batch
        self.tries = [_shared_tries(lists, tokenizer, p, (self.joining, self.ending)) if p else None for p in phrases]
        self.index = None
        if any(t is not None and t.text is not None for t in self.tries):
            self.index = token_index(tokenizer)
        self.matches: dict[tuple[int, tuple[int, ...]], _Match] = {}
        self.text_matches: dict[tuple[int, tuple[int, ...]], _Match] = {}
        # (trie, node, after_word) -> what each token earns there, a row of scores: the same few states (the root
        # above all) recur on every row and step, and writing thousands of a long list's gains anew each time had
        # cost more than the step of a small LLM
        self.rows: dict[tuple, torch.Tensor] = {}

    def tokens(self, utt: int) -> torch.Tensor:
        """Every token id that spells a phrase of utterance `utt` (for a search that scores only some candidates:
        a boost on a token it never scores would be lost)."""
        tries = self.tries[utt]
        return torch.tensor(tries.spelled if tries is not None else [], dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[1]
        add = torch.zeros_like(scores)
        joining = torch.zeros(vocab, dtype=torch.bool)
        joining[: min(len(self.joins), vocab)] = self.joins[:vocab]
        joining = joining.to(add.device)
        seen, seen_text = {}, {}
        for r, ids in enumerate(input_ids.tolist()):
            utt = r // self.num_beams
            tries = self.tries[utt]
            if tries is None or self.end_id in ids:
                continue
            prefix = tuple(ids)
            if tries.tokens is not None:
                match = seen[(utt, prefix)] = self._match(utt, prefix, tries.tokens)
                after_word = bool(ids) and ids[-1] in self.ending
                key = (tries.tokens, match.node, after_word)
                row = self.rows.get(key)
                add[r] = row if row is not None else self._keep(key, self._row(*key, joining, add))
            if tries.text is not None:
                match = seen_text[(utt, prefix)] = self._text_match(utt, prefix, tries.text)
                key = (tries.text, match.place if match.place is not None else Place(tries.text))
                row = self.rows.get(key)
                add[r] += row if row is not None else self._keep(key, self._text_row(*key, add))
        self.matches, self.text_matches = seen, seen_text
        if not seen and not seen_text:
            return scores
        return torch.where(torch.isfinite(scores), scores + add, scores)

    def _keep(self, key: tuple, row: torch.Tensor) -> torch.Tensor:
        if len(self.rows) < ROWS_KEPT:
            self.rows[key] = row
        return row

    def _row(self, root: Node, node: Node, after_word: bool, joining: torch.Tensor, like: torch.Tensor):
        """What each token earns after a match at `node` (_gains), as one row of `like`'s scores."""
        ended, joined, tokens, gains = _gains(root, node, after_word)
        row = torch.full_like(like[0], self.boost * ended)
        row[joining] = self.boost * joined
        inside = tokens < row.numel()
        row[tokens[inside].to(row.device)] = (self.boost * gains[inside]).to(dtype=row.dtype, device=row.device)
        row[self.end_id] = self.boost * ended
        return row

    def _text_row(self, root: Node, place: Place, like: torch.Tensor):
        """What each token earns after a match at `place` of a byte trie (hotword_text.text_gains), as a row: the
        row of a place at the root shifted (a joining token's by its own shift), the tokens that go on with the
        match set apart."""
        shift, joined, at, tokens, gains = text_gains(root, place, self.index)
        if at is None:
            row = torch.zeros_like(like[0])
        else:
            key = (root, at)  # the row at the root after the text the match ends
            base = self.rows.get(key)
            row = (base if base is not None else self._text_row(*key, like)) + self.boost * shift
            if joined != shift:
                joining = self.index.joining[: row.numel()].to(row.device)
                row[: joining.numel()][joining] += self.boost * (joined - shift)
        inside = tokens < row.numel()
        row[tokens[inside].to(row.device)] = (self.boost * gains[inside]).to(dtype=row.dtype, device=row.device)
        row[self.end_id] = self.boost * shift
        return row

    def _match(self, utt: int, prefix: tuple[int, ...], root: Node) -> _Match:
        """The token-id match of `root`'s phrases over `prefix`."""
        return self._walk(self.matches, utt, prefix, root, self._token_step)

    def _text_match(self, utt: int, prefix: tuple[int, ...], root: Node) -> _Match:
        """The byte match of `root`'s phrases (a hotword_text trie) over `prefix`."""
        return self._walk(self.text_matches, utt, prefix, root, self._byte_step)

    @staticmethod
    def _walk(seen: dict, utt: int, prefix: tuple[int, ...], root: Node, step) -> _Match:
        """The match over `prefix`, from the matches of the last call (`seen`: a row's prefix one token shorter is
        among them) and `step` (the match before, the prefix) for what the last token adds."""
        known = seen.get((utt, prefix))
        if known is not None:
            return known
        if not prefix:
            return _Match(0, root, root)
        return step(HotwordBoost._walk(seen, utt, prefix[:-1], root, step), prefix)

    def _token_step(self, before: _Match, prefix: tuple[int, ...]) -> _Match:
        token, after_word = prefix[-1], len(prefix) > 1 and prefix[-2] in self.ending
        return _step(before, token, joins(token, self.joining), after_word)

    def _byte_step(self, before: _Match, prefix: tuple[int, ...]) -> _Match:
        root = before.root
        gained, place = step_token(
            root, before.place if before.place is not None else Place(root), self.index, prefix[-1]
        )
        settled = before.settled + gained
        read, node = reading(root, place)
        return _Match(settled + read, node, root, place, settled)


def _gains(root: Node, node: Node, after_word: bool) -> tuple[int, int, torch.Tensor, torch.Tensor]:
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
        ended = transition(root, node, -1, False, after_word)[0] - node.weight
        joined = transition(root, node, -1, True, after_word)[0] - node.weight
        gains: dict[int, int] = {}  # the tokens some phrase goes on with, from the first place in the chain
        for joins in (False, True):
            for banked, state in reversed(chain(root, node, joins)):
                if state is root and joins and after_word:
                    continue  # a joining token after a word's end goes on with that word, and begins no phrase
                for token, child in state.children.items():
                    if (token in root.joining) == joins:
                        gains[token] = banked + child.weight - node.weight
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


# The tries a tokenizer keeps of its recent lists (kept_for's "lists"). A `--hotwords` list is every utterance's: its
# phrases had been spelled again for each utterance of each batch, which for a list of thousands cost more than the
# search itself.
_TRIES_KEPT = 8


def _shared_tries(lists: OrderedDict, tokenizer, phrases, edges) -> _ListTries:
    """list_tries(phrases, tokenizer, edges), built once for each of the tokenizer's recent lists (`lists`, the
    tokenizer's kept tries: read anew with everything else once tokens are added to it). A trie's memo holds only what
    its phrases and the tokenizer decide, so utterances and batches may share it; the edges are the tokenizer's own,
    so the key needs only the list."""
    key = tuple(str(p) for p in phrases)
    tries = lists.get(key)
    if tries is None:
        tries = lists[key] = list_tries(key, tokenizer, edges)
    lists.move_to_end(key)
    while len(lists) > _TRIES_KEPT:
        lists.popitem(last=False)
    return tries


def _spelled(root: Node) -> set[int]:
    found, todo = set(), [root]
    while todo:
        node = todo.pop()
        found.update(node.children)
        todo.extend(node.children.values())
    return found
