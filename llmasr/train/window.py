"""One optimizer update: the accumulation window of micro batches, its loss normalisation and its statistics.

Loss normalisation: a window is the k micro batches of one optimizer update (fewer at an epoch end). Its labelled
token and utterance counts are summed over all ranks first; each micro batch's loss is then its token-loss sum
divided by (window tokens / world size) (the CTC term likewise per utterance), so after DeepSpeed averages over
ranks the gradient equals that of one batch holding the whole window, whatever the batch sizes.
"""

from __future__ import annotations

import math
from itertools import islice

import torch

from llmasr.data.batch import Batch
from llmasr.models.devices import host_values
from llmasr.train.flops import FlopCounter, StepCount
from llmasr.train.process_group import all_gather_object, all_reduce_sum


def run_window(engine, window: list[Batch], world_size: int, counter: FlopCounter | None = None,
               wait_s: float = 0.0) -> dict:  # fmt: skip
    """Forward/backward every micro batch of one window and apply the update; returns window-wide stats. With a
    `counter`, stats["count"] is the window's StepCount (FLOPs, tokens, frames) summed over all ranks. `wait_s`: the
    seconds this rank waited for the window's batches; stats["data_wait_s"] is the longest any rank waited (a slow
    loader on one rank holds every rank up in the gradient all-reduce, where no loader clock sees it)."""
    real = [b for b in window if not b.empty]
    n_tok, n_utt = all_reduce_sum([sum(b.labelled_tokens for b in real), sum(b.size for b in real)], engine.device)
    tok_norm = max(n_tok, 1.0) / world_size
    utt_norm = max(n_utt, 1.0) / world_size
    skip_update = n_utt == 0 and skips_nonfinite(engine)  # stand-ins only, on every rank: nothing to learn
    kept = []  # (batch, its output's figures) of this rank's real micro batches: read back once the window has run
    for i, batch in enumerate(window):
        empty = batch.empty
        out = engine.micro_step(
            batch,
            token_normalizer=tok_norm,
            utt_normalizer=utt_norm,
            boundary=i == len(window) - 1,
            zero_loss=empty,
            counter=None if empty else counter,  # a stand-in batch is no work done on data
            skip_update=skip_update,
        )
        if not empty:
            aux = 0.0 if out.router_aux_sum is None else out.router_aux_sum
            kept.append((batch, (out.n_tokens, out.llm_loss_sum, out.ctc_loss_sum, out.n_correct, out.ctc_unaligned,
                                 aux)))  # fmt: skip
    # One read back from the device for the whole window: a read after each micro batch would keep the host from
    # queueing the next micro batch's kernels while the device runs the current ones.
    count = counter.take_pending() if counter is not None else []
    read = host_values([v for _, figures in kept for v in figures] + count)  # a value that is no tensor passes as is
    n = sum(len(figures) for _, figures in kept)
    read, count = read[:n], read[n:]
    llm_sum = ctc_sum = correct = audio = aux_sum = 0.0
    unaligned: list[str] = []  # this rank's utterances CTC had no path for (their CTC loss is 0)
    nonfinite: list[list[str]] = []  # the keys of this rank's micro batches whose loss is NaN or infinite
    for j, (batch, figures) in enumerate(kept):
        n_tokens, llm, ctc, n_correct, rows, aux = read[j * len(figures) : (j + 1) * len(figures)]
        if int(n_tokens) != batch.labelled_tokens:
            raise RuntimeError(
                f"the model labelled {int(n_tokens)} tokens but the batch holds {batch.labelled_tokens}: "
                "loss normalisation would be wrong"
            )
        if not (math.isfinite(llm) and math.isfinite(ctc)):
            nonfinite.append(list(batch.keys))
        llm_sum += llm
        aux_sum += aux
        ctc_sum += ctc
        correct += n_correct
        audio += batch.audio_seconds
        unaligned += [key for key, bad in zip(batch.keys, rows or []) if bad]  # rows None: no CTC head
    lists = sum(bool(h) for b in real for h in b.hotwords)
    dropped = sum(sum(b.hotwords_dropped) for b in real)
    waits = rank_slots(wait_s)  # each rank's wait in its own slot: the sum holds every rank's
    llm_sum, ctc_sum, correct, audio, lists, dropped, n_unaligned, n_nonfinite, aux_sum, *rest = all_reduce_sum(
        [llm_sum, ctc_sum, correct, audio, lists, dropped, len(unaligned), len(nonfinite), aux_sum, *waits, *count],
        engine.device,
    )
    waits, count = rest[: len(waits)], rest[len(waits) :]
    # a window of stand-ins only (every batch bad on every rank) has no loss: NaN, not a 0 that draws a false dip
    nan = float("nan")
    stats = {"llm_loss": llm_sum / n_tok if n_tok > 0 else nan, "acc": correct / n_tok if n_tok > 0 else nan}
    model = engine.module
    loss = stats["llm_loss"]
    if getattr(model, "ctc_head", None) is not None:
        stats["ctc_loss"] = ctc_sum / n_utt if n_utt > 0 else nan
        loss += model.ctc_weight * stats["ctc_loss"]
        stats.update(ctc_unaligned=int(n_unaligned), ctc_unaligned_keys=unaligned)  # all ranks; this rank's keys
    router = getattr(model, "router_aux", None)
    if router is not None:  # the MoE's load-balancing term: in the loss trained on, apart from llm_loss
        stats["router_aux_loss"] = aux_sum / n_tok if n_tok > 0 else nan
        loss += router.coef * stats["router_aux_loss"]
    stats.update(loss=loss, n_tokens=int(n_tok), n_utts=int(n_utt), audio_seconds=audio)
    stats.update(hotword_lists=int(lists), hotwords_dropped=int(dropped))  # the token cap's drops, logged
    stats["data_wait_s"] = max(waits)
    if n_nonfinite:  # every rank knows it from the sum, so every rank joins the gather; the keys name the data
        stats["nonfinite_keys"] = all_gather_object(nonfinite)  # per rank: its micro batches' keys
    if counter is not None:
        stats["count"] = StepCount.from_list(count)
    return stats


def rank_slots(value: float) -> list[float]:
    """[world size] zeros with `value` in this rank's slot (one slot outside a process group)."""
    dist = torch.distributed
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    slots = [0.0] * dist.get_world_size()
    slots[dist.get_rank()] = value
    return slots


def skips_nonfinite(engine) -> bool:
    """Whether DeepSpeed's optimizer skips an update whose gradient is not finite, as a window of stand-ins only is
    skipped. ZeRO-1/2 checks only with check_grad_overflow (fp16; bf16 by default) or, outside bf16, with the norm
    computed: under zero_optimization.compute_grad_norm false at fp32 the stand-ins' NaN would reach every weight,
    so such a window steps its zero gradient instead."""
    opt = engine.optimizer
    if not hasattr(opt, "check_grad_overflow"):  # ZeRO-0 (TrainEngine.micro_step checks fp32), ZeRO-3, bf16/fp16
        return True
    return bool(opt.check_grad_overflow or (opt.compute_grad_norm and engine.dtype != torch.bfloat16))


def windows(batches, k: int):
    """Consecutive lists of k batches; the last one may be shorter (it still completes an update)."""
    it = iter(batches)
    while True:
        window = list(islice(it, k))
        if not window:
            return
        yield window
