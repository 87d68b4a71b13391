"""`llmasr transcribe --model DIR | --checkpoint RUN_DIR AUDIO... [--hotwords FILE] [--task TEXT] [--language LANG]
[decode's search and guard flags] [--device D] [--timestamps] [--confidence] [--subtitles srt|vtt]`: print each audio
file's transcript, one "AUDIO<TAB>TEXT" line per file in the order given (llmasr.export.transcribe), each printed and
flushed as soon as it and those before it are done (a stopped run first prints the finished lines held back behind an
undone file); with --timestamps or --confidence one JSON line per file with its words' times or the LLM's
log-probability of its text, and "truncated"; with --subtitles each file's subtitles written too, cues timed by its
words (llmasr.export.subtitles). A transcript a guard cut (the length cap, the repetition stop) is named on stderr,
stdout's line unchanged, as is one a gate left empty (the VAD's, the CTC head's). A file that cannot be read is named
on stderr where it falls, the others still print, and the exit status is 1."""

from __future__ import annotations

import argparse
import codecs
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from llmasr import errors, slurm_env
from llmasr.atomic_file import write_atomic
from llmasr.commands.decode_flags import (
    check_model_args,
    model_args,
    refused_flag,
    search_args,
    search_settings,
    vad_flags_problem,
)
from llmasr.config_io import ConfigError
from llmasr.data.hotwords import PhraseFileError, read_phrase_file
from llmasr.export.decode import DecodeError
from llmasr.export.decode_options import PACE_LOGGER
from llmasr.export.decode_world import DecodeWorld
from llmasr.export.subtitles import FORMATS, subtitle_paths, subtitles
from llmasr.export.transcribe import TranscribeError, Transcriber
from llmasr.export.transcribe_clips import clip_problem, utf8
from llmasr.models.decode_guards import MAX_TOKENS, REPETITION
from llmasr.models.decoding import DecodeConfig
from llmasr.models.exported import ExportedModelError
from llmasr.run_dir import CheckpointError
from llmasr.text_files import text_line
from llmasr.train.run_log import command_logging

