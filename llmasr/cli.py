"""`llmasr VERB ...`: one console command; the verb table, each verb's main in llmasr.commands.

Works under the DeepSpeed launcher (`deepspeed --num_gpus N --module llmasr train ...`), which adds
`--local_rank=N` to the arguments, under torchrun, which sets LOCAL_RANK in the environment, and as the tasks of an
srun step (`srun -n N python -m llmasr train ...`, llmasr.slurm_env). RANK / WORLD_SIZE left over in a shell are
told from a launcher's before any verb starts, train and decode included (llmasr.launched_ranks).
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

from llmasr import command_run, errors, slurm_env, written_by

VERBS = {
    "train": ("llmasr.commands.train", "fine-tune a speech LLM under DeepSpeed (1..N ranks)"),
    "check": ("llmasr.commands.check", "resolve a recipe + DeepSpeed JSON, no training: batches, updates, lr, memory"),
    "export": ("llmasr.commands.export", "merge LoRA and write a model that plain transformers loads"),
    "decode": ("llmasr.commands.decode", "decode a manifest with an exported model or a checkpoint; WER/CER"),
    "transcribe": ("llmasr.commands.transcribe", "print the transcripts of audio files (no manifest, no scoring)"),
    "score": (
        "llmasr.commands.score",
        "score hypotheses against references by key; compare systems (paired bootstrap)",
    ),
    "convert": ("llmasr.commands.convert", "convert a FunASR Fun-ASR-Nano directory into an llmasr model directory"),
    "data": (
        "",
        "data tools: `llmasr data check|cmvn|kaldi|pseudo-label|cache ...` (validate manifests, global CMVN, Kaldi "
        "-> jsonl, a decode's transcripts as training lines, .gz manifests' decompressed copies)",
    ),
    "demo": ("llmasr.commands.demo", "synthesize speech, train, export and decode a tiny model on this machine"),
}

RANKED = ("train", "decode")  # the verbs whose ranks join one process group
# one-process verbs that a launcher's ranks may start: check plans for WORLD_SIZE ranks, transcribe refuses itself
LAUNCHER_TAKEN = ("check", "transcribe")
ONE_PROCESS_HINTS = {"transcribe": ", or give the files to `llmasr decode` as a manifest, which splits them between "
                                   "the tasks"}  # fmt: skip

DATA_TOOLS = {
    "check": "llmasr.commands.data_check",
    "cmvn": "llmasr.commands.data_cmvn",
    "kaldi": "llmasr.commands.data_kaldi",
    "pseudo-label": "llmasr.commands.data_pseudo_label",
    "cache": "llmasr.commands.data_cache",
}


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
    lines += [f"  {verb:<10} {help_}" for verb, (_, help_) in VERBS.items()]
    lines += ["", "`llmasr VERB --help` describes each verb's arguments; `llmasr --version` names the versions."]
    return "\n".join(lines)


def strip_debug(argv: list[str]) -> list[str]:
    """`--debug` anywhere before a lone `--`: print tracebacks (LLMASR_DEBUG=1, which the ranks also see)."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--debug" not in argv[:end]:
        return argv
    os.environ[errors.DEBUG_ENV] = "1"
    return [a for i, a in enumerate(argv) if not (a == "--debug" and i < end)]


def main(argv: list[str] | None = None) -> int:
    argv = strip_debug(strip_local_rank(list(sys.argv[1:] if argv is None else argv)))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):  # what a bug report needs: llmasr's version and commit, and the stack's
        print(written_by.software())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"llmasr: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = VERBS[verb][0]
    if verb == "data":
        if not rest or rest[0] not in DATA_TOOLS:
            asked = bool(rest) and rest[0] in ("-h", "--help", "help")
            print(f"usage: llmasr data {{{'|'.join(DATA_TOOLS)}}} ... (--help for each)", file=sys.stdout if asked
                  else sys.stderr)  # fmt: skip
            return 0 if asked else 2
        module_name, rest = DATA_TOOLS[rest[0]], rest[1:]

    prog = f"llmasr {verb}" if verb != "data" else f"llmasr data {argv[1]}"
    helps = bool({"-h", "--help"} & set(rest))  # help alone: no refusal, no rank to take, nothing to meet

    def run_verb(args: list[str]):
        if not helps and (refused := _refusal(verb, prog)):
            return refused
        if verb in RANKED and not helps:  # an srun task's rank, before anything can fail: rank 0 alone reports
            slurm_env.adopt()
        return import_module(module_name).main(args)

    # Commands decorated with command_run.command report their own errors; this catches the rest (an import that
    # fails).
    return command_run.run(prog, run_verb, rest)


def _refusal(verb: str, prog: str) -> int | None:
    """2, said on the rank that should say it, where `verb` may not run here; None where it may. Inside command_run.run:
    a stop signal while the ranks meet (up to launched_ranks.MEET_WAIT_S) is said as any other."""
    from llmasr.launched_ranks import left_over_ranks

    # each rank says it: a rank > 0 stays silent for its rank 0, a ranked verb's waits for it in the process group
    with errors.stop_signals_raise("while meeting the other ranks"):
        stale = left_over_ranks()
    if stale:
        print(f"{prog}: error: {stale}", file=sys.stderr)
        return 2
    if verb in RANKED:
        return None
    refused = slurm_env.one_process_refusal(f"`{prog}`", ONE_PROCESS_HINTS.get(verb, ""))
    if verb not in LAUNCHER_TAKEN and not refused:
        refused = slurm_env.launcher_refusal(f"`{prog}`", "rank would run it whole, into the same files")
    if not refused:
        return None
    if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")).strip() == "0":  # one says it, not each
        print(f"{prog}: error: {refused}", file=sys.stderr)
    return 2


def entry() -> int:
    """The process's entry point (`llmasr`, `python -m llmasr`, a launcher's rank). A process that joined a
    process group ends through llmasr.train.process_group.exit_rank, which keeps a gloo worker thread from aborting
    it."""
    status = main()
    torch_distributed = sys.modules.get("torch.distributed")  # only a verb that used torch can hold a group
    if torch_distributed is not None and torch_distributed.is_available() and torch_distributed.is_initialized():
        from llmasr.train.process_group import exit_rank

        exit_rank(status)
    return status
