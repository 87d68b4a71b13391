"""`llmasr decode`: transcribe manifests with an exported model or a training checkpoint, and score them.

    llmasr decode --model DIR | --checkpoint RUN_DIR[/checkpoints/TAG] --data test.jsonl [--data ...]
                  --output HYP_DIR [--beam N] [--batch-seconds S] [--max-new-tokens N]
                  [--repetition-penalty P] [--no-repeat-ngram N] [--metric auto|wer|cer] [--ctc]

Batches come from the training data pipeline (SpeechDataset in evaluation mode: no dither, no augmentation; the
same prompt builder, so the prompt a model is decoded with is the one it was trained with, the utterance's own
`prompt` field included), cut by a duration-sorted, non-shuffled sampler under an audio-seconds budget (an
utterance longer than the budget gets a batch of its own; none is skipped). SpeechLLM.generate stops each prompt at
its target start, so the reference never leaks into the input.

Outputs (HYP_DIR, or HYP_DIR/<manifest name>/ when several manifests are given):

    hyp.txt        key hypothesis          (manifest order)
    ref.txt        key reference
    results.jsonl  {key, ref, hyp, unit, errors, sub, del, ins, ref_units, words, duration, wer}
    wer.txt        summary: WER/CER, substitutions/deletions/insertions, #utterances, real-time factor
                   (decoding wall-clock seconds / audio seconds), skipped lines
    wer.json       the same, machine-readable
    bad.jsonl      manifest lines that could not be decoded (missing/corrupt audio, bad fields...)

With --ctc (a model with a CTC head on its encoder), HYP_DIR/ctc/ also gets hyp.txt, results.jsonl, wer.txt and
wer.json for the CTC branch's greedy best path, scored the same way: a low CTC WER beside a high LLM WER says the
encoder hears the words and the LLM side loses them. It reuses the encoder output of the LLM pass.

Bad lines are skipped and reported; the command fails (exit 1, after writing the outputs) only when they are
more than --max-bad-fraction of the lines.

With `max_new_tokens` unset, each utterance's cap is `tokens_per_second` x its own duration + 8, so a model that
loops stops at a length tied to its audio, and batched output equals one-by-one output.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmasr.config_io import to_dict
from llmasr.data.batch import Batch
from llmasr.data.collate import Collator
from llmasr.data.dataset import BadDataTracker, SpeechDataset
from llmasr.data.loader import open_manifests
from llmasr.data.sampler import DynamicBucketSampler
from llmasr.export.exported import load_exported, read_description
from llmasr.export.trained_model import load_checkpoint_model
from llmasr.scoring import score_corpus

log = logging.getLogger(__name__)


@dataclass
class DecodeOptions:
    num_beams: int = 1
    batch_seconds: float = 120.0
    max_new_tokens: int | None = None
    tokens_per_second: float = 8.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    metric: str = "auto"
    max_bad_fraction: float = 0.01
    num_workers: int = 2
    ctc: bool = False  # also decode the CTC branch (greedy best path) into HYP_DIR/ctc/


class DecodeError(RuntimeError):
    """Decoding cannot run as asked."""


def make_loader(model, manifest, opts: DecodeOptions):
    """DataLoader of evaluation batches over an opened manifest (indices with unknown duration are skipped)."""
    from torch.utils.data import DataLoader

    durations = np.asarray(manifest.durations(), dtype=np.float64)
    known = np.flatnonzero(~np.isnan(durations))
    frontend = model.frontend
    min_item = frontend.chunk_seconds if frontend.kind == "whisper" else None
    longest = float(durations[known].max()) if known.size else 1.0
    if min_item is not None:
        longest = max(longest, min_item)
    # Never skip an utterance for the budget: the budget is at least the longest utterance (one per batch).
    budget = max(float(opts.batch_seconds), longest)
    sampler = DynamicBucketSampler(
        durations,
        max_seconds=budget,
        num_buckets=1,
        shuffle=False,
        shuffle_buffer=max(len(durations), 1),  # one window: sorted by duration, least padding
        min_item_seconds=min_item,
        indices=known,
    )
    dataset = SpeechDataset(manifest, frontend, train=False, prompt_builder=model.prompt)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=int(opts.num_workers),
        collate_fn=Collator(model.prompt.pad_id, no_rows=True),  # an all-bad batch: no rows, its bad items
        persistent_workers=False,
    )


@torch.no_grad()
def ctc_transcripts(model, batch: Batch, encoded=None) -> list[str]:
    """The CTC branch's greedy transcripts of a batch on the model's device; `encoded`: the encoder's (frames,
    lengths) for it when already computed."""
    enc, enc_lens = encoded if encoded is not None else model.encoder(batch.feats, batch.feat_lens)
    return model.ctc_texts(model.ctc_head(enc, enc_lens), enc_lens)


def decode_manifest(
    model, manifest_path: str | Path, out_dir: str | Path, opts: DecodeOptions, *, device="cpu"
) -> dict:
    """Decode one manifest into `out_dir`; returns the summary dict (also written to wer.json), with the CTC
    branch's under "ctc" when opts.ctc."""
    if opts.ctc and getattr(model, "ctc_head", None) is None:
        raise DecodeError("--ctc: the model has no CTC head (it was trained with model.ctc.weight 0)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest, fill_bad = open_manifests([str(manifest_path)], mix=False)
    n_lines = len(manifest)
    tracker = BadDataTracker(
        opts.max_bad_fraction,
        name=f"decode {Path(manifest_path).name}",
        min_items=n_lines + 1,  # checked once, at the end
        keep_examples=n_lines + 1,  # every bad line goes to bad.jsonl
    )
    tracker.add_static(fill_bad)
    loader = make_loader(model, manifest, opts)

    rows: dict[int, dict] = {}
    audio_seconds = 0.0
    model.eval()
    t0 = time.perf_counter()
    # With --ctc, the encoder output that generate() computes is kept for the CTC head (no second encoder pass).
    encoded: list = []
    hook = model.encoder.register_forward_hook(lambda m, a, out: encoded.append(out)) if opts.ctc else None
    try:
        for batch in loader:
            for rec in batch.bad:
                tracker.add_bad(rec)
            if not batch.size:
                continue
            tracker.add_good(batch.size)
            dev = batch.to(device)
            hyps = model.generate(
                dev,
                num_beams=opts.num_beams,
                max_new_tokens=opts.max_new_tokens,
                tokens_per_second=opts.tokens_per_second,
                repetition_penalty=opts.repetition_penalty,
                no_repeat_ngram_size=opts.no_repeat_ngram_size,
            )
            ctc_hyps = ctc_transcripts(model, dev, encoded[-1] if encoded else None) if opts.ctc else [None] * len(hyps)
            for i, (idx, key, ref, hyp) in enumerate(zip(batch.indices, batch.keys, batch.targets, hyps)):
                dur = float(batch.durations[i])
                audio_seconds += dur
                rows[idx] = {"key": key, "ref": ref, "hyp": hyp, "ctc_hyp": ctc_hyps[i], "duration": round(dur, 4)}
            encoded.clear()
    finally:
        if hook is not None:
            hook.remove()
    decode_seconds = time.perf_counter() - t0

    order = sorted(rows)
    corpus = _write_results(out_dir, [rows[i] for i in order], "hyp", opts.metric, with_ref=True)
    with open(out_dir / "bad.jsonl", "w") as fb:
        for rec in tracker.examples:
            fb.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")

    name = Path(manifest_path).name
    found = dict(
        manifest=str(manifest_path), lines=n_lines, skipped=tracker.bad, skipped_by_reason=dict(tracker.by_reason)
    )
    counts = f"utterances decoded: {corpus.n_utts} of {n_lines} lines; skipped (bad data): {tracker.bad}" + (
        f" ({', '.join(f'{k}: {v}' for k, v in tracker.by_reason.items())})" if tracker.bad else ""
    )
    summary = corpus.to_dict()
    summary.update(
        **found,
        audio_seconds=round(audio_seconds, 3),
        decode_seconds=round(decode_seconds, 3),
        rtf=decode_seconds / audio_seconds if audio_seconds > 0 else math.nan,
        num_beams=opts.num_beams,
        max_new_tokens=opts.max_new_tokens,
        batch_seconds=opts.batch_seconds,
    )
    text = [
        f"{name}: {corpus.summary()}",
        counts,
        f"audio {audio_seconds:.1f} s, decoding {decode_seconds:.1f} s, real-time factor "
        f"{summary['rtf']:.4f}" + f" (beam {opts.num_beams}, device {device})",
    ]
    _write_summary(out_dir, summary, text)
    summary["too_much_bad_data"] = None
    if tracker.bad and tracker.fraction > opts.max_bad_fraction:
        summary["too_much_bad_data"] = tracker.message(final=True)
    if opts.ctc:
        ctc_corpus = _write_results(out_dir / "ctc", [rows[i] for i in order], "ctc_hyp", opts.metric, with_ref=False)
        ctc = ctc_corpus.to_dict()
        ctc.update(branch="ctc", decoding="greedy best path", **found, audio_seconds=round(audio_seconds, 3))
        ctc_text = [
            f"{name} (CTC branch, greedy): {ctc_corpus.summary()}",
            counts,
            f"audio {audio_seconds:.1f} s; the CTC head read the encoder output of the LLM pass (device {device})",
        ]
        _write_summary(out_dir / "ctc", ctc, ctc_text)
        summary["ctc"] = ctc
    return summary


def _write_results(out_dir: Path, rows: list[dict], hyp_key: str, metric: str, *, with_ref: bool):
    """hyp.txt, results.jsonl (and ref.txt) for rows[...][hyp_key]; returns the corpus score."""
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus, scores = score_corpus([(r["ref"], r[hyp_key]) for r in rows], metric)
    with open(out_dir / "hyp.txt", "w") as fh, open(out_dir / "results.jsonl", "w") as fj:
        for r, s in zip(rows, scores):
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
            fj.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if with_ref:
        with open(out_dir / "ref.txt", "w") as fr:
            fr.writelines(f"{r['key']} {_one_line(r['ref'])}\n" for r in rows)
    return corpus


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
    """(model, decode defaults, default max_bad_fraction) from an exported model directory (the decode section of
    its llmasr_model.yaml) or else a training checkpoint (its recipe's decode section and data.max_bad_fraction)."""
    if model_dir is not None:
        model = load_exported(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)
        return model, dict(read_description(model_dir).get("decode") or {}), 0.01
    model, info = load_checkpoint_model(checkpoint, tag=tag, trust_remote_code=trust_remote_code)
    return model, to_dict(info["recipe"].decode), float(info["recipe"].data.max_bad_fraction)


def decode_options(defaults: dict, default_max_bad: float, **given) -> DecodeOptions:
    """DecodeOptions: a value given (not None) wins, then the model's decode `defaults`, then DecodeOptions' own;
    max_bad_fraction: the one given, else `default_max_bad` (the run's data.max_bad_fraction, or 0.01)."""
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(DecodeOptions)})
    if unknown:
        raise TypeError(f"decode_options: unknown option(s) {unknown}")
    base = DecodeOptions()

    def pick(key: str, cast=lambda v: v):
        value = given.get(key)
        value = value if value is not None else defaults.get(key, getattr(base, key))
        return None if value is None else cast(value)

    max_bad = given.get("max_bad_fraction")
    opts = DecodeOptions(
        num_beams=pick("num_beams", int),
        batch_seconds=pick("batch_seconds", float),
        max_new_tokens=pick("max_new_tokens", int),
        tokens_per_second=pick("tokens_per_second", float),
        repetition_penalty=pick("repetition_penalty", float),
        no_repeat_ngram_size=pick("no_repeat_ngram_size", int),
        metric=pick("metric", str),
        max_bad_fraction=float(max_bad if max_bad is not None else default_max_bad),
        num_workers=pick("num_workers", int),
        ctc=bool(given.get("ctc", False)),
    )
    if opts.num_beams < 1:
        raise DecodeError(f"the beam size must be >= 1, got {opts.num_beams}")
    return opts


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
