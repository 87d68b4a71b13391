"""The folders a decode writes into, and what it may remove there: its own files (OUTPUT_FILES, a ctc/ folder of
them, a subtitles/ folder of .srt or .vtt files, a decode of several manifests' MANIFEST_INDEX), never another file.
A decode removes its own earlier files from every folder it writes once its start-up checks pass, so that a decode
stopped part-way (Ctrl-C, a preempted job, a crash) leaves no complete-looking results of an earlier decode that
would read as its own; and it refuses a manifest's subfolder that holds files it does not write (an export's llm/ for
a manifest named llm.jsonl)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from llmasr.atomic_file import write_atomic
from llmasr.data.manifest_names import set_names
from llmasr.export.subtitles import FORMATS

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"  # a decode's row per line: what pseudo-labels and `llmasr score` read of it
SUMMARY = "wer.json"  # its figures and settings (the manifest, a --hotwords file): read_summary
# What a decode writes into its output folder (and into its ctc/ folder with --ctc).
OUTPUT_FILES = ("hyp.txt", "ref.txt", RESULTS, "wer.txt", SUMMARY, "bad.jsonl")
# A decode of several manifests: the subfolder each has, so that a later decode into the same place knows them.
MANIFEST_INDEX = "manifests.json"
CTC_DIR = "ctc"
SUBTITLES_DIR = "subtitles"  # --subtitles srt|vtt: KEY.srt or KEY.vtt for each decoded row (decode_subtitles)
# write_atomic's hidden sibling of one of them, left behind only by a kill during its write (.hyp.txt.tmp1234)
_HALF_WRITTEN = re.compile(rf"\.({'|'.join(map(re.escape, OUTPUT_FILES))})\.tmp\d+")
_SUBTITLE = re.compile(rf"(\..*\.({'|'.join(FORMATS)})\.tmp\d+|.*\.({'|'.join(FORMATS)}))", re.DOTALL)


def _owned(name: str) -> bool:
    return name in OUTPUT_FILES or bool(_HALF_WRITTEN.fullmatch(name))


def _files(folder: Path, owned) -> list[Path]:
    if not folder.is_dir():
        return []
    return [path for path in sorted(folder.iterdir()) if owned(path.name) and not path.is_dir()]


def decode_files(out_dir: Path, *, subfolders: bool = True) -> list[Path]:
    """The files a decode writes (or was writing) in `out_dir` and, with `subfolders`, its ctc/ and subtitles/
    folders, sorted."""
    found = _files(out_dir, _owned)
    if subfolders:
        found += _files(out_dir / CTC_DIR, _owned) + _files(out_dir / SUBTITLES_DIR, _SUBTITLE.fullmatch)
    return found


def clear_outputs(out_dir: Path) -> list[str]:
    """Remove what an earlier decode wrote into `out_dir`, so that none of it sits stale beside this decode's (a
    ref.txt this manifest has no references for, a ctc/ folder this run does not write, the subtitles of a key
    this decode has not, or of a decode with --subtitles where this one has none); returns what went, as paths
    under `out_dir`."""
    removed = []
    for path in decode_files(out_dir):
        path.unlink(missing_ok=True)
        removed.append(path.relative_to(out_dir).as_posix())
    for sub in (CTC_DIR, SUBTITLES_DIR):  # an empty one would say this decode ran --ctc, --subtitles
        if (out_dir / sub).is_dir() and not any((out_dir / sub).iterdir()):
            (out_dir / sub).rmdir()
    return removed


def clear_for_decode(out_dir: Path) -> list[str]:
    """clear_outputs at a decode's start, once its checks pass (the library's decode_manifest and `llmasr decode`
    alike), saying what went (subtitles as their count: one file a key)."""
    removed = clear_outputs(out_dir)
    subtitles = [path for path in removed if path.startswith(f"{SUBTITLES_DIR}/")]
    said = [path for path in removed if path not in subtitles]
    said += [f"{len(subtitles)} files of {SUBTITLES_DIR}/"] if subtitles else []
    if said:
        log.info("removed an earlier decode's %s from %s: this decode writes its own, and one stopped before it ends "
                 "leaves none", ", ".join(said), out_dir)  # fmt: skip
    return removed


def written_since_cleared(out_dir: Path, *, top: bool = False) -> str | None:
    """Why a decode that cleared `out_dir` at its start may not write its files there now, or None: another decode
    into the same folder wrote its own since (or is writing them), and the two sets would mix (one's results.jsonl
    beside the other's ctc/, scored as one decode). `top`: the --output of a decode of several manifests, whose
    own files there are its MANIFEST_INDEX and wer.txt (a ctc/ in it is a manifest's folder: ctc.jsonl's)."""
    found = [p.relative_to(out_dir).as_posix() for p in decode_files(out_dir, subfolders=not top)]
    found += [MANIFEST_INDEX] if top and (out_dir / MANIFEST_INDEX).exists() else []
    if not found:
        return None
    return (
        f"{out_dir}: another decode wrote {', '.join(found[:4])}{' ...' if len(found) > 4 else ''} there while this "
        "one ran (two decodes given one --output); this decode's files would mix with its, so none are written: "
        "give each decode an --output of its own"
    )


def foreign_files(folder: Path, *, ctc: bool = True, ours: frozenset[Path] = frozenset()) -> list[str]:
    """What `folder` holds that no decode writes, as sorted paths under it (a folder other than ctc/ by its name and
    a slash): a user's own files, or another tool's. `ctc`: a ctc/ folder of a decode's files and a subtitles/
    folder of .srt or .vtt files are its own; `ours`: the manifest folders of a decode of several, whose subfolders
    (clean/ of clean/test/) are their own too."""
    found = []
    for path in sorted(folder.iterdir()):
        if ctc and path.name == CTC_DIR and path.is_dir():
            found += [f"{CTC_DIR}/{name}" for name in foreign_files(path, ctc=False)]
        elif path.is_dir() and any(path == f or path in f.parents for f in ours):
            continue  # a manifest's folder nested in this one (dev/ and dev/x/ for dev.jsonl and dev/x.jsonl)
        elif ctc and path.name == SUBTITLES_DIR and path.is_dir():  # --subtitles' files, one a key
            found += [f"{SUBTITLES_DIR}/{p.name}{'/' * p.is_dir()}" for p in sorted(path.iterdir())
                      if p.is_dir() or not _SUBTITLE.fullmatch(p.name)]  # fmt: skip
        elif path.is_dir():
            found.append(f"{path.name}/")
        elif not _owned(path.name):
            found.append(path.name)
    return found


def manifest_folder_problem(folder: Path, manifest: str, ours: frozenset[Path] = frozenset()) -> str | None:
    """Why the subfolder a decode of several manifests writes `manifest` into may not be written (it is named by
    the manifest's set name, so an unlucky name lands in a folder of something else's: an export's llm/ for
    llm.jsonl); None when it is new, empty, or holds only a decode's files. `ours`: every manifest folder of this
    decode and the one before it (earlier_folders), which may sit inside `folder`."""
    where = f"{folder} (the folder of --data {manifest}: one subfolder per manifest, named as training names it)"
    above = next((p for p in folder.parents if p.exists()), None)  # clean/ of clean/test/, which mkdir needs a folder
    if above is not None and not above.is_dir():
        return f"{where} cannot be made: {above} is a file, not a folder"
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"{where} is a file, not a folder"
    found = foreign_files(folder, ours=ours)
    if not found:
        return None
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (
        f"{where} already holds files llmasr decode does not write ({', '.join(found[:3])}{more}), which its "
        "results would sit among: give another --output, or rename the manifest so that its folder is a new one"
    )


def subtitles_folder_problem(data: list[str], folders: list[Path]) -> str | None:
    """Why a decode of several manifests with --subtitles cannot write each one's SUBTITLES_DIR: one's folder is
    another's subtitles/ (m/subtitles.jsonl beside m.jsonl and q/subtitles.jsonl), where the two would mix; None."""
    for manifest, folder in zip(data, folders):
        for other, theirs in zip(data, folders):
            if theirs == folder / SUBTITLES_DIR:
                return (f"{theirs}, the folder of --data {other}, is also where the subtitles of --data {manifest} "
                        "go: rename one of the manifests")  # fmt: skip
    return None


def earlier_folders(output: Path) -> list[Path]:
    """The manifest folders an earlier decode of several into `output` wrote (it named them in MANIFEST_INDEX): only
    folders under `output`, a name that would lead out of it (.., an absolute path) is no folder of a decode's."""
    try:
        names = list(json.loads((output / MANIFEST_INDEX).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # none, or not one this code wrote: nothing is known to be stale
        return []
    parts = [str(name).split("/") for name in names]
    return [output.joinpath(*p) for p in parts if all(x not in ("", ".", "..") for x in p)]


def results_problem(folder: Path) -> str | None:
    """Why `folder` holds no decode's RESULTS to read, or None: a decode of several manifests (each in a folder of
    its own, named), or no folder of a decode's."""
    if (folder / RESULTS).is_file():
        return None
    if folders := [f for f in earlier_folders(folder) if (f / RESULTS).is_file()]:
        return (
            f"a decode of several manifests, with the {RESULTS} of each in a folder of its own: give one of "
            f"{', '.join(map(str, folders))}"
        )
    return f"no {RESULTS}: not the output folder of `llmasr decode`"


def read_summary(decoded: Path) -> dict:
    """The decode folder's SUMMARY, {} where there is none or it is no JSON object."""
    try:
        summary = json.loads((decoded / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def clear_earlier_folders(output: Path, keep: list[Path]) -> None:
    """Before a decode into `output`: the per-manifest subfolders an earlier decode of several manifests wrote there
    (earlier_folders) that this decode does not write again lose that decode's files, so that no folder of stale
    results sits beside this decode's. Files of the user's own in such a folder stay, and so does the folder then;
    a nested one's emptied parents (clean/ of clean/test/) go with it."""
    for folder in earlier_folders(output):
        if folder in keep or not folder.is_dir():
            continue
        clear_outputs(folder)
        for empty in (folder, *folder.parents):
            if empty == output or empty in keep:
                break
            try:
                empty.rmdir()
            except OSError:  # not empty: files of the user's own, or another manifest's folder
                break
    (output / MANIFEST_INDEX).unlink(missing_ok=True)


def write_manifest_index(output: Path, manifests: list[str], folders: list[Path]) -> None:
    """MANIFEST_INDEX: which manifest each subfolder of a decode of several holds, {folder under output: manifest}."""
    index = {f.relative_to(output).as_posix(): m for f, m in zip(folders, manifests)}
    write_atomic(output / MANIFEST_INDEX, json.dumps(index, indent=2, ensure_ascii=False) + "\n")


def out_dirs(data: list[str], output: Path) -> list[Path]:
    """One output folder per manifest: OUTPUT itself for one, OUTPUT/NAME for several, NAME the manifest's set name
    (llmasr.data.manifest_names: the `valid[NAME]` of training on them), its folders nested as the manifests' are
    (OUTPUT/clean/test/ for clean/test.jsonl beside other/test.jsonl)."""
    if len(data) == 1:
        return [output]
    return [output.joinpath(*name.split("/")) for name in set_names(data)]
