"""The search SpeechLLM's transcribe and generate_ids run through the LLM's generate (`model`: the SpeechLLM): over
the rows the CTC gate lets through, under the logits processors it asks for (end tokens, repetition penalty, CTC
prefix guidance, the guards, the hotword boost), each row cut at its token cap by its audio's duration, and, where the
CTC head spells in its own vocabulary, a beam's n-best rescored with the head's score of each text."""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch

from llmasr.data.batch import Batch
from llmasr.models.confidence import hypothesis_logprobs
from llmasr.models.ctc_gate import searched_rows_only
from llmasr.models.ctc_guidance import CTCPrefixGuide, rescore_nbest
from llmasr.models.ctc_prefix import CTCPrefixScorer
from llmasr.models.decode_guards import EndTokens, Guards, caps_alone, other_end_ids
from llmasr.models.decoding import DecodeConfig, setting_names, unknown_setting
from llmasr.models.hotword_boost import HotwordBoost, beam_search_to_the_caps
from llmasr.models.llm import base_lm
from llmasr.models.shipped_generation import SET_ASIDE, SWITCHES, search_keywords


def gated_search(model, merged, batch: Batch, cfg: DecodeConfig, generate_kwargs: dict, ctc, heard) -> tuple:
    """llm_search's (ids, truncation, mode, confidence) per row of `batch`, over the rows `heard` holds true only
    (models.ctc_gate): a row it holds false has no tokens, no guard and no confidence."""
    if all(heard):
        return llm_search(model, merged, batch.feat_lens, cfg, generate_kwargs, ctc, batch.hotwords)
    mode = cfg.mode(cfg.guidance(True, model.ctc_on_llm_vocab), model.ctc_on_llm_vocab)

    def search(merged, feat_lens, ctc, hotwords):
        return llm_search(model, merged, feat_lens, cfg, generate_kwargs, ctc, hotwords)

    synced = bool(generate_kwargs.get("synced_gpus"))
    return searched_rows_only(search, merged, batch, ctc, heard, synced, cfg.confidence, mode)


# what generate takes out of its **kwargs itself, named neither by its signature nor by GenerationConfig (stop_strings
# need tokenizer=, assisted decoding across vocabularies assistant_tokenizer=)
GENERATE_KWARGS = frozenset({"tokenizer", "assistant_tokenizer", "trust_remote_code"})
# what llm_search passes generate itself, beside DecodeConfig's fields (a caller's would reach it twice): the end
# token, the guards, the boost and the guide are processors of its own, the n-best its own scores
SEARCH_SETS = {
    "inputs_embeds": "the audio and the prompt", "attention_mask": "the audio and the prompt",
    "eos_token_id": "the prompt's end token (the LLM's other end tokens end a row too)",
    "pad_token_id": "the prompt's padding",
    "logits_processor": "the guards, the hotword boost and the CTC guide", "do_sample": "a search, never sampling",
    "num_return_sequences": "the n-best the CTC head rescores", "output_scores": "the n-best the CTC head rescores",
    "return_dict_in_generate": "the n-best the CTC head rescores",
}  # fmt: skip

_ASIDE_WHY = {
    True: "switches generate to another search than llmasr's (it failed at the first batch)",
    False: "is one generate cannot run under llmasr's search (it reads input_ids, or beam search refuses it)",
}