# what loading and transcribing refuse, named in one line (exit status 2)
REFUSED = (CheckpointError, ExportedModelError, FileNotFoundError, ConfigError, TranscribeError, DecodeError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmasr transcribe", description="Print the transcripts of audio files.")
    model_args(p)
    p.add_argument("audio", nargs="*", help="audio files (wav, flac, ogg, mp3: what libsndfile reads)")
    p.add_argument(
        "--files-from", metavar="LIST",
        help="a file listing audio files, one path a line (relative paths from the working directory, as on the "
        "command line; - reads the list from standard input), transcribed after those named as arguments",
    )  # fmt: skip
    p.add_argument("--hotwords", metavar="FILE", help="biasing list for every file (UTF-8, one phrase a line)")
    p.add_argument(
        "--task", metavar="TEXT",
        help="the prompt's task text for every file instead of the model's (model.prompt.task): the prompt a model "
        "trained on lines with a `prompt` of their own was given for such audio (e.g. one a language)",
    )  # fmt: skip
    p.add_argument(
        "--language", metavar="LANG",
        help="every file's language (zh, en, yue, ja, ko; default auto): the language query of a SenseVoice encoder "
        "trained with model.encoder.conf.queries.language per_line, as a manifest line's `lang` is decoded",
    )  # fmt: skip
    search_args(p)  # decode's search and guards (length cap, repetition stop, windows, VAD), from one owner
    p.add_argument(
        "--timestamps", action="store_true",
        help='one JSON line per file instead: {"audio", "text", "truncated", "timestamps": [[word, start s, end s], '
        '...]} (word times from the CTC head)',
    )  # fmt: skip
    p.add_argument(
        "--confidence", action="store_true",
        help='one JSON line per file instead, with "avg_logprob" and "logprob": the LLM\'s log-probability of the text '
        "(per token, the end included; summed), from one more forward; a file decoded in windows adds "
        '"window_confidence": [{"start", "end", "avg_logprob"}, ...]',
    )  # fmt: skip
    p.add_argument(
        "--subtitles", choices=FORMATS,
        help="also write each file's subtitles, STEM.srt or STEM.vtt, into --subtitles-dir: cues of the transcript's "
        "own text timed by its word timestamps (needs a CTC head), ended at sentence ends, pauses of 0.5 s, 7 s or "
        "two lines of 42 columns (a CJK character takes two)",
    )  # fmt: skip
    p.add_argument("--subtitles-dir", metavar="DIR", help="where --subtitles writes (default: the working directory)")
    return p


def _printable(err: UnicodeEncodeError) -> tuple[bytes | str, int]:
    """A file name that is not UTF-8 (lone surrogates, as Python decodes one) is written as its own bytes, as `ls`
    writes it; a character the locale cannot encode (Chinese under Latin-1) as an escape: the lines had failed to
    print once every file was decoded."""
    bad = err.object[err.start : err.end]
    if all("\udc80" <= ch <= "\udcff" for ch in bad):
        return bytes(ord(ch) - 0xDC00 for ch in bad), err.end
    return codecs.backslashreplace_errors(err)


codecs.register_error("llmasr.transcribe", _printable)


def _several_ranks(environ=os.environ) -> str | None:
    """Why this process is one of a launcher's several ranks, which would each transcribe every file (transcribe
    runs as one process and prints each transcript: N ranks, N copies); the tasks of an srun step are refused
    before any verb that runs as one process starts (llmasr.cli)."""
    hint = ", or give the files to `llmasr decode` as a manifest, which splits them between ranks"
    return slurm_env.launcher_refusal("transcribe", "would transcribe every file", hint, environ)


def _one_line(path: str) -> str:
    """`path` as its AUDIO<TAB>TEXT line and stderr's lines name it: a tab or line break in the name (a file saved
    from an upload or a title) escaped as \\t, \\n, \\r, backslashes then as \\\\, so a line stays one line of two
    fields (the JSON lines of --timestamps and --confidence give such a name whole)."""
    if not any(ch in path for ch in "\t\n\r"):
        return path
    return path.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def listed_files(path: str) -> list[tuple[int, str]]:
    """(line number, audio path) of each file a --files-from LIST names, one a line (blank lines skipped, the line's
    own ends stripped, a BOM opening a line no part of its path); ValueError naming the list, and its line where one
    is not UTF-8. "-": the list from standard input (`find data -name '*.wav' | llmasr transcribe --files-from -`)."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror or err}") from None
    out = []
    for n, raw in enumerate(data.splitlines(), start=1):
        if line := text_line(raw, path, n):
            out.append((n, line))
    if not out:
        raise ValueError(f"{path}: lists no audio file")
    return out


def _stdin(path: str, why: str) -> str:
    """Why `path` cannot be read, where "-" (no file of that name) is taken for standard input: audio is read more
    than once (a header probe, then the data), as a pipe cannot be."""
    if path == "-" and not os.path.exists(path):
        return (
            "standard input is not read as audio (audio is read more than once): save it to a file first (a list "
            "of files on standard input: --files-from -)"
        )
    return why


def gates(cfg) -> str:
    """The gates in force that can leave a file's text empty: the VAD's, the CTC head's."""
    found = ["the VAD (--vad)"] if cfg.vad is not None and cfg.vad_gate else []
    found += ["the CTC gate (--ctc-gate)"] if cfg.ctc_gate else []
    return " or ".join(found) or "a gate"


def stopped_by(row: dict, cfg: DecodeConfig) -> str:
    """Which guard ended a file's transcript (its row's "truncated"), and the flag that moves it."""
    each = " a window" if row.get("windows", 1) > 1 else ""  # long audio: each window has its own cap
    if row["truncated"] == MAX_TOKENS and cfg.max_new_tokens is not None:
        return (f"transcript cut at the length cap, decode.max_new_tokens {cfg.max_new_tokens} tokens{each}: raise "
                "--max-new-tokens, or give 0 for the cap by duration")  # fmt: skip
    if row["truncated"] == MAX_TOKENS:
        return (f"transcript cut at the length cap, tokens_per_second {cfg.tokens_per_second:g} x seconds + 8 "
                f"tokens{each}: raise --tokens-per-second (an LLM that spells a character in several tokens needs "
                "more)")  # fmt: skip
    if row["truncated"] == REPETITION:
        return (f"transcript ended by the repetition stop, an n-gram repeated back to back more than "
                f"{cfg.repeat_limit} times: --repeat-limit sets it (0: off)")  # fmt: skip
    return f"transcript ended by the guard {row['truncated']!r}"


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # stderr names files too: in the bytes stdout prints them as
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="llmasr.transcribe")
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # files after an option too
    check_model_args(parser, args)
    command_logging(logging.WARNING)
    logging.getLogger(PACE_LOGGER).setLevel(logging.INFO)  # stderr says how far a long list is (stdout: the texts)
    if ranked := _several_ranks():
        print(f"llmasr transcribe: error: {ranked}", file=sys.stderr)
        return 2
    try:
        hotwords = read_phrase_file(args.hotwords) if args.hotwords else None
    except PhraseFileError as err:
        print(f"llmasr transcribe: error: --hotwords: {err}", file=sys.stderr)
        return 2
    where = [""] * len(args.audio)  # a listed file is named with its line of the list
    if args.files_from is not None:
        try:
            listed = listed_files(args.files_from)
        except ValueError as err:
            print(f"llmasr transcribe: error: --files-from: {err}", file=sys.stderr)
            return 2
        args.audio += [path for _, path in listed]
        where += [f"{args.files_from}:{n}: " for n, _ in listed]
    if not args.audio:
        parser.error("no audio: name files, or list them with --files-from LIST")
    missing = [f"{at}{path or repr(path)}: {_stdin(path, why)}"
               for at, path in zip(where, args.audio) if (why := clip_problem(path))]  # fmt: skip
    if missing:  # named before the model loads
        print(f"llmasr transcribe: error: {'; '.join(missing)}", file=sys.stderr)
        return 2
    if args.subtitles_dir is not None and not args.subtitles:
        parser.error("--subtitles-dir goes with --subtitles srt|vtt")
    try:  # two files that would write one subtitle file, or a folder that cannot be made: before the model loads
        args.subtitle_paths, args.unwritten = _subtitle_paths(args), 0
    except (ValueError, OSError) as err:
        print(f"llmasr transcribe: error: --subtitles: {err}", file=sys.stderr)
        return 2
    try:
        device = DecodeWorld().device(args.device)  # decode's choice: cuda when available
    except ValueError as err:
        print(f"llmasr transcribe: error: --device: {err}", file=sys.stderr)
        return 2
    # word times and confidence only when they are printed: the model's saved decode.timestamps and decode.confidence
    # do not change the output
    given = {**search_settings(args), "timestamps": bool(args.timestamps or args.subtitles),
             "confidence": bool(args.confidence)}  # fmt: skip
    if refused := refused_flag(given):  # before the model loads
        print(f"llmasr transcribe: error: {refused}", file=sys.stderr)
        return 2
    if args.hotword_boost is not None and hotwords is None:  # it would change nothing, and nothing would say so
        print("llmasr transcribe: error: --hotword-boost scores the phrases of --hotwords, and none is given: give "
              "--hotwords FILE, or leave it out", file=sys.stderr)  # fmt: skip
        return 2
    with errors.stop_signals_raise("while transcribing"):  # named, as Ctrl-C is
        return _transcribe(args, device, given, hotwords)


