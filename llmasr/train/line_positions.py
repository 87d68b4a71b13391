"""How many LLM positions a line of a manifest can take: its audio tokens at the longest it is heard, its prompt
(with the longest biasing list it can carry) and its transcript. The one place that counts them, for the context check
(llmasr.train.context_fit) and for the batch budget data.batching.max_llm_tokens (the sampler's `llm_lens`).

The audio tokens are llmasr.models.context.audio_tokens of the audio a line is heard as (`heard_seconds`: at the
longest the dataset loads for its stated duration, stated_duration.duration_slack past it), counted by
the model's own frontend, encoder and adaptor: the built model's, or, before it exists (batching is planned first),
builder.audio_side's, the same classes built on the meta device from the recipe. Prompt and transcript are bounded by
the transcript's UTF-8 bytes (no tokenizer writes more tokens than bytes, and a token at each seam), and encoded
exactly where that bound would pass what is asked of them (the context, the batch budget): a bound counts no line
short, and only lines near the limit are tokenized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from llmasr.data.manifest import BadRecord
from llmasr.data.records import given_hotwords, task_of
from llmasr.data.sampler_settings import longest_kept
from llmasr.data.stated_duration import duration_slack
from llmasr.models.context import audio_tokens, capped_list_tokens

log = logging.getLogger("llmasr.train")


def heard_seconds(durations, data_cfg, frontend, *, train: bool) -> np.ndarray:
    """The longest audio each line is heard as (NaN for lines batching leaves out): its stated duration, cut at
    data.batching.max_duration under truncate_to_max, lengthened by as much more audio as the dataset takes for it
    (duration_slack: the batch budget and the context check both count the audio as loaded, not as stated),
    then by the slowest speed factor and the pauses augmentation may add (training only); under a Whisper frontend,
    as far as its window holds (the augmenter slows and pads a clip that far; AugmentConfig.cost counts it
    unstretched, as the window costs a batch)."""
    b = data_cfg.batching
    limit = longest_kept(b, frontend)
    d = np.asarray(durations, dtype=np.float64)
    d = np.minimum(d, limit) if b.truncate_to_max else np.where(d <= limit, d, np.nan)
    d = d + duration_slack(d)  # audio within the slack passes as right; the dataset cuts it at the limit
    d = np.minimum(d, limit) if b.truncate_to_max else d
    d = np.minimum(d, frontend.chunk_seconds) if frontend.kind == "whisper" else d  # longer: a bad item
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
    return _bounded(
        manifest, prompt, lines, room, own_lists, lambda i, r: _line_tokens(manifest, prompt, i, r, own_lists)
    )


def prompt_tokens(manifest, prompt, lines: np.ndarray, room: np.ndarray) -> np.ndarray:
    """The tokens of each of `lines`' prompt as validation's greedy pass reads it (its own task, system message and
    biasing list; no transcript): bounded by the line's bytes as text_tokens bounds a prompt and transcript, encoded
    only where that bound passes `room`; 0 for a line the dataset counts as bad."""
    return _bounded(manifest, prompt, lines, room, True, lambda i, _: _prompt_only(manifest, prompt, i))


def _bounded(manifest, prompt, lines: np.ndarray, room: np.ndarray, own_lists: bool, exact) -> np.ndarray:
    """Each of `lines`' bound from its bytes in the file (the default prompt's tokens, the line's bytes, a token at
    each seam, the list's wording where `own_lists`), replaced by `exact(line, its room)` where it passes `room`."""
    seams = 6 + (len(prompt.hotwords_template.encode()) + 2 if own_lists else 0)
    out = len(prompt.encode(None).ids) + np.asarray(manifest.line_bytes(), dtype=np.int64)[lines] + seams
    for j in np.flatnonzero(out > room).tolist():
        out[j] = exact(int(lines[j]), int(room[j]))
    return out


def _prompt_only(manifest, prompt, i: int) -> int:
    try:
        utt = manifest[i]
    except BadRecord:
        return 0
    if not isinstance(utt.target, str) or not utt.target.strip():  # a bad line to validation
        return 0
    try:
        lists = given_hotwords(utt) or None
        return len(prompt.encode(None, task=task_of(utt), hotwords=lists, system=getattr(utt, "system", None)).ids)
    except ValueError:  # a prompt the template refuses: the dataset counts the line as bad
        return 0