def refuse_unknown_generate(llm, kwargs: dict, where: str) -> None:
    """TypeError naming each of `kwargs` (a search's settings no DecodeConfig field takes, for the LLM's generate) that
    generate would refuse, with the nearest keyword: called before the encoder runs, where generate had refused a typo
    only after it ("model_kwargs are not used by the model"). What generate takes is read from transformers where it
    says it: generate's signature, the LLM's GenerationConfig (whose update takes what it has) and the model's inputs
    (its check of model_kwargs, where this transformers has it; without it, such a keyword is left to generate); the
    few it takes out of its **kwargs itself, which nothing there names, are GENERATE_KWARGS. One the search passes
    generate itself (SEARCH_SETS) is refused too, saying what it sets there, and one it sets aside when the LLM ships
    it (shipped_generation.SET_ASIDE), saying why."""
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin

    if own := [k for k in kwargs if k in SEARCH_SETS]:
        raise TypeError("; ".join(f"{where}: {k!r} is set by llmasr's search itself ({SEARCH_SETS[k]})" for k in own))
    # what the search sets aside when the LLM ships it failed after the encoder when a caller gave it (0 or None: unset)
    if aside := [k for k in kwargs if k in SET_ASIDE and kwargs[k]]:
        raise TypeError("; ".join(f"{where}: {k}={kwargs[k]!r} {_ASIDE_WHY[k in SWITCHES]}" for k in aside))
    base = base_lm(llm)
    config = getattr(base, "generation_config", None) or GenerationConfig()
    named = (set(inspect.signature(GenerationMixin.generate).parameters) - {"self", "kwargs"}) | GENERATE_KWARGS
    inputs = getattr(base, "_validate_model_kwargs", None)
    unknown = []
    for key in (k for k in kwargs if k not in named and not hasattr(config, k)):
        try:
            if inputs is not None:
                inputs({key: True})  # None would be let through unread
        except ValueError:
            unknown.append(key)
    if unknown:
        known = setting_names() | named | set(config.to_dict())
        what = " (no DecodeConfig field, nor a keyword the LLM's generate takes)"
        raise TypeError("; ".join(unknown_setting(k, where, known, what) for k in unknown))


def llm_search(model, merged, feat_lens, cfg: DecodeConfig, generate_kwargs: dict, ctc, hotwords=None) -> tuple:
    """(token ids per row, each cut at its cap; truncation per row; mode name; with cfg.confidence each row's
    Confidence, of the row before the cut) of the search `cfg` asks for; `ctc`: (CTC log-probs, lengths) of a
    model with a CTC head, else None; `hotwords`: each row's phrases (cfg.hotword_boost boosts them)."""
    # deferred like every transformers import (models.llm)
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    cfg.validate_search()  # a DecodeConfig built in Python has met no recipe's checks
    llm_vocab = model.ctc_on_llm_vocab
    weight = cfg.guidance(ctc is not None, llm_vocab)
    caps = [cfg.new_token_cap(s) for s in (feat_lens.double() * model.frontend.frame_seconds).tolist()]
    guards = Guards(caps, cfg.repeat_limit, model.prompt.end_id, cfg.num_beams)
    boost, end = cfg.boost(weight, llm_vocab), model.prompt.end_id
    boosts = []
    if boost > 0 and hotwords is not None and any(hotwords):
        boosts.append(HotwordBoost(hotwords, model.prompt.tokenizer, boost, end, cfg.num_beams))
    ends = [end, *other_end_ids(model.llm.generation_config, model.prompt.tokenizer, end)]
    processors = [EndTokens(end, ends[1:])]
    if cfg.repetition_penalty != 1.0:  # generate's own skips as many first tokens of a row as it has left padding
        processors.insert(0, RepetitionPenaltyLogitsProcessor(float(cfg.repetition_penalty)))
    if weight > 0 and llm_vocab:
        scorer = CTCPrefixScorer(ctc[0], ctc[1], model.ctc_tokenizer.blank_id)
        listed = [boosts[0].tokens(u) for u in range(len(hotwords))] if boosts else None
        processors.append(CTCPrefixGuide(scorer, weight, end, cfg.num_beams, listed))
    # the boost after the guide (added to the joint score of the candidates it kept) and after the guards (an end
    # they force inside a phrase gives its bonus back)
    processors += [guards, *boosts]
    nbest = cfg.num_beams if weight > 0 and not llm_vocab else 1
    boosted_beams = nullcontext()
    if boosts and cfg.num_beams > 1:  # "never": nor does it stop once num_beams have ended (early_stopping true)
        boosted_beams = beam_search_to_the_caps(base_lm(model.llm))
        generate_kwargs = {"early_stopping": "never", **generate_kwargs}
    generate_kwargs = {**search_keywords(model.llm.generation_config, generate_kwargs, model.prompt.tokenizer),
                       **generate_kwargs}  # fmt: skip
    with boosted_beams, caps_alone(model.llm):
        out = model.llm.generate(
            inputs_embeds=merged.inputs_embeds,
            attention_mask=merged.attention_mask,
            max_new_tokens=max(caps) + 1,  # the guard ends each row at its own cap
            do_sample=False,
            eos_token_id=model.prompt.end_id,
            pad_token_id=model.prompt.pad_id,
            logits_processor=LogitsProcessorList(processors),
            num_return_sequences=nbest,
            output_scores=nbest > 1,
            return_dict_in_generate=True,
            **cfg.generation(),
            **generate_kwargs,
            **_no_router_loss(model.llm),
        )
    rows = [_unpadded(row, end, model.prompt.pad_id) for row in out.sequences.tolist()]
    if nbest > 1:
        penalty = generate_kwargs.get("length_penalty")
        rows = _rescored(model, rows, out.sequences_scores, nbest, ctc, weight, penalty)
    # Each row is cut at its own cap, so a looping utterance yields the same text in a batch as alone.
    truncated = [guards.truncation(row, cap) for row, cap in zip(rows, caps)]
    scores = hypothesis_logprobs(model.llm, merged, rows, ends, model.logit_transform) if cfg.confidence else None
    return [row[:cap] for row, cap in zip(rows, caps)], truncated, cfg.mode(weight, llm_vocab), scores


