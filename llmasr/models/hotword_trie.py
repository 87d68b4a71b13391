"""The phrase matching the hotword boost runs (llmasr.models.hotword_boost over token ids, llmasr.models.hotword_text
over the bytes of scripts written without spaces): a trie of the phrases' symbols whose nodes are worth what a match
standing there earns, and the steps of a match over it.

A symbol that continues the match extends it. Otherwise the match begun at its path's first symbol ends: the longest
phrase it began that is complete there is banked, and the symbols after that (after the first one, when none is
complete), this one last, are matched again from the root. So phrases are found leftmost first and longest first, a
phrase that begins or ends inside a broken-off match among them, and matches never overlap: no symbol is paid twice.
Every answer is kept on the root (`memo`): a search asks the same of every row at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class Node:
    """A place in the trie. Symbols are token ids (hotword_boost) or bytes (hotword_text); -1 matches nothing."""

    path: tuple[int, ...] = ()  # the symbols from the root to here
    weight: float = 0  # what a match standing here is worth: its tokens (hotword_text's tries: its characters)
    complete: bool = False  # a phrase ends here
    word_end: bool = False  # that phrase ends in a letter or digit: a joining token carries it on
    children: dict[int, Node] = field(default_factory=dict)
    joining: frozenset[int] = frozenset()  # the root's: the tokenizer's joining token ids
    ending: frozenset[int] = frozenset()  # the root's: the ids of tokens that end inside a word (word_ending_tokens)
    # the root's, for symbols that are UTF-8 bytes: read whole characters for the word rules (carries, ends_word)
    # rather than `joining` and `ending` (hotword_text.CHAR_WORDS); None: symbols are read alone
    words: object | None = None
    memo: dict = field(default_factory=dict, repr=False)  # the root's: transition's answers

    @property
    def depth(self) -> int:
        return len(self.path)


def joins(token: int, joining: frozenset[int]) -> bool:
    return token in joining


def carries(root: Node, path: tuple[int, ...], i: int, joining: bool) -> bool:
    """Whether the symbol at path[i] carries the word before it on; `joining` says it for the symbol after the path
    (i == len(path)) and, on bytes, for a character the path begins and that symbol goes on with."""
    if i >= len(path):
        return joining
    return root.words.carries(path, i, joining) if root.words is not None else path[i] in root.joining


def ends_word(root: Node, path: tuple[int, ...], i: int) -> bool:
    """Whether the text up to path[i] ends inside a word (a joining symbol after it goes on with that word)."""
    return root.words.ends(path, i) if root.words is not None else path[i] in root.ending


def complete_prefix(root: Node, path: tuple[int, ...], joining: bool) -> tuple[int, int]:
    """(symbols, weight) of the longest phrase that `path` begins with and that is complete there: not carried on
    by the token after it (the path's next one, or one that is `joining` after the whole path); (0, 0): none."""
    best, node = (0, 0), root
    for i, token in enumerate(path):
        node = node.children[token]
        carried_on = carries(root, path, i + 1, joining)
        if node.complete and not (node.word_end and carried_on):
            best = (i + 1, node.weight)
    return best


def transition(root: Node, node: Node, token: int, joining: bool, after_word: bool) -> tuple[int, Node]:
    """(weight banked, the next node) of symbol `token` after `node`, whatever was banked before (`joining`: the
    token carries the word before it on; `after_word`: the token before it ends inside a word, so a phrase's
    start-of-text spelling cannot begin at a joining token)."""
    after_word = after_word and node is root  # past the root the match's own last symbol says it (below)
    key = (node, token, joining, after_word)  # walk and walk_steps read the memo by this key too
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
            banked, rest = broken(root, node, joining)
            gained, after = transition(root, rest, token, joining, ends_word(root, node.path, len(node.path) - 1))
            known = (banked + gained, after)
        root.memo[key] = known
    return known


def walk(root: Node, node: Node, symbols) -> tuple[float, Node]:
    """(weight banked, the node reached) of `symbols` stepped one by one after `node`, none of them joining (so no
    word rule bars a phrase's start): transition's answers read from the memo without a call each, as a byte match
    steps thousands of tokens' bytes for one row."""
    memo, banked = root.memo, 0
    for symbol in symbols:
        known = memo.get((node, symbol, False, False))
        if known is None:
            known = transition(root, node, symbol, False, False)
        banked += known[0]
        node = known[1]
    return banked, node


def walk_steps(root: Node, node: Node, steps, after_word: bool) -> tuple[float, Node]:
    """walk for symbols with word rules: `steps` are (symbol, joining, after_word) as transition takes them, an
    after_word of None reading `after_word` (what the text before the steps ends in)."""
    memo, banked = root.memo, 0
    for symbol, joining, after in steps:
        if after is None:
            after = after_word
        known = memo.get((node, symbol, joining, after and node is root))  # transition's key
        if known is None:
            known = transition(root, node, symbol, joining, after)
        banked += known[0]
        node = known[1]
    return banked, node


def broken(root: Node, node: Node, joining: bool) -> tuple[int, Node]:
    """(weight banked, where the match stands) when the match at `node` ends before a symbol that continues none of
    it: its longest complete phrase banked and the symbols after that matched again from the root."""
    key = ("broken", node, joining)
    known = root.memo.get(key)
    if known is None:
        done, banked = complete_prefix(root, node.path, joining)
        state, path = root, node.path
        for i in range(max(done, 1), len(path)):
            gained, state = transition(
                root, state, path[i], carries(root, path, i, joining), ends_word(root, path, i - 1)
            )
            banked += gained
        known = root.memo[key] = (banked, state)
    return known


def chain(root: Node, node: Node, joining: bool) -> list[tuple[int, Node]]:
    """(weight banked so far, node) of each place a token that is `joining` (or not) may go on from, in order: the
    match itself, then where it stands after each break, down to the root. A token goes on from the first of them
    that has it as a child (what transition finds, without a call per token); no phrase goes on with any other."""
    key = ("chain", node, joining)
    known = root.memo.get(key)
    if known is None:
        known, banked, state = [(0, node)], 0, node
        while state is not root:
            gained, state = broken(root, state, joining)
            banked += gained
            known.append((banked, state))
        root.memo[key] = known
    return known
