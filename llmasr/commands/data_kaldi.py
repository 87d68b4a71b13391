"""`llmasr data kaldi DATA_DIR OUT.jsonl` (wav.scp, text and optional segments, utt2dur and utt2lang inside
DATA_DIR)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmasr.config_paths import file_problem, output_file_problem
from llmasr.data.kaldi import KaldiError, kaldi_to_jsonl


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="llmasr data kaldi",
        description="Kaldi data directory -> FunASR-style jsonl. A wav.scp pipe command that only decodes one audio "
        "file is read as that file: `sph2pipe [-f FMT] [-p|-u|-a] [-c 1|2] [-t b:e|-s b:e] F |` (channel pick and "
        "range written as the line's channel, start and end; a segment's times add to the range's start), `flac -c "
        "-d [-s] [--skip=S] [--until=[+|-]U] F |` (samples or mm:ss.ss), `sox [-q|-V] [-t T -c N -r N -b N -e ENC] F "
        "[-t wav -r N -b N -e ENC -c 1] - [remix N|channels 1|rate N|trim START [LEN|=END|-FROM_END]] |` (one "
        "trim; its range written as sph2pipe's is; options before F as its header says, as AMI's `sox -c 1 -t wavpcm "
        "-e signed-integer F -t wavpcm - |`); the summary's piped_read_as_files counts them (per tool). Any other "
        "command, option, effect, shell syntax, a range outside the file, or a file llmasr cannot open "
        "(shorten-compressed .sph) is refused with its line and the part at fault.",
    )
    p.add_argument(
        "data_dir", help="Kaldi data directory with wav.scp, and text, segments, utt2dur and utt2lang where present "
        "(no text: a manifest of audio to transcribe, for llmasr decode; utt2dur: durations written, no header probed "
        "in training; utt2lang: each line's `lang`, which decode rates each language by)",
    )  # fmt: skip
    p.add_argument("out", help="jsonl manifest to write")
    p.add_argument(
        "--base-dir",
        help="directory relative wav.scp paths, and the files pipe commands name, resolve against "
        "(default: cwd, as Kaldi's recipes run)",
    )
    args = p.parse_args(argv)
    d = Path(args.data_dir)
    if not (d / "wav.scp").is_file():
        p.error(f"{d / 'wav.scp'}: missing")
    segments, text, utt2dur, utt2lang = d / "segments", d / "text", d / "utt2dur", d / "utt2lang"
    for path in (text, segments, utt2dur, utt2lang):  # one that is there but no file had been read as absent: whole
        if path.exists() and (problem := file_problem(path, "Kaldi table")):  # recordings, no transcripts
            print(f"llmasr data kaldi: error: {path}: {problem}", file=sys.stderr)
            return 2
    if unwritable := output_file_problem(Path(args.out), [d / "wav.scp", segments, text, utt2dur, utt2lang]):
        print(f"llmasr data kaldi: error: {args.out}: {unwritable}", file=sys.stderr)
        return 2
    try:
        counts = kaldi_to_jsonl(
            d / "wav.scp", text if text.is_file() else None, args.out,
            segments=segments if segments.is_file() else None, base_dir=args.base_dir,
            utt2dur=utt2dur if utt2dur.is_file() else None, utt2lang=utt2lang if utt2lang.is_file() else None,
        )  # fmt: skip
    except KaldiError as err:
        print(f"llmasr data kaldi: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(counts, indent=2, default=str))
    if not text.is_file():
        print(f"{text}: missing: {args.out} has no transcripts (llmasr decode transcribes it; training refuses it)")
    if counts["written"] == 0:
        print(f"llmasr data kaldi: error: no utterance of {d} could be written ({args.out} is empty): see the skipped "
              "keys above", file=sys.stderr)  # fmt: skip
        return 2  # every key was bad input, as KaldiError's
    return 0