def _unpadded(row: list[int], end_id: int, pad_id: int) -> list[int]:
    """`row` without the padding generate writes after a row that something other than its end token ended (a
    shipped stop string): the guards had read those pads as tokens up to the cap (truncated), and the confidence
    scored them. A row the guards or the LLM ended holds the end token, and its padding follows it."""
    if end_id in row or pad_id == end_id:
        return row
    n = len(row)
    while n and row[n - 1] == pad_id:
        n -= 1
    return row[:n]


def _rescored(model, rows: list, scores: torch.Tensor, nbest: int, ctc, weight: float, penalty=None) -> list:
    """The best of each utterance's `nbest` rows by LLM log-probability joined with the CTC score of its text.
    Beam scores are divided by length ** length_penalty (tokens with the end token; the guards end every row
    with it), which is undone here so that both scores are sums over the hypothesis. `penalty`: the one passed
    to generate, else the LLM's generation_config's."""
    groups = [rows[b * nbest : (b + 1) * nbest] for b in range(len(rows) // nbest)]
    if penalty is None:
        penalty = getattr(model.llm.generation_config, "length_penalty", None)
    penalty = 1.0 if penalty is None else float(penalty)  # unset: generate's default, 1.0
    end = model.prompt.end_id
    sums = [s * (r.index(end) + 1 if end in r else len(r)) ** penalty for r, s in zip(rows, scores.tolist())]
    hyps = [[(model.prompt.decode(r), sums[b * nbest + i]) for i, r in enumerate(g)] for b, g in enumerate(groups)]
    best = rescore_nbest(hyps, ctc[0], ctc[1], model.ctc_tokenizer, weight)
    return [g[i] for g, i in zip(groups, best)]


def _no_router_loss(llm) -> dict:
    """generate's keyword for an MoE whose config.json sets output_router_logits: false. Its forward would compute the
    router's load-balancing loss at each cached step, over the whole attention mask but the new position's router
    logits alone, and raise on the shapes (transformers' load_balancing_loss_func); a search needs no loss."""
    return {"output_router_logits": False} if getattr(base_lm(llm).config, "output_router_logits", False) else {}
