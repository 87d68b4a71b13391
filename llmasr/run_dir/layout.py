"""Where things are in a run directory: file names, checkpoint tags, the `latest` pointer, and turning what a user
typed (`--checkpoint RUN_DIR[/checkpoints/TAG]`, `--resume [TAG|PATH]`) into one checkpoint folder.

`latest(ckpt_dir)` is None when there is no newest checkpoint (a fresh run asks this); `require_latest` is for a
caller that needs one (export, decode) and raises CheckpointError naming what is there instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmasr.safe_load import CheckpointError
from llmasr.text_files import not_utf8

RECIPE_FILE = "recipe.yaml"
DS_CONFIG_FILE = "ds_config.json"
TRAIN_LOG = "train.log"
TENSORBOARD = "tensorboard"
LR_CSV = "lr_schedule.csv"
LR_PNG = "lr_schedule.png"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best.json"
META = "llmasr_meta.json"
TAG_RE = re.compile(r"^update_(\d{8,})$")
UNIVERSAL_SUFFIX = "_universal"
ABANDONED_PREFIX = "abandoned_at_update_"
SETTING_ASIDE = ".setting_aside"  # in an abandoned folder while its tags move in: their names, one a line
MODEL_STATES = "*_model_states.pt"  # DeepSpeed's per-rank files (llmasr.train.ds_files reads them)


def tag_for(update: int) -> str:
    return f"update_{update:08d}"


def update_of(tag: str) -> int | None:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def holds_run(folder: str | Path) -> bool:
    """Whether `folder` is a run's (its resolved recipe and DeepSpeed JSON, which a run writes first), whose
    lr_schedule.* record what it trained with; a recipe file named recipe.yaml alone in a folder is not."""
    return (Path(folder) / RECIPE_FILE).is_file() and (Path(folder) / DS_CONFIG_FILE).is_file()


def abandoned_dir(path: Path) -> bool:
    """RUN_DIR/checkpoints/abandoned_at_update_N[_k]: where a resume from update N set the later checkpoints aside
    (run_dir.bookkeeping.set_aside_later); a checkpoints folder of its own, with its `latest` and best.json."""
    return path.name.startswith(ABANDONED_PREFIX) and path.parent.name == CHECKPOINTS


def abandoned_at(path: Path) -> int:
    """The update N of an abandoned_at_update_N[_k] folder: where the course it holds left the run."""
    return int(path.name.removeprefix(ABANDONED_PREFIX).split("_")[0])


def run_dir_of(ckpt_dir: Path) -> Path:
    """The run directory a checkpoints folder (or an abandoned_at_update_N folder in it) belongs to: its
    recipe.yaml sits there."""
    if abandoned_dir(ckpt_dir):
        return ckpt_dir.parent.parent
    return ckpt_dir.parent if ckpt_dir.name == CHECKPOINTS else ckpt_dir


def latest(ckpt_dir: str | Path) -> str | None:
    """The tag RUN_DIR/checkpoints/latest names, or None when there is none (no file, or an empty one)."""
    f = Path(ckpt_dir) / LATEST
    if not f.is_file():
        return None
    try:
        return f.read_text(encoding="utf-8").strip() or None
    except UnicodeDecodeError as err:  # a pointer saved by hand in a local code page: DeepSpeed writes the tag as UTF-8
        raise CheckpointError(f"{f}: {not_utf8(err, f)}") from None


def resume_point(ckpt_dir: str | Path) -> str | None:
    """The checkpoint a run continues: `latest`, or the save it does not name yet (unnamed_save). None when there is
    neither. A pointer edited to another name than a tag's is taken as given (unnamed_save finds none beside it)."""
    return unnamed_save(ckpt_dir) or latest(ckpt_dir)


def unnamed_save(ckpt_dir: str | Path) -> str | None:
    """The newest complete checkpoint (its meta written: every rank saved and its files are hashed) of an update
    after `latest`'s whose meta was written after `latest` was, or None. A save writes its meta, then `latest`; a
    job killed between the two (or a disk that filled writing `latest`) left the newest checkpoint complete but
    unnamed, and a resume from `latest` set it aside as a course left behind. A `latest` written after the later
    checkpoints' metas (a user who pointed it back to an earlier update) names the checkpoint to continue, and
    those are the course it leaves; so are tags a resume is moving aside (set_aside_later, cut short)."""
    ckpt_dir = Path(ckpt_dir)
    named = latest(ckpt_dir)
    if named is not None and update_of(named) is None:
        return None
    leaving = {
        line.strip()
        for marker in ckpt_dir.glob(f"{ABANDONED_PREFIX}*/{SETTING_ASIDE}")
        for line in marker.read_text(encoding="utf-8").splitlines()
    }
    floor = update_of(named) if named is not None else -1
    # a clock of coarse ticks may stamp the meta and the pointer written at the save before alike: that is a kill
    pointed = (ckpt_dir / LATEST).stat().st_mtime_ns if named is not None else -1
    later = [
        (u, p.name)
        for p in (ckpt_dir.iterdir() if ckpt_dir.is_dir() else ())
        if (u := update_of(p.name)) is not None and u > floor and p.name not in leaving and (p / META).is_file()
    ]
    if not later:
        return None
    newest = max(later)[1]
    return newest if (ckpt_dir / newest / META).stat().st_mtime_ns >= pointed else None


