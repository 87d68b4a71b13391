"""One manifest line's JSON value -> Utterance, by its format (llmasr.data.records: FunASR jsonl and Fun-ASR-Nano
ChatML; llmasr.data.lhotse_cut: lhotse cuts), or BadRecord naming its file and line."""

from __future__ import annotations

from pathlib import Path

from llmasr.data.lhotse_cut import CutRecord
from llmasr.data.record_fields import NOT_JSON_LINES, SEGMENT_LINES, is_cut
from llmasr.data.records import BadRecord, LineParser, Utterance


def parse_record(rec, *, manifest: str, line: int, base: Path, need_target: bool = True) -> Utterance:
    """One decoded JSON value -> Utterance (FunASR record or lhotse cut), or BadRecord. `need_target` False: a
    record without a transcript is an utterance whose target is None."""
    p = LineParser(manifest, line, base, need_target)
    if not isinstance(rec, dict):
        raise p.bad(f"expected a JSON object, got {type(rec).__name__}")
    if is_cut(rec):
        return CutRecord(p).utterance(rec)
    if "messages" in rec:
        return p.chatml(rec)
    if "sources" in rec and "sampling_rate" in rec:
        raise p.bad("this is a lhotse recordings manifest; pass a cuts manifest (CutSet) instead")
    if isinstance(rec.get("audios"), list) and "key" not in rec:  # WenetSpeech.json written on one line
        raise p.bad(f"{NOT_JSON_LINES}; {SEGMENT_LINES}")
    if "recording_id" in rec and "key" not in rec:
        raise p.bad("this is a lhotse supervisions manifest; pass a cuts manifest (CutSet) instead")
    return p.funasr(rec)


def parse_line(rec, *, manifest: str, line: int, base: Path, need_target: bool = True) -> Utterance:
    """parse_record, with any other failure on an odd value (a field of an unexpected shape the checks did not
    foresee) a BadRecord naming the line too: a scan counts it instead of stopping."""
    try:
        return parse_record(rec, manifest=manifest, line=line, base=base, need_target=need_target)
    except BadRecord:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as err:
        key = rec.get("key", rec.get("id")) if isinstance(rec, dict) else None
        why = f"malformed record ({type(err).__name__}: {err})"
        raise BadRecord(manifest, line, why, key if isinstance(key, str) else None) from None
