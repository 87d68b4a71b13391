"""The files a decoding run writes, for the LLM's hypotheses and for the CTC branch's: hyp.txt, ref.txt,
results.jsonl (one row per utterance: its counts, truncation, windows, biasing list and hotword scores), and wer.txt /
wer.json (corpus rate, the rate of each language the lines name, bad-data counts, guards, speed, long-audio windows,
biasing lists and B-/U- rates).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from llmasr.atomic_file import write_atomic
from llmasr.data.windowed import window_texts
from llmasr.export.decode_confidence import confidence_fields, confidence_summary
from llmasr.export.decode_gate import ctc_gate_summary
from llmasr.export.decode_subtitles import subtitles_line
from llmasr.models.decode_guards import MAX_TOKENS, REPETITION
from llmasr.models.decoding import DecodeConfig
from llmasr.scoring import kaldi_key, plural, score_corpus
from llmasr.scoring_bias import BiasedCorpus, hotword_list, score_lists
from llmasr.scoring_bootstrap import rate_interval
from llmasr.scoring_report import add_languages, interval_text
from llmasr.written_by import KEY, software, written_by


def hotword_counts(rows: list[dict], opts, cap: int | None, boost: float = 0.0) -> dict:
    """How the utterances were biased: lists, phrases rendered, phrases the token cap dropped, the search's boost
    per phrase token; unprompted, the lists scored (none used); the hotword flags given that had no list to act on.
    `opts`: the run's DecodeOptions."""
    listed = any(r.get("hotwords_scored") or r["hotwords"] or r["hotwords_dropped"] for r in rows)
    return {
        "hotword_flags_unused": [] if listed else list(opts.hotword_flags),
        "hotword_boost": boost,
        "hotwords_unprompted": opts.hotwords_unprompted,
        "hotword_lists_scored": sum(bool(r.get("hotwords_scored")) for r in rows),
        "hotword_lists": sum(bool(r["hotwords"]) for r in rows),
        "hotword_phrases": sum(len(r["hotwords"]) for r in rows),
        "hotwords_dropped": sum(r["hotwords_dropped"] for r in rows),
        "hotwords_file": opts.hotwords_file,
        "hotwords_max_tokens": cap,
    }


def unused_flags_line(h: dict, manifest) -> str | None:
    """The warning that the hotword flags given had nothing to act on (hotword_counts' hotword_flags_unused), None
    when they had or none was given."""
    flags = h["hotword_flags_unused"]
    if not flags:
        return None
    why = (
        f"each gives `hotwords: []`, which wins over --hotwords {h['hotwords_file']}"
        if h["hotwords_file"]
        else "none gives a `hotwords` field with a phrase, and no --hotwords FILE was given"
    )
    return (
        f"hotwords: {' and '.join(flags)} given, but no decoded line of {manifest} has a biasing list ({why}): "
        f"{'they' if len(flags) > 1 else 'it'} had nothing to act on; give --hotwords FILE, or decode a manifest "
        "whose lines have lists"
    )


def _hotword_line(h: dict, n_utts: int) -> str:
    source = (
        f"--hotwords {h['hotwords_file']} where a line has no list of its own"
        if h["hotwords_file"]
        else ("the manifest's lists")
    )
    if h["hotwords_unprompted"]:
        listed = h["hotword_lists_scored"]
        return (
            f"hotwords: {listed} of {plural(n_utts, 'utterance')} {'has' if listed == 1 else 'have'} a list "
            f"({source}), scored but not used, neither in the prompt nor in the search (--hotwords-unprompted: the "
            "unbiased baseline of the same lists)"
        )
    cap = h["hotwords_max_tokens"]
    dropped = "no token cap" if cap is None else f"{h['hotwords_dropped']} dropped by the token cap {cap}"
    boost = h.get("hotword_boost") or 0.0
    search = f"boosted in the search by {boost:g} per phrase token" if boost else "not boosted in the search"
    return (
        f"hotwords: {h['hotword_lists']} of {plural(n_utts, 'utterance')} decoded with a list ({source}), "
        f"{plural(h['hotword_phrases'], 'phrase')}, {dropped}; {search}"
    )


