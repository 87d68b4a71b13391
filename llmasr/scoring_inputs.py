"""The transcripts `llmasr score` reads: references from a manifest (any format llmasr trains on), a decode folder or
a Kaldi `text` file; hypotheses from a decode folder, its results.jsonl, a "key text" file (hyp.txt, FunASR's
1best_recog/text, Kaldi's, any toolkit's) or a jsonl of `key` and `text` lines.

Keys are matched as hyp.txt writes them (`kaldi_key`: whitespace inside a key as "_"), so a decode's hyp.txt pairs with
the manifest it decoded. Every transcript keeps where it stands (FILE:LINE): a key given twice, a line that does not
parse or a reference line without a transcript is named there, never dropped or scored twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from llmasr.data.manifest import BadRecord, Manifest
from llmasr.data.record_fields import json_document
from llmasr.data.records import given_hotwords, language_of
from llmasr.export.decode_folders import RESULTS, read_summary, results_problem
from llmasr.scoring import kaldi_key
from llmasr.scoring_bias import hotword_list
from llmasr.text_files import json_lines, key_text_lines

log = logging.getLogger(__name__)
MISSING = ("refuse", "empty", "skip")  # what a key with no hypothesis does (`llmasr score --missing`)
EXAMPLES = 5
PER_LINE = (
    "score wants a transcript per line: a 'KEY TEXT' file (from one JSON per audio: for f in *.json; do echo "
    '"$(basename "$f" .json) $(jq -r .text "$f")"; done > hyp.txt) or JSON Lines of key and text'
)


class ScoreInputError(ValueError):
    """A reference or hypothesis file that cannot be scored, named with its line."""


@dataclass(frozen=True)
class Transcript:
    key: str  # as matched (kaldi_key)
    text: str
    where: str  # FILE:LINE
    lang: str | None = None  # a reference's language key (llmasr.data.languages), its results group by
    lang_label: str | None = None  # as the line writes it
    hotwords: tuple[str, ...] = ()  # a reference's biasing list: B-/U- rates are scored under it


def read_references(
    path: str | Path, hotwords: list[str] | None = None
) -> tuple[list[Transcript], list[tuple[str, str]]]:
    """(the references, in file order; (key, FILE:LINE) of the lines without a reference transcript, not scored).
    `hotwords`: the biasing list of every reference without its own (a manifest line's `hotwords`, a decode row's
    list: the one its prompt rendered), as `llmasr decode --hotwords` gives it."""
    path = Path(path)
    kind = _kind(path)
    default = tuple(hotwords or ())
    if kind == "table":
        return _unique(
            [_table_row(path, n, key, text, default) for n, key, text in key_text_lines(path, ScoreInputError)], path
        ), []
    if kind == "results":
        rows = list(_results(path))
        # A decode given --hotwords FILE gave its list to every line without one of its own already: a row's [] is
        # its line's own "none" (or a list the token cap emptied), which decode scored as none. The file given here
        # had filled those in, and the figures were not the decode's wer.txt.
        decoded_with = read_summary(path if path.is_dir() else path.parent).get("hotwords_file")
        found = [Transcript(kaldi_key(r["key"]), r["ref"], where, r.get("lang"), None,
                            _row_list(r, where) if decoded_with else _row_list(r, where) or default)
                 for where, r in rows if r.get("ref") is not None]  # fmt: skip
        if decoded_with and default and (kept := [t.where for t in found if not t.hotwords]):
            log.warning(
                "--hotwords: %s was decoded with --hotwords %s, and %d of its rows carry no list (their lines gave "
                "their own [], or the token cap left none; first %s): they are scored with none, as decode scored "
                "them, not under the file given here", path, decoded_with, len(kept), kept[0],
            )  # fmt: skip
        return _unique(found, path), [(kaldi_key(r["key"]), where) for where, r in rows if r.get("ref") is None]
    manifest = Manifest.open(path, need_target=False)
    found, unscored = [], []
    for i in range(len(manifest)):
        where = f"{path}:{manifest.lineno(i)}"
        try:
            utt = manifest.parsed(i)[1]
        except BadRecord as err:  # a reference that cannot be read would score its hypothesis against nothing
            raise ScoreInputError(str(err)) from None
        if utt.target is None:
            unscored.append((kaldi_key(utt.key), where))  # as decode leaves it: transcribed, not scored
            continue  # a blank target is scored, as decode scores it: a silent clip's insertions are errors
        if not isinstance(utt.target, str):
            raise ScoreInputError(f"{where}: the transcript is {type(utt.target).__name__}, not text")
        lists = tuple(given_hotwords(utt, default))
        found.append(Transcript(kaldi_key(utt.key), utt.target, where, language_of(utt), utt.lang, lists))
    return _unique(found, path), unscored


def read_hypotheses(path: str | Path) -> dict[str, Transcript]:
    """Each key's hypothesis."""
    path = Path(path)
    kind = _kind(path)
    if kind == "table":
        found = [_table_row(path, n, key, text) for n, key, text in key_text_lines(path, ScoreInputError)]
    elif kind == "results":
        found = [Transcript(kaldi_key(r["key"]), r.get("hyp") or "", where) for where, r in _results(path)]
    else:
        found = [Transcript(kaldi_key(r["key"]), r["text"] or "", where) for where, r in _jsonl(path, ("key", "text"))]
    return {t.key: t for t in _unique(found, path)}


