"""`llmasr convert funasr SRC OUT [--dtype fp32|bf16|fp16] [--overwrite]` (llmasr.convert.funasr_nano documents it)."""

from __future__ import annotations

import argparse
import logging

from llmasr.command_run import command
from llmasr.convert.funasr_nano import convert_funasr
from llmasr.convert.nano_recipe import RECIPE_NAME
from llmasr.train.run_log import command_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmasr convert",
        description="Turn another toolkit's model directory into an llmasr model directory (the `llmasr export` "
        "layout: decode it with `llmasr decode --model OUT`, fine-tune from its files).",
    )
    sub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    f = sub.add_parser("funasr", help="a FunASR Fun-ASR-Nano directory (config.yaml, model.pt, its Qwen3 directory)")
    f.add_argument("src", metavar="SRC", help="the Fun-ASR-Nano directory")
    f.add_argument("out", metavar="OUT", help="the llmasr model directory to write (must not exist or be empty)")
    f.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="LLM weight dtype in OUT")
    f.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return p


@command("llmasr convert")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command_logging(logging.INFO)
    out = convert_funasr(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
    recipe = out / RECIPE_NAME
    print(f"converted {args.src} to {out}; decode with: llmasr decode --model {out} ...; fine-tune with: "
          f"llmasr train --config {recipe} --deepspeed zero2 data.train=[...] data.valid=[...] (check first: "
          f"llmasr check, same arguments)")  # fmt: skip
    return 0
