"""Start-up check that every utterance a run trains or validates on fits the LLM's context with its audio tokens
(llmasr.models.context): `llmasr train` and `llmasr check` refuse a recipe whose longest utterances would reach
positions the LLM was never trained on, instead of degrading (or failing) hours into the run."""

from __future__ import annotations

import logging

import numpy as np

from llmasr.data.loader import longest_kept
from llmasr.data.manifest import BadRecord
from llmasr.data.screen import where
from llmasr.models.context import ContextError, audio_tokens, capped_list_tokens, model_context, training_fit

log = logging.getLogger("llmasr.train")


def heard_seconds(durations, data_cfg, frontend, *, train: bool) -> np.ndarray:
    """The longest audio each line is heard as (NaN for lines batching leaves out): its duration, cut at
    data.batching.max_duration under truncate_to_max, lengthened by the slowest speed factor and the pauses
    augmentation may add (training only); under a Whisper frontend, as far as its window holds (the augmenter
    slows and pads a clip that far; AugmentConfig.cost counts it unstretched, as the window costs a batch)."""
    b = data_cfg.batching
    limit = longest_kept(b, frontend)
    d = np.asarray(durations, dtype=np.float64)
    d = np.minimum(d, limit) if b.truncate_to_max else np.where(d <= limit, d, np.nan)
    if not train:
        return d
    heard = d * data_cfg.augment.stretch + data_cfg.augment.silence.max_seconds
    return np.minimum(heard, frontend.chunk_seconds) if frontend.kind == "whisper" else heard


def text_tokens(manifest, prompt, lines: np.ndarray, room: np.ndarray, *, own_lists: bool = False) -> np.ndarray:
    """Prompt and transcript tokens of each of `lines`, encoded only where the transcript's UTF-8 bytes (a token
    count no tokenizer passes by more than one) could pass `room`; elsewhere that bound, which fits. `own_lists`: the
    prompt renders each line's own biasing list (its manifest `hotwords`), as the dataset does without drawn lists.

    A line's own transcript, task, system message and list are all within its bytes in the file (JSON escapes only
    lengthen them), so the default prompt's tokens plus the line's length bounds its count without reading it: only
    lines whose bound passes `room` are read and encoded (at millions of lines, those near the context)."""
    seams = 6 + (len(prompt.hotwords_template.encode()) + 2 if own_lists else 0)
    out = len(prompt.encode(None).ids) + np.asarray(manifest.line_bytes(), dtype=np.int64)[lines] + seams
    for j in np.flatnonzero(out > room).tolist():
        out[j] = _line_tokens(manifest, prompt, int(lines[j]), int(room[j]), own_lists)
    return out


def _line_tokens(manifest, prompt, i: int, room: int, own_lists: bool) -> int:
    """Line i's prompt and transcript tokens (0 for a line the dataset counts as bad), encoded where the bound from
    its transcript's bytes passes `room`."""
    try:
        utt = manifest[i]
    except BadRecord:
        return 0
    if not isinstance(utt.target, str) or not utt.target.strip():
        return 0
    task = utt.prompt if isinstance(getattr(utt, "prompt", None), str) and utt.prompt.strip() else None
    system = getattr(utt, "system", None)
    lists = [str(h) for h in getattr(utt, "hotwords", None) or ()] if own_lists else []
    bound = len(prompt.encode(None, task=task, system=system).ids) + len(utt.target.strip().encode()) + 2
    if lists:  # at most its text's bytes and a token at each seam (the cap only drops phrases)
        bound += len(prompt.hotwords_text(lists).encode()) + 2
    if bound <= room:
        return bound
    try:
        return len(prompt.encode(utt.target, task=task, hotwords=lists or None, system=system).ids)
    except ValueError:  # past the context on its own: the dataset counts it as bad data
        return 0


def hotword_bound(prompt, hotwords_cfg, sampler) -> tuple[int, str]:
    """(the most tokens a training utterance's drawn biasing list adds to its prompt, what bounds it): with
    hotwords_max_tokens, that many tokens of phrases; without, list_size's maximum of the longest phrase `sampler`
    (the dataset's HotwordSampler) can draw, in UTF-8 bytes (a bound on its tokens); either in the template, with a
    token at each seam. (0, "") without drawn lists (a line's own list is counted with its line)."""
    if not hotwords_cfg.samples or sampler is None:
        return 0, ""
    capped = capped_list_tokens(prompt)
    if capped is not None:
        return capped, f"a biasing list of model.prompt.hotwords_max_tokens {prompt.hotwords_max_tokens}"
    size, longest = hotwords_cfg.list_size[1], sampler.longest_phrase_bytes
    return len(prompt.hotwords_text(["x" * longest] * size).encode()) + 2, (
        f"a drawn biasing list of up to {size} phrases (data.hotwords.list_size) of up to {longest} bytes, each byte "
        "counted as a token: no model.prompt.hotwords_max_tokens caps it (set one, or lower list_size)"
    )


def check_context_fit(model, recipe, loaders) -> None:
    """ContextError when an utterance of the training or validation manifests (as batching keeps them) does not fit
    the LLM's context with its audio tokens; `loaders`: the run plan's (train loader, sampler, valid loader).
    Training's drawn biasing lists count at their cap (model.prompt.hotwords_max_tokens), else at the bound of
    list_size's longest lists (hotword_bound); a line's own list, which validation (and training that does not draw
    over it) renders, counts as its prompt renders it."""
    found = model_context(model)
    if found is None:
        return
    lists, bound = hotword_bound(model.prompt, recipe.data.hotwords, loaders[0].dataset.hotword_sampler)
    if lists and model.prompt.hotwords_max_tokens is None:  # counted at a bound: said, as the cap would be
        log.info("data.hotwords: training's drawn lists count as %d tokens against the LLM's context: %s", lists, bound)
    for name, loader in (("data.train", loaders[0]), ("data.valid", loaders[2])):
        if loader is None:
            continue
        manifest = loader.dataset.manifest
        seconds = heard_seconds(manifest.durations(), recipe.data, model.frontend, train=name == "data.train")
        lines = np.flatnonzero(~np.isnan(seconds))
        if name == "data.valid":  # its data.valid_max_utts subset: a line validation never hears cannot fail it
            lines = np.intersect1d(lines, loader.batch_sampler.base_indices)
        if not lines.size:
            continue
        extra = lists if name == "data.train" else 0  # validation renders each line's own list: counted with it
        audio = audio_tokens(model, seconds[lines])
        room = found[0] - audio - extra
        own = name == "data.valid" or not recipe.data.hotwords.samples
        tokens = text_tokens(manifest, model.prompt, lines, room, own_lists=own) + extra
        drawn = np.full(tokens.shape, bool(extra))  # lines counted with a drawn list
        if not own and recipe.data.hotwords.source == "manifest_or_sample":  # a line's own list, where it has one
            given = text_tokens(manifest, model.prompt, lines, room + extra, own_lists=True)
            drawn, tokens = tokens >= given, np.maximum(tokens, given)

        def named(j: int, lines=lines, manifest=manifest) -> str:
            return "{}:{}".format(*where(manifest, int(lines[j])))

        try:
            training_fit(model, seconds[lines], tokens, named, what=name, audio=audio)
        except ContextError as err:
            if not drawn[int(np.argmax(audio + tokens))]:  # the worst line, as training_fit finds it
                raise
            raise ContextError(f"{err} (its prompt tokens include {extra} for {bound})") from None
