"""The CTC gate (decode.ctc_gate, llmasr.models.ctc_gate) in a decode's wer.txt and wer.json: with it, how many
utterances it emptied and the reference units they held, and the windows it emptied of long utterances it did not
empty whole; without it, on a model with a CTC head, the utterances and windows it would empty (the LLM wrote words
where the head heard none) and the errors they hold written and emptied, which says whether to turn it on for this
kind of audio.
"""

from __future__ import annotations

from llmasr.scoring import plural, score_corpus


def ctc_gate_summary(summary: dict, rows: list[dict], gate: bool, metric: str) -> str | None:
    """wer.txt's CTC-gate line and wer.json's `ctc_gate` ({"on", "utterances", ..., "windows", "window_utterances"});
    None without a CTC head (every row's ctc_hyp None) or, with the gate off, when no utterance or window has an empty
    CTC text and LLM words. A long utterance some of whose windows it emptied (data.windowed: ctc_gated_windows,
    ctc_empty_windows) is counted by those windows."""
    if all(r.get("ctc_hyp") is None for r in rows):
        return None
    if gate:
        gated = [r for r in rows if r.get("ctc_gated")]
        scored = [r for r in gated if r["ref"] is not None]
        corpus, _ = score_corpus([(r["ref"], "") for r in scored], metric)
        held = sum(1 for r in scored if r["ref"].strip())
        part = [r for r in rows if r.get("ctc_gated_windows")]
        windows = sum(r["ctc_gated_windows"] for r in part)
        summary["ctc_gate"] = {"on": True, "utterances": len(gated), "with_reference_words": held,
                               "reference_units": corpus.ref_len, "windows": windows,
                               "window_utterances": len(part)}  # fmt: skip
        deleted = plural(corpus.ref_len, corpus.unit_name.removesuffix("s"))
        words = f", {held} of them with reference words ({deleted} deleted)" if held else ""
        more = (f"; and {plural(windows, 'window')} of {plural(len(part), 'long utterance')} it transcribed the rest "
                f"of (e.g. key {part[0]['key']!r})") if part else ""  # fmt: skip
        return f"CTC gate: {plural(len(gated), 'utterance')} where the CTC head heard no word, left empty{words}{more}"
    would = [r for r in rows if r.get("ctc_hyp") is not None and not r["ctc_hyp"].strip() and r["hyp"].strip()]
    part = [r for r in rows if r.get("ctc_empty_windows")]
    if not would and not part:
        return None
    scored = [(r["ref"], r["hyp"], "") for r in would if r["ref"] is not None]
    scored += [(r["ref"], r["hyp"], r["hyp_ctc_gated"]) for r in part if r["ref"] is not None]
    written, _ = score_corpus([(ref, hyp) for ref, hyp, _ in scored], metric)
    emptied, _ = score_corpus([(ref, gated) for ref, _, gated in scored], metric)
    silent = sum(1 for r in would + part if r["ref"] is not None and not r["ref"].strip())
    windows = sum(r["ctc_empty_windows"] for r in part)
    summary["ctc_gate"] = {"on": False, "would_empty": len(would), "empty_references": silent,
                           "errors_written": written.errors, "errors_emptied": emptied.errors, "windows": windows,
                           "window_utterances": len(part)}  # fmt: skip
    where = (
        [f"{plural(len(would), 'utterance')} the LLM wrote words for (e.g. key {would[0]['key']!r})"] if would else []
    )
    if part:
        where.append(f"{plural(windows, 'window')} of {plural(len(part), 'long utterance')} (e.g. key "
                     f"{part[0]['key']!r})")  # fmt: skip
    errors = (f"; {written.errors} errors ({written.unit_name}) as written, {emptied.errors} if emptied, {silent} "
              "of them with an empty reference") if scored else ""  # fmt: skip
    return (f"CTC best path empty in {' and in '.join(where)}{errors}; decode.ctc_gate (--ctc-gate) would leave them "
            "empty")  # fmt: skip
