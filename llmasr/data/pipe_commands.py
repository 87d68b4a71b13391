"""Kaldi wav.scp pipe commands that only decode an audio file llmasr reads itself: Switchboard's `sph2pipe -f wav -p
-c 1 F.sph |`, WSJ's `sph2pipe -f wav F.wv1 |`, LibriSpeech's `flac -c -d -s F.flac |`, `sox F -t wav - remix 1 |`.

Each is read strictly, as its tool parses its options (sph2pipe and flac with getopt, options anywhere; sox's global
and input options, the latter checked against the file's header, input file, output options, `-`, effects), into the
file, a channel pick (0-based) and a time range (llmasr.data.pipe_ranges reads sph2pipe's -t/-s, flac's
--skip/--until and sox's trim). Options that only change the output's format (header, bits, rate:
llmasr resamples) map to nothing. Anything else (another option or effect, a second file, shell syntax, another
command) raises NotUnderstood naming the part at fault. llmasr.data.piped_files reads what is parsed against the
file itself.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from llmasr.data.audio import AudioHeader
from llmasr.data.pipe_ranges import START, NotUnderstood, Position, flac_span, is_sox_position, sox_trim, sph2pipe_span


@dataclass(frozen=True)
class PipedRead:
    """What a decode-only command reads: `file` as written, a 0-based `channel` pick, whether the stream is one
    channel (`mono`: a pick, or sox's average), and the range [start, end) it cuts (end None: the file's end)."""

    tool: str
    file: str
    channel: int | None = None
    mono: bool = False
    start: Position = START
    end: Position | None = None
    pick_ignored_on_mono: bool = False  # sph2pipe: `-c 2` of a one-channel file outputs that channel
    declared: tuple[tuple[str, str], ...] = ()  # sox's input options: what the file is read as, over its header


TOOLS = ("sph2pipe", "flac", "sox")
_SEPARATORS = {";": "a second command (';')", "&": "a second command or background job ('&')", "\n": "a newline"}
_SHELL = set("<>()$`*?[]{}!\\")  # redirections, subshells, expansions, globs, escapes: the shell's, not the tool's
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _word_at(body: str, i: int) -> str:
    left = max(body.rfind(" ", 0, i), body.rfind("\t", 0, i)) + 1
    right = min((j for j in (body.find(" ", i), body.find("\t", i)) if j >= 0), default=len(body))
    return body[left:right]


def _words(command: str) -> list[str]:
    """The command's words (its closing '|' dropped), quotes removed; NotUnderstood for any shell syntax beyond
    words and quotes."""
    body = command.rstrip()[:-1]
    quote = None
    for i, ch in enumerate(body):
        if quote is not None:
            if ch == quote:
                quote = None
            elif quote == '"' and ch in "$`\\":
                raise NotUnderstood(f"shell syntax {ch!r} inside double quotes in {_word_at(body, i)!r}")
        elif ch in "'\"":
            quote = ch
        elif ch == "|":
            raise NotUnderstood("a second command in the pipeline ('|')")
        elif ch in _SEPARATORS:
            raise NotUnderstood(_SEPARATORS[ch])
        elif ch in "<>":
            raise NotUnderstood(f"a redirection {_word_at(body, i)!r}")
        elif ch in _SHELL or (ch in "~#" and (i == 0 or body[i - 1] in " \t")):
            raise NotUnderstood(f"shell syntax {ch!r} in {_word_at(body, i)!r}")
    if quote is not None:
        raise NotUnderstood(f"an unclosed quote ({quote})")
    return shlex.split(body)


def parse_pipe(command: str) -> PipedRead:
    """The decode-only read `command` (a wav.scp value ending in '|') makes; NotUnderstood names what is not one."""
    words = _words(command)
    if not words:
        raise NotUnderstood("no command before the '|'")
    if _ASSIGNMENT.match(words[0]):
        raise NotUnderstood(f"an environment assignment {words[0]!r}")
    tool = Path(words[0]).name  # recipes write $KALDI_ROOT/tools/sph2pipe_v2.5/sph2pipe out in full
    if tool not in TOOLS:
        raise NotUnderstood(f"command {words[0]!r}: llmasr reads the decoding of {', '.join(TOOLS)} only")
    return {"sph2pipe": _sph2pipe, "flac": _flac, "sox": _sox}[tool](words[1:])


def _getopt(tool: str, args: list[str], shortopts: str, longopts: dict[str, str]) -> tuple[list, list[str]]:
    """GNU getopt as the tools call it: clustered flags (-dcs), values attached or next (-c1, -c 1), options after
    the file too, `--` ends them; long options by their full name. Returns ([(letter, value)], positionals)."""
    opts: list[tuple[str, str | None]] = []
    files: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        if word == "--":
            files += args[i:]
            break
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            if word in longopts and not word.endswith("="):  # a flag; `--skip=` is an empty value, not no option
                opts.append((longopts[word], None))
            elif name + "=" not in longopts:  # "--skip=": an option taking a value, `--skip=N` or `--skip N`
                raise NotUnderstood(f"{tool} option {word!r}")
            elif equals:
                opts.append((longopts[name + "="], value))
            elif i < len(args):
                opts.append((longopts[name + "="], args[i]))
                i += 1
            else:
                raise NotUnderstood(f"{tool} option {word!r} without its value")
        elif word.startswith("-") and word != "-":
            j = 1
            while j < len(word):
                letter = word[j]
                if letter not in shortopts.replace(":", ""):
                    raise NotUnderstood(f"{tool} option '-{letter}'" + (f" (in {word!r})" if len(word) > 2 else ""))
                if shortopts[shortopts.index(letter) + 1 : shortopts.index(letter) + 2] != ":":
                    opts.append((letter, None))
                    j += 1
                    continue
                if j + 1 < len(word):
                    opts.append((letter, word[j + 1 :]))
                elif i < len(args):
                    opts.append((letter, args[i]))
                    i += 1
                else:
                    raise NotUnderstood(f"{tool} option '-{letter}' without its value")
                break
        else:
            files.append(word)
    return opts, files


def _one_file(tool: str, files: list[str], why_more: str) -> str:
    if not files:
        raise NotUnderstood(f"{tool} names no input file")
    if len(files) > 1:
        raise NotUnderstood(f"{why_more} {files[1]!r}")
    if files[0] == "-":
        raise NotUnderstood(f"{tool} reads standard input ('-'), not a file")
    return files[0]


SPH2PIPE_FORMATS = ("wav", "rif", "riff", "sph", "raw", "au", "aif", "aiff", "mac")


def _sph2pipe(args: list[str]) -> PipedRead:
    """`sph2pipe [-h hdr] [-t|-s b:e] [-c 1|2] [-p|-u|-a] [-f typ] [-d] infile [outfile]` (getopt "daupf:c:t:s:h:")."""
    opts, files = _getopt("sph2pipe", args, "daupf:c:t:s:h:", {})
    file = _one_file("sph2pipe", files, "an output file (the audio goes there, not into the pipe):")
    channel, span, unit = None, (START, None), None
    for letter, value in opts:
        if letter == "h":
            raise NotUnderstood(f"sph2pipe -h {value!r} (a headerless file read with another file's header)")
        if letter == "f" and value.lower() not in SPH2PIPE_FORMATS:
            raise NotUnderstood(f"sph2pipe -f {value!r} (formats: sph, wav, raw, au, aif)")
        if letter == "c":
            if value not in ("1", "2"):
                raise NotUnderstood(f"sph2pipe -c {value!r} (expected 1 or 2)")
            channel = int(value) - 1
        if letter in "ts":
            if unit not in (None, letter):
                raise NotUnderstood("sph2pipe -t and -s both given")
            if unit is not None:  # sph2pipe keeps the first's start or end where the second leaves it out
                raise NotUnderstood(f"a second sph2pipe -{letter} {value!r} (a range is given once)")
            span, unit = sph2pipe_span(letter, value), letter
    return PipedRead("sph2pipe", file, channel, channel is not None, *span, pick_ignored_on_mono=True)


def _flac(args: list[str]) -> PipedRead:
    """`flac -c -d -s [--skip=S] [--until=U] F` (--stdout, --decode, --silent; -dcs alike): decoding to standard
    output, of the range --skip and --until give, nothing else."""
    longopts = {"--stdout": "c", "--decode": "d", "--silent": "s", "--skip=": "K", "--until=": "U"}
    opts, files = _getopt("flac", args, "cds", longopts)
    file = _one_file("flac", files, "a second input file")
    given = dict(opts)
    if "d" not in given:
        raise NotUnderstood("flac without -d (--decode): it encodes")
    if "c" not in given:
        raise NotUnderstood("flac without -c (--stdout): it decodes into a file, not into the pipe")
    return PipedRead("flac", file, None, False, *flac_span(given.get("K"), given.get("U")))


_RATE = re.compile(r"([0-9]+(\.[0-9]+)?)k?")
SOX_GLOBAL = ("-q", "--no-show-progress", "-D", "--no-dither", "-R", "-V")  # what it prints, dither: not the audio
# sox's names (any unambiguous start of one, case aside, is read as it: recipes write `-e signed`); u-law is mu-law
SOX_ENCODINGS = {
    "signed-integer": "signed-integer", "unsigned-integer": "unsigned-integer", "floating-point": "floating-point",
    "mu-law": "mu-law", "u-law": "mu-law", "a-law": "a-law",
}  # fmt: skip
SOX_RATE_QUALITY = ("-q", "-l", "-m", "-h", "-v")
SOX_INPUT_TYPES = {"wav": ("WAV", "WAVEX"), "wavpcm": ("WAV", "WAVEX"), "flac": ("FLAC",), "sph": ("NIST",)}
SOX_CODING = {  # libsndfile's sample coding -> sox's encoding and bits, which an input option must agree with
    "PCM_S8": ("signed-integer", 8), "PCM_16": ("signed-integer", 16), "PCM_24": ("signed-integer", 24),
    "PCM_32": ("signed-integer", 32), "PCM_U8": ("unsigned-integer", 8), "FLOAT": ("floating-point", 32),
    "DOUBLE": ("floating-point", 64), "ULAW": ("mu-law", 8), "ALAW": ("a-law", 8),
}  # fmt: skip
BEFORE = {"input": "the input file", "output": "the output '-'"}


def _hz(rate: str) -> float:
    return float(rate[:-1]) * 1000 if rate.endswith("k") else float(rate)


def _sox_option(word: str, args: list[str], where: str) -> tuple[str, str]:
    """One format option and its value (`-t wav`, `-twav`, `--type wav`, `--type=wav`; `-s`, sox's older
    `-e signed-integer`), taken from `args`, its value checked; `where`: "input" or "output"."""
    names = {"-t": "--type", "-r": "--rate", "-b": "--bits", "-e": "--encoding", "-c": "--channels"}
    letter, value = ("-e", "signed-integer") if word == "-s" else (None, "")
    for short, long in names.items():
        if letter is None and word in (short, long):
            if not args:
                raise NotUnderstood(f"sox option {word!r} without its value")
            letter, value = short, args.pop(0)
        elif letter is None and word.startswith(long + "="):
            letter, value = short, word[len(long) + 1 :]
        elif letter is None and len(word) > 2 and word.startswith(short):
            letter, value = short, word[2:]
    if letter is None:
        raise NotUnderstood(f"sox option {word!r} (before {BEFORE[where]})")
    types = SOX_INPUT_TYPES if where == "input" else ("wav", "wavpcm")  # wavpcm: AMI's recipes
    if letter == "-t" and value.lower() not in types:
        raise NotUnderstood(f"sox {where} type {value!r} (read: {', '.join(types)})")
    if (letter == "-r" and not _RATE.fullmatch(value)) or (letter == "-b" and value not in ("8", "16", "24", "32")):
        raise NotUnderstood(f"sox {letter} {value!r}")
    if letter == "-e":
        named = sorted({full for name, full in SOX_ENCODINGS.items() if value and name.startswith(value.lower())})
        if len(named) != 1:
            raise NotUnderstood(f"sox -e {value!r}" + (f" ({' or '.join(named)}?)" if named else ""))
        value = named[0]
    if letter == "-c" and not re.fullmatch("1" if where == "output" else "[1-9][0-9]*", value):
        raise NotUnderstood(f"sox -c {value!r}" + " (only -c 1, the channels averaged, is read)" * (where == "output"))
    return letter, value


def _sox(args: list[str]) -> PipedRead:
    """`sox [-q|-V|-D|-R] [-t T -r N -b N -e ENC -c N] F [-t wav|wavpcm -r N -b N -e ENC -c 1] - [remix N|channels
    1|rate [-q..-v] N]...`: one input (its format options kept, to check against its header), WAV to standard
    output; `remix N` picks channel N (1-based), `-c 1` and `channels 1` average."""
    args, declared = list(args), []
    while args and args[0].startswith("-") and args[0] != "-":
        word = args.pop(0)
        if word not in SOX_GLOBAL and not re.fullmatch(r"-V[0-6]", word):
            declared.append(_sox_option(word, args, "input"))  # AMI's `sox -c 1 -t wavpcm -e signed-integer F`
    if not args:
        raise NotUnderstood("sox names no input file")
    file = _one_file("sox", [args.pop(0)], "")
    wav, average = False, False
    while args and args[0] != "-":
        word = args.pop(0)
        if not word.startswith("-"):
            raise NotUnderstood(f"a second input file {word!r}")
        letter, _ = _sox_option(word, args, "output")
        wav, average = wav or letter == "-t", average or letter == "-c"
    if not args or not wav:
        raise NotUnderstood("sox output is not '-t wav -' (WAV on standard output)")
    args.pop(0)
    channel, mono, span = _sox_effects(args)
    return PipedRead("sox", file, channel, mono or average, *span, declared=tuple(declared))


def sox_misread(read: PipedRead, header: AudioHeader) -> str | None:
    """Where a sox input option says other than the file's header (sox reads the samples as the option says), why."""
    encoding, bits = SOX_CODING.get(header.subtype, (header.subtype, "?"))
    for letter, value in read.declared:
        if letter == "-t" and header.format not in SOX_INPUT_TYPES[value.lower()]:
            said, real = f"is {SOX_INPUT_TYPES[value.lower()][0]}", header.format
        elif letter == "-c" and int(value) != header.channels:
            said, real = f"has {value} channel(s)", header.channels
        elif letter == "-r" and _hz(value) != header.sample_rate:
            said, real = f"has {_hz(value):g} Hz", f"{header.sample_rate} Hz"
        elif (letter == "-e" and value != encoding) or (letter == "-b" and value != str(bits)):
            said, real = (f"is {value}", encoding) if letter == "-e" else (f"has {value} bits", bits)
        else:
            continue
        return (f"sox's input option '{letter} {value}' says {read.file} {said}, and its header {real} (sox reads it "
                "as the option says, its samples misread)")  # fmt: skip
    return None


