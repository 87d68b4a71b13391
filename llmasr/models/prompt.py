"""Prompt building from the tokenizer's chat template (llmasr.models.chat_template), shared by training and inference.

The chat is rendered once with a placeholder where the audio goes; the text on either side of the placeholder is
tokenized separately, and the model writes the audio embeddings at `audio_pos`. Training appends the target
tokens and the template's end-of-turn token; inference stops at `target_start`. Because both paths call the same
`encode`, the prompt a model is trained on is the prompt it is decoded with (FunASR users report drift here).

Hotwords: an utterance's biasing list is rendered into the user message before the task, as `hotwords_template`
with its `{hotwords}` placeholder replaced by the phrases joined with `hotwords_separator`; an empty list adds
nothing, so the prompt is then exactly the plain one. With `hotwords_max_tokens`, a list whose joined phrases take
more tokens drops its longest phrase (in tokens; the first of equals) until it fits; `EncodedPrompt` says which
phrases were rendered and how many were dropped. A phrase that spells a special token ("<|im_end|>") is text there,
as it is in a transcript.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from llmasr.models.chat_template import PromptError, fixed_today, render_variables, set_chat_template, standalone

AUDIO_PLACEHOLDER = "<|llmasr_audio|>"
HOTWORDS_PLACEHOLDER = "{hotwords}"
# A fast tokenizer keeps whether it splits special-token text as state it sets on every call (transformers'
# encode_special_tokens): two threads sharing one would tokenize with each other's setting.
_TOKENIZING = threading.Lock()
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # a reasoning block an answer may open with (Qwen3)


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]  # prompt tokens (+ target tokens + end token when a target was given)
    audio_pos: int  # index in `ids` before which the audio embeddings are inserted
    target_start: int  # index in `ids` where the labels begin (== len(ids) without a target)
    hotwords: tuple[str, ...] = ()  # the biasing phrases rendered into the prompt (after the token cap)
    hotwords_dropped: int = 0  # phrases the token cap left out


def spelled(tokenizer, ids) -> str:
    """The text LLM token ids spell, special tokens left out, without transformers' clean-up of spaces that a
    tokenizer_config.json may switch on (Llama 3's does): it joins " 's" and " ," to the word before, so "the word
    'social'" had decoded as "the word'social'", not the transcript the tokens were trained on.

    Bytes that spell no character are left out: a byte-level tokenizer spells a Chinese character in up to three
    tokens, and a hypothesis cut inside one (the length cap, the repetition stop) had ended in U+FFFD in hyp.txt."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).replace("\ufffd", "")


class PromptBuilder:
    def __init__(
        self,
        tokenizer,
        *,
        task: str = "Transcribe the audio.",
        system: str | None = None,
        chat_template: str | None = None,
        audio_separator: str = "\n",
        hotwords_template: str = "Hotwords: {hotwords}. ",
        hotwords_separator: str = ", ",
        hotwords_max_tokens: int | None = None,
        template_kwargs: dict | None = None,
        source: str = "the LLM tokenizer",
        max_tokens: int | None = None,
    ):
        if hotwords_template.count(HOTWORDS_PLACEHOLDER) != 1:
            raise PromptError(f"hotwords_template must hold {HOTWORDS_PLACEHOLDER} once, got {hotwords_template!r}")
        self.tokenizer = tokenizer
        self.task = task
        self.audio_separator = audio_separator
        self.hotwords_template = hotwords_template
        self.hotwords_separator = hotwords_separator
        self.hotwords_max_tokens = hotwords_max_tokens
        self.system = system
        self.source = source
        self.template_kwargs = dict(template_kwargs or {})
        self.max_tokens = max_tokens  # the LLM's context: a prompt and transcript past it are refused
        set_chat_template(tokenizer, chat_template, source)
        if AUDIO_PLACEHOLDER in tokenizer.get_vocab():
            raise PromptError(f"{source} already defines the token {AUDIO_PLACEHOLDER!r}, which llmasr reserves")
        self._cache: dict[tuple[str, str | None], tuple[list[int], list[int]]] = {}
        added = getattr(tokenizer, "added_tokens_decoder", {}).values()
        specials = set(tokenizer.all_special_tokens) | {t.content for t in added if getattr(t, "special", False)}
        self._special_texts = tuple(t for t in specials if t)
        # the last capped list: one `--hotwords FILE` list is every line's, and capping it re-encodes it per drop
        self._capped: tuple[tuple[str, ...], tuple[list[str], int]] | None = None
        self._prompt_ids(task)  # render once now so template errors surface at start-up
        self.standalone_template()  # and variables an export's template could not carry
        self.end_id = self._find_end_id()
        self.answer_lead, self.answer_trail = self._answer_spacing()
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.end_id)

    def _messages(self, task: str, target: str | None, system: str | None = None) -> list[dict]:
        system = self.system if system is None else system
        messages = [{"role": "system", "content": system}] if system else []
        user = f"{task}{self.audio_separator}{AUDIO_PLACEHOLDER}" if task else AUDIO_PLACEHOLDER
        messages.append({"role": "user", "content": user})
        if target is not None:
            messages.append({"role": "assistant", "content": target})
        return messages

    def _render(self, task: str, target: str | None, system: str | None = None) -> str:
        try:
            with fixed_today():
                return self.tokenizer.apply_chat_template(
                    self._messages(task, target, system), tokenize=False, add_generation_prompt=target is None,
                    **self.render_variables(),
                )  # fmt: skip
        except Exception as err:  # jinja errors, templates that reject a role
            raise PromptError(f"{self.source}: the chat template failed to render: {err}") from err

    def rendered(self, target: str | None) -> str:
        """The chat of the builder's task as the template writes it: the generation prompt (`target` None), or the
        conversation with `target` as the assistant's finished answer."""
        return self._render(self.task, target)

    def render_variables(self) -> dict:
        """The variables besides the chat llmasr renders every prompt with (llmasr.models.chat_template)."""
        return render_variables(self.template_kwargs)

    def standalone_template(self) -> str | dict:
        """The tokenizer's chat template with render_variables set at its top (llmasr.models.chat_template.standalone),
        for an export's plain `apply_chat_template`."""
        return standalone(self.tokenizer.chat_template, self.template_kwargs)

    def _find_end_id(self) -> int:
        """The token the template closes an assistant turn with (Qwen: <|im_end|>), else the tokenizer's EOS."""
        marker = "llmasrprobe"
        full = self._render(self.task, marker)
        if marker not in full:
            raise PromptError(f"{self.source}: the chat template drops the assistant message: {full!r}")
        tail = full[full.rindex(marker) + len(marker) :]
        tail_ids = self._encode(tail) if tail.strip() else []
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        for tid in tail_ids:
            if tid in special:
                return int(tid)
        if self.tokenizer.eos_token_id is not None:
            return int(self.tokenizer.eos_token_id)
        raise PromptError(
            f"{self.source}: cannot tell which token ends an answer: the chat template closes the assistant turn "
            f"with {tail!r} (no special token) and the tokenizer has no eos_token"
        )

    def _answer_spacing(self) -> tuple[str, str]:
        """(the whitespace the template writes between the prompt and an answer's text, and between that text and
        the end token), where the full conversation's tokens spell it: a template that writes "[/INST] " + answer
        renders " the" as one token, which a transcript tokenized alone spelled "t", "he". ("", "") where the
        template writes none, writes other text there (Qwen3's reasoning block), or the tokenizer already spells a
        word's leading space itself (sentencepiece's "▁the")."""
        marker = "llmasrprobe"
        prompt, full = self._render(self.task, None), self._render(self.task, marker)
        at = full.find(marker, len(prompt))
        if not full.startswith(prompt) or at < 0:
            return "", ""
        lead = full[len(prompt) : at]
        tail = full[at + len(marker) :]
        end = self.tokenizer.convert_ids_to_tokens(self.end_id)
        trail = tail[: tail.find(end)] if isinstance(end, str) and end in tail else ""
        asked = self._split(prompt)[1]
        rest = self._split(full)[1]
        if rest[: len(asked)] != asked or self.end_id not in rest[len(asked) :]:
            return "", ""  # the answer's first token joins the prompt's last: no spacing of ours can spell that
        answer = rest[len(asked) : rest.index(self.end_id, len(asked))]
        for lead_ in dict.fromkeys((lead if lead.isspace() else "", "")):
            for trail_ in dict.fromkeys((trail if trail.isspace() else "", "")):
                if self._encode(lead_ + marker + trail_, split=True) == answer:
                    return lead_, trail_
        return "", ""

    def answer_text(self, target: str) -> str:
        """The text a transcript's labels spell: stripped, with the template's spacing around it (_answer_spacing)."""
        return self.answer_lead + target.strip() + self.answer_trail

    def _prompt_ids(self, task: str, system: str | None = None) -> tuple[list[int], list[int]]:
        if (task, system) not in self._cache:
            self._cache[task, system] = self._split(self._render(task, None, system))
        return self._cache[task, system]

    def _split(self, text: str, spell: str = "") -> tuple[list[int], list[int]]:
        """The token ids of a rendered prompt before and after the audio placeholder; `spell`, a span of the text
        before it (the last), is tokenized as text even where it spells a special token."""
        before, after = self._pieces(text, spell)
        ids = [self._encode(t, split=s) for t, s in before]
        return [i for part in ids for i in part], self._encode(after[0][0])

    def _pieces(self, text: str, spell: str = "") -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
        """_split's texts, each with whether it is tokenized as text where it spells a special token."""
        if text.count(AUDIO_PLACEHOLDER) != 1:
            raise PromptError(
                f"{self.source}: the chat template must keep the user message intact; the rendered prompt "
                f"holds the audio placeholder {text.count(AUDIO_PLACEHOLDER)} times: {text!r}"
            )
        before, after = text.split(AUDIO_PLACEHOLDER)
        at = before.rfind(spell) if spell else -1
        if at < 0:
            return [(before, False)], [(after, False)]
        return [(before[:at], False), (spell, True), (before[at + len(spell) :], False)], [(after, False)]

    def _spells_special(self, text: str) -> bool:
        """Whether `text` holds the text of a special token ("<|im_end|>")."""
        return any(t in text for t in self._special_texts)

    def capped_hotwords(self, hotwords) -> tuple[list[str], int]:
        """(the phrases kept under hotwords_max_tokens, in their order; how many were dropped)."""
        kept = [str(h) for h in hotwords or ()]
        cap = self.hotwords_max_tokens
        if cap is None or not kept:
            return kept, 0
        given = tuple(kept)
        if self._capped is not None and self._capped[0] == given:
            return list(self._capped[1][0]), self._capped[1][1]

        def count(text: str) -> int:  # special-token text counts as the text encode renders it ("<|im_end|>")
            return len(self._encode(text, split=True))

        lengths = [count(h) for h in kept]
        order = sorted(range(len(kept)), key=lambda j: -lengths[j])  # the drops in turn: longest, first of equals

        def rest(k: int) -> list[str]:  # the list after the first k drops
            out = set(order[:k])
            return [h for j, h in enumerate(kept) if j not in out]

        # The fewest drops that fit, found by halving: a drop only shortens the joined text, so each drop after
        # that fits too. Dropping one at a time re-encoded the whole list per drop: minutes for a few thousand.
        fits, over = len(kept), 0  # no phrase left always fits
        if count(self.hotwords_separator.join(kept)) <= cap:
            fits = 0
        while fits - over > 1:
            mid = (over + fits) // 2
            if count(self.hotwords_separator.join(rest(mid))) <= cap:
                fits = mid
            else:
                over = mid
        kept = rest(fits)
        self._capped = given, (list(kept), fits)
        return kept, fits

    def hotwords_text(self, hotwords) -> str:
        """The text a (capped) list adds before the task: "" for none."""
        if not hotwords:
            return ""
        return self.hotwords_template.replace(HOTWORDS_PLACEHOLDER, self.hotwords_separator.join(hotwords))

    def encode(
        self, target: str | None, task: str | None = None, hotwords=None, system: str | None = None
    ) -> EncodedPrompt:
        """Token ids for one utterance; `target=None` gives the inference prompt. `hotwords`: its biasing list;
        `system`: its own system message in place of the builder's ("" for none; a ChatML manifest line's)."""
        kept, dropped = self.capped_hotwords(hotwords)
        task = task if task is not None else self.task
        if kept:  # a list makes a prompt of its own: not cached (training draws a new list per item and epoch)
            before, after = self._split(*self._listed(task, kept, system))
        else:
            before, after = self._prompt_ids(task, system)
        ids = before + after
        target_start = len(ids)
        if target is not None:
            if not isinstance(target, str) or not target.strip():
                raise PromptError(f"empty or non-text transcript: {target!r}")
            # special-token text in a transcript ("<|im_end|>") is text: as a special token it would end the target
            spelled = self._encode(self.answer_text(target), split=True)
            ids = ids + spelled + [self.end_id]
            if self.max_tokens is not None and len(ids) > self.max_tokens:
                raise PromptError(
                    f"prompt and transcript hold {len(ids)} LLM tokens, past the LLM's context of {self.max_tokens} "
                    "before any audio token (a transcript of something longer than its audio?)"
                )
        return EncodedPrompt(ids, len(before), target_start, tuple(kept), dropped)

    def _listed(self, task: str, kept: list[str], system: str | None) -> tuple[str, str]:
        """The rendered prompt of a (capped, not empty) list, and the span of it tokenized as text: a phrase spelling
        a special token ("<|im_end|>", drawn from a transcript that holds it) is text, as in a transcript; as the
        token it would end the user's turn inside the list."""
        joined = self.hotwords_separator.join(kept)
        spell = joined if self._spells_special(joined) else ""
        return self._render(self.hotwords_text(kept) + task, None, system), spell

    def prompt_sizes(self, asked) -> list[int | None]:
        """len(encode(None, task, hotwords, system).ids) of each (task, hotwords, system) of `asked`, None where
        encode raises a ValueError (a template that cannot render it). The texts of the prompts with a list are
        tokenized together, each distinct text once (a fast tokenizer's batch, on its threads)."""
        out: list[int | None] = [None] * len(asked)
        pending = []  # (k, its texts)
        for k, (task, hotwords, system) in enumerate(asked):
            task = task if task is not None else self.task
            try:
                kept, _ = self.capped_hotwords(hotwords)
                if kept:
                    before, after = self._pieces(*self._listed(task, kept, system))
                    pending.append((k, before + after))
                else:
                    out[k] = sum(map(len, self._prompt_ids(task, system)))
            except ValueError:
                continue
        counted = self._token_counts(dict.fromkeys(p for _, pieces in pending for p in pieces))
        for k, pieces in pending:
            if all(p in counted for p in pieces):
                out[k] = sum(counted[p] for p in pieces)
        return out

    def _encode(self, text: str, split: bool = False) -> list[int]:
        """The ids of `text` (`split`: where it spells a special token, as text), one tokenizing at a time."""
        with _TOKENIZING:
            return self.tokenizer.encode(
                text, add_special_tokens=False, **({"split_special_tokens": True} if split else {})
            )

    def _token_counts(self, pieces) -> dict[tuple[str, bool], int]:
        """The tokens of each (text, tokenized as text where it spells a special token) of `pieces`, as _split
        encodes it; one the tokenizer refuses (ValueError) is left out."""
        counted = {}
        for split in (False, True):
            texts = [t for t, s in pieces if s is split]
            kw = {"split_special_tokens": True} if split else {}  # else the tokenizer's own setting, as in _split
            if texts and getattr(self.tokenizer, "is_fast", False):
                try:
                    with _TOKENIZING:
                        got = self.tokenizer(texts, add_special_tokens=False, **kw)["input_ids"]
                except ValueError:
                    got = None  # one by one below: the texts that encode count
                if got is not None:
                    counted.update(((t, split), len(ids)) for t, ids in zip(texts, got, strict=True))
                    continue
            for t in texts:
                try:
                    counted[t, split] = len(self._encode(t, split=split))
                except ValueError:
                    pass
        return counted

    def decode(self, ids) -> str:
        """Text of generated ids, cut at the first end token, without a leading reasoning block (Qwen3 opens its
        answers with <think>...</think>; its tags are not special tokens, so they stay in the decoded text)."""
        ids = [int(i) for i in ids]
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        text = spelled(self.tokenizer, ids).strip()
        if text.startswith(THINK_OPEN):
            close = text.find(THINK_CLOSE)
            text = text[close + len(THINK_CLOSE) :] if close >= 0 else text[len(THINK_OPEN) :]
        return text.strip()
