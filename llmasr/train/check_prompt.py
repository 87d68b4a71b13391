"""The prompt section of `llmasr check`: the token sequence llmasr trains on and the prompt it decodes with, as the
LLM's chat template renders them, the tokens an answer ends at, and a template that writes something before a
finished answer that its generation prompt lacks (Qwen3's empty reasoning block with thinking left on), or that does
not start with the BOS the tokenizer adds to every text (a user's template for a base Llama 3)."""

from __future__ import annotations

import os

from llmasr.models.chat_template import template_reads
from llmasr.models.decode_guards import other_end_ids

PROBE = "llmasrprobe"


def generation_config(llm_dir, llm):
    """The LLM's generation_config.json, as the loads of training and decoding read it: check builds the LLM from
    config.json alone, whose eos_token_id may list fewer end tokens (Qwen's lacks <|endoftext|>)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(llm_dir), local_files_only=True)
    except OSError:  # the folder has none: transformers derives one from config.json, as `llm` holds it
        return llm.generation_config


def _token(tokenizer, tid: int) -> str:
    return f"{tokenizer.convert_ids_to_tokens(int(tid))} (id {int(tid)})"


def answer_gap(prompt) -> tuple[str, str]:
    """(what the template's generation prompt ends in, what it writes before a finished answer instead) where the
    two differ past whitespace, else ("", "")."""
    asked, full = prompt.rendered(None), prompt.rendered(PROBE)
    common = len(os.path.commonprefix([asked, full]))
    at = full.find(PROBE, common)
    tail, head = asked[common:], full[common : at if at >= 0 else len(full)]
    return ("", "") if not tail.strip() and not head.strip() else (tail, head)


def prompt_lines(model, cfg) -> list[str]:
    """The report's prompt section for the model built from the model section `cfg`."""
    p = model.prompt
    given = cfg.prompt.chat_template
    if given:
        where = "model.prompt.chat_template" + ("" if "{" in given else f" ({given})")
    else:
        where = f"{p.source} (its own)"
    tok = p.tokenizer
    enc = p.encode(None)
    before = tok.decode(enc.ids[: enc.audio_pos], skip_special_tokens=False)
    after = tok.decode(enc.ids[enc.audio_pos :], skip_special_tokens=False)
    lead, trail = p.answer_lead, p.answer_trail
    answer = (f" + {lead!r}" if lead else "") + " + transcript" + (f" + {trail!r}" if trail else "")
    others = other_end_ids(generation_config(cfg.llm.path, model.llm), tok, p.end_id)
    also = f"; also at {', '.join(_token(tok, i) for i in others)} (generation_config.json)" if others else ""
    variables = _variables_line(tok.chat_template, p.render_variables(), p.template_kwargs)
    lines = [
        "prompt",
        f"  chat template: {where}",
        f"  trained on: {before!r} + audio + {after!r}{answer} + {_token(tok, p.end_id)}",
        "  decoded with: the same up to the transcript (the prompt training saw, token for token)",
        f"  an answer ends at {_token(tok, p.end_id)}{also}",
        f"  padding: {_token(tok, p.pad_id)}; template variables: {variables}",
    ]
    return lines + [f"  warning: {note}" for note in prompt_warnings(p)]


def _variables_line(template, variables: dict, given: dict) -> str:
    """The render `variables` `template` reads (a Qwen3 template reads no date_string), and the template_kwargs
    `given` it never reads (a misspelt enable_thinking); every variable where what it reads cannot be told."""
    reads = template_reads(template)
    if reads is None:
        return ", ".join(f"{k}={v!r}" for k, v in variables.items())
    said = ", ".join(f"{k}={v!r}" for k, v in variables.items() if k in reads) or "none read"
    unread = [k for k in given if k not in reads]
    return said + (f"; model.prompt.template_kwargs the template never reads: {unread}" if unread else "")


def prompt_warnings(prompt) -> list[str]:
    """What the prompt of `prompt` (a PromptBuilder) does that the LLM did not learn with: `llmasr check` prints it,
    and a training start-up logs it, where a run started without the check had said nothing."""
    return [note for note in (answer_gap_warning(prompt), missing_bos_warning(prompt)) if note]


def _added_lead(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text it encodes with its special tokens (Llama 3's <|begin_of_text|>)."""
    plain = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(PROBE)["input_ids"]
    at = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), 0)
    return list(full[:at])


def missing_bos_warning(prompt) -> str | None:
    """A prompt that does not start with the BOS its tokenizer adds to every text (a chat template of the user's for a
    base Llama 3 without `{{ bos_token }}`): llmasr renders it as transformers' apply_chat_template does, without
    one, though the LLM met it first in every text it was trained on. None where the prompt starts with it."""
    lead = _added_lead(prompt.tokenizer)
    if not lead or list(prompt.encode(None).ids[: len(lead)]) == lead:
        return None
    names = ", ".join(_token(prompt.tokenizer, i) for i in lead)
    return (
        f"{prompt.source} starts every text it encodes with {names}, and the chat template's prompt does not start "
        "with it: the LLM was trained with it first; write {{ bos_token }} at the template's start"
    )


def answer_gap_warning(prompt) -> str | None:
    """The warning of a chat template that writes something before a finished answer that its generation prompt
    lacks (Qwen3's empty reasoning block with thinking left on), or None."""
    tail, head = answer_gap(prompt)
    if not (tail or head):
        return None
    tok = prompt.tokenizer
    text = tok.chat_template if isinstance(tok.chat_template, str) else str(tok.chat_template)
    asked = prompt.template_kwargs.get("enable_thinking")
    hint = ""
    if "enable_thinking" in text and "enable_thinking" not in prompt.template_kwargs:
        hint = " (Qwen3: set model.prompt.template_kwargs: {enable_thinking: false}, whose prompt ends in that block)"
    elif "enable_thinking is false" in text and not isinstance(asked, bool):  # jinja's `is false`: the boolean only
        hint = (
            f" (model.prompt.template_kwargs.enable_thinking is {asked!r}, a {type(asked).__name__}, which the "
            "template's `enable_thinking is false` does not take as false: write false, unquoted)"
        )
    instead = f"writes {tail!r} there" if tail.strip() else "does not write it"
    return (
        f"the chat template writes {head!r} before a finished answer, and its generation prompt {instead}: llmasr "
        f"trains and decodes after the generation prompt, so the LLM learns to answer in a turn its template does "
        f"not render{hint}"
    )