def _counts(found: dict, n_utts: int) -> str:
    by_reason = found["skipped_by_reason"]
    return (
        f"utterances decoded: {n_utts} of {plural(found['lines'], 'line')}; skipped (bad data): {found['skipped']}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in by_reason.items())})" if found["skipped"] else "")
    )


def _asked_line(found: dict) -> str | None:
    """How the lines without their own `prompt` / `lang` were asked (decode --task, --language), None where neither
    was given: a decode folder says what it was asked as well as what it found."""
    asked = [f"task {found['task']!r} for the lines without their own `prompt`"] if found.get("task") else []
    if found.get("language"):
        asked.append(f"language {found['language']} for the lines without their own `lang`")
    return f"asked: {'; '.join(asked)}" if asked else None


def _budget_line(found: dict) -> str:
    """decode.max_llm_tokens, and the items that passed it alone (decoded alone)."""
    over = found.get("over_llm_budget") or []
    line = f"LLM positions per batch within decode.max_llm_tokens {found['max_llm_tokens']}"
    if not over:
        return line
    first = over[0]
    return (
        f"{line}; {len(over)} item(s) past it alone, each decoded in a batch of its own (e.g. line {first['line']}, "
        f"key {first['key']}: {first['positions']} positions; wer.json: over_llm_budget)"
    )


def _windows_line(found: dict, n_utts: int) -> str:
    limit = found["max_window_seconds"]
    where = f"at the speech segments of the VAD {found['vad']}" if found.get("vad") else "at low-energy points"
    if found.get("vad") and found.get("vad_merge_seconds"):
        where += f", consecutive segments merged into windows of up to {found['vad_merge_seconds']:g} s"
    how = (
        f"{found['split']} longer than {limit:g} s split {where}, overlap {found['window_overlap']:g} s"
        if limit
        else "no window limit"
    )
    if limit and (one := found.get("cut_to_one_window")):  # its speech fits one window: no split, yet not whole
        how += f"; {one} longer than {limit:g} s cut to one window, the rest of its audio a pause, not decoded"
    silent = found.get("no_speech") or 0
    gated = f"; {silent} without speech (the VAD's gate): empty transcripts" if silent else ""
    return f"long audio: {plural(n_utts, 'utterance')} decoded in {plural(found['windows'], 'window')} ({how}){gated}"


def _ranks(timing: dict) -> str:
    shares = timing.get("rank_items") or []
    return f"; {len(shares)} ranks, items decoded {' + '.join(map(str, shares))}" if len(shares) > 1 else ""


def _steady(timing: dict) -> dict:
    """The first batch's seconds (the loader's start and the device's warm-up are in them: on a GPU they can outweigh
    a small test set) and the real-time factor of the batches after it (None with one batch; the window planning
    before the first batch not counted)."""
    first = timing.get("first_batch")
    if first is None:
        return {}
    audio = timing["audio_seconds"] * (1.0 - timing["first_batch_share"])
    took = timing["decode_seconds"] - first - timing.get("window_plan_seconds", 0.0)
    return {"first_batch_seconds": round(first, 3), "rtf_after_first_batch": took / audio if audio > 1e-9 else None}


def _plan_text(summary: dict) -> str:
    plan = summary["window_plan_seconds"]
    return f" ({plan:.1f} s of it reading the manifest and placing the windows)" if plan >= 0.05 else ""


def _speed_text(summary: dict) -> str:
    if summary["rtf"] is None:
        return "real-time factor n/a (no audio decoded)"
    per_second = summary["utts_per_second"]
    return (f"real-time factor {summary['rtf']:.4f}{_steady_text(summary)}, "
            f"{'n/a' if per_second is None else f'{per_second:.2f}'} utterances/s")  # fmt: skip


