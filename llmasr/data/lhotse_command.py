"""A lhotse recording source of type `command` (`sph2pipe -f wav -p -c 1 F.sph`, as lhotse imports a Kaldi wav.scp
pipe, without its '|') read as the file it decodes: parsed and checked as wav.scp's pipes are
(llmasr.data.pipe_commands, llmasr.data.piped_files), its file found where lhotse's shell runs it (the working
directory; the manifest's folder after that, as for 'file' sources). The cut's times are of the command's output,
which may be a range of the file on one of its channels: they are placed in the file, and the stream's channels
(the source's `channels`, in order) mapped to the file's.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from llmasr.data.audio_commands import SAVE_AUDIOS, lhotse_source_advice
from llmasr.data.pipe_commands import NotUnderstood, PipedRead, parse_pipe
from llmasr.data.piped_files import PipedFile, PipeFault, open_read

STREAM_SLACK_S = 0.025  # a cut past its stream's end by less: lhotse's audio duration mismatch tolerance


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is written, created or replaced: an answer kept for another is not its own."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@lru_cache(maxsize=4096)
def _opened(read: PipedRead, path: str, hint: str, stamp: tuple[int, int, int] | None) -> PipedFile | PipeFault:
    """open_read, once for each command and state of its file (the cuts of one recording share it; `stamp`, the
    file's, keys it): its fault returned."""
    try:
        return open_read(read, Path(path), hint)
    except PipeFault as err:
        return err


def command_audio(p, source: dict, stream_channel: int | None, start: float, duration: float):
    """(file path, file channel or None, start, end in the file) of `duration` seconds from `start` of the
    command's output, on its channel `stream_channel` (an index into the source's `channels`; None: all of them,
    averaged). `p`: the line's records.LineParser, whose `bad` names the line."""
    command = source.get("source")
    if not isinstance(command, str) or not command.strip():
        raise p.bad(f"lhotse recording source of type 'command' has no command, got {command!r:.60}")

    def refused(part: str, names_file: bool = True) -> Exception:
        advice = lhotse_source_advice(source, p.base) if names_file else SAVE_AUDIOS
        return p.bad(f"lhotse recording source command {command[:60]!r} is not read as a file ({part}); {advice}")

    try:
        read = parse_pipe(command.rstrip() + " |")  # lhotse's shell runs it whole: a wav.scp pipe without its '|'
    except NotUnderstood as err:
        raise refused(str(err)) from None
    path = p.resolve(read.file, working_dir_first=True)
    hint = "" if Path(read.file).is_absolute() else (
        f": relative paths are read from the working directory ({Path.cwd()}), where lhotse runs the command, "
        f"then from the manifest's folder ({p.base})"
    )  # fmt: skip
    piped = _opened(read, path, hint, _stamp(path))
    if isinstance(piped, PipeFault):
        raise refused(piped.part, piped.names_file)
    channels = source.get("channels") or [0]
    if len(channels) != piped.channels:
        raise refused(f"the source lists channels {channels} and the command outputs {piped.channels} of "
                      f"{read.file}", names_file=False)  # fmt: skip
    channel = piped.channel if piped.channels == 1 else stream_channel
    first, last = piped.start + start, piped.start + start + duration
    stream_end = piped.seconds if piped.end is None else piped.end
    output = f"({stream_end - piped.start:g} s of {read.file}: {command[:60]!r})"
    if first >= stream_end:  # within the slack below, it would be read as a negative duration
        raise p.bad(
            f"lhotse cut ({start:g} s + {duration:g} s) starts at or past the end of its command's output {output}"
        )
    if last > stream_end + STREAM_SLACK_S:
        raise p.bad(
            f"lhotse cut ({start:g} s + {duration:g} s) ends {last - stream_end:.3f} s past the end of its command's "
            f"output {output}"
        )
    return piped.path, channel, round(first, 6), round(min(last, stream_end), 6)