def require_latest(ckpt_dir: str | Path) -> str:
    """The newest complete checkpoint's tag; CheckpointError when `latest` is missing, empty or names no folder."""
    ckpt_dir = Path(ckpt_dir)
    f = ckpt_dir / LATEST
    if not f.is_file():
        tags = list_tags(ckpt_dir)
        hint = f"; tags present: {', '.join(tags[-5:])} (pass one explicitly)" if tags else ""
        hint = hint or "; no checkpoint tags either"
        raise CheckpointError(f"{f}: no 'latest' file, so there is no newest checkpoint to pick{hint}")
    tag = latest(ckpt_dir)
    if tag is None:
        raise CheckpointError(f"{f}: empty")
    if not (ckpt_dir / tag).is_dir():
        raise CheckpointError(f"{f} names tag {tag!r} but {ckpt_dir / tag} does not exist")
    return tag


def is_tag_dir(path: Path) -> bool:
    """A checkpoint folder (ds_to_universal's copy of one beside it holds model states too, and is not one)."""
    universal = path.name.endswith(UNIVERSAL_SUFFIX)
    return path.is_dir() and not universal and ((path / META).is_file() or any(path.glob(MODEL_STATES)))


def tag_update(tag_dir: Path) -> int:
    """The update a checkpoint folder holds, for ordering: its meta's, else the last number in its name, else -1.
    (A garbled meta is reported when the checkpoint is read, not while folders are being sorted.)"""
    meta = tag_dir / META
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text(encoding="utf-8")).get("update", -1))
        except (ValueError, TypeError, AttributeError):
            pass
    nums = re.findall(r"\d+", tag_dir.name)
    return int(nums[-1]) if nums else -1


def list_tags(ckpt_dir: str | Path) -> list[str]:
    """Checkpoint folders under `ckpt_dir`, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if is_tag_dir(p)]
    return sorted(tags, key=lambda t: (tag_update(ckpt_dir / t), t))


def complete_tags(ckpt_dir: str | Path) -> list[str]:
    """list_tags' complete checkpoints (their meta written: not a save cut short), oldest first."""
    ckpt_dir = Path(ckpt_dir)
    return [t for t in list_tags(ckpt_dir) if (ckpt_dir / t / META).is_file()]


@dataclass(frozen=True)
class CheckpointRef:
    run_dir: Path  # holds recipe.yaml
    root: Path  # RUN_DIR/checkpoints
    tag: str
    # the tag `latest` names, where `tag` is a newer save a killed job did not get to name there (unnamed_save)
    passed_over: str | None = field(default=None, compare=False)

    @property
    def path(self) -> Path:
        return self.root / self.tag


