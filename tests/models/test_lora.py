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


def test_the_tied_head_warning_is_said_once_a_run_by_rank_0_alone(tmp_path, capsys):
    """Every rank builds the LLM alike, and under ZeRO-3 with more than one rank each builds it twice (the weight
    files' shapes first, then partitioned): the warning had come once per rank, and twice on each under ZeRO-3."""
    from llmasr.models.llm import load_llm
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.train.run_log import setup_logging

    path = write_tiny_llm_dir(tmp_path / "tied", tie_word_embeddings=True)
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "lm_head"]}
    said = {}
    try:
        for rank in (1, 0):
            setup_logging(None, rank, run_starts=True)
            for _ in range(2):
                load_llm(path, lora=lora, pretrained=False)
            said[rank] = capsys.readouterr().err.count("reaches lm_head, whose weight the LLM ties")
    finally:
        setup_logging(None, 0)  # the console handler is the process's: as the other tests find it
    assert said == {1: 0, 0: 1}