def line_text_bound(prompt, utt, own_lists: bool) -> int:
    """A bound on a parsed line's prompt and transcript tokens, from its transcript's (and own list's) UTF-8 bytes
    and its prompt's tokens; 0 for a line the dataset counts as bad (no transcript, a prompt that does not render)."""
    if not isinstance(utt.target, str) or not utt.target.strip():
        return 0
    lists = given_hotwords(utt) if own_lists else []
    try:
        bound = len(prompt.encode(None, task=task_of(utt), system=getattr(utt, "system", None)).ids)
    except ValueError:  # a prompt the template refuses: the dataset counts the line as bad
        return 0
    bound += len(prompt.answer_text(utt.target).encode()) + 2  # the template's spacing around it counted too
    if lists:  # at most its text's bytes and a token at each seam (the cap only drops phrases)
        bound += len(prompt.hotwords_text(lists).encode()) + 2
    return bound


def _line_tokens(manifest, prompt, i: int, room: int, own_lists: bool) -> int:
    """Line i's prompt and transcript tokens (0 for a line the dataset counts as bad), encoded where the bound from
    its transcript's bytes passes `room`."""
    try:
        utt = manifest[i]
    except BadRecord:
        return 0
    bound = line_text_bound(prompt, utt, own_lists)
    if bound <= room or not bound:
        return bound
    lists = given_hotwords(utt) if own_lists else []
    try:
        return len(
            prompt.encode(
                utt.target, task=task_of(utt), hotwords=lists or None, system=getattr(utt, "system", None)
            ).ids
        )
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


@dataclass
class LineRows:
    """The LLM positions of the lines one loader reads (training's or validation's): `audio` counts the audio
    tokens (a built SpeechLLM, or builder.audio_side: anything with .frontend, .encoder, .adaptor), `prompt` is the
    PromptBuilder. Training's drawn biasing lists count at `extra` tokens (`said`: what bounds them); a line's own
    list counts where prompts render it (`own`: validation, and training without drawn lists; `either`: training
    draws a list only for lines without one of their own, data.hotwords.source manifest_or_sample, so the larger
    counts)."""

    audio: object
    prompt: object
    data_cfg: object
    train: bool
    extra: int = 0
    said: str = ""
    own: bool = True
    either: bool = False

    @classmethod
    def of(cls, audio, prompt, data_cfg, hotword_sampler, *, train: bool) -> LineRows:
        """`hotword_sampler`: the training dataset's (None without drawn lists, and for validation)."""
        extra, said = hotword_bound(prompt, data_cfg.hotwords, hotword_sampler) if train else (0, "")
        drawn = train and data_cfg.hotwords.samples
        either = drawn and data_cfg.hotwords.source == "manifest_or_sample"
        return cls(audio, prompt, data_cfg, train, extra, said, own=not drawn, either=either)

    def seconds(self, durations) -> np.ndarray:
        """heard_seconds of `durations` for this loader."""
        return heard_seconds(durations, self.data_cfg, self.audio.frontend, train=self.train)

    def audio_tokens(self, seconds) -> np.ndarray:
        return np.asarray(audio_tokens(self.audio, seconds), dtype=np.int64)

    def text(self, utt) -> int:
        """A parsed line's prompt and transcript tokens, bounded (line_text_bound; the screen's pass over the lines
        counts them where it has the line parsed)."""
        out = line_text_bound(self.prompt, utt, self.own) + self.extra
        return max(out, line_text_bound(self.prompt, utt, True)) if self.either else out

    def tokens(self, manifest, lines: np.ndarray, room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prompt and transcript tokens of `lines`, encoded where their bound passes `room` (text_tokens); whether
        each was counted with a drawn list)."""
        tokens = text_tokens(manifest, self.prompt, lines, room - self.extra, own_lists=self.own) + self.extra
        drawn = np.full(tokens.shape, bool(self.extra))
        if self.either:  # a line's own list, where it has one
            given = text_tokens(manifest, self.prompt, lines, room, own_lists=True)
            drawn, tokens = tokens >= given, np.maximum(tokens, given)
        return tokens, drawn

    def rows(self, manifest, durations, texts: np.ndarray) -> np.ndarray:
        """The most LLM positions each line can take (0 for lines batching leaves out by length): its audio tokens
        and `texts` (`text` of each line, from the screen's pass), counted exactly where that bound passes
        data.batching.max_llm_tokens, so that no line is skipped as over the budget on a bound alone."""
        seconds = self.seconds(durations)
        known = ~np.isnan(seconds)
        rows = np.zeros(seconds.shape, dtype=np.int64)
        if not known.any():
            return rows
        rows[known] = self.audio_tokens(seconds[known]) + np.asarray(texts, dtype=np.int64)[known]
        budget = self.data_cfg.batching.max_llm_tokens
        over = np.flatnonzero(known & (rows > budget)) if budget is not None else np.zeros(0, dtype=np.int64)
        if over.size:
            audio = self.audio_tokens(seconds[over])
            exact, _ = self.tokens(manifest, over, budget - audio)
            rows[over] = audio + np.minimum(exact, np.asarray(texts, dtype=np.int64)[over])
        return rows
