"""`llmasr decode`: transcribe manifests with an exported model or a training checkpoint, and score them.

    llmasr decode --model DIR | --checkpoint RUN_DIR[/checkpoints/TAG] --data test.jsonl [--data ...]
                  --output HYP_DIR [--beam N] [--batch-seconds S] [--max-new-tokens N]
                  [--repetition-penalty P] [--no-repeat-ngram N] [--metric auto|wer|cer] [--ctc]
                  [--ctc-weight W] [--repeat-limit N] [--hotwords FILE] [--hotwords-unprompted]

Batches come from the validation loader of training (llmasr.data.loader.build_decode_loader: SpeechDataset in
evaluation mode, no dither, no augmentation; the same prompt builder, so the prompt a model is decoded with is the
one it was trained with, the utterance's own `prompt` field included), cut by a duration-sorted, non-shuffled
sampler under an audio-seconds budget (an utterance longer than the budget gets a batch of its own; none is
skipped). The decoding settings are the one DecodeConfig (llmasr.models.decoding) that validation uses too: the
model's saved settings with the flags given on top. SpeechLLM.transcribe stops each prompt at its target start, so
the reference never leaks into the input.

Outputs (HYP_DIR, or HYP_DIR/<manifest name>/ when several manifests are given):

    hyp.txt        key hypothesis          (manifest order)
    ref.txt        key reference
    results.jsonl  {key, ref, hyp, unit, errors, sub, del, ins, ref_units, words, duration, wer, truncated,
                    hotwords, hotwords_dropped}
                   truncated: null, "max_tokens" (the length cap ended the hypothesis) or "repetition";
                   hotwords: the biasing phrases rendered into the utterance's prompt (after the token cap), []
                   for none; with a biasing list, hotword_scores {b_errors, b_units, u_errors, u_units, recalled,
                   ref_occurrences, hyp_occurrences, missed, leaked} (llmasr.scoring_bias)
    wer.txt        summary: WER/CER, substitutions/deletions/insertions, #utterances, truncations by guard, the
                   search mode (greedy, beam N, + CTC guidance), its real-time factor (decoding wall-clock seconds
                   / audio seconds) and throughput (utterances/s), skipped lines; when any utterance has a
                   biasing list (`hotwords`), how many had one and how many phrases the prompt's token cap
                   dropped, B-WER / U-WER and hotword recall, precision and leaks
    wer.json       the same, machine-readable (the hotword scores under "hotwords", the list counts as
                   hotword_lists, hotword_phrases, hotwords_dropped, hotwords_file, hotwords_max_tokens)
    bad.jsonl      manifest lines that could not be decoded (missing/corrupt audio, bad fields...)

With --ctc (a model with a CTC head on its encoder), HYP_DIR/ctc/ also gets hyp.txt, results.jsonl, wer.txt and
wer.json for the CTC branch's greedy best path, scored the same way: a low CTC WER beside a high LLM WER says the
encoder hears the words and the LLM side loses them. SpeechLLM.transcribe gives both from one encoder pass.

Bad lines are skipped and reported; the command fails (exit 1, after writing the outputs) only when they are
more than --max-bad-fraction of the lines.

With `max_new_tokens` unset, each utterance's cap is `tokens_per_second` x its own duration + 8, so a model that
loops stops at a length tied to its audio, and batched output equals one-by-one output; `repeat_limit` ends a
hypothesis that repeats an n-gram. Both are counted (results.jsonl "truncated", wer.txt totals), never silent.
A model with a CTC head decodes CTC-guided by default (DecodeConfig.ctc_weight; models.ctc_guidance).

Hotwords: a line's own `hotwords` field is its biasing list; `--hotwords FILE` (one phrase a line, UTF-8) gives the
list of every line that has no such field. A line's own list wins, an explicit [] included ("no list for this
one"): per-utterance lists are the more specific statement. The list is rendered by the model's prompt builder as in
training (its wording and token cap are saved with the model). `--hotwords-unprompted` chooses the lists the same
way but renders none: the B-/U- rates of the model unbiased, on the same lists (rows: `hotwords_scored`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.config import DataConfig
from llmasr.data.loader import SpeechDataLoader, build_decode_loader
from llmasr.export.exported import MODEL_FILE, ExportedModelError, load_exported, read_description
from llmasr.export.trained_model import load_checkpoint_model
from llmasr.models.ctc import LLMCTCTokenizer
from llmasr.models.decode_guards import MAX_TOKENS, REPETITION
from llmasr.models.decoding import DecodeConfig
from llmasr.scoring import score_corpus
from llmasr.scoring_bias import BiasedCorpus, hotword_list, score_lists

log = logging.getLogger(__name__)


@dataclass
class DecodeOptions:
    """What a decoding run needs besides its DecodeConfig."""

    num_workers: int = 2  # data loader workers
    max_bad_fraction: float = DataConfig.max_bad_fraction  # fail (after writing the outputs) above this
    ctc: bool = False  # also write the CTC branch's greedy transcripts to HYP_DIR/ctc/
    features_on: str = "auto"  # as data.features_on: worker, device, or auto (device on an accelerator)
    hotwords: list[str] | None = None  # --hotwords: the list of every line without its own `hotwords` field
    hotwords_file: str | None = None  # where that list came from (reported in wer.txt)
    # --hotwords-unprompted: the lists are scored but no prompt renders them (the unbiased baseline of the same lists)
    hotwords_unprompted: bool = False


class DecodeError(RuntimeError):
    """Decoding cannot run as asked."""


def decode_loader(model, manifest_path, cfg: DecodeConfig, opts: DecodeOptions, device=None) -> SpeechDataLoader:
    """The evaluation loader over one manifest, with `model`'s frontend and prompt builder."""
    return build_decode_loader(
        manifest_path, model.frontend, prompt_builder=model.prompt, batch_seconds=cfg.batch_seconds,
        num_workers=opts.num_workers, max_bad_fraction=opts.max_bad_fraction,
        name=f"decode {Path(manifest_path).name}", features_on=opts.features_on, device=device,
        hotwords=opts.hotwords, prompt_hotwords=not opts.hotwords_unprompted,
    )  # fmt: skip