def _transcribe(args, device, given: dict, hotwords) -> int:
    """main's transcription once its checks pass: the model loaded, each file's line printed."""
    try:
        asr = Transcriber.load(
            args.model, checkpoint=args.checkpoint, tag=args.tag, device=device, dtype=args.dtype,
            trust_remote_code=args.trust_remote_code, base_llm=args.base_llm,
            **{k: v for k, v in given.items() if v is not None},
        )  # fmt: skip
        if vad_only := vad_flags_problem(given, asr.cfg):
            raise DecodeError(vad_only)
    except REFUSED as err:
        timed = args.subtitles and str(err).startswith("decode.timestamps")  # --timestamps given too, or not
        print(f"llmasr transcribe: error: {'--subtitles: ' if timed else ''}{err}", file=sys.stderr)
        return errors.exit_status(err)  # 2: what it was given is refused
    try:  # each file's line as soon as it and those before it are done: a stopped run keeps the finished ones
        rows = asr.transcripts(args.audio, hotwords=hotwords, keep_going=True, task=args.task, language=args.language,
                               on_row=lambda i, row: _print_row(i, row, args, asr.cfg))  # fmt: skip
    except REFUSED as err:
        print(f"llmasr transcribe: error: {err}", file=sys.stderr)
        return errors.exit_status(err)
    failed = sum("error" in row for row in rows)
    if failed:
        print(f"llmasr transcribe: error: {failed} of {len(rows)} files could not be transcribed", file=sys.stderr)
    if args.unwritten:
        print(f"llmasr transcribe: error: the subtitles of {args.unwritten} of {len(rows)} files could not be "
              "written", file=sys.stderr)  # fmt: skip
    return 1 if failed or args.unwritten else 0