def _steady_text(summary: dict) -> str:
    after = summary.get("rtf_after_first_batch")
    if after is None:
        return ""
    return f" ({after:.4f} after the first batch, which took {summary['first_batch_seconds']:.1f} s)"


def bad_rows(examples: list[dict]) -> list[dict]:
    """bad.jsonl's rows: manifest, line, key and reason of each bad line, in manifest order (the screen's finds come
    before those met while loading, whatever their lines; the loader's own index is no line number)."""
    rows = [{k: r.get(k) for k in ("manifest", "line", "key", "reason")} for r in examples]
    return sorted(rows, key=lambda r: (str(r["manifest"]), r["line"] if isinstance(r["line"], int) else 0))


def llm_summary(out_dir: Path, rows: list[dict], found: dict, cfg: DecodeConfig, timing: dict) -> dict:
    """hyp/ref/results and wer.txt/wer.json of the LLM's hypotheses; returns the summary."""
    corpus, hot, interval = _write_results(out_dir, rows, "hyp", cfg.metric, with_ref=True)
    audio, took = timing["audio_seconds"], timing["decode_seconds"]
    summary = _scored(corpus, interval, len(rows))
    truncated = {reason: sum(r["truncated"] == reason for r in rows) for reason in (MAX_TOKENS, REPETITION)}
    summary.update(
        **found,
        mode=timing["mode"],
        audio_seconds=round(audio, 3),
        decode_seconds=round(took, 3),
        window_plan_seconds=round(timing.get("window_plan_seconds", 0.0), 3),
        rtf=took / audio if audio > 0 else None,  # None, not NaN: wer.json stays JSON that strict readers take
        **_steady(timing),
        utts_per_second=len(rows) / took if took > 0 else None,
        truncated=sum(truncated.values()),
        truncated_by_guard=truncated,
        num_beams=cfg.num_beams,
        max_new_tokens=cfg.max_new_tokens,
        batch_seconds=cfg.batch_seconds,
        rank_items=timing.get("rank_items"),
        **timing.get("hotwords", {}),
    )
    text = [
        f"{found.get('name') or Path(found['manifest']).name}: {_rate_line(corpus, summary)}",
        _counts(found, len(rows)),
        f"truncated: {summary['truncated']} (length cap {truncated[MAX_TOKENS]}, repetition {truncated[REPETITION]})",
        f"mode {timing['mode']}: audio {audio:.1f} s, decoding {took:.1f} s{_plan_text(summary)}, "
        f"{_speed_text(summary)} (device {timing['device']}{_ranks(timing)})",
    ]
    if line := _asked_line(found):
        text.append(line)
    add_languages(summary, text, rows, "hyp", cfg.metric)
    if line := confidence_summary(summary, rows, cfg.metric):
        text.append(line)
    if line := ctc_gate_summary(summary, rows, cfg.ctc_gate, cfg.metric):
        text.append(line)
    if "windows" in found:  # decode_manifest's window counts (absent when a caller scores rows alone)
        text.append(_windows_line(found, len(rows)))
    if found.get("max_llm_tokens") is not None:
        text.append(_budget_line(found))
    summary["repeated_keys"] = _repeated_keys(rows)
    if summary["repeated_keys"]:
        text.append(
            f"keys on more than one line: {len(summary['repeated_keys'])} (e.g. {summary['repeated_keys'][0]!r}); "
            "scored line by line here; a scorer pairing hyp.txt and ref.txt by key (sclite, compute-wer) would not"
        )
    summary["spaced_keys"] = [r["key"] for r in rows if kaldi_key(r["key"]) != r["key"]]
    if summary["spaced_keys"]:
        text.append(
            f"keys holding whitespace: {len(summary['spaced_keys'])} (e.g. {summary['spaced_keys'][0]!r}); written "
            "with '_' for it in hyp.txt and ref.txt (\"key text\" lines), as they are in results.jsonl"
        )
    if timing.get("subtitles"):  # decode_manifest's, with --subtitles: written after these files
        summary["subtitles"] = timing["subtitles"]
        text.append(subtitles_line(timing["subtitles"]))
    lists = timing.get("hotwords")  # decode_manifest's list counts (absent when a caller scores rows alone)
    if lists and (lists["hotword_lists"] or lists["hotword_lists_scored"] or lists["hotwords_file"]):
        text.append(_hotword_line(lists, len(rows)))
    if lists and (unused := unused_flags_line(lists, found["manifest"])):
        text.append(unused)
    _add_hotwords(summary, text, hot)
    _write_summary(out_dir, summary, text)
    return summary


