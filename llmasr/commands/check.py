"""`llmasr check --config RECIPE --deepspeed DS [--resume [TAG|PATH]] [--overwrite] [--world-size N] [--out DIR]
[key=value ...]`: what `llmasr train` would run with the same arguments (llmasr.train.check)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from llmasr.command_run import command
from llmasr.commands.train import parse_run_args, run_args
from llmasr.config_io import ConfigError
from llmasr.config_paths import output_problem
from llmasr.models.chat_template import PromptError
from llmasr.recipe import load_recipe, located
from llmasr.run_dir import DS_CONFIG_FILE, RECIPE_FILE, holds_run
from llmasr.slurm_env import other_launcher_rank
from llmasr.train.check import check
from llmasr.train.run_log import command_logging


@command("llmasr check")
def main(argv: list[str] | None = None) -> int:
    if other_launcher_rank():  # before parsing: a typo is said once, by rank 0
        return 0
    p = argparse.ArgumentParser(prog="llmasr check", description="resolve a recipe + DeepSpeed JSON without training")
    # train's, so that the same command line is checked (--resume, --overwrite: what they would do)
    run_args(p, checking=True)
    p.add_argument("--world-size", type=int, default=None, help="ranks (GPUs); default: $WORLD_SIZE, else 1")
    p.add_argument(
        "--out",
        help="folder for lr_schedule.csv/png (default: train.output_dir, or its check/ once it holds a run)",
    )
    args = parse_run_args(p, list(sys.argv[1:] if argv is None else argv))
    command_logging(logging.WARNING, check_report=True)  # a FunASR directory read three times: its notes once
    if args.world_size is None:
        env = os.environ.get("WORLD_SIZE", "1")
        if not env.strip().isdigit():
            p.error(f"WORLD_SIZE={env!r} in the environment is not a number of ranks; pass --world-size N")
        args.world_size = int(env)
    if args.world_size < 1:
        p.error(f"--world-size must be >= 1, got {args.world_size}")
    if args.out is not None and (problem := output_problem(Path(args.out))):  # before the minutes of planning
        p.error(f"--out {args.out}: {problem}")
    if args.out is not None and holds_run(args.out):  # plot_dir's rule, which --out bypassed
        p.error(
            f"--out {args.out} holds a run ({RECIPE_FILE}, {DS_CONFIG_FILE}): its lr_schedule.csv/png record what "
            f"that run trained with; pass another folder, such as {Path(args.out) / 'check'}"
        )
    recipe = load_recipe(args.config, args.overrides)
    try:
        report = check(
            recipe, args.deepspeed, world_size=args.world_size, out=args.out, resume=args.resume,
            overwrite=args.overwrite,
        )  # fmt: skip
    except (
        ConfigError,
        PromptError,
    ) as err:  # refused by the builder or the run's checks: named with where the recipe set it
        raise located(err, args.config, args.overrides) from None
    print(report)
    return 0
