"""The folders a decode writes into, and what it may remove there: its own files (OUTPUT_FILES, a ctc/ folder of
them, a decode of several manifests' MANIFEST_INDEX), never another file. A decode removes its own earlier files
from every folder it writes once its start-up checks pass, so that a decode stopped part-way (Ctrl-C, a preempted
job, a crash) leaves no complete-looking results of an earlier decode that would read as its own."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from llmasr.atomic_file import write_atomic

# What a decode writes into its output folder (and into its ctc/ folder with --ctc).
OUTPUT_FILES = ("hyp.txt", "ref.txt", "results.jsonl", "wer.txt", "wer.json", "bad.jsonl")
# A decode of several manifests: the subfolder each has, so that a later decode into the same place knows them.
MANIFEST_INDEX = "manifests.json"
CTC_DIR = "ctc"
# write_atomic's hidden sibling of one of them, left behind only by a kill during its write (.hyp.txt.tmp1234)
_HALF_WRITTEN = re.compile(rf"\.({'|'.join(map(re.escape, OUTPUT_FILES))})\.tmp\d+")


def _owned(name: str) -> bool:
    return name in OUTPUT_FILES or bool(_HALF_WRITTEN.fullmatch(name))


def clear_outputs(out_dir: Path) -> list[str]:
    """Remove what an earlier decode wrote into `out_dir`, so that none of it sits stale beside this decode's (a
    ref.txt this manifest has no references for, a ctc/ folder this run does not write); returns what went, as
    paths under `out_dir`."""
    removed = []
    for folder in (out_dir, out_dir / CTC_DIR):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if _owned(path.name) and not path.is_dir():
                path.unlink(missing_ok=True)
                removed.append(path.relative_to(out_dir).as_posix())
    if (out_dir / CTC_DIR).is_dir() and not any((out_dir / CTC_DIR).iterdir()):
        (out_dir / CTC_DIR).rmdir()  # an empty ctc/ would say this decode ran --ctc
    return removed


def clear_earlier_folders(output: Path, keep: list[Path]) -> None:
    """Before a decode into `output`: the per-manifest subfolders an earlier decode of several manifests wrote there
    (it named them in MANIFEST_INDEX) that this decode does not write again lose that decode's files, so that no
    folder of stale results sits beside this decode's. Files of the user's own in such a folder stay, and so does
    the folder then."""
    index = output / MANIFEST_INDEX
    try:
        names = list(json.loads(index.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # none, or not one this code wrote: nothing is known to be stale
        return
    for name in names:
        folder = output / str(name)
        if folder in keep or Path(str(name)).name != name or not folder.is_dir():  # only subfolders it named
            continue
        clear_outputs(folder)
        with contextlib.suppress(OSError):
            folder.rmdir()
    index.unlink(missing_ok=True)


def write_manifest_index(output: Path, manifests: list[str], folders: list[Path]) -> None:
    """MANIFEST_INDEX: which manifest each subfolder of a decode of several holds, {folder name: manifest path}."""
    text = json.dumps({f.name: m for f, m in zip(folders, manifests)}, indent=2, ensure_ascii=False)
    write_atomic(output / MANIFEST_INDEX, text + "\n")
