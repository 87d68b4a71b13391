"""`llmasr export --checkpoint RUN_DIR[/checkpoints/TAG] --output DIR [...]` (llmasr.export.export documents it)."""

from __future__ import annotations

import argparse
import logging
import sys

from llmasr import errors
from llmasr.export.export import ExportError, export_model
from llmasr.export.finetune_recipe import FINETUNE_NAME
from llmasr.run_dir import CheckpointError
from llmasr.train.run_log import command_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmasr export",
        description="Merge LoRA into the base model and write a directory that decodes with nothing else.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="RUN_DIR (newest checkpoint: RUN_DIR/checkpoints/latest), RUN_DIR/checkpoints/TAG or RUN_DIR/TAG",
    )
    p.add_argument("--tag", help="checkpoint tag under RUN_DIR/checkpoints (instead of a path)")
    p.add_argument("--output", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="LLM weight dtype (default: the recipe's)")
    p.add_argument(
        "--average",
        type=int,
        default=1,
        metavar="N",
        help="average N checkpoints: the mean of their models (LoRA: of its deltas B @ A)",
    )
    p.add_argument(
        "--average-by",
        choices=("last", "best"),
        default=None,
        help="last: the N newest up to the chosen one (default); best: the N best of checkpoints/best.json "
        "(--checkpoint RUN_DIR)",
    )
    p.add_argument("--adapter-only", action="store_true", help="write a peft adapter instead of merged weights")
    p.add_argument("--max-shard-size", default="5GB", help="LLM safetensors shard size (save_pretrained)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow a run whose recipe sets model.llm.trust_remote_code to run its LLM directory's Python files",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command_logging(logging.INFO)
    try:
        out = export_model(
            args.checkpoint,
            args.output,
            tag=args.tag,
            dtype=args.dtype,
            average=args.average,
            average_by=args.average_by,
            adapter_only=args.adapter_only,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code,
        )
    except (CheckpointError, ExportError) as err:
        print(f"llmasr export: error: {err}", file=sys.stderr)
        return errors.exit_status(err)  # 2: what it was given is refused
    said = f"exported to {out}; decode with: llmasr decode --model {out} ..."
    if (out / FINETUNE_NAME).is_file():  # an --adapter-only export carries none (the export's log says why)
        said += (f"; train on from it with: llmasr train --config {out / FINETUNE_NAME} --deepspeed zero2 "
                 "data.train=[...] data.valid=[...] (check first: llmasr check, same arguments)")  # fmt: skip
    print(said)
    return 0