def resolve_checkpoint(spec: str | Path, tag: str | None = None) -> CheckpointRef:
    """RUN_DIR, RUN_DIR/checkpoints, RUN_DIR/checkpoints/latest, RUN_DIR/checkpoints/TAG or RUN_DIR/TAG (+ optional
    explicit tag).
    Without a tag, RUN_DIR/checkpoints/latest decides (export, decode --checkpoint), unless a newer complete save
    was cut short before it named itself there (unnamed_save): that one, the run's newest, which a resume continues
    (`passed_over` then names latest's, for the loader's warning); the pointer file given itself
    (RUN_DIR/checkpoints/latest) is what it names."""
    path, passed_over = Path(spec), None
    if not path.exists():
        raise CheckpointError(f"checkpoint path not found: {path}")
    if tag is None and is_tag_dir(path):
        return CheckpointRef(run_dir_of(path.parent), path.parent, path.name)
    pointer = path.name == LATEST and path.is_file()  # DeepSpeed's pointer file named: the checkpoint it names
    if pointer:
        path = path.parent
    if (path / CHECKPOINTS).is_dir():
        root = path / CHECKPOINTS
    elif (path.name == CHECKPOINTS or abandoned_dir(path)) and path.is_dir():
        root = path
    else:
        raise CheckpointError(
            f"{path}: not a run directory (no {CHECKPOINTS}/ folder) and not a checkpoint tag directory "
            f"(no {META} or {MODEL_STATES}): give RUN_DIR (its newest checkpoint) or RUN_DIR/{CHECKPOINTS}/update_N"
        )
    if tag is None:
        tag = require_latest(root)
        unnamed = None if pointer else unnamed_save(root)
        if unnamed is not None:  # `latest` is one save behind: exporting it had silently dropped the last
            tag, passed_over = unnamed, tag
    if not (root / tag).is_dir():
        tags = list_tags(root)
        aside = sorted(str(p.parent) for p in root.glob(f"{ABANDONED_PREFIX}*/{tag}") if is_tag_dir(p))
        raise CheckpointError(
            f"checkpoint tag {tag!r} not found under {root}; available: {', '.join(tags) if tags else 'none'}"
            + (f"; a resume set it aside in {', '.join(aside)} (pass that folder)" if aside else "")
        )
    return CheckpointRef(run_dir_of(root), root, tag, passed_over)


def resume_asked(cli: str | None, recipe_resume: str | None) -> tuple[str | None, str]:
    """(the resume a run is asked for, where it was asked: --resume on the command line over the recipe's
    train.resume); the name goes into resolve_resume's errors."""
    return (cli, "--resume") if cli is not None else (recipe_resume, "train.resume")


def resume_or_start(resume: str | None, run_dir: str | Path, *, overwrite: bool = False) -> str | None:
    """What a run does with `resume`: "auto" continues RUN_DIR's newest checkpoint when there is one and starts
    fresh when there is none (the same command restarts a preempted job), or when `overwrite` asks to start over;
    anything else is returned as given."""
    if resume != "auto":
        return resume
    return "latest" if resume_point(checkpoints_dir(run_dir)) is not None and not overwrite else None


def resolve_resume(resume: str, run_dir: str | Path, key: str = "--resume") -> tuple[Path, str]:
    """`--resume` value (or train.resume's: `key` names it in errors) -> (DeepSpeed load_dir, tag). "" / "latest" /
    "auto": RUN_DIR/checkpoints' newest checkpoint (resume_point: `latest`, or a complete one its save did not get
    to name); a tag name: RUN_DIR/checkpoints/TAG; a path: that checkpoint folder (or a checkpoints folder with a
    newest checkpoint)."""
    ckpt_dir = checkpoints_dir(run_dir)
    if resume in ("", "latest", "auto"):
        tag = resume_point(ckpt_dir)
        if tag is None:
            raise FileNotFoundError(f"{key}: no {ckpt_dir / LATEST}; nothing to resume in {run_dir}")
        return ckpt_dir, _pointed(ckpt_dir, tag, key)
    path = Path(resume)
    if not path.exists() and (ckpt_dir / resume).is_dir():
        path = ckpt_dir / resume
    if not path.is_dir():
        tags = list_tags(ckpt_dir)
        held = f"its checkpoints are {', '.join(tags)}" if tags else "it holds no checkpoint"
        raise FileNotFoundError(f"{key} {resume}: neither a checkpoint folder nor a tag in {ckpt_dir}; {held}")
    if (path / META).is_file():
        return path.parent, path.name
    tag = resume_point(path)
    if tag is not None:
        return path, _pointed(path, tag, key)
    raise FileNotFoundError(f"{key} {resume}: {path} holds neither {META} nor a `{LATEST}` file")


def _pointed(ckpt_dir: Path, tag: str, key: str) -> str:
    """`tag`, the checkpoint `latest` names, when it is a complete one; else FileNotFoundError naming the pointer,
    what it names and the complete checkpoints beside it (a folder deleted or moved by hand, a pointer edited)."""
    if (ckpt_dir / tag / META).is_file():
        return tag
    what = "does not exist" if not (ckpt_dir / tag).is_dir() else f"holds no {META} (a save that did not finish)"
    how = f"{key} TAG" if key.startswith("-") else f"{key}=TAG"
    complete = complete_tags(ckpt_dir)
    fix = (
        f"its complete checkpoints are {', '.join(complete[-5:])}: continue one with {how} (or write its tag "
        f"into {ckpt_dir / LATEST})"
        if complete
        else "it holds no complete checkpoint: start afresh with --overwrite"
    )
    raise FileNotFoundError(f"{key}: {ckpt_dir / LATEST} names {tag!r}, but {ckpt_dir / tag} {what}; {fix}")
