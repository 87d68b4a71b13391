"""Start-up check that every utterance a run trains or validates on fits the LLM's context with its audio tokens
(llmasr.models.context): `llmasr train` and `llmasr check` refuse a recipe whose longest utterances would reach
positions the LLM was never trained on, instead of degrading (or failing) hours into the run. What a line takes of
the context is counted by llmasr.train.line_positions, as the batch budget data.batching.max_llm_tokens counts it:
its audio at the longest the dataset loads for its stated duration (records.duration_slack past it)."""

from __future__ import annotations

import logging

import numpy as np

from llmasr.data.screen import where
from llmasr.models.context import ContextError, model_context, training_fit
from llmasr.train.line_positions import LineRows

log = logging.getLogger("llmasr.train")


def check_context_fit(model, recipe, loaders) -> None:
    """ContextError when an utterance of the training or validation manifests (as batching keeps them) does not fit
    the LLM's context with its audio tokens; `loaders`: the run plan's (train loader, sampler, valid loader).
    Training's drawn biasing lists count at their cap (model.prompt.hotwords_max_tokens), else at the bound of
    list_size's longest lists (line_positions.hotword_bound); a line's own list, which validation (and training that
    does not draw over it) renders, counts as its prompt renders it."""
    found = model_context(model)
    if found is None:
        return
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
