"""What a decode does with the settings an LLM's generation_config.json ships: a chat model's sampling defaults
(Qwen2.5-Instruct: do_sample true, temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05) are set aside by
llmasr's search, some replaced by decode settings of its own, and the rest applied by the LLM's generate as it would
apply them. Said once when a decode starts, since a repetition penalty changes what an ASR model writes; an export
names the ones it leaves out of its greedy generation_config.json."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# read by sampling only: a search never uses them (an export leaves them out, with the two below)
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
# generate's settings a DecodeConfig field replaces (the search passes its value), with that field's flag
REPLACED = {"repetition_penalty": "--repetition-penalty", "no_repeat_ngram_size": "--no-repeat-ngram",
            "num_beams": "--beam"}  # fmt: skip
# what generate still applies from generation_config.json under llmasr's search
KEPT = ("length_penalty", "min_length", "min_new_tokens", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
        "sequence_bias", "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty",
        "encoder_repetition_penalty", "renormalize_logits", "num_beam_groups", "diversity_penalty")  # fmt: skip


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def _shipped(generation_config):
    """key -> the value `generation_config` sets apart from transformers' default for it, else None."""
    default = type(generation_config)()

    def shipped(key: str):
        value = getattr(generation_config, key, None)
        return None if value is None or value == getattr(default, key, None) else value

    return shipped


def shipped_settings_line(generation_config, cfg) -> str | None:
    """The line naming what the LLM's `generation_config` sets apart from transformers' defaults and how the search
    of DecodeConfig `cfg` treats it, or None where it sets nothing the search would differ on."""
    shipped = _shipped(generation_config)
    unused = [f"{k} {_value(shipped(k))}" for k in ("do_sample", *SAMPLING_ONLY) if shipped(k) is not None]
    replaced = [
        f"{k} {_value(shipped(k))} replaced by decode.{k} {_value(getattr(cfg, k))} ({flag})"
        for k, flag in REPLACED.items()
        if shipped(k) is not None and shipped(k) != getattr(cfg, k)
    ]
    kept = [f"{k} {_value(shipped(k))}" for k in KEPT if shipped(k) is not None]
    parts = []
    if unused:
        parts.append(f"{', '.join(unused)}: unused (llmasr decodes by search, never by sampling)")
    parts += replaced
    if kept:
        parts.append(f"applied as the LLM's generate applies them: {', '.join(kept)}")
    return f"the LLM's generation_config.json: {'; '.join(parts)}" if parts else None


def left_out_line(generation_config, left_out: tuple[str, ...], where) -> str | None:
    """The export's line for the LLM's `generation_config` before `left_out` (and do_sample) are unset in the file
    `where`: what goes and what stays, or None where it shipped neither sampling nor a penalty."""
    shipped = _shipped(generation_config)
    gone = [f"{k} {_value(shipped(k))}" for k in ("do_sample", *left_out) if shipped(k) is not None]
    if not gone:
        return None
    kept = [f"{k} {_value(shipped(k))}" for k in KEPT if shipped(k) is not None]
    return (
        f"{where}: do_sample false; left out the LLM's {', '.join(gone)}, so that a plain generate on the export "
        f"searches as llmasr decodes" + (f"; kept: {', '.join(kept)}" if kept else "")
    )


def say_shipped_settings(llm, cfg) -> None:
    """Log shipped_settings_line for the LLM `llm` (peft-wrapped or not) decoded with `cfg`."""
    if line := shipped_settings_line(llm.generation_config, cfg):
        log.info("%s", line)