def _kind(path: Path) -> str:
    """ "results" (a decode folder, its results.jsonl), "jsonl" (a manifest, or key + text lines) or "table"."""
    if path.is_dir():
        if (why := results_problem(path)) is None:
            return "results"
        found = sorted(str(t) for t in path.glob("*/text") if t.is_file())  # FunASR's 1best_recog/text, ...
        given = f": give its transcripts file ({', '.join(found[:3])})" if found else ""
        raise ScoreInputError(f"{path}: {why}{given}")
    if not path.is_file():
        raise ScoreInputError(f"{path}: no such file")
    if path.name.endswith(".gz"):  # a compressed manifest (Manifest reads it)
        return "jsonl"
    if not path.name.endswith((".jsonl", ".json")):
        return "table"
    first = next((row for _, row in _jsonl(path, ())), {})
    return "results" if {"key", "ref", "hyp"} <= set(first) else "jsonl"


def _results(path: Path):
    """(FILE:LINE, row) of a decode's results.jsonl."""
    yield from _jsonl(path / RESULTS if path.is_dir() else path, ("key", "ref", "hyp"))


def _jsonl(path: Path, need: tuple[str, ...]):
    """(FILE:LINE, object) of each non-blank line, holding the fields `need`."""
    if path.name.endswith(".gz"):
        raise ScoreInputError(f"{path}: compressed: give the decompressed file (only a reference manifest may be)")
    with open(path, "rb") as f:
        if why := json_document(f.readline(4096), PER_LINE):  # an array, UTF-16, or Whisper's object on many lines
            raise ScoreInputError(f"{path}: {why}")
    for n, row in json_lines(path, ScoreInputError):
        where = f"{path}:{n}"
        if isinstance(row, dict) and "key" in need and "key" not in row and "segments" in row:
            raise ScoreInputError(
                f"{where}: one recording's transcript (as Whisper writes a .json per audio); {PER_LINE}"
            )
        if not isinstance(row, dict) or (lack := [k for k in need if k not in row]):
            fields = ", ".join(need)
            got = type(row).__name__ if not isinstance(row, dict) else "no " + ", ".join(lack)
            raise ScoreInputError(f"{where}: a line of {fields} wanted, got {got}")
        key = row.get("key")
        if "key" in need and (isinstance(key, bool) or not isinstance(key, (str, int)) or not str(key).strip()):
            raise ScoreInputError(f"{where}: the key must be text, got {key!r:.60}")  # not paired as "None"
        if any(not isinstance(row[k], str) and row[k] is not None for k in need if k != "key"):
            raise ScoreInputError(f"{where}: {', '.join(need[1:])} must be text")
        yield where, row


def _table_row(path: Path, n: int, key: str, text: str, hotwords: tuple = ()) -> Transcript:
    return Transcript(kaldi_key(key), text, f"{path}:{n}", hotwords=hotwords)


def _row_list(row: dict, where: str) -> tuple[str, ...]:
    """A decode row's biasing list as it was scored (`hotwords_scored` where the prompt rendered none)."""
    try:
        return tuple(hotword_list(row.get("hotwords_scored", row.get("hotwords")), where))
    except ValueError as err:
        raise ScoreInputError(str(err)) from None


def _unique(found: list[Transcript], path: Path) -> list[Transcript]:
    """`found`, refused where a key stands twice: paired by key, either line would be scored against the other's."""
    first: dict[str, Transcript] = {}
    for t in found:
        if (seen := first.setdefault(t.key, t)) is not t:
            raise ScoreInputError(
                f"{t.where}: key {t.key!r} again, first at {seen.where} (keys are matched with whitespace as '_'): "
                "each key once"
            )
    if not found:
        raise ScoreInputError(f"{path}: no transcripts")
    return found


def pair(
    refs: list[Transcript], hyps: dict[str, dict[str, Transcript]], missing: str, unscored: tuple[str, ...] = ()
) -> tuple[list, dict, dict]:
    """(the references scored; each system's hypothesis of each, {name: [text, ...]}; what pairing left out:
    {"missing": {name: [keys]}, "extra": {name: [keys]}, "skipped": [keys]}). `missing` (MISSING): "refuse" a
    reference key a system has no hypothesis for, count it as an "empty" hypothesis (every unit deleted), or "skip"
    it for every system, so that each is scored on the same utterances. `unscored`: the keys of reference lines
    without a transcript: their hypotheses are not scored, and not of keys no reference has."""
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    keys, transcribed = {r.key for r in refs}, set(unscored)
    absent = {name: [r.key for r in refs if r.key not in h] for name, h in hyps.items()}
    extra = {name: [k for k in h if k not in keys and k not in transcribed] for name, h in hyps.items()}
    for name, h in hyps.items():
        if not any(k in keys for k in h):
            raise ScoreInputError(
                f"{name}: none of its {len(h)} keys is a reference key (its first {next(iter(h))!r}, the "
                f"references' {refs[0].key!r}): a hypothesis of another set?"
            )
    if missing == "refuse" and (lacking := {name: ks for name, ks in absent.items() if ks}):
        name, ks = next(iter(lacking.items()))
        raise ScoreInputError(
            f"{name}: {len(ks)} of the {len(refs)} reference keys have no hypothesis ({', '.join(ks[:EXAMPLES])}"
            f"{', ...' if len(ks) > EXAMPLES else ''}): --missing empty scores them as all deleted, --missing skip "
            "scores every system on the keys they all have"
        )
    lacking = {k for ks in absent.values() for k in ks} if missing == "skip" else set()
    skipped = [r.key for r in refs if r.key in lacking]  # in the references' order
    kept = [r for r in refs if r.key not in lacking]
    if not kept:
        raise ScoreInputError("no reference key has a hypothesis in every system: nothing to score")
    texts = {name: [h[r.key].text if r.key in h else "" for r in kept] for name, h in hyps.items()}
    return kept, texts, {"missing": absent if missing == "empty" else {}, "extra": extra, "skipped": skipped}
