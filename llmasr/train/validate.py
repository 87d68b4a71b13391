"""Validation during training: loss and token accuracy (teacher forcing), and greedy WER/CER (model.generate).

Every rank validates its shard of the dev subset (data.valid_max_utts utterances; the sampler gives every rank
the same number of batches) and the sums are all-reduced, so all ranks return the same metrics. Under ZeRO-3 the
ranks gather parameters together, so generation runs with `synced_gpus=True`: a rank whose utterances finished
early keeps stepping until all are done.
"""

from __future__ import annotations

import re
import unicodedata
from contextlib import contextmanager

import torch

from llmasr.train.engine import all_reduce_sum

_PUNCT = re.compile(r"[^\w\s']|_")


def normalize_text(text: str) -> str:
    """Lowercase, punctuation removed (apostrophes kept), whitespace collapsed: what WER is computed on."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def _unspaced_script(text: str) -> bool:
    """True for text in scripts written without spaces between words (CJK, Thai, ...): score by characters."""
    for ch in text:
        name = unicodedata.name(ch, "")
        if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR")):
            return True
    return False


def error_counts(refs: list[str], hyps: list[str], metric: str = "auto") -> tuple[int, int]:
    """(edit errors, reference length) summed over utterances. metric: wer | cer | auto (per utterance: CER for
    unspaced scripts, WER otherwise). Empty references count their hypothesis words as insertions."""
    import jiwer

    errors = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        ref, hyp = normalize_text(ref), normalize_text(hyp)
        by_char = metric == "cer" or (metric == "auto" and _unspaced_script(ref))
        if by_char:
            ref, hyp = " ".join(ref.replace(" ", "")), " ".join(hyp.replace(" ", ""))
        if not ref:
            errors += len(hyp.split())
            continue
        out = jiwer.process_words(ref, hyp)
        errors += out.substitutions + out.deletions + out.insertions
        total += len(ref.split())
    return errors, total


@contextmanager
def synced_generation(model, enabled: bool):
    """Make model.llm.generate pass synced_gpus=True (needed under ZeRO-3) for the duration."""
    if not enabled:
        yield
        return
    llm = model.llm
    original = llm.generate

    def generate(*args, **kwargs):
        kwargs.setdefault("synced_gpus", True)
        return original(*args, **kwargs)

    llm.__dict__["generate"] = generate
    try:
        yield
    finally:
        llm.__dict__.pop("generate", None)


@torch.no_grad()
def validate(engine, loader, decode_cfg, *, with_wer: bool = True) -> dict:
    """Metrics over `loader`: loss (token-level mean LLM cross-entropy, plus the weighted CTC loss per utterance
    when the CTC head is on), acc (token accuracy), wer (greedy), and the counts they come from."""
    model = engine.module
    was_training = model.training
    model.eval()
    llm_sum = ctc_sum = n_tok = n_correct = n_utt = errors = ref_len = 0.0
    try:
        for batch in loader:
            if batch["empty"]:
                # A stand-in for an all-bad batch: run it (ZeRO-3 ranks must stay in step) but count nothing.
                model(engine.to_device(batch))
                if with_wer:
                    with synced_generation(model, engine.stage == 3):
                        model.generate(engine.to_device(batch), max_new_tokens=1)
                continue
            dev = engine.to_device(batch)
            out = model(dev)
            llm_sum += float(out.llm_loss_sum)
            ctc_sum += float(out.ctc_loss_sum)
            n_tok += float(out.n_tokens)
            n_correct += float(out.n_correct)
            n_utt += out.n_utts
            if with_wer:
                with synced_generation(model, engine.stage == 3):
                    hyps = model.generate(
                        dev,
                        max_new_tokens=decode_cfg.max_new_tokens,
                        tokens_per_second=decode_cfg.tokens_per_second,
                        num_beams=1,
                    )
                e, r = error_counts(batch["targets"], hyps, decode_cfg.metric)
                errors += e
                ref_len += r
    finally:
        model.train(was_training)
    llm_sum, ctc_sum, n_tok, n_correct, n_utt, errors, ref_len = all_reduce_sum(
        [llm_sum, ctc_sum, n_tok, n_correct, n_utt, errors, ref_len], engine.device
    )
    llm_loss = llm_sum / max(n_tok, 1.0)
    ctc_weight = float(getattr(model, "ctc_weight", 0.0) or 0.0)
    ctc_loss = ctc_sum / max(n_utt, 1.0)
    metrics = {
        "loss": llm_loss + (ctc_weight * ctc_loss if model.ctc_head is not None else 0.0),
        "llm_loss": llm_loss,
        "acc": n_correct / max(n_tok, 1.0),
        "n_utts": int(n_utt),
        "n_tokens": int(n_tok),
    }
    if model.ctc_head is not None:
        metrics["ctc_loss"] = ctc_loss
    if with_wer:
        metrics["wer"] = errors / ref_len if ref_len > 0 else float("nan")
    return metrics
