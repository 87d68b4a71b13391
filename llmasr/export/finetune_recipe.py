"""The recipe a model folder carries for its next round of training: `llmasr export` writes FINETUNE_NAME beside the
model (`llmasr convert funasr` its own, llmasr.convert.nano_recipe, with these helpers).

Its `model` section is the folder's, as decode and the start-folder check (llmasr.models.start_from) read its
description (llmasr.models.exported.exported_model_section): the encoder built from its description's conf and
frontend, each branch's weights read from the folder's files (init_from), the merged LLM, the prompt the model was
trained with (an `--adapter-only` export carries no such recipe: its adapter loads frozen). Everything else is the
run's: which branches train, LoRA on the LLM (fresh, over the merged weights), the training precision, data settings,
optimiser, schedules and decoding. The manifests are left out (given on the command line: data.train=[...]
data.valid=[...]), and the run folder is the exported run's with `_next` added. Files inside the folder are named
relative to it, as a recipe's paths resolve against the recipe's folder, so the folder can be moved whole.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llmasr.config_io import to_dict
from llmasr.models.exported import exported_model_section

FINETUNE_NAME = "finetune.yaml"
PARTS = ("encoder", "adaptor", "llm", "ctc")
# Keys the folder's description states that are the run's choice, not the model's: what trains, in which precision.
RUN_CHOICES = ("freeze", "dtype")
# The run's keys that name its own pretrained starting point, which the folder's files replace: a key prefix of the
# run's weights files, or a CTC head taken from its FunASR encoder (the folder's ctc_head.safetensors and vocabulary
# in its place, unprefixed; kept, from_encoder asked for a FunASR directory the recipe no longer names).
STARTING_POINT = {
    "encoder": ("path", "reinit_keys", "init_prefix"),
    "adaptor": (),
    "llm": ("adapter",),
    "ctc": ("reinit_keys", "init_prefix", "from_encoder"),
}


def relative(value, folder: Path):
    """`value` with every path inside `folder` named relative to it (recursively through dicts and lists)."""
    if isinstance(value, dict):
        return {k: relative(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v, folder) for v in value]
    if isinstance(value, str) and value.startswith(str(folder) + "/"):
        return Path(value).relative_to(folder).as_posix()
    return value


class _Dumper(yaml.SafeDumper):
    """Writes a multi-line string (Nano's hotword block, a chat template) as a literal block, readable as the prompt
    renders it, where PyYAML would fold it into a quoted line with its newlines doubled."""


def _text(dumper: yaml.SafeDumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def dump_recipe(recipe: dict) -> str:
    """A recipe dict as YAML, in its keys' order, multi-line strings as literal blocks."""
    return yaml.dump(recipe, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def next_round(model_dir: Path, recipe) -> dict:
    """The recipe (a dict) that trains on from the model folder `model_dir` (its description written) with the
    choices of `recipe`, the typed recipe of the run it was exported from; its paths relative to `model_dir`."""
    model_dir = Path(model_dir).resolve()
    run = to_dict(recipe)
    model = exported_model_section(model_dir, read_llm=False, trust_remote_code=recipe.model.llm.trust_remote_code)
    for part, section in run["model"].items():
        if part not in PARTS:
            model.setdefault(part, section)  # the model-wide keys the folder does not state (differs_from_start)
        elif isinstance(section, dict) and isinstance(model.get(part), dict):
            choices = {k: v for k, v in section.items() if (k not in model[part] or k in RUN_CHOICES)}
            model[part] = {**model[part], **{k: v for k, v in choices.items() if k not in STARTING_POINT[part]}}
    if not model.get("ctc", {}).get("weight"):  # no CTC head: no model.ctc at all
        model.pop("ctc", None)
    data = {k: v for k, v in run["data"].items() if k not in ("train", "valid")}
    train = {k: v for k, v in run["train"].items() if k != "resume"}
    train["output_dir"] = f"{str(train['output_dir']).rstrip('/')}_next"
    out = {"model": model, "data": data, **{k: v for k, v in run.items() if k not in ("model", "data", "train")}}
    return relative({**out, "train": train}, model_dir)


def header(run_dir: str) -> str:
    """The recipe's opening comment (no path of the folder: the same checkpoint exports to the same bytes)."""
    config = f"EXPORT/{FINETUNE_NAME}"
    data = "data.train=[data/train.jsonl] data.valid=[data/dev.jsonl]"
    return "\n".join(
        [
            "# Trains on from the model in this folder (EXPORT), with the choices of the run it was exported from",
            f"# ({run_dir}): written by `llmasr export`. The model section is this folder's (its description, its",
            "# weights: paths relative to this file's folder, so move the folder whole); the rest is the run's. Give",
            "# the manifests on the command line (a weighted mix, e.g. pseudo-labels beside the labelled set, in",
            "# data.train); check first (no GPU needed), then launch:",
            f"#   llmasr check --config {config} --deepspeed zero2 {data}",
            f"#   deepspeed --num_gpus 8 --module llmasr train --config {config} --deepspeed zero2 {data}",
            "",
        ]
    )


def write_next_round(model_dir: Path, recipe, run_dir: str | Path) -> None:
    """Write FINETUNE_NAME into `model_dir` (the staged folder of an export of the run `run_dir`)."""
    body = dump_recipe(next_round(model_dir, recipe))
    (Path(model_dir) / FINETUNE_NAME).write_text(header(str(run_dir)) + body, encoding="utf-8")
