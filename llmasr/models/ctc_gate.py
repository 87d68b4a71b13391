"""The CTC gate (DecodeConfig.ctc_gate): rows of a decoding batch in which the CTC head's greedy best path holds no
word are not searched, and their transcripts are empty.

An LLM decoding silence, noise or music writes words into it (the hallucination LLM-ASR is known for); a CTC head
trained beside it emits blank on every such frame, and its best path, which SpeechLLM.transcribe computes anyway, is
then empty. The gate needs no VAD and costs nothing but the search it saves.

    heard = heard_rows(ctc_texts)                     # per row: did the head hear a word
    ids, truncated, mode, scores = searched_rows_only(search, merged, batch, ctc, heard, synced, confidence, mode)
"""

from __future__ import annotations

import dataclasses

import torch

from llmasr.models.insert_audio import MergedInputs


def heard_rows(ctc_texts: list[str]) -> list[bool]:
    """Per row, whether the CTC head's greedy text holds anything but spaces."""
    return [bool(text.strip()) for text in ctc_texts]


def searched_rows(heard: list[bool], synced: bool) -> list[int]:
    """The rows the LLM searches: those the head heard. When none is and the search is synced across ranks (ZeRO-3's
    synced_gpus: every rank's generate steps together, each forward gathering the sharded weights), row 0 is still
    searched, its result dropped, so that this rank's generate and confidence pass meet the other ranks'."""
    run = [i for i, h in enumerate(heard) if h]
    return run if run or not synced else [0]


def take_rows(merged: MergedInputs, rows: list[int]) -> MergedInputs:
    """`merged` (left-padded generation inputs) with only `rows`, the leading columns no kept row reaches dropped."""
    index = torch.as_tensor(rows, dtype=torch.long, device=merged.attention_mask.device)
    mask = merged.attention_mask.index_select(0, index)
    real = torch.nonzero(mask.sum(0) > 0)
    first = int(real[0]) if real.numel() else 0

    def pick(t):
        return None if t is None else t.index_select(0, index)[:, first:]

    return dataclasses.replace(
        merged, inputs_embeds=pick(merged.inputs_embeds), attention_mask=mask[:, first:],
        position_ids=pick(merged.position_ids), labels=pick(merged.labels), audio_mask=pick(merged.audio_mask),
    )  # fmt: skip


def spread(heard: list[bool], rows: list[int], ids: list, truncated: list, scores: list | None) -> tuple:
    """The search's per-row results of `rows` (ids, truncation, confidence or None) put back among the batch's rows:
    a row the head did not hear has no tokens, no guard that ended it and no confidence (None), whether or not it
    was searched (searched_rows' stand-in row)."""
    n = len(heard)
    out_ids, out_cut = [[] for _ in range(n)], [None] * n
    out_scores = None if scores is None else [None] * n
    for k, i in enumerate(rows):
        if not heard[i]:
            continue
        out_ids[i], out_cut[i] = ids[k], truncated[k]
        if scores is not None:
            out_scores[i] = scores[k]
    return out_ids, out_cut, out_scores


def searched_rows_only(search, merged, batch, ctc, heard: list[bool], synced: bool, confidence: bool, mode: str):
    """`search(merged, feat_lens, ctc, hotwords)`'s (ids, truncation, mode, confidence or None) over the rows of
    `batch` (`merged` its generation inputs, `ctc` its head's (log-probs, lengths)) that `heard` holds true, spread
    back over all its rows; `mode`: the search's name, for a batch of which none is searched."""
    run = searched_rows(heard, synced)
    if not run:
        ids, truncated, scores = spread(heard, [], [], [], [] if confidence else None)
        return ids, truncated, mode, scores
    pick = torch.as_tensor(run, device=ctc[1].device)
    hotwords = None if batch.hotwords is None else [batch.hotwords[i] for i in run]
    sub_ctc = (ctc[0].index_select(0, pick), ctc[1].index_select(0, pick))
    ids, truncated, mode, scores = search(take_rows(merged, run), batch.feat_lens[pick.to(batch.feat_lens.device)],
                                          sub_ctc, hotwords)  # fmt: skip
    ids, truncated, scores = spread(heard, run, ids, truncated, scores)
    return ids, truncated, mode, scores
