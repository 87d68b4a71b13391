"""The CTC gate (decode.ctc_gate, llmasr.models.ctc_gate) in a decode's wer.txt and wer.json: with it, how many
utterances it emptied and the reference units they held; without it, on a model with a CTC head, the utterances it
would empty (the LLM wrote words where the head heard none) and the errors they hold written and emptied, which says
whether to turn it on for this kind of audio.
"""

from __future__ import annotations

from llmasr.scoring import score_corpus


def ctc_gate_summary(summary: dict, rows: list[dict], gate: bool, metric: str) -> str | None:
    """wer.txt's CTC-gate line and wer.json's `ctc_gate` ({"on", "utterances", ...}); None without a CTC head (every
    row's ctc_hyp None) or, with the gate off, when no utterance has an empty CTC text and LLM words."""
    if all(r.get("ctc_hyp") is None for r in rows):
        return None
    if gate:
        gated = [r for r in rows if r.get("ctc_gated")]
        scored = [r for r in gated if r["ref"] is not None]
        corpus, _ = score_corpus([(r["ref"], "") for r in scored], metric)
        held = sum(1 for r in scored if r["ref"].strip())
        summary["ctc_gate"] = {"on": True, "utterances": len(gated), "with_reference_words": held,
                               "reference_units": corpus.ref_len}  # fmt: skip
        words = f", {held} of them with reference words ({corpus.ref_len} {corpus.unit_name} deleted)" if held else ""
        return f"CTC gate: {len(gated)} utterances where the CTC head heard no word, left empty{words}"
    would = [r for r in rows if r.get("ctc_hyp") is not None and not r["ctc_hyp"].strip() and r["hyp"].strip()]
    if not would:
        return None
    scored = [r for r in would if r["ref"] is not None]
    written, _ = score_corpus([(r["ref"], r["hyp"]) for r in scored], metric)
    emptied, _ = score_corpus([(r["ref"], "") for r in scored], metric)
    silent = sum(1 for r in scored if not r["ref"].strip())
    summary["ctc_gate"] = {"on": False, "would_empty": len(would), "empty_references": silent,
                           "errors_written": written.errors, "errors_emptied": emptied.errors}  # fmt: skip
    errors = (f"; {written.errors} errors ({written.unit_name}) as written, {emptied.errors} if emptied, {silent} "
              "of them with an empty reference") if scored else ""  # fmt: skip
    return (f"CTC best path empty in {len(would)} utterances the LLM wrote words for (e.g. key {would[0]['key']!r})"
            f"{errors}; decode.ctc_gate (--ctc-gate) would leave them empty")  # fmt: skip