def _repeated_keys(rows: list[dict]) -> list[str]:
    """The keys that stand on more than one line of hyp.txt, as written there ("a b" and "a_b" both as a_b), in
    first-seen order."""
    return [k for k, n in Counter(kaldi_key(r["key"]) for r in rows).items() if n > 1]


def ctc_summary(out_dir: Path, rows: list[dict], found: dict, cfg: DecodeConfig, timing: dict) -> dict:
    """The same files for the CTC branch's greedy hypotheses (no ref.txt); returns the summary."""
    corpus, hot, interval = _write_results(out_dir, rows, "ctc_hyp", cfg.metric, with_ref=False)
    audio = timing["audio_seconds"]
    summary = _scored(corpus, interval, len(rows))
    summary.update(branch="ctc", decoding="greedy best path", **found, audio_seconds=round(audio, 3))
    text = [
        f"{found.get('name') or Path(found['manifest']).name} (CTC branch, greedy): {_rate_line(corpus, summary)}",
        _counts(found, len(rows)),
        f"audio {audio:.1f} s; the CTC head read the encoder output of the LLM pass (device {timing['device']})",
    ]
    if line := _asked_line(found):  # the language query reaches the encoder, so the CTC branch too
        text.append(line)
    add_languages(summary, text, rows, "ctc_hyp", cfg.metric)
    if "windows" in found:
        text.append(_windows_line(found, len(rows)))
    _add_hotwords(summary, text, hot)
    _write_summary(out_dir, summary, text)
    return summary