def _subtitle_paths(args) -> list[Path] | None:
    if not args.subtitles:
        return None
    folder = Path(args.subtitles_dir or ".")
    folder.mkdir(parents=True, exist_ok=True)
    try:  # a folder it cannot write in (read-only, another's): said now, not once per file after each is decoded
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".llmasr-subtitles-"):
            pass
    except OSError as err:
        raise OSError(f"{folder}: cannot write subtitles there ({err.strerror or err})") from None
    return subtitle_paths(args.audio, args.subtitles, folder)


def _print_row(position: int, row: dict, args, cfg: DecodeConfig) -> None:
    """One file's line on stdout (whole and flushed: a run stopped after it keeps it), its notes on stderr, and its
    subtitles where asked."""
    path = row["audio"]
    if "error" in row:  # named where it falls; the other files' lines still print
        print(f"llmasr transcribe: error: {_one_line(path)}: {row['error']}", file=sys.stderr)
        return
    if args.subtitle_paths is not None:
        if row["hyp"].strip() and not row["timestamps"]:  # its text is still shown, over the whole file
            print(f"llmasr transcribe: warning: {_one_line(path)}: no word times (the CTC head could not align its "
                  "text): its subtitles are one cue over the whole file", file=sys.stderr)  # fmt: skip
        try:  # a full disk: this file named, its line still printed, the others still decoded (exit 1)
            write_atomic(args.subtitle_paths[position], subtitles(row, args.subtitles, untimed_whole=True))
        except OSError as err:
            args.unwritten += 1
            print(f"llmasr transcribe: error: {_one_line(path)}: --subtitles: {err}", file=sys.stderr)
    if row.get("truncated"):  # the text printed is cut: said where a script can see it, stdout's format kept
        print(f"llmasr transcribe: warning: {_one_line(path)}: {stopped_by(row, cfg)}", file=sys.stderr)
    if row.get("no_speech"):  # an empty line on stdout is no failure: said why
        print(f"llmasr transcribe: note: {_one_line(path)}: no speech found by {gates(cfg)}: its text is empty",
              file=sys.stderr)  # fmt: skip
    if args.timestamps or args.confidence:
        line = {"audio": path, "text": row["hyp"], "truncated": row.get("truncated")}
        if row.get("no_speech"):  # a gate (the VAD's, the CTC head's) found none: the text is empty for that
            line["no_speech"] = True
        if args.timestamps:
            line["timestamps"] = None if row["timestamps"] is None else [list(w) for w in row["timestamps"]]
        if args.confidence:
            line.update(avg_logprob=row["avg_logprob"], logprob=row["logprob"])
            if "window_confidence" in row:  # a long file decoded in windows: each window's own
                line["window_confidence"] = row["window_confidence"]
        if "window_texts" in row:  # which window wrote what (an unsure or hallucinated one found by its span)
            line["window_texts"] = row["window_texts"]
        # a name that is not UTF-8 as JSON escapes (\udcd2): its bytes would make the line no UTF-8 JSON
        text = json.dumps(line, ensure_ascii=False) if utf8(path) else json.dumps(line)
    else:
        text = f"{_one_line(path)}\t{' '.join(row['hyp'].split())}"  # one line a file, whatever the LLM wrote
    sys.stdout.write(text + "\n")  # one write: a stop between print's text and its end would tear the line
    sys.stdout.flush()
