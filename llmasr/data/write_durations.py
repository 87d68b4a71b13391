"""`llmasr data check MANIFEST --write-durations OUT`: the manifest again with a `duration` on every line that gave
none, the seconds its audio header says (what training would probe: the line's channel and span), so that training's
start-up reads durations instead of opening an audio file per line on every rank at every start.

Every other byte of a line stays as it is, and every line is written, bad ones too (training still names those):
nothing is dropped. OUT goes beside the manifest, whose relative audio paths resolve against its folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from llmasr.atomic_file import manifest_writer
from llmasr.config_io import ConfigError
from llmasr.config_paths import output_file_problem
from llmasr.data.manifest import Manifest


def with_duration(raw: bytes, seconds: float) -> bytes:
    """A JSON-object line with `"duration": seconds` added at its end."""
    body = raw.rstrip()
    if not body.endswith(b"}"):
        raise ValueError("not a JSON object line")
    inner = body[:-1].rstrip()
    sep = b"" if inner.endswith(b"{") else b", "
    return inner + sep + b'"duration": ' + json.dumps(round(float(seconds), 6)).encode() + b"}"


def check_out(src: Path, out: Path) -> None:
    """ConfigError unless `out` is a new file beside the manifest `src` (asked before the check, not after it)."""
    if out.resolve().parent != src.resolve().parent:
        raise ConfigError(f"--write-durations {out}: write it beside {src} (in {src.resolve().parent}): the lines' "
                          "relative audio paths resolve against the manifest's folder")  # fmt: skip
    if problem := output_file_problem(out, [src]):  # a folder, or the manifest itself
        raise ConfigError(f"--write-durations {out}: {problem}")


def write_durations(manifest_path: str | Path, durations, out: str | Path) -> dict:
    """Write `manifest_path` to `out` with `durations` (one a line, as llmasr.data.check probed them; NaN: none)
    given to the lines that state none. Returns the counts: added, stated (lines that had one), left (lines that
    got none: bad, or not probed)."""
    src, out = Path(manifest_path), Path(out)
    check_out(src, out)
    m = Manifest.open(src, need_target=False)
    stated = np.isfinite(np.asarray(m.durations(), dtype=np.float64))
    durations = np.asarray(durations, dtype=np.float64)
    if durations.shape != (len(m),):
        raise ValueError(f"{len(durations)} durations for the {len(m)} lines of {src}")
    counts = {"added": 0, "stated": int(stated.sum()), "left": 0}
    with manifest_writer(out) as f:
        for i in range(len(m)):
            raw = m.raw_line(i)
            if not stated[i] and math.isfinite(durations[i]) and durations[i] > 0:
                raw = with_duration(raw, durations[i])
                counts["added"] += 1
            elif not stated[i]:
                counts["left"] += 1
            f.write(raw + b"\n")
    return counts