def decode_manifest(
    model, manifest_path: str | Path, out_dir: str | Path, cfg: DecodeConfig, opts: DecodeOptions | None = None,
    *, device="cpu",
) -> dict:  # fmt: skip
    """Decode one manifest into `out_dir`; returns the summary dict (also written to wer.json), with the CTC
    branch's under "ctc" when opts.ctc, and "too_much_bad_data" (the message, or None)."""
    opts = DecodeOptions() if opts is None else opts
    has_head = getattr(model, "ctc_head", None) is not None
    if opts.ctc and not has_head:
        raise DecodeError("--ctc: the model has no CTC head (it was trained with model.ctc.weight 0)")
    try:
        cfg.guidance(has_head, isinstance(getattr(model, "ctc_tokenizer", None), LLMCTCTokenizer))
    except ConfigError as err:
        raise DecodeError(str(err)) from err
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = decode_loader(model, manifest_path, cfg, opts, device)
    model.eval()
    t0 = time.perf_counter()
    rows, audio_seconds, mode = transcribe_loader(model, loader, cfg, device)
    if opts.hotwords_unprompted:
        for r in rows:
            r["hotwords_scored"] = loader.dataset.listed_hotwords(r["index"])
    timing = {"audio_seconds": audio_seconds, "decode_seconds": time.perf_counter() - t0, "device": device}
    timing["mode"] = mode
    tracker = loader.bad_data
    with open(out_dir / "bad.jsonl", "w") as fb:
        for rec in tracker.examples:
            fb.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    found = dict(
        manifest=str(manifest_path), lines=len(loader.dataset), skipped=tracker.bad,
        skipped_by_reason=dict(tracker.by_reason),
    )  # fmt: skip
    timing["hotwords"] = _hotword_counts(rows, opts, model.prompt.hotwords_max_tokens)
    summary = _llm_summary(out_dir, rows, found, cfg, timing)
    summary["too_much_bad_data"] = tracker.message(final=True) if tracker.exceeded else None
    if opts.ctc:
        summary["ctc"] = _ctc_summary(out_dir / "ctc", rows, found, cfg, timing)
    return summary


def transcribe_loader(model, loader: SpeechDataLoader, cfg: DecodeConfig, device) -> tuple[list[dict], float, str]:
    """Rows {key, ref, hyp, ctc_hyp, truncated, duration, hotwords, hotwords_dropped} of every decoded utterance in
    manifest order, their audio seconds and the search mode; ctc_hyp is None without a CTC head."""
    rows: dict[int, dict] = {}
    audio_seconds, mode = 0.0, cfg.mode(0.0)
    for batch in loader:
        if not batch.size:  # every item bad: the loader counted them
            continue
        got = model.transcribe(batch.to(device), cfg)
        mode = got.mode
        ctc = got.ctc if got.ctc is not None else [None] * len(got.llm)
        for i, (idx, key, ref) in enumerate(zip(batch.indices, batch.keys, batch.targets)):
            dur = float(batch.durations[i])
            audio_seconds += dur
            rows[idx] = {"key": key, "ref": ref, "hyp": got.llm[i], "ctc_hyp": ctc[i], "duration": round(dur, 4)}
            rows[idx]["index"] = int(idx)
            rows[idx]["truncated"] = got.truncated[i]
            rows[idx].update(hotwords=list(batch.hotwords[i]), hotwords_dropped=int(batch.hotwords_dropped[i]))
    return [rows[i] for i in sorted(rows)], audio_seconds, mode


