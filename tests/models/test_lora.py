"""models.lora: wrapping a model with LoRA adapters through peft."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("targets", [["q_proj", "lm_head"], ["q_proj"]])
def test_lora_on_a_tied_head_is_said_in_llmasr_s_words(tmp_path, caplog, targets):
    """LoRA on lm_head of an LLM whose head is tied to its input embeddings: peft warned of "complications, for
    example when merging" and of an `ensure_weight_tying` no recipe key sets, while llmasr's export handles the pair
    (it unties them). What happens is said instead, and nothing for a LoRA that leaves the head alone."""
    import logging
    import warnings

    from llmasr.models.llm import load_llm
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    path = write_tiny_llm_dir(tmp_path / "tied", tie_word_embeddings=True)
    caplog.set_level(logging.WARNING, logger="llmasr.models.lora")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        load_llm(path, lora={"r": 4, "alpha": 8, "target_modules": targets})
    said = [r.getMessage() for r in caplog.records if "tied" in r.getMessage()]
    if "lm_head" in targets:
        assert said == [
            "model.llm.lora.target_modules reaches lm_head, whose weight the LLM ties to its input embeddings "
            "(tie_word_embeddings): the adapter changes the output side only; `llmasr export` writes the merged LLM "
            "with the two untied (lm_head a weight of its own), --adapter-only keeps the base tied"
        ]
    else:
        assert said == []
