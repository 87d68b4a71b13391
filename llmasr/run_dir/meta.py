"""The record every checkpoint folder holds beside DeepSpeed's files: RUN_DIR/checkpoints/TAG/llmasr_meta.json.

    update, epoch          where the run was (epoch: the one to continue in)
    world_size, zero_stage how DeepSpeed cut the files (a resume at another world size or ZeRO stage converts them)
    metrics                the validation metrics at this update ({} when it was not validated)
    base_fingerprint       the frozen base weights the trained tensors belong to (llmasr.models.fingerprint)
    trainable              SpeechLLM parameter names the checkpoint holds, in model order
    files                  {relative path: {"bytes", "sha256"}} of the folder's files (llmasr.run_dir.files)
    batches_per_epoch      batches per rank of each epoch, which the saved sampler position counts
    training               {"longest_seconds": the longest audio trained on (llmasr.data.screen.longest_trained),
                           null: unlimited}, as an export records it: decoding splits longer audio into windows
    manifests              [{"path", "lines", "sha1"}] of each data.train file as the run read it
                           (llmasr.train.resume.manifest_contents): a resume names the ones edited since
    written_by             the llmasr that saved it (llmasr.written_by)

`files`, `batches_per_epoch`, `training`, `manifests` and `written_by` are absent from checkpoints written before
llmasr recorded them (None here). The JSON is written with sorted keys and an indent of 2; a field that is None is
left out, so such a file reads back and writes out unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from llmasr.atomic_file import write_atomic
from llmasr.run_dir.layout import META
from llmasr.safe_load import CheckpointError
from llmasr.written_by import writer


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _manifest(v) -> bool:
    return (
        isinstance(v, dict) and set(v) == {"path", "lines", "sha1"} and isinstance(v["path"], str)
        and _int(v["lines"]) and (v["sha1"] is None or isinstance(v["sha1"], str))
    )  # fmt: skip


# field -> (check, what it must be); optional fields may also be absent
_CHECKS = {
    "update": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "epoch": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "world_size": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "zero_stage": (lambda v: _int(v) and 0 <= v <= 3, "a ZeRO stage 0-3"),
    "metrics": (lambda v: isinstance(v, dict) and all(_number(x) for x in v.values()), "an object of numbers"),
    "base_fingerprint": (lambda v: isinstance(v, dict), "an object"),
    "trainable": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
    "files": (lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()), "an object of files"),
    "batches_per_epoch": (lambda v: isinstance(v, list) and all(_int(x) for x in v), "a list of integers"),
    "training": (
        lambda v: isinstance(v, dict) and set(v) == {"longest_seconds"} and _number(v["longest_seconds"]),
        'an object {"longest_seconds": a number or null}',
    ),
    "manifests": (
        lambda v: isinstance(v, list) and all(_manifest(m) for m in v),
        'a list of {"path", "lines", "sha1"}',
    ),
    "written_by": (lambda v: isinstance(v, dict), "an object"),
}
OPTIONAL = ("files", "batches_per_epoch", "training", "manifests", "written_by")


@dataclass
class CheckpointMeta:
    update: int
    epoch: int
    world_size: int
    zero_stage: int
    base_fingerprint: dict
    trainable: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, dict] | None = None
    batches_per_epoch: list[int] | None = None
    training: dict | None = None
    manifests: list[dict] | None = None
    written_by: dict | None = None

    @classmethod
    def from_json(cls, data: object, where: str | Path = META) -> CheckpointMeta:
        """Validated: a missing or ill-typed field is a CheckpointError naming `where` and the field."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: expected a JSON object, got {type(data).__name__}")
        values = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in OPTIONAL:
                    continue
                raise CheckpointError(
                    f"{where}: no {f.name!r} entry (it holds {sorted(data)}); the file was not written by `llmasr "
                    "train`, or was edited"
                )
            check, what = _CHECKS[f.name]
            if not check(data[f.name]):
                raise CheckpointError(f"{where}: {f.name!r} must be {what}, got {_show(data[f.name])}")
            values[f.name] = data[f.name]
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise CheckpointError(
                f"{where}: unknown entries {unknown}; written by {writer(data.get('written_by'))}, newer than this "
                "llmasr? Upgrade it to read the checkpoint"
            )
        return cls(**values)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def text(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    def metric(self, name: str) -> float | None:
        """A validation metric, or None when this checkpoint has none by that name (or it is NaN)."""
        value = self.metrics.get(name)
        return None if value is None or math.isnan(value) else float(value)


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def read_meta(tag_dir: str | Path) -> CheckpointMeta:
    """The meta of one checkpoint folder; CheckpointError when it is missing, not JSON or not a valid record."""
    path = Path(tag_dir) / META
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing. An llmasr checkpoint records its update, ZeRO stage, world size, base-model "
            "fingerprint and trainable parameter names there; this directory was not written by `llmasr train` "
            "or its save did not finish (use the `latest` one)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); the checkpoint save may have been interrupted") from err
    return CheckpointMeta.from_json(data, path)


def write_meta(tag_dir: str | Path, meta: CheckpointMeta) -> None:
    write_atomic(Path(tag_dir) / META, meta.text())