def _hotword_counts(rows: list[dict], opts: DecodeOptions, cap: int | None) -> dict:
    """How the utterances were biased: lists, phrases rendered, phrases the token cap dropped; unprompted, the
    lists scored (none rendered)."""
    return {
        "hotwords_unprompted": opts.hotwords_unprompted,
        "hotword_lists_scored": sum(bool(r.get("hotwords_scored")) for r in rows),
        "hotword_lists": sum(bool(r["hotwords"]) for r in rows),
        "hotword_phrases": sum(len(r["hotwords"]) for r in rows),
        "hotwords_dropped": sum(r["hotwords_dropped"] for r in rows),
        "hotwords_file": opts.hotwords_file,
        "hotwords_max_tokens": cap,
    }


def _hotword_line(h: dict, n_utts: int) -> str:
    source = (
        f"--hotwords {h['hotwords_file']} where a line has no list of its own"
        if h["hotwords_file"]
        else ("the manifest's lists")
    )
    if h["hotwords_unprompted"]:
        return (
            f"hotwords: {h['hotword_lists_scored']} of {n_utts} utterances have a list ({source}), scored but not "
            "rendered into the prompt (--hotwords-unprompted: the unbiased baseline of the same lists)"
        )
    cap = h["hotwords_max_tokens"]
    dropped = "no token cap" if cap is None else f"{h['hotwords_dropped']} dropped by the token cap {cap}"
    return (
        f"hotwords: {h['hotword_lists']} of {n_utts} utterances decoded with a list ({source}), "
        f"{h['hotword_phrases']} phrases, {dropped}"
    )


def _counts(found: dict, n_utts: int) -> str:
    by_reason = found["skipped_by_reason"]
    return f"utterances decoded: {n_utts} of {found['lines']} lines; skipped (bad data): {found['skipped']}" + (
        f" ({', '.join(f'{k}: {v}' for k, v in by_reason.items())})" if found["skipped"] else ""
    )


def _llm_summary(out_dir: Path, rows: list[dict], found: dict, cfg: DecodeConfig, timing: dict) -> dict:
    """hyp/ref/results and wer.txt/wer.json of the LLM's hypotheses; returns the summary."""
    corpus, hot = _write_results(out_dir, rows, "hyp", cfg.metric, with_ref=True)
    audio, took = timing["audio_seconds"], timing["decode_seconds"]
    summary = corpus.to_dict()
    truncated = {reason: sum(r["truncated"] == reason for r in rows) for reason in (MAX_TOKENS, REPETITION)}
    summary.update(
        **found,
        mode=timing["mode"],
        audio_seconds=round(audio, 3),
        decode_seconds=round(took, 3),
        rtf=took / audio if audio > 0 else math.nan,
        utts_per_second=corpus.n_utts / took if took > 0 else math.nan,
        truncated=sum(truncated.values()),
        truncated_by_guard=truncated,
        num_beams=cfg.num_beams,
        max_new_tokens=cfg.max_new_tokens,
        batch_seconds=cfg.batch_seconds,
        **timing.get("hotwords", {}),
    )
    text = [
        f"{Path(found['manifest']).name}: {corpus.summary()}",
        _counts(found, corpus.n_utts),
        f"truncated: {summary['truncated']} (length cap {truncated[MAX_TOKENS]}, repetition {truncated[REPETITION]})",
        f"mode {timing['mode']}: audio {audio:.1f} s, decoding {took:.1f} s, real-time factor {summary['rtf']:.4f}, "
        f"{summary['utts_per_second']:.2f} utterances/s (device {timing['device']})",
    ]
    lists = timing.get("hotwords")  # decode_manifest's list counts (absent when a caller scores rows alone)
    if lists and (lists["hotword_lists"] or lists["hotword_lists_scored"] or lists["hotwords_file"]):
        text.append(_hotword_line(lists, corpus.n_utts))
    _add_hotwords(summary, text, hot)
    _write_summary(out_dir, summary, text)
    return summary


