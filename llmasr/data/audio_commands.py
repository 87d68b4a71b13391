"""Audio that a command or a URL makes, which llmasr does not read (it opens local files): Kaldi's wav.scp pipes
(`flac -c -d -s F |`) and lhotse's `command`, `url` and `memory` recording sources. Where a command only decodes an
audio file llmasr reads itself, the advice names that file; else it says how to write the audio to files."""

from __future__ import annotations

from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph", ".aiff", ".aif", ".au")
# lhotse writes each cut's audio (from any source) to files and gives cuts whose sources are those files
SAVE_AUDIOS = (
    "write the cuts' audio to files with lhotse: `CutSet.from_file(IN).save_audios(DIR).to_file(OUT)` (OUT's "
    "recordings are 'file' sources)"
)


def piped_file(command: str, bases: list[Path]) -> str | None:
    """The one audio file `command` names that is there (as written: absolute, or relative to one of `bases`), or
    None where it names none or several."""
    named = [w for w in command.rstrip("|").split() if w.lower().endswith(AUDIO_SUFFIXES)]
    files = [w for w in named if (Path(w).is_absolute() and Path(w).is_file()) or any((b / w).is_file() for b in bases)]
    return files[0] if len(files) == 1 else None


def lhotse_source_advice(source: dict, base: Path) -> str:
    """What to do with a lhotse recording source llmasr does not read (`base`: the manifest's folder; lhotse runs a
    command in the working directory)."""
    kind, given = source.get("type"), source.get("source")
    if kind == "command" and isinstance(given, str):
        file = piped_file(given, [Path.cwd(), base])
        if file is not None:
            return (
                f"its command {given[:60]!r} reads {file}, which llmasr opens itself (and resamples): where the "
                f'command only decodes it (no channel pick, no effect), make the source {{"type": "file", "source": '
                f'"{file}"}}; else {SAVE_AUDIOS}'
            )
        return f"its command {given[:60]!r} names no one audio file llmasr could open instead: {SAVE_AUDIOS}"
    if kind == "url":
        where = f" {given[:80]!r}" if isinstance(given, str) else ""
        return f"llmasr reads local files: download{where} and make it a 'file' source, or {SAVE_AUDIOS}"
    return SAVE_AUDIOS
