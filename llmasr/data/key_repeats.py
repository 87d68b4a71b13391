"""Keys that stand on more than one line: training's start-up screen (llmasr.data.screen) finds them as it parses
every line, so train.log and `llmasr check` warn of them (`llmasr data check` lists each). A repeated key is mostly a
manifest pasted into another (its lines then train twice an epoch, unsaid) or two corpora keyed alike; training takes
both lines, but a decode's hyp.txt and ref.txt, keyed, cannot tell them apart."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable

import numpy as np

EXAMPLES = 5


def key_hash(key) -> int:
    """A key's 64-bit hash, the same in every process (str's own is salted per process, and the ranks compare theirs).
    Two of 10 million keys share one by chance about 3 times in a million corpora."""
    digest = hashlib.blake2b(str(key).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class KeyRepeats:
    """Each line's key as a hash and a position (16 bytes a line, as the manifest's own index: the screen runs on every
    rank over every line, and the ranks exchange their shares), and, once merged, each later position holding a key
    again with the first position holding it."""

    def __init__(self):
        self.positions, self.hashes = array("q"), array("q")
        self.again: list[tuple[int, int]] = []  # (position, the first position of its key), by position

    def note(self, key, here: int) -> None:
        self.positions.append(here)
        self.hashes.append(key_hash(key))

    def part(self) -> dict:
        """What a share of the lines found, for merged (picklable: the ranks of a node exchange it)."""
        return {"positions": np.frombuffer(self.positions, np.int64), "hashes": np.frombuffer(self.hashes, np.int64)}

    def merge(self, parts: list[dict]) -> None:
        """Finds the repeats among the lines of several shares (each screened apart, positions in one index space):
        each key's first position is the lowest any share holds, every other position holding it a repeat."""
        positions = np.concatenate([np.zeros(0, np.int64), *(p["positions"] for p in parts)])
        hashes = np.concatenate([np.zeros(0, np.int64), *(p["hashes"] for p in parts)])
        order = np.lexsort((positions, hashes))
        positions, hashes = positions[order], hashes[order]
        leads = np.ones(len(hashes), bool)  # a key's first position, its lowest
        leads[1:] = hashes[1:] != hashes[:-1]
        first = positions[leads][np.cumsum(leads) - 1]
        again = np.flatnonzero(~leads)
        again = again[np.argsort(positions[again], kind="stable")]
        self.again = list(zip(positions[again].tolist(), first[again].tolist()))

    def text(self, spot: Callable[[int], str], key_at: Callable[[int], str]) -> str | None:
        """The warning of the repeats, each key with its first line and the repeat's (`spot(position)`: its
        manifest:line; `key_at(position)`: its key), or None when every key stands once."""
        if not self.again:
            return None
        shown = [f"{key_at(i)!r} at {spot(first)} and {spot(i)}" for i, first in self.again[:EXAMPLES]]
        more = f"; and {len(self.again) - EXAMPLES} more" if len(self.again) > EXAMPLES else ""
        return (
            f"{len(self.again)} line(s) repeat an earlier line's key: {'; '.join(shown)}{more} (a manifest pasted "
            "into another, whose lines then count twice? two corpora keyed alike? training takes both, but a "
            "decode's hyp.txt and ref.txt, keyed, cannot tell them apart): give each line a key of its own"
        )
