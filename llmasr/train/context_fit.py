"""Start-up check that every utterance a run trains or validates on fits the LLM's context with its audio tokens
(llmasr.models.context): `llmasr train` and `llmasr check` refuse a recipe whose longest utterances would reach
positions the LLM was never trained on, instead of degrading (or failing) hours into the run. What a line takes of
the context is counted by llmasr.train.line_positions, as the batch budget data.batching.max_llm_tokens counts it:
its audio at the longest the dataset loads for its stated duration (stated_duration's slack past it). Validation's
greedy pass (its WER) reads the prompt and audio and then writes up to the decode section's cap: that must fit too."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from llmasr.data.screen import where
from llmasr.models.context import ContextError, audio_tokens, model_context, training_fit
from llmasr.train.line_positions import LineRows, prompt_tokens

log = logging.getLogger("llmasr.train")


@dataclass(frozen=True)
class LongestRow:
    """The line of a data set with the most audio tokens, as the context check counts it."""

    name: str  # data.train or data.valid
    where: str  # manifest:line
    seconds: float  # the longest it is heard as
    audio: int  # its audio tokens (without CTC compression: the most it gives)
    text: int  # its prompt and transcript tokens


def check_context_fit(model, recipe, loaders, *, report: bool = False) -> list[LongestRow]:
    """ContextError when an utterance of the training or validation manifests (as batching keeps them) does not fit
    the LLM's context with its audio tokens; `loaders`: the run plan's (train loader, sampler, valid loader).
    Training's drawn biasing lists count at their cap (model.prompt.hotwords_max_tokens), else at the bound of
    list_size's longest lists (line_positions.hotword_bound); a line's own list, which validation (and training that
    does not draw over it) renders, counts as its prompt renders it. Validation lines count a second time as its
    greedy pass reads them: prompt, audio and the tokens it may write (generation_fit). With `report` (llmasr check)
    it returns the line of data.train and of data.valid with the most audio tokens, its text encoded (training's
    start-up reads no line it need not); none where the LLM states no context."""
    found, longest = model_context(model), []
    if found is None:
        return longest
    for name, loader in (("data.train", loaders[0]), ("data.valid", loaders[2])):
        if loader is None:
            continue
        train = name == "data.train"
        rule = LineRows.of(model, model.prompt, recipe.data, loader.dataset.hotword_sampler, train=train)
        if rule.extra and model.prompt.hotwords_max_tokens is None:  # counted at a bound: said, as the cap would be
            log.info("data.hotwords: training's drawn lists count as %d tokens against the LLM's context: %s",
                     rule.extra, rule.said)  # fmt: skip
        manifest = loader.dataset.manifest
        seconds = rule.seconds(manifest.durations())
        lines = np.flatnonzero(~np.isnan(seconds))
        if not train:  # its data.valid_max_utts subset: a line validation never hears cannot fail it
            lines = np.intersect1d(lines, loader.batch_sampler.base_indices)
        if not lines.size:
            continue
        audio = rule.audio_tokens(seconds[lines])
        tokens, drawn = rule.tokens(manifest, lines, found[0] - audio)

        def named(j: int, lines=lines, manifest=manifest) -> str:
            return "{}:{}".format(*where(manifest, int(lines[j])))

        try:
            training_fit(model, seconds[lines], tokens, named, what=name, audio=audio)
        except ContextError as err:
            if not drawn[int(np.argmax(audio + tokens))]:  # the worst line, as training_fit finds it
                raise
            raise ContextError(f"{err} (its prompt tokens include {rule.extra} for {rule.said})") from None
        if not train:
            generation_fit(model, recipe.decode, manifest, lines, seconds[lines], audio, named, found)
        if not report:
            continue
        j = int(np.argmax(audio))
        text = int(rule.tokens(manifest, lines[j : j + 1], np.zeros(1, dtype=np.int64))[0][0])  # encoded, no bound
        longest.append(LongestRow(name, named(j), float(seconds[lines][j]), int(audio[j]), text))
    return longest


def sequence_lines(model, recipe, longest: list[LongestRow]) -> list[str]:
    """`llmasr check`'s report of the LLM sequences a recipe makes: the audio tokens of 10 s, each data set's line of
    the most audio tokens against the LLM's context, and, under model.adaptor.ctc_compress, that those counts are
    without it."""
    a = recipe.model.adaptor
    lines = [
        "LLM sequences",
        f"  audio tokens: {audio_tokens(model, 10.0)} for 10 s of audio (the encoder's frames through the {a.type} "
        f"adaptor, downsample {a.downsample}{'' if a.audio_token_cap == 'none' else ', capped: ' + a.audio_token_cap})",
    ]
    found = model_context(model)
    for row in longest:
        lines.append(
            f"  {row.name}: most audio tokens {row.audio} ({row.where}, heard as {row.seconds:g} s), with its "
            f"{row.text} prompt and transcript tokens {row.audio + row.text} of the LLM's context of {found[0]}"
        )
    if a.ctc_compress != "none":
        kept = "blank runs dropped: about one a token" if a.ctc_compress == "avg_no_blank" else "blank runs kept"
        lines.append(
            f"  model.adaptor.ctc_compress {a.ctc_compress}: the adaptor reads the encoder frames averaged over the "
            f"CTC head's best-path segments ({kept}), which the head decides as it trains: the audio tokens above are "
            "without it, the most an utterance gives"
        )
    return lines


def generation_fit(model, decode_cfg, manifest, lines, seconds, audio, named, found) -> None:
    """ContextError when validation's greedy pass over `lines` (heard as `seconds`, `audio` tokens each) could write
    past the LLM's context (`found`: model_context): a row's prompt and audio, then up to the most tokens any row
    may write (decode.max_new_tokens, else decode.tokens_per_second x its seconds + 8). The most, not the row's own
    cap: a row that has ended keeps taking positions while the others of its batch (under ZeRO-3, of every rank)
    still write. A learned position table fails there (an index past it, at the first validation); RoPE reads
    positions it was never trained on."""
    context, key = found
    caps = np.array([decode_cfg.new_token_cap(s) for s in seconds.tolist()], dtype=np.int64)
    most = int(caps.max())
    prompts = prompt_tokens(manifest, model.prompt, lines, context - most - audio)
    total = audio + prompts + most
    worst = int(np.argmax(total))
    if total[worst] <= context:
        return
    cap = (
        f"decode.max_new_tokens {decode_cfg.max_new_tokens}"
        if decode_cfg.max_new_tokens is not None
        else f"decode.tokens_per_second {decode_cfg.tokens_per_second:g} x {float(seconds[int(np.argmax(caps))]):g} s "
        "+ 8"
    )
    raise ContextError(
        f"data.valid: validation's greedy pass (its WER) may write {most} tokens ({cap}) after the prompt and audio "
        f"of {int(np.sum(total > context))} utterance(s), past the LLM's context of {context} tokens (config.json's "
        f"{key}); the worst, {named(worst)}, is heard as {float(seconds[worst]):g} s of audio, {int(audio[worst])} "
        f"audio tokens, beside {int(prompts[worst])} prompt tokens ({int(total[worst])} in all). Lower "
        "decode.max_new_tokens (or decode.tokens_per_second), or data.batching.max_duration"
    )