def _ctc_summary(out_dir: Path, rows: list[dict], found: dict, cfg: DecodeConfig, timing: dict) -> dict:
    """The same files for the CTC branch's greedy hypotheses (no ref.txt); returns the summary."""
    corpus, hot = _write_results(out_dir, rows, "ctc_hyp", cfg.metric, with_ref=False)
    audio = timing["audio_seconds"]
    summary = corpus.to_dict()
    summary.update(branch="ctc", decoding="greedy best path", **found, audio_seconds=round(audio, 3))
    text = [
        f"{Path(found['manifest']).name} (CTC branch, greedy): {corpus.summary()}",
        _counts(found, corpus.n_utts),
        f"audio {audio:.1f} s; the CTC head read the encoder output of the LLM pass (device {timing['device']})",
    ]
    _add_hotwords(summary, text, hot)
    _write_summary(out_dir, summary, text)
    return summary


def _write_results(out_dir: Path, rows: list[dict], hyp_key: str, metric: str, *, with_ref: bool):
    """hyp.txt, results.jsonl (and ref.txt) for rows[...][hyp_key]; returns the corpus score and, when a row has a
    biasing list (`hotwords`, or `hotwords_scored` when the lists were not prompted), the hotword scores (else
    None)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus, scores = score_corpus([(r["ref"], r[hyp_key]) for r in rows], metric)
    lists = [hotword_list(r.get("hotwords_scored", r.get("hotwords")), f"utterance {r['key']!r}") for r in rows]
    hot, biased = None, [None] * len(rows)
    if any(lists):
        hot, biased = score_lists(scores, lists, corpus.name, corpus.unit_name)
    with open(out_dir / "hyp.txt", "w") as fh, open(out_dir / "results.jsonl", "w") as fj:
        for r, s, b, phrases in zip(rows, scores, biased, lists):
            fh.write(f"{r['key']} {_one_line(r[hyp_key])}\n")
            rec = {
                "key": r["key"],
                "ref": r["ref"],
                "hyp": r[hyp_key],
                "unit": "word" if s.unit == "wer" else "char",
                "errors": s.errors,
                "sub": s.substitutions,
                "del": s.deletions,
                "ins": s.insertions,
                "ref_units": s.ref_len,
                "words": s.ref_len,
                "duration": r["duration"],
                "wer": s.rate,
            }
            if "truncated" in r and hyp_key == "hyp":
                rec["truncated"] = r["truncated"]
            rec.update(hotwords=list(r.get("hotwords") or []), hotwords_dropped=int(r.get("hotwords_dropped") or 0))
            if "hotwords_scored" in r:
                rec["hotwords_scored"] = list(r["hotwords_scored"])
            if phrases:
                rec["hotword_scores"] = b.to_row()
            fj.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if with_ref:
        with open(out_dir / "ref.txt", "w") as fr:
            fr.writelines(f"{r['key']} {_one_line(r['ref'])}\n" for r in rows)
    return corpus, hot


def _add_hotwords(summary: dict, text: list[str], hot: BiasedCorpus | None) -> None:
    """B-/U- error rates and phrase recall, precision and leaks, when the rows had biasing lists."""
    if hot is not None:
        summary["hotwords"] = hot.to_dict()
        text.extend(hot.summary_lines())


def _write_summary(out_dir: Path, summary: dict, text: list[str]) -> None:
    """wer.txt and wer.json; the text joins the summary under "text"."""
    (out_dir / "wer.txt").write_text("\n".join(text) + "\n")
    (out_dir / "wer.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    summary["text"] = "\n".join(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_decode_model(
    model_dir=None, checkpoint=None, *, tag=None, dtype=None, trust_remote_code: bool = False
) -> tuple:
    """(model, its saved DecodeConfig, DecodeOptions with its bad-data tolerance) from an exported model directory
    (the decode section of its llmasr_model.yaml) or else a training checkpoint (its recipe's decode section and
    data.max_bad_fraction)."""
    if model_dir is not None:
        model = load_exported(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)
        try:
            cfg = from_dict(DecodeConfig, read_description(model_dir).get("decode") or {}, "decode")
        except ConfigError as err:
            raise ExportedModelError(f"{Path(model_dir) / MODEL_FILE}: {err}") from err
        return model, cfg, DecodeOptions()
    model, info = load_checkpoint_model(checkpoint, tag=tag, trust_remote_code=trust_remote_code)
    recipe = info["recipe"]
    return model, recipe.decode, DecodeOptions(max_bad_fraction=float(recipe.data.max_bad_fraction))


def out_dirs(data: list[str], output: Path) -> list[Path]:
    """One output folder per manifest: OUTPUT itself for one, OUTPUT/<manifest name>[_k] for several."""
    if len(data) == 1:
        return [output]
    names, out = set(), []
    for path in data:
        stem = Path(path).name
        for suffix in (".gz", ".jsonl", ".json"):
            stem = stem.removesuffix(suffix)
        name, k = stem, 1
        while name in names:
            k += 1
            name = f"{stem}_{k}"
        names.add(name)
        out.append(output / name)
    return out
