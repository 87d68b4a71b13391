"""The time ranges decode-only pipe commands cut (llmasr.data.pipe_commands parses the rest): sph2pipe's `-t`/`-s`,
flac's `--skip=`/`--until=` and sox's `trim`, each read as its tool reads it, into a start and an end Position
(seconds plus samples, from the start or from the end of the file), resolved against the file's header by
llmasr.data.piped_files. Forms not mapped raise NotUnderstood naming them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


class NotUnderstood(ValueError):
    """A part of a pipe command llmasr does not read as a file (the message names it)."""


@dataclass(frozen=True)
class Position:
    """A point in the file: `samples` plus `seconds` (made samples as the tool makes them), counted from the start,
    on from an earlier point (`after`: sox's `+`, flac's `--until=+U`), or back from the end (`from_end`). `sox`:
    counted as sox counts, a time rounded to the nearest sample and a count back from the end stopping at the start;
    else as sph2pipe and flac do, a time cast down (C's `(int)(t * rate)`), a count back free to pass the start (which
    they refuse). Kept apart until the header gives the rate."""

    seconds: float = 0.0
    samples: int = 0
    from_end: bool = False
    sox: bool = False
    after: Position | None = None

    def frame(self, rate: int, frames: int) -> int:
        """The point as a sample index of a file of `frames` samples at `rate` Hz."""
        n = self.samples + math.floor(self.seconds * rate + (0.5 if self.sox else 0.0))
        if self.from_end:
            return max(frames - n, 0) if self.sox else frames - n
        return n + (0 if self.after is None else self.after.frame(rate, frames))

    def plus(self, other: Position) -> Position:
        """`other` (a length) counted on from this point, in samples as the tool adds them."""
        return Position(other.seconds, other.samples, sox=other.sox, after=self)


START = Position()


def sph2pipe_span(flag: str, value: str) -> tuple[Position, Position | None]:
    """sph2pipe's `-t b:e` (seconds) or `-s b:e` (samples): either side may be left out; an end of 0 is its end."""
    number = r"[0-9]+(\.[0-9]*)?|\.[0-9]+" if flag == "t" else r"[0-9]+"
    b, colon, e = value.partition(":")
    if not colon or not all(re.fullmatch(number, x) for x in (b, e) if x):
        raise NotUnderstood(f"sph2pipe -{flag} {value!r} (expected b:e, {'seconds' if flag == 't' else 'samples'})")
    start, end = float(b or 0), (float(e) if e and float(e) > 0 else None)
    if start > 0 and end is not None and start >= end:
        raise NotUnderstood(f"sph2pipe -{flag} {value!r}: its start is not before its end")
    if flag == "s":
        return Position(samples=int(start)), (None if end is None else Position(samples=int(end)))
    return Position(start), (None if end is None else Position(end))


_FLAC_TIME = re.compile(r"([0-9]+):([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def _flac_point(option: str, value: str) -> Position:
    """A sample number, or `mm:ss.ss` (the minutes any size), as flac reads --skip's and --until's values."""
    if re.fullmatch(r"[0-9]+", value):
        return Position(samples=int(value))
    if m := _FLAC_TIME.fullmatch(value):
        return Position(int(m[1]) * 60 + float(m[2]))
    raise NotUnderstood(f"flac {option}={value!r} (expected a sample number or mm:ss.ss)")


def flac_span(skip: str | None, until: str | None) -> tuple[Position, Position | None]:
    """flac's `--skip=#|mm:ss.ss` and `--until=[+|-]#|mm:ss.ss`: an until with `+` counts from the skip point, with
    `-` back from the end of the file; the until sample is not decoded (it is the range's end). A signed until of
    zero (`+0`, `-0`) is flac's end of the stream."""
    start = START if skip is None else _flac_point("--skip", skip)
    if until is None:
        return start, None
    sign, rest = (until[0], until[1:]) if until[:1] in ("+", "-") else ("", until)
    end = _flac_point("--until", rest) if rest else None
    if end is None:
        raise NotUnderstood(f"flac --until={until!r} (expected [+|-] and a sample number or mm:ss.ss)")
    if sign and not end.samples and not end.seconds:
        return start, None
    if sign == "+":
        return start, start.plus(end)
    return start, Position(end.seconds, end.samples, from_end=sign == "-")


_SOX_POSITION = re.compile(r"([=+-]?)(?:([0-9]+)s|((?:[0-9]+:){0,2}(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))t?)")


def is_sox_position(word: str) -> bool:
    return _SOX_POSITION.fullmatch(word) is not None


def _sox_point(word: str) -> tuple[str, Position]:
    """A sox position: `[=+-]` then `[[hh:]mm:]ss[.frac]` or a sample count `Ns`."""
    m = _SOX_POSITION.fullmatch(word)
    if m is None:
        raise NotUnderstood(f"sox trim position {word!r}")
    if m[2] is not None:
        return m[1], Position(samples=int(m[2]), sox=True)
    seconds = 0.0
    for part in m[3].split(":"):
        seconds = seconds * 60 + float(part)
    return m[1], Position(seconds, sox=True)


def sox_trim(positions: list[str], samples_ok: bool) -> tuple[Position, Position | None]:
    """sox's `trim START [LEN|=END|-FROM_END]`: each position is relative to the one before (`+`, the default; the
    first to the start), absolute with `=`, back from the end with `-`; audio from START to END is kept. More
    positions (trim alternately copies and skips between them) are not one range. `samples_ok`: whether a count of
    samples is one of the file's (no rate effect before the trim)."""
    if not 1 <= len(positions) <= 2:
        got = "no position" if not positions else f"{len(positions)} positions"
        effect = " ".join(["trim", *positions])
        raise NotUnderstood(f"sox effect {effect!r} ({got}; read: trim START [LEN|=END|-FROM_END], one range)")
    points = [_sox_point(word) for word in positions]
    if not samples_ok and any(point.samples for _, point in points):
        raise NotUnderstood(f"sox effect 'trim {' '.join(positions)}' in samples after a rate effect")
    (sign, start), rest = points[0], points[1:]
    if sign == "-":
        start = Position(start.seconds, start.samples, from_end=True, sox=True)
    if not rest:
        return start, None
    sign, end = rest[0]
    if sign in ("", "+"):
        return start, start.plus(end)
    return start, Position(end.seconds, end.samples, from_end=sign == "-", sox=True)