def _sox_effects(args: list[str]) -> tuple[int | None, bool, tuple[Position, Position | None]]:
    """(channel picked, stream is one channel, range kept) after `remix N`, `channels 1`, `rate` and one `trim`
    effect, in their order."""
    channel, mono, span, resampled = None, False, None, False
    while args:
        effect = args.pop(0)
        if effect == "trim":
            if span is not None:
                raise NotUnderstood(f"a second sox effect 'trim {' '.join(args)}'".rstrip())
            positions = []
            while args and is_sox_position(args[0]):
                positions.append(args.pop(0))
            if not positions and args:
                raise NotUnderstood(f"sox trim position {args[0]!r}")
            span = sox_trim(positions, samples_ok=not resampled)
            continue
        value = args.pop(0) if args else ""
        if effect == "remix" and re.fullmatch(r"[1-9][0-9]*", value):
            if mono and value != "1":
                raise NotUnderstood(f"sox effect 'remix {value}' of a stream already one channel")
            channel, mono = (int(value) - 1, True) if not mono else (channel, mono)
        elif effect == "channels" and value == "1":
            mono = True
        elif effect == "rate" and value in SOX_RATE_QUALITY and args and _RATE.fullmatch(args[0]):
            args.pop(0)
            resampled = True
        elif effect == "rate" and _RATE.fullmatch(value):
            resampled = True
        else:
            rest = " ".join([effect, value, *args]).strip()  # the effect and what follows it
            raise NotUnderstood(f"sox effect {rest!r} (read: remix N, channels 1, rate, trim)")
    return channel, mono, span or (START, None)
