"""What the decode says of the settings an LLM's generation_config.json ships, checked against what transformers'
generate does with them under llmasr's search (do_sample false, num_beams from the decode, input embeddings)."""

from __future__ import annotations

from transformers import GenerationConfig

from llmasr.models.decoding import DecodeConfig
from llmasr.models.shipped_generation import left_out_line, search_keywords, shipped_settings_line


def test_settings_written_at_transformers_defaults_are_not_named():
    """Many published generation_config.json files write defaults out (temperature 1.0, top_k 50, length_penalty
    1.0, do_sample false); transformers 5 leaves an unset setting None, so each had been named as shipped: "do_sample
    false, temperature 1, top_k 50: unused", "length_penalty 1: applied"."""
    gen = GenerationConfig(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, length_penalty=1.0, num_beams=1,
                           repetition_penalty=1.0, no_repeat_ngram_size=0, early_stopping=False)  # fmt: skip
    assert shipped_settings_line(gen, DecodeConfig()) is None
    assert shipped_settings_line(gen, DecodeConfig(repetition_penalty=1.1)) is None  # 1.0 is generate's own default
    assert left_out_line(gen, ("temperature", "top_p", "top_k", "repetition_penalty"), "f") is None


def test_beam_only_settings_are_unused_by_a_greedy_search_and_applied_by_a_beam():
    """length_penalty and early_stopping are read by beam search only: a greedy decode had said it applied a shipped
    length_penalty, and a beam decode had not named a shipped early_stopping."""
    gen = GenerationConfig(length_penalty=1.5, early_stopping=True, min_new_tokens=2)
    greedy = shipped_settings_line(gen, DecodeConfig())
    assert "length_penalty 1.5, early_stopping true: unused by a greedy search" in greedy, greedy
    assert greedy.endswith("applied as the LLM's generate applies them: min_new_tokens 2"), greedy
    beam = shipped_settings_line(gen, DecodeConfig(num_beams=2))
    assert beam.endswith("applied as the LLM's generate applies them: length_penalty 1.5, early_stopping true, "
                         "min_new_tokens 2"), beam  # fmt: skip


def test_settings_generate_reads_of_input_ids_are_named_unused():
    """encoder_repetition_penalty needs input_ids, and the search passes inputs_embeds: transformers warns and ignores
    it, where the decode had said it applied it."""
    line = shipped_settings_line(GenerationConfig(encoder_repetition_penalty=1.2), DecodeConfig())
    assert line == (
        "the LLM's generation_config.json: encoder_repetition_penalty 1.2: unused (generate reads them of input_ids; "
        "the search passes embeddings)"
    )


def test_top_h_is_a_sampling_setting():
    """transformers 5's top_h is read by sampling only; a shipped one had gone unnamed and stayed in an export."""
    if not hasattr(GenerationConfig(), "top_h"):
        return
    line = shipped_settings_line(GenerationConfig(do_sample=True, top_h=0.3), DecodeConfig())
    assert "do_sample true, top_h 0.3: unused" in line, line


def test_a_shipped_time_limit_is_named_applied():
    """max_time is a stopping criterion generate applies under any search: a shipped one cuts a long clip's
    transcript, and had gone unnamed."""
    line = shipped_settings_line(GenerationConfig(max_time=5.0, remove_invalid_values=True), DecodeConfig())
    assert line.endswith("applied as the LLM's generate applies them: remove_invalid_values true, max_time 5"), line


def test_settings_that_switch_the_search_are_named_set_aside_under_greedy_and_beam():
    """penalty_alpha (contrastive search), num_beam_groups (group beam search) and the like switch generate to a search
    transformers 5 loads from the Hub; the search sets them aside: a greedy decode had named num_beam_groups as read by
    beam search, a beam decode as applied, and penalty_alpha not at all."""
    gen = GenerationConfig(penalty_alpha=0.6, top_k=4, num_beam_groups=2, diversity_penalty=0.5, use_mtp=False)
    for cfg in (DecodeConfig(), DecodeConfig(num_beams=2)):
        line = shipped_settings_line(gen, cfg)
        assert (
            "penalty_alpha 0.6, num_beam_groups 2, diversity_penalty 0.5: set aside (they switch generate to " in line
        )
        assert "use_mtp" not in line and "applied" not in line, line  # false switches nothing


def test_the_search_passes_defaults_for_the_settings_it_sets_aside_unless_the_caller_gives_them():
    gen = GenerationConfig(penalty_alpha=0.6, top_k=4, num_beam_groups=2, stop_strings=["."])
    assert search_keywords(gen, {}, "tok") == {"penalty_alpha": None, "num_beam_groups": 1, "tokenizer": "tok"}
    given = {"penalty_alpha": 0.5, "tokenizer": "own"}  # the caller's own keywords reach generate as given
    assert search_keywords(gen, given, "tok") == {"num_beam_groups": 1}
    assert search_keywords(GenerationConfig(), {}, "tok") == {}
    assert search_keywords(GenerationConfig(), {"stop_strings": ["."]}, "tok") == {"tokenizer": "tok"}


def test_a_shipped_watermark_is_named_applied():
    """A watermarking_config biases every step's scores under any search, changing the transcript: it had gone
    unnamed."""
    line = shipped_settings_line(GenerationConfig(watermarking_config={"bias": 2.0}), DecodeConfig())
    assert line.startswith("the LLM's generation_config.json: applied as the LLM's generate applies them: "
                           "watermarking_config WatermarkingConfig"), line  # fmt: skip
