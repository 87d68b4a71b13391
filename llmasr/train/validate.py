"""Validation during training: loss and token accuracy (teacher forcing), and greedy WER/CER (model.generate).

Every rank validates its shard of the dev subset (data.valid_max_utts utterances; the sampler gives every rank
the same number of batches) and the sums are all-reduced, so all ranks return the same metrics. Under ZeRO-3 the
ranks gather parameters together, so generation runs with `synced_gpus=True`: a rank whose utterances finished
early keeps stepping until all are done.

With a CTC head, the greedy pass also scores the CTC branch's best path (`ctc_wer`, same scorer and metric as
`wer`): a low ctc_wer next to a high wer says the encoder hears the words and the LLM side loses them. Both come from
one `model.transcribe` call, the function `llmasr decode` uses: the CTC head reads the encoder output of the
generation pass (a rank holding only the stand-in for an all-bad batch makes the same call, so under ZeRO-3 every
rank joins the same collectives).
"""

from __future__ import annotations

import torch

from llmasr.scoring import score_corpus
from llmasr.train.engine import all_reduce_sum


@torch.no_grad()
def validate(engine, loader, decode_cfg, *, with_wer: bool = True) -> dict:
    """Metrics over `loader`: loss (token-level mean LLM cross-entropy, plus the weighted CTC loss per utterance
    when the CTC head is on), acc (token accuracy), wer (greedy), ctc_wer (the CTC head's greedy best path, when
    the model has one), and the counts they come from."""
    model = engine.module
    has_ctc = model.ctc_head is not None
    was_training = model.training
    model.eval()
    llm_sum = ctc_sum = n_tok = n_correct = n_utt = errors = ref_len = ctc_errors = 0.0
    try:
        for batch in loader:
            dev = engine.to_device(batch)
            out = model(dev)
            # A stand-in for an all-bad batch runs too (ZeRO-3 ranks must stay in step) but counts nothing.
            greedy = decode_cfg.greedy(max_new_tokens=1) if batch.empty else decode_cfg.greedy()
            hyps = model.transcribe(dev, greedy, synced_gpus=engine.stage == 3) if with_wer else None
            if batch.empty:
                continue
            llm_sum += float(out.llm_loss_sum)
            ctc_sum += float(out.ctc_loss_sum)
            n_tok += float(out.n_tokens)
            n_correct += float(out.n_correct)
            n_utt += out.n_utts
            if with_wer:
                corpus, _ = score_corpus(zip(batch.targets, hyps.llm), decode_cfg.metric)
                errors += corpus.errors
                ref_len += corpus.ref_len
                if has_ctc:
                    # Same references and metric, so the same reference length as the LLM's score.
                    ctc_corpus, _ = score_corpus(zip(batch.targets, hyps.ctc), decode_cfg.metric)
                    ctc_errors += ctc_corpus.errors
    finally:
        model.train(was_training)
    llm_sum, ctc_sum, n_tok, n_correct, n_utt, errors, ref_len, ctc_errors = all_reduce_sum(
        [llm_sum, ctc_sum, n_tok, n_correct, n_utt, errors, ref_len, ctc_errors], engine.device
    )
    llm_loss = llm_sum / max(n_tok, 1.0)
    ctc_weight = float(getattr(model, "ctc_weight", 0.0) or 0.0)
    ctc_loss = ctc_sum / max(n_utt, 1.0)
    metrics = {
        "loss": llm_loss + (ctc_weight * ctc_loss if has_ctc else 0.0),
        "llm_loss": llm_loss,
        "acc": n_correct / max(n_tok, 1.0),
        "n_utts": int(n_utt),
        "n_tokens": int(n_tok),
    }
    if has_ctc:
        metrics["ctc_loss"] = ctc_loss
    if with_wer:
        metrics["wer"] = errors / ref_len if ref_len > 0 else float("nan")
        if has_ctc:
            metrics["ctc_wer"] = ctc_errors / ref_len if ref_len > 0 else float("nan")
    return metrics