def _write_results(out_dir: Path, rows: list[dict], hyp_key: str, metric: str, *, with_ref: bool):
    """hyp.txt, results.jsonl (and ref.txt) for rows[...][hyp_key]; returns the corpus score of the rows with a
    reference (`ref` None: transcribed, not scored), when a scored row has a biasing list (`hotwords`, or
    `hotwords_scored` when the lists were not prompted) the hotword scores (else None), and the rate's bootstrap
    interval (llmasr.scoring_bootstrap; None with too few utterances)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = [r for r in rows if r["ref"] is not None]
    corpus, scores = score_corpus([(r["ref"], r[hyp_key]) for r in scored], metric)
    lists = [hotword_list(r.get("hotwords_scored", r.get("hotwords")), f"utterance {r['key']!r}") for r in scored]
    hot, biased = None, [None] * len(scored)
    if any(lists):
        hot, biased = score_lists(scores, lists, corpus.name, corpus.unit_name)
    scoring = iter(zip(scores, biased, lists))  # the scored rows' scores, in row order
    hyp_lines, result_lines = [], []
    for r in rows:
        s, b, phrases = next(scoring) if r["ref"] is not None else (None, None, None)
        hyp_lines.append(f"{kaldi_key(r['key'])} {_one_line(r[hyp_key])}\n")
        rec = {"key": r["key"], **({"line": r["line"]} if "line" in r else {}), "ref": r["ref"], "hyp": r[hyp_key]}
        rec.update(_counts_of(s))
        rec.update(duration=round(r["duration"], 4), wer=None if s is None else s.rate, windows=r.get("windows", 1))
        if r.get("lang") is not None:
            rec["lang"] = r["lang"]
        if "truncated" in r and hyp_key == "hyp":
            rec["truncated"] = r["truncated"]
        if hyp_key == "hyp":
            rec.update(confidence_fields(r))
        if r.get("window_parts"):  # a long recording: each window's own text, for pseudo-labels a window each
            rec["window_texts"] = window_texts(r["window_parts"], hyp_key)
        if r.get("no_speech"):  # the VAD's gate or the CTC head's: not transcribed
            rec["no_speech"] = True
        if "timestamps" in r and hyp_key == "hyp":  # decode.timestamps: [unit, start s, end s] each, or null
            rec["timestamps"] = None if r["timestamps"] is None else [list(w) for w in r["timestamps"]]
        rec.update(hotwords=list(r.get("hotwords") or []), hotwords_dropped=int(r.get("hotwords_dropped") or 0))
        if "hotwords_scored" in r:
            rec["hotwords_scored"] = list(r["hotwords_scored"])
        if phrases:
            rec["hotword_scores"] = b.to_row()
        result_lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    # each file whole or absent: a decode killed while writing leaves no cut-short hyp.txt to be scored as complete
    write_atomic(out_dir / "hyp.txt", "".join(hyp_lines))
    write_atomic(out_dir / "results.jsonl", "".join(result_lines))
    if with_ref:
        write_atomic(out_dir / "ref.txt", "".join(f"{kaldi_key(r['key'])} {_one_line(r['ref'])}\n" for r in scored))
    return corpus, hot, rate_interval([s.errors for s in scores], [s.ref_len for s in scores])


def _counts_of(s) -> dict:
    """A results.jsonl row's error counts (None each for a row without a reference)."""
    counts = (s.errors, s.substitutions, s.deletions, s.insertions, s.ref_len, s.ref_len) if s else (None,) * 6
    unit = None if s is None else ("word" if s.unit == "wer" else "char")
    # the texts as scored (llmasr.text_units.normalize): what another toolkit's scorer must be given to agree
    texts = {"ref_norm": None if s is None else s.ref_norm, "hyp_norm": None if s is None else s.hyp_norm}
    return {"unit": unit, **dict(zip(("errors", "sub", "del", "ins", "ref_units", "words"), counts)), **texts}


def _scored(corpus, interval, transcribed: int) -> dict:
    """The corpus score's summary fields, with how many utterances were transcribed and how many had no reference;
    the rate is None when none had one."""
    summary = corpus.to_dict()
    summary.update(rate_ci95=interval, transcribed=transcribed, unscored=transcribed - corpus.n_utts)
    if not corpus.n_utts:  # none scored (every line bad, or none with a reference): no rate, not 0%
        summary["rate"] = None
    return summary


def _rate_line(corpus, summary: dict) -> str:
    if summary["rate"] is None and not summary["transcribed"]:
        return "no utterance was transcribed (every line was bad: see bad.jsonl): not scored"
    field = summary.get("target_stand_in")
    named = (
        f"; their lines give '{field}', which llmasr does not read: rename it 'target' to score them" if field else ""
    )
    if summary["rate"] is None:
        return (
            f"{summary['transcribed']} utterances transcribed (hyp.txt); none has a reference transcript: not "
            f"scored{named}"
        )
    line = f"{corpus.summary()}{interval_text(summary['rate_ci95'])}"
    if summary["unscored"]:
        line += f"; {summary['unscored']} more transcribed without a reference, not scored{named}"
    return line


def _add_hotwords(summary: dict, text: list[str], hot: BiasedCorpus | None) -> None:
    """B-/U- error rates and phrase recall, precision and leaks, when the rows had biasing lists."""
    if hot is not None:
        summary["hotwords"] = hot.to_dict()
        text.extend(hot.summary_lines())


def _write_summary(out_dir: Path, summary: dict, text: list[str]) -> None:
    """wer.txt and wer.json; the text joins the summary under "text"."""
    write_atomic(out_dir / "wer.txt", "\n".join(text) + "\n")
    summary[KEY] = written_by()  # so that a later llmasr that cannot read the decode names its writer
    summary["software"] = software()  # the versions behind its numbers: generate's search changes between releases
    write_atomic(out_dir / "wer.json", json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    summary["text"] = "\n".join(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())
