"""Validation during training: loss and token accuracy (teacher forcing), and greedy WER/CER (model.generate).

Every rank validates its shard of the dev subset (data.valid_max_utts utterances; the sampler gives every rank
the same number of batches) and the sums are all-reduced, so all ranks return the same metrics. Under ZeRO-3 the
ranks gather parameters together, so generation runs with `synced_gpus=True`: a rank whose utterances finished
early keeps stepping until all are done.

The greedy pass is CTC-guided when the decode section says so (decode.ctc_weight; by default for a model with a
CTC head), as `llmasr decode` decodes. With a CTC head, the greedy pass also scores the CTC branch's best path
(`ctc_wer`, same scorer and metric as `wer`): a low ctc_wer next to a high wer says the encoder hears the words and
the LLM side loses them. Both come from one `model.transcribe` call, the function `llmasr decode` uses: the CTC head
reads the encoder output of the generation pass (a rank holding only the stand-in for an all-bad batch makes the
same call, so under ZeRO-3 every rank joins the same collectives). The loader hears each dev utterance from where
its speech starts when decoding does (decode.trim_leading_silence), so the WER that picks the best checkpoint is
the one `llmasr decode` would measure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from llmasr.scoring import CorpusScore, rate_name, score_corpus
from llmasr.train.process_group import all_reduce_sum
from llmasr.train.valid_sets import ValidSets

# The sums each rank accumulates over its batches, all-reduced before the metrics are taken from them.
SUMS = ("llm_loss", "ctc_loss", "tokens", "correct", "utts", "errors", "ref_len", "ctc_errors", "in_words", "in_chars",
        "ctc_gated")  # fmt: skip


def validate(engine, loader, decode_cfg, *, with_wer: bool = True, stop: Callable[[], object] | None = None):
    """Metrics over `loader`: loss (token-level mean LLM cross-entropy, plus the weighted CTC loss per utterance
    when the CTC head is on), acc (token accuracy), wer (greedy), ctc_wer (the CTC head's greedy best path, when
    the model has one), and the counts they come from. `stop`, asked before every batch on every rank (each has
    as many), answers alike on all of them: when it answers true the pass is abandoned and None returned (a stop
    signal: a whole pass could outlast the scheduler's grace period)."""
    result = _validate(engine, loader, decode_cfg, with_wer, stop, None)
    return None if result is None else result[0]


def validate_by_set(engine, loader, decode_cfg, sets: ValidSets | None, *, stop: Callable[[], object] | None = None):
    """validate()'s metrics of the pool (what train.best_metric ranks), and {name: the same metrics of that
    manifest's utterances, with `errors` and `ref_units` beside its error rate} for each of `sets` ({} for None: one
    manifest). One pass: each set's sums ride the pool's all-reduce."""
    result = _validate(engine, loader, decode_cfg, True, stop, sets)
    return None if result is None else (result[0], result[1])


@torch.no_grad()
def _validate(engine, loader, decode_cfg, with_wer: bool, stop, sets: ValidSets | None):
    model = engine.module
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(SUMS, 0.0)
    by_set = [dict.fromkeys(SUMS, 0.0) for _ in range(sets.n if sets else 0)]
    try:
        for batch in loader:
            if stop is not None and stop():
                return None
            if batch.empty or batch.duplicate:
                # A stand-in for an all-bad batch, or a padding repeat of a batch another step scores: run it
                # (ZeRO-3 ranks must stay in step) but count nothing, so every utterance is scored once.
                dev = _features_once(model, engine.to_device(batch))
                model(dev)
                if with_wer:
                    model.transcribe(
                        dev, decode_cfg.greedy(model.ctc_on_llm_vocab, max_new_tokens=1), synced_gpus=engine.stage == 3
                    )
                continue
            whole, parts = _batch_sums(engine, batch, decode_cfg, with_wer, sets)
            for key, value in whole.items():
                sums[key] += value
            for total, part in zip(by_set, parts):
                for key, value in part.items():
                    total[key] += value
    finally:
        model.train(was_training)
    # one all-reduce, the same length on every rank (every rank has the recipe's manifests)
    flat = [sums[k] for k in SUMS] + [s[k] for s in by_set for k in SUMS]
    reduced = all_reduce_sum(flat, engine.device)
    rows = [dict(zip(SUMS, reduced[i : i + len(SUMS)])) for i in range(0, len(reduced), len(SUMS))]
    per_set = {}
    for name, row in zip(sets.names if sets else (), rows[1:]):
        per_set[name] = _metrics(row, model, with_wer)
        if with_wer:
            per_set[name].update(errors=int(row["errors"]), ref_units=int(row["ref_len"]))
    whole = _metrics(rows[0], model, with_wer)
    if with_wer and decode_cfg.ctc_gate:  # a head still emitting blank everywhere empties all: said, not only wer 1
        whole["ctc_gated"] = int(rows[0]["ctc_gated"])
    return whole, per_set


def _features_once(model, dev):
    """`dev` with its features computed, when the device computes them (data.features_on): the teacher-forced
    forward and the greedy pass then share them instead of computing them twice."""
    if not dev.has_waves:
        return dev
    feats, _ = model.batch_features(dev)
    return dataclasses.replace(dev, feats=feats, wave=dev.wave[:, :0])


def _batch_sums(engine, batch, decode_cfg, with_wer: bool, sets: ValidSets | None) -> tuple[dict, list[dict]]:
    """One batch's share of SUMS: the teacher-forced forward, and with `with_wer` the greedy pass scored; and the
    share of each of `sets` ([] for None)."""
    model = engine.module
    dev = _features_once(model, engine.to_device(batch))
    row_set = None if sets is None else sets.of_rows(batch.indices)
    groups = None if row_set is None else torch.as_tensor(row_set, dtype=torch.int64)
    out = model(dev) if groups is None else model(dev, groups=groups, n_groups=sets.n)
    sums = {
        "llm_loss": float(out.llm_loss_sum),
        "ctc_loss": float(out.ctc_loss_sum),
        "tokens": float(out.n_tokens),
        "correct": float(out.n_correct),
        "utts": out.n_utts,
    }
    parts = []
    if sets is not None:
        keys = ("llm_loss", "tokens", "correct", "ctc_loss", "utts")  # SpeechLLMOutput.by_group's columns
        parts = [dict(zip(keys, row)) for row in out.by_group.tolist()]
    if not with_wer:
        return sums, parts
    hyps = model.transcribe(dev, decode_cfg.greedy(model.ctc_on_llm_vocab), synced_gpus=engine.stage == 3)
    corpus, llm_scores = score_corpus(zip(batch.targets, hyps.llm), decode_cfg.metric)
    sums["errors"], sums["ref_len"] = corpus.errors, corpus.ref_len
    sums["in_words"], sums["in_chars"] = corpus.units["wer"], corpus.units["cer"]
    if hyps.no_speech is not None:  # decode.ctc_gate: the utterances it left empty, logged beside the rate
        sums["ctc_gated"] = sum(hyps.no_speech)
    ctc_scores = None
    if model.ctc_head is not None:
        # Same references and metric, so the same reference length as the LLM's score.
        ctc_corpus, ctc_scores = score_corpus(zip(batch.targets, hyps.ctc), decode_cfg.metric)
        sums["ctc_errors"] = ctc_corpus.errors
    for g, part in enumerate(parts):
        rows = [i for i, s in enumerate(row_set) if s == g]
        mine = _corpus([llm_scores[i] for i in rows], decode_cfg.metric)
        part["errors"], part["ref_len"] = mine.errors, mine.ref_len
        part["in_words"], part["in_chars"] = mine.units["wer"], mine.units["cer"]
        if ctc_scores is not None:
            part["ctc_errors"] = _corpus([ctc_scores[i] for i in rows], decode_cfg.metric).errors
    return sums, parts


def _corpus(scores, metric: str) -> CorpusScore:
    """The corpus totals of some utterances' scores (score_corpus's, of one set's rows)."""
    corpus = CorpusScore(metric)
    for score in scores:
        corpus.add(score)
    return corpus


def _metrics(sums: dict[str, float], model, with_wer: bool) -> dict:
    """The metrics from the all-reduced sums (the same on every rank)."""
    has_ctc = model.ctc_head is not None
    n_tok, ref_len = sums["tokens"], sums["ref_len"]
    # nothing scored (every utterance a stand-in): NaN, which ranks no checkpoint (a 0 had ranked best)
    llm_loss = sums["llm_loss"] / n_tok if n_tok > 0 else float("nan")
    ctc_weight = float(getattr(model, "ctc_weight", 0.0) or 0.0)
    ctc_loss = sums["ctc_loss"] / sums["utts"] if sums["utts"] > 0 else float("nan")
    metrics = {
        "loss": llm_loss + (ctc_weight * ctc_loss if has_ctc else 0.0),
        "llm_loss": llm_loss,
        "acc": sums["correct"] / n_tok if n_tok > 0 else float("nan"),
        "n_utts": int(sums["utts"]),
        "n_tokens": int(n_tok),
    }
    if has_ctc:
        metrics["ctc_loss"] = ctc_loss
    if with_wer:
        metrics["wer"] = sums["errors"] / ref_len if ref_len > 0 else float("nan")
        if has_ctc:
            metrics["ctc_wer"] = sums["ctc_errors"] / ref_len if ref_len > 0 else float("nan")
        # which units the error rate counts: train.log and TensorBoard name it by them (rate_shown)
        metrics["utts_in_words"], metrics["utts_in_chars"] = int(sums["in_words"]), int(sums["in_chars"])
    return metrics


def rate_shown(metrics: dict) -> dict:
    """`metrics` as train.log and TensorBoard show them: the error rates named by the units they count (`cer`,
    `ctc_cer` for a set scored in characters; `mer` for one scored in both), the unit counts left out. The
    checkpoints' records and train.best_metric keep the name `wer` for the error rate, whatever its unit."""
    if "utts_in_words" not in metrics:
        return dict(metrics)
    name = rate_name(metrics["utts_in_words"], metrics["utts_in_chars"]).lower()
    shown = {}
    for key, value in metrics.items():
        if key in ("utts_in_words", "utts_in_chars"):
            continue
        shown[{"wer": name, "ctc_wer": f"ctc_{name}"}.get(key, key)] = value
    return shown
