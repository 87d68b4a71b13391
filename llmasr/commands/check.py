"""`llmasr check --config RECIPE --deepspeed DS [--world-size N] [--out DIR] [key=value ...]`."""

from __future__ import annotations

import argparse
import os
import sys

from llmasr.errors import command
from llmasr.recipe import load_recipe
from llmasr.train.check import check


@command("llmasr check")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llmasr check", description="resolve a recipe + DeepSpeed JSON without training")
    p.add_argument("--config", required=True, help="recipe YAML")
    p.add_argument("--deepspeed", required=True, help="DeepSpeed JSON file, or a preset: zero0 ... zero3_offload")
    p.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", "1")), help="ranks (GPUs)")
    p.add_argument(
        "--out",
        help="folder for lr_schedule.csv/png (default: train.output_dir, or its check/ once it holds a run)",
    )
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.grad_accum=8")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.world_size < 1:
        p.error(f"--world-size must be >= 1, got {args.world_size}")
    recipe = load_recipe(args.config, args.overrides)
    print(check(recipe, args.deepspeed, world_size=args.world_size, out=args.out))
    return 0
