"""A byte-level BPE vocabulary in tiktoken's file format as a CTC vocabulary: Fun-ASR-Nano's CTC branch spells its
labels in SenseVoice's `multilingual.tiktoken`.

The file holds one token a line, `<base64 bytes> <rank>`; a token's id is its rank. Text is cut into pieces by the
Whisper/SenseVoice pre-tokenizer pattern (contractions, letters, digits, other symbols, each with one leading space)
and each piece's bytes are merged pair by pair, always the adjacent pair whose joined bytes have the lowest rank,
until no joined pair is a token: the ids tiktoken's own encoder gives. Ids from the last token up to the head's size
are the special tokens SenseVoice's tokenizer appends (language, event, timestamp tags): never produced when
encoding, dropped when decoding (FunASR writes their tags into its `ctc_text`), so the CTC text holds words only.
The blank is the head's last output, as FunASR's `ctc_conf.blank_id` defaults it.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Sequence
from pathlib import Path

import regex

from llmasr.config_io import ConfigError
from llmasr.models.ctc_vocab import CTCTokenizer, WordSpelling, byte_to_char_spans, label_owners

# SenseVoice's (and Whisper's) pre-tokenizer: what tiktoken's Encoding gets as pat_str for multilingual.tiktoken.
CACHE_PIECES = 20_000  # pieces whose ids are kept between calls (a worker holds a few MB of them)
PIECES = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """`<base64 token> <rank>` lines -> {token bytes: rank}; a bad line is named with its number."""
    ranks: dict[bytes, int] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:  # base64 lines are ASCII: another kind of file
        raise ConfigError(f"CTC vocabulary {path}: not a text file of `<base64 token> <rank>` lines ({err.reason} at "
                          f"byte {err.start})") from None  # fmt: skip
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError(f"expected `<base64 token> <rank>`, got {len(fields)} field(s)")
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except ValueError as err:  # binascii.Error (bad base64) is one
            raise ConfigError(f"CTC vocabulary {path}, line {n}: {err}: {line.strip()[:60]!r}") from err
        if token in ranks:
            raise ConfigError(f"CTC vocabulary {path}, line {n}: token {token!r} is listed twice")
        ranks[token] = rank
    if not ranks:
        raise ConfigError(f"CTC vocabulary {path}: no tokens")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ConfigError(
            f"CTC vocabulary {path}: {len(missing)} of the 256 single bytes have no token (e.g. "
            f"{bytes(missing[:1])!r}); a byte-level BPE vocabulary needs all of them to spell any text"
        )
    return ranks


def write_ranks(path: str | Path, tokens: list[bytes]) -> Path:
    """`tokens` in tiktoken's file format, each ranked by its place in the list (read_ranks reads it back)."""
    path = Path(path)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)), "utf-8")
    return path


def merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """One pre-tokenized piece -> its ids: join the lowest-ranked adjacent pair (the leftmost on a tie) until none
    joins into a token. The segments are a linked list and the candidate pairs a heap, so a long piece (a sentence of
    a script written without spaces is one piece) costs n log n, not n^2. An entry whose pair no longer has the rank
    it was pushed with is stale and skipped; every current pair has an entry, so the first valid one is the least."""
    if piece in ranks:
        return [ranks[piece]]
    n = len(piece)
    nxt = list(range(1, n + 1))  # segment i covers piece[i:nxt[i]]
    prv = list(range(-1, n - 1))
    alive = [True] * n

    def pair_rank(i: int) -> int | None:
        j = nxt[i]
        return None if j >= n else ranks.get(piece[i : nxt[j]])

    heap = [(r, i) for i in range(n - 1) if (r := ranks.get(piece[i : i + 2])) is not None]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        if not alive[i] or pair_rank(i) != rank:
            continue
        j = nxt[i]
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        for s in (prv[i], i):
            if s >= 0 and (r := pair_rank(s)) is not None:
                heapq.heappush(heap, (r, s))
    ids, i = [], 0
    while i < n:
        ids.append(ranks[piece[i : nxt[i]]])
        i = nxt[i]
    return ids


class TiktokenCTCTokenizer(CTCTokenizer):
    """See the module docstring. `vocab_size`: the CTC head's outputs, blank = the last; None: the file's tokens
    and the blank after them."""

    def __init__(self, path: str, vocab_size: int | None = None):
        self.path = path
        ranks = read_ranks(path)
        self.ranks = ranks
        self.tokens = {rank: token for token, rank in ranks.items()}
        self.n_tokens = max(self.tokens) + 1
        if vocab_size is not None and vocab_size <= self.n_tokens:
            raise ConfigError(
                f"CTC vocabulary {path}: model.ctc.vocab_size is {vocab_size}, but the file's tokens alone take ids "
                f"0..{self.n_tokens - 1}; the head needs at least {self.n_tokens + 1} outputs (the blank is the last)"
            )
        self.vocab_size = self.n_tokens + 1 if vocab_size is None else int(vocab_size)
        self.blank_id = self.vocab_size - 1
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return [i for piece in PIECES.findall(text) for i in self._piece_ids(piece)]

    def word_spelling(self) -> WordSpelling:
        """Word by word where the words stand one space apart: PIECES (GPT-2's regex) never spans a space but for
        starting at one, and each piece is merged alone."""
        return WordSpelling(self.encode, lambda word: self.encode(" " + word), spaced=True)

    def _piece_ids(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is None:
            if len(self._cache) >= CACHE_PIECES:  # a corpus's distinct words, in every data worker
                self._cache.clear()
            cached = self._cache[piece] = merge(piece.encode("utf-8"), self.ranks)
        return cached

    def spell_units(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[range]]:
        """`text`'s labels as the head learned them, the whole text encoded at once (a token may merge characters
        of a script written without spaces), with the units each covers (LLMCTCTokenizer.spell_units)."""
        ids, byte_spans, at, done = [], [], 0, 0  # `at`: the byte where character `done` starts
        for m in PIECES.finditer(text):
            at, done = at + len(text[done : m.start()].encode("utf-8")), m.start()
            for i in self._piece_ids(m.group()):
                ids.append(i)
                byte_spans.append((at, at + len(self.tokens[i])))
                at += len(self.tokens[i])
            done = m.end()
        chars = byte_to_char_spans(text, byte_spans)
        return label_owners([(i, a, b) for i, (a, b) in zip(ids, chars)], spans)

    def decode(self, ids: Sequence[int]) -> str:
        """Special tokens (ids past the file's tokens) and the blank are dropped; bytes that do not end a UTF-8
        character (a label sequence cut mid-character) become U+FFFD, as tiktoken decodes them."""
        data = b"".join(self.tokens.get(int(i), b"") for i in ids if int(i) < self.n_tokens)
        return data.decode("utf-8", errors="replace")
