"""The LLM's context and what an utterance takes of it: its prompt, its transcript (or the tokens decoding may
write) and its audio tokens.

`audio_tokens` is the one place that says how many audio embeddings an utterance of a given length puts into the
LLM: the frontend's frame count (FeatureExtractor.num_frames: frame shift, LFR), the encoder's `output_lengths`
(its subsampling) and the adaptor's `token_lengths` (its downsampling and token cap), so it cannot drift from what
the forward pass does. CTC compression (model.adaptor.ctc_compress) only merges frames, so the count without it is
the most an utterance can take. A causal LM reads positions past its config.json's context without an error
(RoPE) or with one deep inside a CUDA kernel (learned positions): `training_fit` and `decoding_fit` refuse that at
start-up instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from llmasr.config_io import ConfigError
from llmasr.text_files import read_json

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class ContextError(ConfigError):
    """Audio, prompt and transcript (or the tokens decoding may write) do not fit the LLM's context."""


# RoPE scalings that stretch the positions the model was trained on by their factor (Qwen's YaRN recipe keeps
# max_position_embeddings at the trained length); llama3 and longrope configs state the stretched length already.
STRETCHING = ("linear", "dynamic", "yarn")


def stated_context(stated: dict) -> tuple[int, str] | None:
    """(the context in tokens, the config.json key(s) that state it) of an LLM configuration, None where none does.
    A rope_scaling (transformers 5's rope_parameters) of a stretching type with a factor > 1 multiplies it."""
    for key in CONTEXT_KEYS:
        value = stated.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return _stretched(stated, value, key)
    return None


def _stretched(stated: dict, value: int, key: str) -> tuple[int, str]:
    for name in ("rope_scaling", "rope_parameters"):
        rope = stated.get(name)
        if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type")) not in STRETCHING:
            continue
        factor, base = rope.get("factor"), rope.get("original_max_position_embeddings")
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and math.isfinite(factor) and factor > 1:
            trained = base if isinstance(base, int) and not isinstance(base, bool) and base > 0 else value
            said = f"{name}.original_max_position_embeddings" if trained is base else key
            return max(value, int(trained * factor)), f"{said} x {name}.factor {factor:g}"
    return value, key


def llm_context(path) -> int | None:
    """The LLM's context in tokens, as its config.json states it (None where it states none)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    found = stated_context(read_json(config, dict, "LLM configuration"))
    return None if found is None else found[0]


def model_context(model) -> tuple[int, str] | None:
    """(context, config.json key) of a built SpeechLLM's LLM (its Hugging Face config, peft wrapper or not)."""
    from llmasr.models.llm import base_lm

    return stated_context(base_lm(model.llm).config.to_dict())


def capped_list_tokens(prompt) -> int | None:
    """The most tokens a biasing list adds to `prompt` (a PromptBuilder): hotwords_max_tokens of phrases, the
    template around them and a token at each seam; None where no cap bounds a list."""
    from llmasr.models.prompt import HOTWORDS_PLACEHOLDER

    if prompt.hotwords_max_tokens is None:
        return None
    template = prompt.hotwords_template.replace(HOTWORDS_PLACEHOLDER, "")
    return prompt.hotwords_max_tokens + len(prompt.tokenizer.encode(template, add_special_tokens=False)) + 2


def decoding_prompt(
    prompt, hotwords=None, manifest=None, *, lists: bool = True, given: str = "", counted=None, every: bool = False,
    task: str | None = None,
) -> tuple[int, str]:  # fmt: skip
    """(the most tokens a decode prompt takes, what gives it: "" for the plain prompt) of `prompt` (a PromptBuilder):
    the plain prompt or, with `hotwords` (`given`: where they come from), that list's; with `manifest` each line's
    own list, task and system message as it renders (named by its line), else a line's own list at the cap
    (capped_list_tokens). `lists` False: no prompt renders a list. A line's prompt is within its bytes of the plain
    one, `hotwords`' included (and the template's): only lines whose bytes could pass the most found are read.
    `counted`: the LinePrompts (of `prompt`, `hotwords` and `lists`) that keeps the lines' counts for decoding's
    budget, so that start-up reads each line once. `every`: that budget counts every line anyway, so they are all
    counted in one call (on N ranks, one gather of their shares) rather than in rounds that stop early. `task`: the
    task of every line without its own (decode --task), the plain prompt's."""
    plain = len(prompt.encode(None, task=task).ids)
    most, said = plain, ""
    if lists and hotwords:
        n = len(prompt.encode(None, task=task, hotwords=hotwords).ids)
        most, said = (n, given or "the biasing list") if n > plain else (most, said)
    if lists and manifest is None and (cap := capped_list_tokens(prompt)) is not None and plain + cap > most:
        most, said = (
            plain + cap,
            f"a line's own biasing list at model.prompt.hotwords_max_tokens {prompt.hotwords_max_tokens}",
        )
    if manifest is None:
        return most, said
    from llmasr.models.line_prompts import CHUNK, GIVES, LinePrompts

    if counted is None:
        counted = LinePrompts(prompt, hotwords, lists, task=task)
    elif not counted.agrees(prompt, hotwords, lists, task):
        raise ValueError(
            "decoding_prompt: `counted` counts the lines under another prompt builder, list, `lists` or task"
        )
    sizes = np.asarray(manifest.line_bytes(), dtype=np.int64)
    base, seams = most, 6 + len(prompt.hotwords_template.encode())  # a line's fields replace or join `hotwords`'
    order, found, stop = np.argsort(-sizes, kind="stable"), None, False
    if every:
        counted.counts(manifest, order)
    step = CHUNK * counted.ranks  # a round: each rank counts CHUNK lines, then one gather
    for start in range(0, order.size, step):
        chunk = order[start : start + step]
        chunk = chunk[base + sizes[chunk] + seams > most]  # the bytes descend: the lines that could still pass
        tokens, fields = counted.counts(manifest, chunk)
        for i, n, f in zip(chunk.tolist(), tokens.tolist(), fields.tolist()):
            if base + int(sizes[i]) + seams <= most:  # nor can any line after it
                stop = True
                break
            if f and n > most:  # a line that gives nothing of its own renders the prompt above (or is bad)
                most, found = n, (i, f)
        if stop or chunk.size < step:
            break
    if found is not None:
        i, f = found
        named = " and ".join(g for k, g in enumerate(GIVES) if f >> k & 1)
        said = f"{manifest.path}:{manifest.lineno(i)} (key {manifest[i].key})'s {named}"
    return most, said


