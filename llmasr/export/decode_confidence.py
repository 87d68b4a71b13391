"""How sure the LLM was of what it wrote, in a decode's outputs: each row's `avg_logprob` and `logprob`
(llmasr.models.confidence, with decode.confidence) in results.jsonl and the Transcriber's rows, and in wer.txt /
wer.json how the error rate splits between the least confident utterances and the rest, which says whether a
threshold on `avg_logprob` would keep the bad transcripts out of a pseudo-labelled set.
"""

from __future__ import annotations

import statistics

from llmasr.scoring import plural, score_corpus

LOW_SHARE = 0.25  # the least confident share of the scored utterances whose rate wer.txt sets apart
MIN_SPLIT = 8  # fewer scored utterances with a confidence: no split (a quarter of fewer says nothing)


def confidence_fields(row: dict) -> dict:
    """A decoded row's confidence as results.jsonl and the Transcriber write it: `avg_logprob` (per token, the end
    token included) and `logprob` (their sum) of the LLM's text, None each where no text was written (the VAD's gate);
    for long audio decoded in windows, `window_confidence` as well: each window's start and end (s) and its own
    avg_logprob (None where the CTC gate emptied it); {} where the decode computed none (decode.confidence off)."""
    if "logprob" not in row:
        return {}
    fields = _rated(row["logprob"], row["logprob_tokens"])
    if row.get("window_parts"):  # llmasr.data.windowed's, each window's own
        fields["window_confidence"] = [
            {"start": round(p["start"], 3), "end": round(p["end"], 3),
             "avg_logprob": _rated(p["logprob"], p["logprob_tokens"])["avg_logprob"]}
            for p in row["window_parts"]
        ]  # fmt: skip
    return fields


def _rated(total: float | None, tokens: int) -> dict:
    if total is None or not tokens:
        return {"avg_logprob": None, "logprob": None}
    return {"avg_logprob": round(total / tokens, 4), "logprob": round(total, 4)}


def confidence_summary(summary: dict, rows: list[dict], metric: str) -> str | None:
    """wer.txt's confidence line, and wer.json's `confidence` (the median avg_logprob; with enough scored rows the
    rate of the least confident LOW_SHARE and of the rest, each scored as the whole is); None where the decode
    computed no confidence."""
    rated = [(confidence_fields(r)["avg_logprob"], r) for r in rows if "logprob" in r]
    rated = sorted(((avg, r) for avg, r in rated if avg is not None), key=lambda pair: pair[0])
    if not rated:
        return None
    median = statistics.median(avg for avg, _ in rated)
    found = summary["confidence"] = {"utterances": len(rated), "median_avg_logprob": round(median, 4)}
    line = (
        f"confidence (avg_logprob per token, results.jsonl): median {median:.3f} over {plural(len(rated), 'utterance')}"
    )
    scored = [(avg, r) for avg, r in rated if r["ref"] is not None]
    if len(scored) < MIN_SPLIT:
        return line
    cut = max(1, int(len(scored) * LOW_SHARE))
    low, _ = score_corpus([(r["ref"], r["hyp"]) for _, r in scored[:cut]], metric)
    rest, _ = score_corpus([(r["ref"], r["hyp"]) for _, r in scored[cut:]], metric)
    threshold = scored[cut - 1][0]
    found.update(low_share=LOW_SHARE, low_at_most=threshold, low=low.to_dict(), rest=rest.to_dict())
    return (
        f"{line}; the least confident {cut} (avg_logprob <= {threshold:.3f}): {low.name} {100 * low.rate:.2f}%, "
        f"the other {len(scored) - cut}: {rest.name} {100 * rest.rate:.2f}%"
    )
