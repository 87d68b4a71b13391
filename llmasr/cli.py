"""`llmasr VERB ...`: one console command, one module per verb.

Works under the DeepSpeed launcher (`deepspeed --num_gpus N --module llmasr train ...`), which adds
`--local_rank=N` to the arguments, and under torchrun, which sets LOCAL_RANK in the environment.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

VERBS = {
    "train": ("llmasr.train.trainer", "fine-tune a speech LLM under DeepSpeed (1..N ranks)"),
    "check": ("llmasr.train.check", "resolve a recipe + DeepSpeed JSON without training: batches, updates, lr, memory"),
    "export": ("llmasr.export.export", "merge LoRA and write a model that plain transformers loads"),
    "decode": ("llmasr.export.decode", "decode a manifest with an exported model or a checkpoint; WER/CER"),
    "data": ("", "data tools: `llmasr data check|cmvn|kaldi ...` (validate manifests, global CMVN, Kaldi -> jsonl)"),
    "demo": ("llmasr.demo.run", "synthesize speech, train, export and decode a tiny model on this machine"),
}

DATA_TOOLS = {"check": "llmasr.data.check", "cmvn": "llmasr.data.cmvn", "kaldi": "llmasr.data.kaldi"}


def strip_local_rank(argv: list[str]) -> list[str]:
    """Remove the launcher's --local_rank argument, moving its value to LOCAL_RANK."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(("--local_rank=", "--local-rank=")):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def usage() -> str:
    lines = ["usage: llmasr VERB [ARGS...]", "", "verbs:"]
    lines += [f"  {verb:<8} {help_}" for verb, (_, help_) in VERBS.items()]
    lines += ["", "`llmasr VERB --help` describes each verb's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = strip_local_rank(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"llmasr: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = VERBS[verb][0]
    if verb == "data":
        if not rest or rest[0] not in DATA_TOOLS:
            print(f"usage: llmasr data {{{'|'.join(DATA_TOOLS)}}} ... (--help for each)", file=sys.stderr)
            return 2
        module_name, rest = DATA_TOOLS[rest[0]], rest[1:]
    module = import_module(module_name)
    return int(module.main(rest) or 0)
