"""README "Coming from FunASR" stays true of the code: every recipe key it names exists in the Recipe, every value
it gives is one the key takes, every recipe it names exists with the encoder type it says, and its command lines
parse with the commands' own parsers."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import get_args

import pytest

from llmasr.commands.export import build_parser as export_parser
from llmasr.commands.train import parse_args as train_args
from llmasr.config_io import from_dict, load_yaml, to_dict
from llmasr.models.encoders import ENCODER_TYPES
from llmasr.recipe import Recipe
from llmasr.train.config import BRANCHES, SchedulerType
from llmasr.train.resume_recipe import flatten

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Coming from FunASR"
RECIPE_KEY = re.compile(r"^(model|data|optim|train|decode)\.[\w.<>]+$")


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end > 0 else len(text)]


def table(header: str) -> list[list[str]]:
    """Cells of the section's table whose header row starts with `header`."""
    lines = section().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def recipe_keys(cell: str) -> list[tuple[str, str | None]]:
    """(dotted key, value or None) for each backticked `key` / `key: value` in a cell, `<branch>` expanded."""
    out = []
    for token in re.findall(r"`([^`]+)`", cell):
        key, _, value = token.partition(":")
        key = key.split("=")[0].strip()
        if RECIPE_KEY.match(key):
            for branch in BRANCHES if "<branch>" in key else [None]:
                out.append((key.replace("<branch>", branch) if branch else key, value.strip() or None))
    return out


def all_recipe_keys() -> set[str]:
    """Every dotted key of a recipe whose optional sections are all present (branches with their schedules)."""
    branches = {b: {"lr": 1e-4, "weight_decay": 0.0, "scheduler": {"type": "constant"}} for b in BRANCHES}
    return set(flatten(to_dict(from_dict(Recipe, {"optim": {"branches": branches}}))))


def test_every_recipe_key_in_the_flag_table_exists():
    known = all_recipe_keys()
    named = [kv for row in table("| FunASR | llmasr |") for kv in recipe_keys(row[1])]
    keys = {k for k, _ in named}
    # the table really maps the flags the issue names (a table that lost its rows must not pass)
    wanted = {"train.grad_accum", "optim.branches.llm.lr", "optim.branches.encoder.lr", "optim.scheduler.type",
              "optim.scheduler.phase_ratio", "data.batching.max_seconds", "train.epochs", "train.best_k"}  # fmt: skip
    assert wanted <= keys, sorted(wanted - keys)
    for key in sorted(keys):
        assert key in known or any(k.startswith(key + ".") for k in known), f"README names {key}: not a recipe key"
    schedulers = set(get_args(SchedulerType))
    for key, value in named:
        if key.endswith("scheduler.type"):
            assert value in schedulers, (key, value)
        elif value is not None and not re.fullmatch(r"[0-9.e-]+", value):  # else a number, as the flag gave it
            section, *path, name = key.split(".")  # a word: one the key takes (train.best_metric: acc)
            data: dict = {}
            here = data.setdefault(section, {})
            for part in path:
                here = here.setdefault(part, {})
            here[name] = value
            from_dict(Recipe, data)  # ConfigError: the README gives the key a value it refuses


def test_command_lines_in_the_section_parse():
    commands = [c for row in table("| FunASR | llmasr |") for c in re.findall(r"`(llmasr [^`]+)`", row[1])]
    assert commands, "the flag table names no llmasr command"
    for command in commands:
        argv = shlex.split(command)
        assert argv[1] == "export", command
        args = export_parser().parse_args(argv[2:])
        assert args.average == 5 and args.average_by == "best"
    # `--deepspeed` with a preset name is what replaces use_deepspeed, and training cannot run without it
    assert "`--deepspeed zero2`" in section()
    assert train_args(["--config", "r.yaml", "--deepspeed", "zero2"]).deepspeed == "zero2"
    with pytest.raises(SystemExit):
        train_args(["--config", "r.yaml"])


def test_model_directory_table_names_real_recipes_and_types():
    rows = table("| FunASR model")
    assert len(rows) >= 5
    for model, kind, recipe, _left_out in rows:
        kind = kind.strip("`")
        assert kind in ENCODER_TYPES, (model, kind)
        names = re.findall(r"`([\w.-]+\.yaml)`", recipe)
        if not names:
            assert recipe.startswith("as "), (model, recipe)
            continue
        for name in names:
            assert (ROOT / "recipes" / name).is_file(), name
            assert load_yaml(ROOT / "recipes" / name)["model"]["encoder"]["type"] == kind, (name, kind)
