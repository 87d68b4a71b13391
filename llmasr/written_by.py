"""Which llmasr wrote a file: the `written_by` record a checkpoint's llmasr_meta.json, an export's
llmasr_model.yaml and a decode's wer.json carry, {"llmasr": the installed version, "commit": the checkout's git
commit, `-dirty` after it where llmasr/ holds uncommitted changes, `-broken` where git cannot tell}, either null where
unknown (a wheel install has no checkout). A later llmasr that cannot read such a file names its writer with
`writer`; a file without the record was written before llmasr kept one.

Nothing here imports llmasr: every layer that writes a file may use it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

KEY = "written_by"
BEFORE = "an llmasr from before files recorded their writer"


@lru_cache(maxsize=1)
def written_by() -> dict:
    """This llmasr's record (asked once a process: a git call costs milliseconds)."""
    try:
        installed = version("llmasr")
    except PackageNotFoundError:  # run from a checkout on PYTHONPATH
        installed = None
    return {"llmasr": installed, "commit": _commit(Path(__file__).resolve().parent.parent)}


# The packages whose release changes what a run computes or reads: named in train.log and by `llmasr --version`,
# so that a run's numbers (or a failure) can be traced to the versions that gave them
# (soundfile: every clip is read with the libsndfile it loads, which decides what reads, MP3 from 1.1, and how)
STACK = ("torch", "transformers", "peft", "deepspeed", "kaldi-native-fbank", "numpy", "soundfile")


@lru_cache(maxsize=1)
def software() -> str:
    """ "llmasr 0.1.0 (commit 1a2b3c4d5e6f), Python 3.11.9: torch 2.13.0+cpu, transformers ...": read from the
    installed packages' metadata, importing none of them but soundfile, for its libsndfile's version."""
    parts = []
    for name in STACK:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
            continue
        if name == "soundfile":
            parts[-1] += f" (libsndfile {_libsndfile()})"
    return f"{writer(written_by())}, Python {platform.python_version()}: {', '.join(parts)}"


def _libsndfile() -> str:
    try:
        import soundfile
    except (ImportError, OSError):  # the package without its library (a conda env missing libsndfile)
        return "not loaded"
    return str(getattr(soundfile, "__libsndfile_version__", "unknown"))


def _commit(root: Path) -> str | None:
    """The commit checked out at `root` when it is a git checkout (a clone, or an editable install of one), with
    git describe's `-dirty` where llmasr's own files there differ from it: edited code gives other numbers than the
    commit it names."""
    if not (root / ".git").exists():
        return None
    head = _git(root, "rev-parse", "--short=12", "HEAD")
    if not head:
        return None
    changed = _git(root, "status", "--porcelain", "--", "llmasr")  # tracked edits and new files alike
    if changed is None:  # HEAD named, the index unread: not known to be clean (git describe --broken's mark)
        return f"{head}-broken"
    return f"{head}-dirty" if changed else head


def _git(root: Path, *args: str) -> str | None:
    """git's output in `root`, stripped; None where git is missing, fails or takes too long. Asked without git's
    optional locks: status would rewrite the index under index.lock, failing a commit the user runs meanwhile."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def writer(record: object) -> str:
    """A file's `written_by` record as a message names it: "llmasr 0.1.0 (commit 1a2b3c4d5e6f)", or BEFORE where the
    file has none (or not one this llmasr reads)."""
    if not isinstance(record, dict) or not (record.get("llmasr") or record.get("commit")):
        return BEFORE
    name = f"llmasr {record['llmasr']}" if record.get("llmasr") else "llmasr"
    return f"{name} (commit {record['commit']})" if record.get("commit") else name
