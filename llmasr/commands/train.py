"""`llmasr train --config RECIPE --deepspeed DS [--resume [TAG|PATH]] [--overwrite] [key=value ...]`."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from llmasr import errors
from llmasr.command_run import command
from llmasr.config_io import ConfigError
from llmasr.models.chat_template import PromptError
from llmasr.recipe import load_recipe, located
from llmasr.train.preemption import exit_status
from llmasr.train.run_dir import RunDirError
from llmasr.train.trainer import train


def run_args(p: argparse.ArgumentParser, *, checking: bool = False) -> None:
    """The arguments that describe a run: train's, and check's (`checking`: which checks what train would do with
    them, and says so in its help)."""
    p.add_argument("--config", required=True, help="recipe YAML")
    p.add_argument("--deepspeed", required=True, help="DeepSpeed JSON file, or a preset: zero0 ... zero3_offload")
    would = "check what train would do with " if checking else ""
    p.add_argument(
        "--resume", nargs="?", const="latest", default=None,
        help=would + "resume from RUN_DIR/checkpoints/latest (no value), a tag (update_00000120), a checkpoint folder, "
        "or auto (the newest checkpoint when there is one, else a fresh start; as train.resume: auto)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="check a fresh start in a train.output_dir that holds an earlier run's checkpoints (deletes nothing; "
        "train --overwrite deletes them)" if checking else
        "start afresh in a train.output_dir that holds an earlier run's checkpoints (deletes them)",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.epochs=3 optim.branches.llm.lr=2e-5")


def parse_run_args(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = p.parse_intermixed_args(argv)  # overrides may come before and after the options
    if args.resume is not None and "=" in args.resume and not Path(args.resume).exists():
        # `--resume key=value ...`: argparse took the first override as the resume value
        wanted, ordered = Counter([*args.overrides, args.resume]), []
        for arg in argv:  # keep the command line's order: a later override of the same key wins
            if wanted[arg] > 0:
                wanted[arg] -= 1
                ordered.append(arg)
        args.overrides = ordered
        args.resume = "latest"
    return args


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmasr train", description="fine-tune a speech LLM under DeepSpeed")
    run_args(p)
    return parse_run_args(p, argv)


@command("llmasr train")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    recipe = load_recipe(args.config, args.overrides)
    try:
        result = train(recipe, args.deepspeed, resume=args.resume, overwrite=args.overwrite)
    except RunDirError as err:  # rank 0 refused the run folder for every rank
        errors.report("llmasr train", err)
        err.reported()  # no rank exits (and makes the launcher kill the rest) before rank 0 has said why
        return 2
    except (
        ConfigError,
        PromptError,
    ) as err:  # refused by the builder or the run's checks: named with where the recipe set it
        raise located(err, args.config, args.overrides) from None
    except SystemExit as stop:  # a library's exit() inside training (DeepSpeed's autotuner calls one): not the run's
        # end, whatever status it gives; a job that exits 0 there would be taken for a finished run
        raise RuntimeError(
            f"a library ended the process inside training (exit({stop.code!r})) before the run finished; nothing was "
            "saved since the last checkpoint: --resume continues from it"
        ) from stop
    if result.get("signal"):
        return exit_status(result["signal"])  # stopped with a checkpoint: the job did not finish
    return 0  # the run's "done: ..." line closes train.log (progress.done_line, logged by the trainer)
