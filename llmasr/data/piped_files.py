"""A wav.scp pipe command read as the file it decodes (llmasr.data.pipe_commands parses it): the file found and its
header probed, the command's channel pick and time range checked against it, a Kaldi segment's times placed in its
stream; PipeRefused says why a command is not read so, and what to do instead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmasr.data.audio import MAX_OVERSHOOT_S, AudioError, missing_audio, probe_header
from llmasr.data.audio_commands import piped_file
from llmasr.data.pipe_commands import NotUnderstood, PipedRead, parse_pipe, sox_misread

INTO = "run each command into a file (its closing '|' replaced by '> KEY.wav') and write those paths in wav.scp"


# what the tool reads (libsndfile's format name): another file makes the command fail, not read as that file
INPUT_FORMATS = {"sph2pipe": ("NIST", "reads NIST SPHERE files"), "flac": ("FLAC", "decodes FLAC files")}


class PipeRefused(ValueError):
    """A wav.scp pipe command not read as a file: why, and what to do instead."""


class PipeFault(ValueError):
    """Why a parsed decode-only read is not read as its file (`part`); `names_file`: whether naming the file
    instead could do (the command only failed to be read), or the audio must be written out."""

    def __init__(self, part: str, names_file: bool = False):
        super().__init__(part)
        self.part, self.names_file = part, names_file


def _advice(command: str, base: Path) -> str:
    """Where the command names one audio file llmasr opens, that file; else writing the command's output to files."""
    file = piped_file(command, [base])
    if file is not None:
        return (
            f"it reads {file}, which llmasr opens itself (and resamples): where the command only decodes it (no "
            f"channel pick, no effect), write that path in wav.scp instead; else {INTO}"
        )
    return INTO


def _refused(command: str, part: str, advice: str) -> PipeRefused:
    return PipeRefused(f"pipe command {command[:60]!r} is not supported ({part}); {advice}")


@dataclass(frozen=True)
class PipedFile:
    """A pipe command read as its file: the file (absolute), the stream's channel pick and range, the file's seconds."""

    path: str
    read: PipedRead
    start: float
    end: float | None
    channel: int | None
    seconds: float
    channels: int = 1  # the stream's

    def fields(self) -> dict:
        """The manifest fields the whole stream reads as (its duration known from the header)."""
        out: dict = {} if self.channel is None else {"channel": self.channel}
        if self.start > 0 or self.end is not None:
            out["start"] = self.start
        if self.end is not None:
            out["end"] = self.end
        out["duration"] = round((self.seconds if self.end is None else self.end) - self.start, 6)
        return out

    def segment(self, start: float, end: float, channel: int | None) -> dict:
        """The fields of a Kaldi segment of the stream (times relative to it, so after its start; end -1: its end;
        `channel`: the segments file's, of the stream's channels); ValueError says why a segment cannot be read."""
        if channel is not None and self.read.mono and channel != 0:
            raise ValueError(f"channel {channel} of a piped stream of one channel ({self.read.tool} picks or mixes)")
        first = round(self.start + start, 6)
        last = self.end if end == -1 else round(self.start + end, 6)
        if self.end is not None and last is not None and last > self.end:
            if last - self.end >= MAX_OVERSHOOT_S:
                raise ValueError(f"ends at {end:g}s of the piped stream, which is {self.end - self.start:g}s long")
            last = self.end
        if first >= (self.seconds if last is None else last):
            raise ValueError(f"starts at {start:g}s, past the end of the piped stream")
        out: dict = {"start": first}
        picked = self.channel if channel is None or self.read.mono else channel
        if picked is not None:
            out["channel"] = picked
        if last is not None:
            out["end"] = last
        out["duration"] = round((self.seconds if last is None else last) - first, 6)
        return out


def read_as_file(command: str, base: Path) -> PipedFile:
    """The file a decode-only pipe command reads (relative to `base`, as the shell Kaldi runs it in), its header
    probed; PipeRefused names the part not understood, a file not there or one llmasr cannot open."""
    try:
        read = parse_pipe(command)
    except NotUnderstood as err:
        raise _refused(command, str(err), _advice(command, base)) from None
    path = Path(read.file) if Path(read.file).is_absolute() else (base / read.file).resolve()
    hint = "" if Path(read.file).is_absolute() else f": relative paths are read from {base} (--base-dir)"
    try:
        return open_read(read, path, hint)
    except PipeFault as err:
        raise _refused(command, err.part, _advice(command, base) if err.names_file else INTO) from None


def open_read(read: PipedRead, path: Path, hint: str = "") -> PipedFile:
    """`read` (parsed) as the file at `path`, its header probed, its channel pick and range checked against it;
    PipeFault names a file not there (`hint`: where relative paths are read from), one llmasr cannot open or
    the tool would refuse, a channel or range outside it."""
    if (gone := missing_audio(path)) is not None:
        raise PipeFault(f"it reads {read.file}, which is not there ({gone.reason}){hint}")
    try:
        header = probe_header(path)
    except AudioError as err:
        raise PipeFault(f"it reads {read.file}, which llmasr cannot open: {err.reason}") from None
    if (needs := INPUT_FORMATS.get(read.tool)) and header.format != needs[0]:
        raise PipeFault(f"{read.tool} {needs[1]}, and {read.file} is {header.format} (the command fails)", True)
    if (misread := sox_misread(read, header)) is not None:
        raise PipeFault(misread, True)
    channel = None if read.pick_ignored_on_mono and header.channels == 1 else read.channel
    if channel is not None and channel >= header.channels:
        raise PipeFault(f"{read.tool} picks channel {channel + 1} of {read.file}, which has {header.channels}")
    start, end = _range(read, header.sample_rate, header.seconds)
    channels = 1 if read.mono or header.channels == 1 else header.channels
    return PipedFile(str(path), read, start, end, channel, header.seconds, channels)


def _range(read: PipedRead, rate: int, seconds: float) -> tuple[float, float | None]:
    """The [start, end) the command cuts of a file of `seconds` at `rate` (end None: to the file's end), found in
    samples as the tool finds them and compared so (the file's end in seconds is rarely a whole microsecond).
    sph2pipe and sox stop at the file's end; flac refuses an --until past it, as it does a skip past it."""
    frames = round(seconds * rate)
    first = read.start.frame(rate, frames)
    last = None if read.end is None else read.end.frame(rate, frames)
    start, end = round(first / rate, 6), (None if last is None else round(last / rate, 6))
    length = f"{read.file} ({seconds:g}s)"
    if first >= frames:
        raise PipeFault(f"it starts at {start:g}s, past the end of {length}")
    if last is not None and last <= first:
        raise PipeFault(f"its range ends at {end:g}s, not after its start at {start:g}s")
    if last is not None and last > frames and read.tool == "flac":
        raise PipeFault(f"its --until ends at {end:g}s, past the end of {length} (flac refuses it)")
    return start, (None if last is None or last >= frames else end)
