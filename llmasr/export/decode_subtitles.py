"""`llmasr decode --subtitles srt|vtt` (DecodeOptions.subtitles): each decoded row's subtitles as KEY.srt or KEY.vtt
(llmasr.export.subtitles.subtitle_name) in the subtitles/ folder of its manifest's decode folder, cues timed by the
row's word times (decode.timestamps: the CTC head's), and their count in wer.txt and wer.json. An earlier decode's
subtitles go with its other files (decode_folders). Keys that would write one file are refused before anything is
decoded (key_clash), not found when the files are written at the end."""

from __future__ import annotations

from pathlib import Path

from llmasr.atomic_file import write_atomic
from llmasr.data.manifest import BadManifest, EmptyManifest, Manifest
from llmasr.data.records import BadRecord
from llmasr.export.decode_folders import SUBTITLES_DIR
from llmasr.export.decode_options import DecodeError
from llmasr.export.subtitles import row_subtitles, subtitle_name

NAME_MAX = 255  # the bytes of a file name that common file systems hold (ext4, XFS, btrfs)


def key_clash(manifest: Manifest | str | Path, fmt: str) -> str | None:
    """Why the keys of `manifest` (opened, or its path) cannot each have a subtitle file of their own: two keys
    that would write one file (spk1/utt1 and spk1_utt1, or one key on two lines), or a key too long for a file's
    name; each key named with its line. None when every key has its own file. A bad line is passed over: it is not
    decoded, so it writes nothing."""
    opened = manifest if isinstance(manifest, Manifest) else Manifest.open(manifest, need_target=False)
    seen: dict[str, tuple[str, int]] = {}
    for i in range(len(opened)):
        try:
            key = opened[i].key
        except BadRecord:
            continue
        line, name = opened.lineno(i), subtitle_name(key, fmt)
        if name in seen:
            first, at = seen[name]
            both = (f"key {key!r} is on lines {at} and {line}" if first == key
                    else f"keys {first!r} (line {at}) and {key!r} (line {line})")  # fmt: skip
            return (f"{opened.path}: {both}, whose subtitles would both be {SUBTITLES_DIR}/{name}: give each line a "
                    "key of its own")  # fmt: skip
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return (f"{opened.path}:{line}: key {key!r} would name its subtitle file {name!r}, longer than a file name "
                    f"can be ({NAME_MAX} bytes): give it a shorter key")  # fmt: skip
        seen[name] = (key, line)
    return None


def manifests_clash(manifests: list[str], fmt: str) -> str | None:
    """key_clash of each of `manifests` (each has a folder of its own), joined; None where none has one. A manifest
    that cannot be opened is passed over: its decode names why."""
    found = []
    for manifest in manifests:
        try:
            found.append(key_clash(manifest, fmt))
        except (OSError, EmptyManifest, BadManifest):
            continue
    return "; ".join(filter(None, found)) or None


def check_subtitles(manifest, timestamps: bool, fmt: str) -> None:
    """DecodeError where the subtitles of a decode of `manifest` (opened, or its path) cannot be written: no word
    times asked for them (decode.timestamps), or keys that key_clash finds."""
    if not timestamps:
        raise DecodeError(f"subtitles {fmt}: cues are timed by the words' times: decode with decode.timestamps true")
    if clash := key_clash(manifest, fmt):
        raise DecodeError(clash)


class RowSubtitles:
    """The subtitles of a decode's rows into out_dir/SUBTITLES_DIR: made before its summary is written, which counts
    them (`summary`, wer.json's "subtitles"), and written after its results, so that a file that cannot be written
    loses none of them."""

    def __init__(self, rows: list[dict], out_dir: Path, fmt: str):
        self.folder, self.texts = Path(out_dir) / SUBTITLES_DIR, {}
        cues = untimed = 0
        for row in rows:
            self.texts[subtitle_name(row["key"], fmt)], count = row_subtitles(row, fmt)
            cues += count
            untimed += bool(row["hyp"].strip()) and not row.get("timestamps")  # one cue over its audio
        self.summary = {"format": fmt, "folder": str(self.folder), "files": len(self.texts), "cues": cues,
                        "untimed": untimed}  # fmt: skip

    def write(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for name, text in self.texts.items():
                write_atomic(self.folder / name, text)  # a stopped decode leaves no half a file
        except OSError as err:
            raise DecodeError(f"subtitles: {err} (the decode's other files are written)") from err


def subtitles_line(summary: dict) -> str:
    """wer.txt's line on a decode's subtitles (RowSubtitles.summary)."""
    untimed = summary["untimed"]
    said = (f"; {untimed} without word times (the CTC head could not align their text), one cue over the whole "
            "audio each" if untimed else "")  # fmt: skip
    files, cues = summary["files"], summary["cues"]
    return f"subtitles ({summary['format']}): {files} files, {cues} cues, in {summary['folder']}{said}"
