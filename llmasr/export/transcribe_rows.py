"""A Transcriber call's rows, each clip's given out as soon as it is done (llmasr.export.transcribe): the loader
decodes the shortest clips first, so a clip's row waits for every clip before it in the order given, and a stopped
call (Ctrl-C, SIGTERM, a batch the model fails on) first gives out the rows it finished and held back."""

from __future__ import annotations

from collections.abc import Callable

from llmasr.data.windowed import WindowedManifest, utterance_rows, window_texts
from llmasr.export.decode_confidence import confidence_fields

# what a clip's row keeps of decode's utterance row (results.jsonl's)
KEEP = ("hyp", "ctc_hyp", "truncated", "windows", "duration", "timestamps", "no_speech")


def clip_row(name: str, r: dict) -> dict:
    """A clip's row from decode's utterance row `r` (llmasr.data.windowed.utterance_rows)."""
    row = {"audio": name, **{k: r[k] for k in KEEP if k in r}}
    row.update(confidence_fields(r))  # with decode.confidence: avg_logprob and logprob
    if r.get("window_parts"):  # long audio, as results.jsonl has it: each window's span and own text
        row["window_texts"] = window_texts(r["window_parts"], "hyp")
    row["duration"] = round(row["duration"], 4)  # as results.jsonl states it: 0.9365, not float32's 0.9365000128...
    return row


class ClipRows:
    """The rows of a call's clips by position, each given to `on_row(position, row)` once it and every clip before
    it have theirs: in the order given, each once. An on_row that raises stops the call and is not called again."""

    def __init__(self, names: list[str], on_row: Callable[[int, dict], None] | None = None):
        self.names, self.on_row = names, on_row
        self.rows: dict[int, dict] = {}
        self.given = 0  # the clips before this position were given out

    def add(self, i: int, row: dict) -> None:
        self.rows[i] = row
        while self.given in self.rows:
            self.given += 1  # counted before on_row runs: one that raises is not given this row again
            self._give(self.given - 1)

    def _give(self, i: int) -> None:
        if self.on_row is None:
            return
        try:
            self.on_row(i, self.rows[i])
        except Exception:  # the caller's failure (a pipe whose reader left): held() gives it nothing more (a Ctrl-C
            # that lands in it is no failure of it: the held rows are still given)
            self.on_row = None
            raise

    def error(self, i: int, why: str) -> None:
        self.add(i, {"audio": self.names[i], "error": why})

    def held(self) -> None:
        """A stopped call: the rows finished behind a clip still undone, given out in order (gaps where clips were
        not done), so a stop loses no finished transcript."""
        held, self.given = sorted(i for i in self.rows if i >= self.given), len(self.names)
        for i in held:
            self._give(i)

    def all(self) -> list[dict]:
        return [self.rows[i] for i in range(len(self.names))]


class Decoded:
    """Which clips of the loader's manifest are done, as batches are decoded: a clip's row is made once every item
    of it (itself, or each of its windows) is decoded. `position[u]`: the call's position of manifest line u."""

    def __init__(self, manifest, position: list[int], overlap: float):
        self.manifest, self.position, self.overlap = manifest, position, overlap
        windowed = isinstance(manifest, WindowedManifest)
        self.owner = manifest.origin.tolist() if windowed else list(range(len(position)))  # item -> manifest line
        self.items: dict[int, list[int]] = {}
        for j, u in enumerate(self.owner):
            self.items.setdefault(u, []).append(j)
        self.left = {u: len(its) for u, its in self.items.items()}  # the lines not done: items not yet decoded
        self.line = {i: u for u, i in enumerate(position)}

    def done(self, items: dict[int, dict], new: list[int], failed) -> list[tuple[int, dict | None]]:
        """(position, decode's utterance row) of each clip finished by the batch of items `new`, None for one that
        `failed` (positions): it, or a window of it, was bad data. Each clip once."""
        out = []
        for i in failed:
            if self.left.pop(self.line.get(i, -1), None) is not None:
                out.append((i, None))
        for j in new:
            u = self.owner[j]
            if u not in self.left:  # failed (a window of it was bad)
                continue
            self.left[u] -= 1
            if not self.left[u]:
                del self.left[u]
                (row,) = utterance_rows({k: items[k] for k in self.items[u]}, self.manifest, self.overlap)
                out.append((self.position[u], row))
        return out
