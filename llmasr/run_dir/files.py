"""The files of one checkpoint tag: a size and sha256 per file, recorded at save and verified before use.

After every rank has saved a tag, the ranks hash its files between them (rank r takes every world-th file of the
sorted list), flushing each to disk in the same reading, and rank 0 writes the result into llmasr_meta.json:

    "files": {"mp_rank_00_model_states.pt": {"bytes": 123456, "sha256": "…"}, ...}

Resume (each rank its share again) and export (all files) verify them before anything is loaded, so a truncated,
partly copied or modified shard is named with what differs instead of surfacing as a DeepSpeed traceback, and scan
every torch file for pickled globals that weights-only loading would refuse (llmasr.safe_load), so every rank stops
with the same message before any of them starts loading. A checkpoint written before llmasr recorded checksums is
still checked for complete zip archives and refused globals, with a warning that its contents are not verified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

from llmasr.atomic_file import sync_dir
from llmasr.run_dir.layout import META, complete_tags
from llmasr.run_dir.meta import CheckpointMeta
from llmasr.safe_load import CheckpointError, refusal, unsafe_globals

log = logging.getLogger(__name__)

_CHUNK = 8 * 2**20


def tag_files(tag_dir: str | Path) -> list[str]:
    """Every file under a tag directory (relative, sorted), but the meta file and hidden temporary files."""
    tag_dir = Path(tag_dir)
    out = []
    for path in tag_dir.rglob("*"):
        rel = path.relative_to(tag_dir)
        if path.is_file() and rel.as_posix() != META and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)


def sha256_file(path: str | Path, *, sync: bool = False) -> str:
    """`sync`: the file is also flushed to disk, in the same opening (a save's files, before its meta is written)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def hash_share(tag_dir: str | Path, rank: int = 0, world: int = 1, *, sync: bool = False) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256"}} for this rank's share of the tag's files (all of them for 1 rank).
    `sync` (a save): each file is flushed to disk as it is hashed, and rank 0 syncs the tag's folders, so the meta
    and `latest` written after it never name a file a power loss cut short (DeepSpeed's torch.save does not sync)."""
    tag_dir = Path(tag_dir)
    out = {}
    for rel in tag_files(tag_dir)[rank::world]:
        path = tag_dir / rel
        out[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path, sync=sync)}
    if sync and rank == 0:
        for folder in sorted({p for p in tag_dir.rglob("*") if p.is_dir()}, reverse=True) + [tag_dir, tag_dir.parent]:
            sync_dir(folder)
    return out


def merge_shares(shares: list[dict[str, dict]]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for share in shares:
        merged.update(share)
    return dict(sorted(merged.items()))


def archive_problem(path: Path) -> str | None:
    """torch.save's zip format: an empty file, or one without a readable central directory, was cut short."""
    size = path.stat().st_size
    if size == 0:
        return f"{path}: empty file; the save did not finish"
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            return None  # torch's legacy (non-zip) format: torch.load reports problems with it
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        return f"{path}: cannot be read ({err}); the file is truncated or corrupt (an interrupted save or copy?)"
    return None


def _recorded_problem(tag_dir: Path, rel: str, want: dict) -> str | None:
    path = tag_dir / rel
    if not path.is_file():
        return f"{path}: missing (the save recorded it: {want.get('bytes')} bytes)"
    size = path.stat().st_size
    if size != want.get("bytes"):
        return (
            f"{path}: {size} bytes, but the save wrote {want.get('bytes')}: the file is truncated or was replaced "
            "(an interrupted copy? a full disk?)"
        )
    if sha256_file(path) != want.get("sha256"):
        return f"{path}: its sha256 differs from the one recorded at save: the file was modified or is corrupt"
    return None


def verify_share(tag_dir: str | Path, meta: CheckpointMeta, rank: int = 0, world: int = 1) -> list[str]:
    """Problems with this rank's share of a tag's files (all of them for 1 rank): [] when all is well."""
    tag_dir = Path(tag_dir)
    recorded = meta.files
    problems = []
    if recorded is None:
        if rank == 0:
            log.warning("%s: no checksums in %s (an older llmasr wrote it): file contents not verified", tag_dir, META)
        names = [rel for rel in tag_files(tag_dir) if rel.endswith(".pt")][rank::world]
        problems += [p for p in (archive_problem(tag_dir / rel) for rel in names) if p]
    else:
        names = sorted(recorded)[rank::world]
        problems += [p for p in (_recorded_problem(tag_dir, rel, recorded[rel]) for rel in names) if p]
    if problems:
        return problems
    for rel in names:
        if rel.endswith(".pt") and (names_refused := unsafe_globals(tag_dir / rel)):
            problems.append(refusal(tag_dir / rel, names_refused))
    return problems


def problems_error(tag_dir: str | Path, problems: list[str]) -> CheckpointError:
    """The refusal of a damaged checkpoint, with what the user can do: restore its files, or use another checkpoint
    of the run (the complete ones beside it are named)."""
    tag_dir = Path(tag_dir)
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    others = [t for t in complete_tags(tag_dir.parent) if t != tag_dir.name]
    fix = f"; or use another checkpoint of the run: {', '.join(others[-5:])}" if others else ""
    return CheckpointError(
        f"checkpoint {tag_dir} cannot be used:\n  " + "\n  ".join(shown) + f"\nRestore the files from a copy{fix}"
    )


def verify_tag(tag_dir: str | Path, meta: CheckpointMeta) -> None:
    """All of a tag's files, in one process (export, decode --checkpoint): raises CheckpointError on any problem."""
    problems = verify_share(tag_dir, meta)
    if problems:
        raise problems_error(tag_dir, problems)


def verify_ranks(tag_dir: str | Path, meta: CheckpointMeta, rank: int, world: int, all_gather) -> None:
    """Every rank verifies its share of the files; `all_gather` (all_gather_object) makes every rank raise the
    same error, so none goes on to load (and wait in a collective) while another has stopped."""
    problems = [p for share in all_gather(verify_share(tag_dir, meta, rank, world)) for p in share]
    if problems:
        raise problems_error(tag_dir, problems)
