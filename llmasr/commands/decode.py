"""`llmasr decode --model DIR | --checkpoint RUN_DIR --data M.jsonl --output DIR [...] [--subtitles srt|vtt]`
(llmasr.export.decode documents the outputs; --subtitles adds each decoded line's subtitles, subtitles/KEY.srt or
KEY.vtt beside its manifest's results, cues timed by its word times: llmasr.export.decode_subtitles). Under a launcher
(`deepspeed --num_gpus N --module llmasr decode ...`, torchrun) the ranks share the batches and rank 0 writes the
outputs (llmasr.export.decode_world)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from pathlib import Path

from llmasr import errors, slurm_env
from llmasr.atomic_file import write_atomic
from llmasr.commands.decode_flags import (
    DECODE_FLAGS,
    check_model_args,
    model_args,
    refused_flag,
    search_args,
    vad_flags_problem,
)
from llmasr.config_io import ConfigError
from llmasr.config_paths import output_problem
from llmasr.data.hotwords import PhraseFileError, read_phrase_file
from llmasr.data.manifest import BadManifest, EmptyManifest, manifest_file_problem
from llmasr.export.decode import (
    DecodeError,
    DecodeOptions,
    decode_manifest,
    load_decode_model,
    search_boost,
    unguided_boost,
)
from llmasr.export.decode_folders import (
    clear_earlier_folders,
    clear_for_decode,
    earlier_folders,
    manifest_folder_problem,
    out_dirs,
    subtitles_folder_problem,
    write_manifest_index,
    written_since_cleared,
)
from llmasr.export.decode_subtitles import manifests_clash
from llmasr.export.decode_world import DecodeWorld, decode_identity
from llmasr.export.staged_dir import writing
from llmasr.export.subtitles import FORMATS
from llmasr.models.decoding import decode_config
from llmasr.models.exported import ExportedModelError
from llmasr.models.sensevoice import asked_language
from llmasr.models.shipped_generation import say_shipped_settings
from llmasr.rank_verdict import rank_failure
from llmasr.run_dir import CheckpointError
from llmasr.train.run_log import command_logging

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmasr decode", description="Decode manifests and score them (WER/CER).")
    model_args(p)
    p.add_argument("--data", action="append", required=True, help="manifest (FunASR jsonl or lhotse cuts); repeatable")
    p.add_argument("--output", required=True, help="output directory for hyp/ref/results/wer files")
    p.add_argument("--metric", choices=("auto", "wer", "cer"), default=None)
    # batches, beam, length cap, repetition stop, CTC guidance, hotword boost, windows, VAD: transcribe's too
    search_args(p)
    p.add_argument("--max-bad-fraction", type=float, default=None, help="fail when more lines than this are bad")
    workers = f"data loader workers, also for the VAD's pass before batching (default {DecodeOptions.num_workers})"
    p.add_argument("--num-workers", type=int, default=None, help=workers)
    p.add_argument(
        "--features-on", choices=("worker", "device", "auto"), default=None,
        help="where fbank features are computed: loader workers, the model's device, or auto (device on a GPU)",
    )  # fmt: skip
    p.add_argument("--ctc", action="store_true", help="also write the CTC branch's greedy transcripts to OUTPUT/ctc/")
    p.add_argument(
        "--timestamps", action=argparse.BooleanOptionalAction, default=None,
        help="word times in results.jsonl (`timestamps`: [word, start s, end s] each), the transcript force-aligned "
        "to the CTC head's frames",
    )  # fmt: skip
    p.add_argument(
        "--subtitles", choices=FORMATS,
        help="also write each decoded line's subtitles, OUTPUT[/MANIFEST]/subtitles/KEY.srt or KEY.vtt (a key's "
        "slashes as _), cues of its transcript timed by its word times (turns --timestamps on; needs a CTC head), as "
        "`llmasr transcribe --subtitles` writes them",
    )  # fmt: skip
    p.add_argument(
        "--confidence", action=argparse.BooleanOptionalAction, default=None,
        help="each transcript's log-probability under the LLM in results.jsonl (`avg_logprob` per token, `logprob`), "
        "from one more forward of each batch (default: the model's decode.confidence, else off)",
    )  # fmt: skip
    p.add_argument(
        "--hotwords", metavar="FILE",
        help="biasing list for every line without its own `hotwords` field (UTF-8, one phrase a line; a line's own "
        "list wins, [] included)",
    )  # fmt: skip
    p.add_argument(
        "--task", metavar="TEXT",
        help="the prompt's task text for every line without its own `prompt` (default: the model's "
        "model.prompt.task; a line's own wins)",
    )  # fmt: skip
    p.add_argument(
        "--language", metavar="LANG",
        help="the language query (zh, en, Japanese, <|ko|>; auto: none) of every line without its own `lang`, for a "
        "SenseVoice encoder with queries.language per_line (a line's own wins; wer.txt groups lines by their own)",
    )  # fmt: skip
    p.add_argument(
        "--hotwords-unprompted", action="store_true",
        help="score B-/U- rates against the lists (the manifest's, --hotwords) without using them (neither prompt "
        "nor boost): the unbiased baseline of the same lists",
    )  # fmt: skip
    return p


class Refused(Exception):
    """A refusal of `llmasr decode` before decoding: its message and exit status (`exit_code`, which
    errors.exit_status and so the ranks' verdicts honour)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_args(parser, args)
    command_logging(logging.INFO)
    try:
        world = DecodeWorld.from_env()
    except ValueError as err:
        print(f"llmasr decode: error: {err}", file=sys.stderr)
        return 2
    if slurm_env.adopted() is not None and world.leader:
        log.info("%s", slurm_env.adopted().describe())
    try:
        device = world.device(args.device)
    except ValueError as err:
        print(f"llmasr decode: error: --device: {err}", file=sys.stderr)
        return 2
    # Joined before the checks a node may fail alone (a file only it lacks): each rank's verdict is gathered, so no
    # rank waits for one that has left (another node's launcher does not stop it)
    world.start(device)
    with contextlib.ExitStack() as held:
        return _run(args, world, device, held)


def _run(args, world: DecodeWorld, device, held: contextlib.ExitStack) -> int:
    """main's decode once the ranks have met; `held`: what stays held until it ends (rank 0's lock on --output)."""
    failure = ready = None
    try:
        with errors.stop_signals_raise("while loading the model"):  # before rank 0's lock on --output
            ready = _prepare(args, world)
        if world.leader:  # a second decode into it is refused at once, not at its end (written_since_cleared)
            held.enter_context(
                writing(Path(args.output), flag="--output", error=Refused, writer="decode", lockless_ok=True)
            )
    except Exception as err:
        failure = err
    peers = world.failures(failure)
    if failure is not None:
        if isinstance(failure, Refused):
            # said once where rank 0 was refused alike (every rank given one mistyped flag), each rank's own else
            if not any(rank == 0 and other["failed"] == errors.describe(failure) for rank, other in peers):
                print(f"llmasr decode: error: {failure}", file=sys.stderr)
            return failure.exit_code
        raise failure
    if peers:
        stop = rank_failure("start", peers)  # the worst exit status of the failed ranks
        if world.leader:
            print(f"llmasr decode: error: {stop}", file=sys.stderr)
        return stop.exit_code
    model, cfg, opts, identity = ready
    try:  # each rank decodes its share with what it loaded: a node's other export would score as this model
        if world.size > 1:
            world.same_everywhere(identity)
    except ConfigError as err:  # every rank alike: rank 0 says it
        if world.leader:
            print(f"llmasr decode: error: {err}", file=sys.stderr)
        return 2
    model.to(device)
    return _decode_all(model, args.data, Path(args.output), cfg, opts, device, world)


def _prepare(args, world: DecodeWorld):
    """(model, cfg, opts, identity) for decoding, or Refused: what `args` ask for checked on this rank (its node's
    files); identity (decode_identity, on N ranks: None on one) is what the ranks compare before decoding."""
    try:  # before the model loads: a bad list file fails at once
        hotwords = read_phrase_file(args.hotwords) if args.hotwords else None
    except PhraseFileError as err:
        raise Refused(f"--hotwords: {err}") from None
    unwritable = output_problem(Path(args.output))  # before the model loads, and not blamed on a manifest later
    if unwritable:
        raise Refused(f"--output {args.output}: {unwritable}")
    missing = [f"{data or repr(data)}: {why}" for data in args.data if (why := manifest_file_problem(data))]
    if missing:  # a mistyped manifest is named now, not after the model loads and the others are decoded
        raise Refused(f"--data: {'; '.join(missing)}")
    if len(args.data) > 1:  # a manifest's subfolder of something else's (an export's llm/ for llm.jsonl)
        folders = out_dirs(args.data, Path(args.output))
        ours = frozenset(folders + earlier_folders(Path(args.output)))  # dev/x/ in dev/ is a decode's own folder
        taken = [why for data, d in zip(args.data, folders) if (why := manifest_folder_problem(d, data, ours))]
        if taken:
            raise Refused(f"--output {args.output}: {'; '.join(taken)}")
        if args.subtitles and (mixed := subtitles_folder_problem(args.data, folders)):
            raise Refused(f"--subtitles: {mixed}")
    if args.subtitles and args.timestamps is False:
        raise Refused("--subtitles: cues are timed by the words' times, which --no-timestamps turns off: leave it out")
    if args.subtitles and (clash := manifests_clash(args.data, args.subtitles)):  # not after hours of decoding
        raise Refused(f"--subtitles: {clash}")
    flags = {field: getattr(args, dest) for field, dest in DECODE_FLAGS.items()}
    flags["timestamps"] = flags["timestamps"] or args.subtitles is not None or None  # subtitles need word times
    given = {"num_workers": args.num_workers, "max_bad_fraction": args.max_bad_fraction, "ctc": args.ctc,
             "features_on": args.features_on, "hotwords": hotwords, "hotwords_file": args.hotwords,
             "hotwords_unprompted": args.hotwords_unprompted or None,
             "hotword_flags": _hotword_flags(args) or None, "task": args.task, "subtitles": args.subtitles}  # fmt: skip
    if refused := refused_flag(flags, given):
        raise Refused(refused)
    if args.hotwords_unprompted and args.hotword_boost and world.leader:  # it had been taken and done nothing, unsaid
        log.warning(
            "--hotword-boost %g with --hotwords-unprompted: an unprompted run uses no list, neither in the prompt nor "
            "in the search, so the boost does nothing; leave it out (the baseline), or --hotwords-unprompted (the "
            "biased run)", args.hotword_boost,
        )  # fmt: skip
    if not world.leader:  # rank 0 says what happens; the others only on trouble
        logging.getLogger().setLevel(logging.WARNING)
    try:
        model, saved, opts = load_decode_model(
            args.model, args.checkpoint, tag=args.tag, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
            base_llm=args.base_llm, say=world.leader,  # a newer save than `latest` names: said once
        )  # fmt: skip
    except (CheckpointError, ExportedModelError, FileNotFoundError) as err:
        raise Refused(str(err), errors.exit_status(err)) from None  # 2: what it was given is refused
    if args.ctc and model.ctc_head is None:
        where = f"model directory {args.model}" if args.model else f"checkpoint {args.checkpoint}"
        raise Refused(f"--ctc: the {where} has no CTC head (trained with model.ctc.weight 0); decode it without --ctc")
    try:
        cfg = decode_config(saved, **flags)
        if vad_only := vad_flags_problem(flags, cfg):
            raise DecodeError(vad_only)
        given["language"] = asked_language(model, args.language, "--language")  # as Transcriber's language= is
        opts = dataclasses.replace(opts, **{k: v for k, v in given.items() if v is not None})
        search_boost(model, cfg, opts)  # refused here, before the model moves to its device
        identity = decode_identity(model, cfg, opts) if world.size > 1 else None  # a VAD that fails: gathered
    except (ConfigError, DecodeError, ValueError) as err:  # no CTC head for word times: said of --subtitles
        timed = args.subtitles and str(err).startswith("decode.timestamps")  # --timestamps given too, or not
        raise Refused(f"{'--subtitles: ' if timed else ''}{err}") from None
    if world.leader and not args.hotwords_unprompted and (unsafe := unguided_boost(model, cfg)):
        log.warning("%s", unsafe)
    if world.leader:
        say_shipped_settings(model.llm, cfg)
    return model, cfg, opts, identity


def _hotword_flags(args) -> tuple[str, ...]:
    """The flags given that act on the lines' biasing lists alone, as given (DecodeOptions.hotword_flags)."""
    unprompted = ("--hotwords-unprompted",) if args.hotwords_unprompted else ()
    return unprompted + (() if args.hotword_boost is None else (f"--hotword-boost {args.hotword_boost:g}",))


def _decode_all(model, manifests: list[str], output: Path, cfg, opts, device, world: DecodeWorld) -> int:
    failed, undecoded, summaries, status = [], [], [], 0
    folders = out_dirs(manifests, output)
    if world.leader:  # an earlier decode's files would read as this one's, were it stopped before writing its own
        clear_earlier_folders(output, folders)
        for folder in dict.fromkeys([output, *folders]):  # a single manifest's in OUTPUT, where several are decoded
            clear_for_decode(folder)  # every folder before the first manifest: decode_manifest clears none again
    for done, (data, out_dir) in enumerate(zip(manifests, folders)):
        name = out_dir.relative_to(output).as_posix() if len(manifests) > 1 else None  # its folder: clean/test
        # rank 0 writes (its lock's handler says so between manifests); the others decode their share
        doing = f"while writing {output}, decoding {data}" if world.leader else f"while decoding {data}"
        doing += f", {done} of {len(manifests)} manifests done" if len(manifests) > 1 else ""
        try:  # a rank without the lock (rank 0's, on --output) is stopped here as well
            with errors.stop_signals_raise(doing):
                summary = decode_manifest(model, data, out_dir, cfg, opts, device=device, world=world, cleared=True,
                                          name=name)  # fmt: skip
        except (FileNotFoundError, EmptyManifest, BadManifest) as err:  # every rank meets these alike; a fault met
            # decoding may be one rank's, which going on to the next manifest would pair with another's rows
            if world.leader:  # rank 0 says it, once (its folder was cleared at the start: nothing written there)
                print(f"llmasr decode: error: {data}: {err}", file=sys.stderr)
            failed.append(data)
            undecoded.append(data)
            status = max(status, errors.exit_status(err))  # 2: a manifest missing, empty or unreadable
            continue
        if summary is None:  # another rank writes the outputs
            continue
        texts = [summary["text"]] + ([summary["ctc"]["text"]] if opts.ctc else [])
        print("\n".join(texts))
        summaries += texts
        if summary["too_much_bad_data"]:
            print(f"llmasr decode: error: {summary['too_much_bad_data']}", file=sys.stderr)
            failed.append(data)
            status = 2  # bad input, as training's TooMuchBadData and a manifest that cannot be read exit
    if len(manifests) > 1 and world.leader:
        if taken := written_since_cleared(output, top=True):  # each manifest's folder checked as written
            raise DecodeError(taken)
        summaries += [f"{data}: not decoded (see the error printed for it)" for data in undecoded]
        write_atomic(output / "wer.txt", "\n".join(summaries) + "\n")
        write_manifest_index(output, manifests, folders)
    return max(status, 1) if failed else 0
