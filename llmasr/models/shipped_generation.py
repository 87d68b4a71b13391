"""What a decode does with the settings an LLM's generation_config.json ships: a chat model's sampling defaults
(Qwen2.5-Instruct: do_sample true, temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05) are set aside by
llmasr's search, some replaced by decode settings of its own, and the rest applied by the LLM's generate as it would
apply them. Said once when a decode starts, since a repetition penalty changes what an ASR model writes; an export
names the ones it leaves out of its greedy generation_config.json."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# read by sampling only: a search never uses them (an export leaves them out, with the two below); top_h where
# transformers has it
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")
# generate's settings a DecodeConfig field replaces (the search passes its value), with that field's flag
REPLACED = {"repetition_penalty": "--repetition-penalty", "no_repeat_ngram_size": "--no-repeat-ngram",
            "num_beams": "--beam"}  # fmt: skip
# read by beam search only: a greedy search (num_beams 1) never uses them
BEAM_ONLY = ("length_penalty", "early_stopping")
# each switches generate away from greedy or beam search: to contrastive search, DoLa, group or constrained beam
# search (which transformers 5 loads from the Hub: offline, a decode failed at its first batch) or to assisted
# decoding (prompt lookup, early exit, multi-token prediction); the search passes generate its default instead
SWITCHES = ("penalty_alpha", "dola_layers", "num_beam_groups", "diversity_penalty", "constraints", "force_words_ids",
            "prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp")  # fmt: skip
# generate cannot run them under the search: classifier-free guidance and token healing read input_ids (the search
# passes embeddings; both failed at the first batch), low_memory is refused by beam search
UNRUNNABLE = ("guidance_scale", "token_healing", "low_memory")
SET_ASIDE = (*SWITCHES, *UNRUNNABLE)
# read of the input_ids generate is given: the search gives it embeddings, and generate ignores them with a warning
INPUT_IDS_ONLY = ("encoder_repetition_penalty", "encoder_no_repeat_ngram_size")
# what generate still applies from generation_config.json under llmasr's search, whatever its beam
KEPT = ("min_length", "min_new_tokens", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
        "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty",
        "renormalize_logits", "remove_invalid_values", "max_time", "stop_strings", "watermarking_config")  # fmt: skip


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def _shipped(generation_config):
    """key -> the value `generation_config` sets apart from transformers' default for it, else None. Transformers
    may leave a GenerationConfig's settings None and fill in its defaults at generate (temperature 1.0, top_k 50,
    length_penalty 1.0): a file that writes one of those out sets nothing apart."""
    default = type(generation_config)()
    filled = getattr(default, "_get_default_generation_params", dict)()

    def shipped(key: str):
        value = getattr(generation_config, key, None)
        if value is None or value == getattr(default, key, None) or (key in filled and value == filled[key]):
            return None
        return value

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
    beam = [f"{k} {_value(shipped(k))}" for k in BEAM_ONLY if shipped(k) is not None]
    ids_only = [f"{k} {_value(shipped(k))}" for k in INPUT_IDS_ONLY if shipped(k) is not None]
    switches = [f"{k} {_value(shipped(k))}" for k in SWITCHES if shipped(k)]  # 0 or false switches nothing
    unrunnable = [f"{k} {_value(shipped(k))}" for k in UNRUNNABLE if shipped(k)]
    kept = [f"{k} {_value(shipped(k))}" for k in KEPT if shipped(k) is not None]
    if cfg.num_beams > 1:
        kept = beam + kept
    parts = []
    if unused:
        parts.append(f"{', '.join(unused)}: unused (llmasr decodes by search, never by sampling)")
    parts += replaced
    if beam and cfg.num_beams <= 1:
        parts.append(f"{', '.join(beam)}: unused by a greedy search (beam search reads them: --beam)")
    if switches:
        parts.append(f"{', '.join(switches)}: set aside (they switch generate to another search than llmasr's)")
    if unrunnable:
        parts.append(f"{', '.join(unrunnable)}: set aside (generate cannot run them under llmasr's search)")
    if ids_only:
        parts.append(f"{', '.join(ids_only)}: unused (generate reads them of input_ids; the search passes embeddings)")
    if kept:
        parts.append(f"applied as the LLM's generate applies them: {', '.join(kept)}")
    return f"the LLM's generation_config.json: {'; '.join(parts)}" if parts else None


def search_keywords(generation_config, generate_kwargs: dict, tokenizer) -> dict:
    """What the search passes generate beside its own settings so that the LLM's `generation_config` leaves it the
    search: transformers' default for each SET_ASIDE setting it ships (unless the caller's `generate_kwargs` give
    one), and the prompt's `tokenizer` where stop strings apply and the caller gave none (generate needs one)."""
    shipped = _shipped(generation_config)
    filled = getattr(generation_config, "_get_default_generation_params", dict)()
    keywords = {k: filled.get(k) for k in SET_ASIDE if k not in generate_kwargs and shipped(k)}
    stops = generate_kwargs.get("stop_strings", getattr(generation_config, "stop_strings", None))
    if stops and "tokenizer" not in generate_kwargs:
        keywords["tokenizer"] = tokenizer
    return keywords


def left_out_line(generation_config, left_out: tuple[str, ...], where) -> str | None:
    """The export's line for the LLM's `generation_config` before `left_out` (and do_sample) are unset in the file
    `where`: what goes and what stays, or None where it shipped none of them."""
    shipped = _shipped(generation_config)
    gone = [f"{k} {_value(shipped(k))}" for k in ("do_sample", *left_out) if shipped(k) is not None]
    if not gone:
        return None
    kept = [f"{k} {_value(shipped(k))}" for k in (*BEAM_ONLY, *KEPT, *INPUT_IDS_ONLY) if shipped(k) is not None]
    return (
        f"{where}: do_sample false; left out the LLM's {', '.join(gone)}, so that a plain generate on the export "
        f"searches as llmasr decodes" + (f"; kept: {', '.join(kept)}" if kept else "")
    )


def say_shipped_settings(llm, cfg) -> None:
    """Log shipped_settings_line for the LLM `llm` (peft-wrapped or not) decoded with `cfg`."""
    if line := shipped_settings_line(llm.generation_config, cfg):
        log.info("%s", line)
