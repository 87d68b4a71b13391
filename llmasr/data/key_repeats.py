"""Keys that stand on more than one line: `llmasr data check` lists them, and training's start-up screen
(llmasr.data.screen) finds them as it parses every line, so train.log and `llmasr check` warn of them. A repeated key
is mostly a manifest pasted into another (its lines then train twice an epoch, unsaid) or two corpora keyed alike;
training takes both lines, but a decode's hyp.txt and ref.txt, keyed, cannot tell them apart."""

from __future__ import annotations

from collections.abc import Callable

EXAMPLES = 5


class KeyRepeats:
    """The keys seen (key -> the first position holding it) and each later position holding one again."""

    def __init__(self):
        self.first: dict[str, int] = {}
        self.again: list[tuple[int, str]] = []  # (position, key), in the order noted

    def note(self, key, here: int) -> int:
        """Notes `key` at position `here`; returns the first position holding it (`here` for a new key)."""
        first = self.first.setdefault(str(key), here)
        if first != here:
            self.again.append((here, str(key)))
        return first

    def part(self) -> dict:
        """What a share of the lines found, for merged (picklable: the ranks of a node exchange it)."""
        return {"first": self.first, "again": self.again}

    def merge(self, parts: list[dict]) -> None:
        """Takes the repeats of the lines of several shares (each screened apart, positions in one index space): each
        key's first position is the lowest any share holds, every other position holding it a repeat."""
        for part in parts:
            for key, i in part["first"].items():
                self.first[key] = min(i, self.first.get(key, i))
        for part in parts:
            self.again += part["again"]
            self.again += [(i, key) for key, i in part["first"].items() if self.first[key] != i]
        self.again.sort()

    def text(self, spot: Callable[[int], str]) -> str | None:
        """The warning of the repeats, each key with its first line and the repeat's (`spot(position)`: its
        manifest:line), or None when every key stands once."""
        if not self.again:
            return None
        shown = [f"{key!r} at {spot(self.first[key])} and {spot(i)}" for i, key in self.again[:EXAMPLES]]
        more = f"; and {len(self.again) - EXAMPLES} more" if len(self.again) > EXAMPLES else ""
        return (
            f"{len(self.again)} line(s) repeat an earlier line's key: {'; '.join(shown)}{more} (a manifest pasted "
            "into another, whose lines then count twice? two corpora keyed alike? training takes both, but a "
            "decode's hyp.txt and ref.txt, keyed, cannot tell them apart): give each line a key of its own"
        )