def encoder_frames(model, seconds) -> np.ndarray:
    """The encoder frames (what a CTC head reads) of utterances of `seconds` (an array) in `model` (a SpeechLLM or
    builder.AudioSide): the frontend's frame count (frame shift, LFR), then the encoder's subsampling; int64, one a
    value, each distinct length computed once."""
    from llmasr.data.features import FeatureExtractor

    fx = FeatureExtractor(model.frontend)
    secs = np.asarray(seconds, dtype=np.float64)
    samples = np.round(np.nan_to_num(secs.ravel()) * model.frontend.sample_rate).astype(np.int64)
    distinct, back = np.unique(samples, return_inverse=True)
    frames = torch.tensor([fx.num_frames(int(n)) for n in distinct], dtype=torch.long)
    out = model.encoder.output_lengths(frames).numpy().astype(np.int64)
    return out[back].reshape(secs.shape)


def audio_tokens(model, seconds):
    """The audio tokens an utterance of `seconds` (a number, or an array of them) puts into `model`'s LLM (at most,
    under CTC compression); an int for a number, an int64 array for an array."""
    secs = np.asarray(seconds, dtype=np.float64)
    frames = torch.from_numpy(encoder_frames(model, secs.ravel()))
    counts = model.adaptor.token_lengths(frames.clamp(min=1))
    out = counts.numpy().astype(np.int64).reshape(secs.shape)
    return int(out) if out.ndim == 0 else out


def training_fit(model, seconds, text_tokens, where, *, what: str = "training", audio=None) -> None:
    """ContextError naming the worst utterance when, for any utterance, the audio tokens of `seconds` (the longest
    audio it is heard as) plus `text_tokens` (its prompt and transcript) pass the LLM's context; `where(i)` names
    utterance i (manifest:line). `audio`: audio_tokens of `seconds`, where the caller has them already."""
    found = model_context(model)
    if found is None or not len(seconds):
        return
    context, key = found
    audio = audio_tokens(model, np.asarray(seconds, dtype=np.float64)) if audio is None else np.asarray(audio)
    total = audio + np.asarray(text_tokens, dtype=np.int64)
    worst = int(np.argmax(total))
    if total[worst] <= context:
        return
    over = int(np.sum(total > context))
    raise ContextError(
        f"{what}: {over} utterance(s) do not fit the LLM's context of {context} tokens (config.json's {key}); the "
        f"worst, {where(worst)}, is heard as {float(seconds[worst]):g} s of audio, {int(audio[worst])} audio tokens, "
        f"beside {int(text_tokens[worst])} prompt and transcript tokens ({int(total[worst])} in all). Lower "
        "data.batching.max_duration (or the slowest data.augment.speed_perturb factor and the pauses), or leave out "
        "the utterances whose audio and text do not fit"
    )


def decoding_fit(model, window: float, prompt_tokens: int, new_tokens, prompt_said: str = "") -> tuple[float, str]:
    """(the longest audio, in seconds, at most `window` (0: no limit), that a decode window can hold so that its audio
    tokens, `prompt_tokens` (`prompt_said`: whose prompt, decoding_prompt's) and `new_tokens(seconds)` (the cap on
    what decoding writes) fit the LLM's context; why `window` does not fit, "" where it does): `window` itself where
    it fits or the LLM states no context. ContextError when not even a second of audio fits."""
    found = model_context(model)
    if found is None:
        return window, ""
    context, key = found
    prompt = f"the prompt ({prompt_tokens} tokens{', ' + prompt_said if prompt_said else ''})"

    def fits(s: float) -> bool:
        return audio_tokens(model, s) + prompt_tokens + new_tokens(s) <= context

    if window > 0 and fits(window):
        return window, ""
    stated = f"the LLM's context of {context} tokens (config.json's {key})"
    if not fits(1.0):
        raise ContextError(
            f"decoding: one second of audio ({audio_tokens(model, 1.0)} audio tokens) beside {prompt} and the tokens "
            f"decoding may write ({new_tokens(1.0)}) already passes {stated}; lower decode.max_new_tokens"
            + (f", or shorten {prompt_said}" if prompt_said else "")
        )
    lo, hi = 1.0, window if window > 0 else 2.0
    while window <= 0 and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    fit = math.floor(lo * 100) / 100
    said = (
        f"a decode window of {window:g} s gives {audio_tokens(model, window)} audio tokens"
        if window > 0
        else "an utterance decoded whole may give any number of audio tokens"
    )
    return fit, (
        f"{said}, which beside {prompt} and the tokens decoding may write "
        f"(decode.max_new_tokens, else tokens_per_second x seconds + 8) pass {stated}; {fit:g} s fit"
    )
