"""models.lora: wrapping a model with LoRA adapters through peft."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("targets", [["q_proj", "lm_head"], ["q_proj"], r"lm_head|.*\.q_proj", r".*\.q_proj"])
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
    if "lm_head" in targets:  # a list's entry, or the regex's first branch
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


def _wrapped(model) -> set[str]:
    """The paths of the layers peft put LoRA on, in the model it wrapped."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {n for n, m in base.named_modules() if isinstance(m, LoraLayer)}


def test_a_regex_puts_lora_on_the_layers_it_matches_whole(tiny_llm_dir):
    """A string target_modules is a regular expression over whole module names, as peft reads it: LoRA on the last
    layer's q_proj and v_proj alone (it had been refused as neither a list nor all-linear)."""
    from llmasr.models.llm import load_llm

    llm, _ = load_llm(tiny_llm_dir, lora={"r": 2, "target_modules": r".*layers\.1\.self_attn\.(q_proj|v_proj)"})
    assert _wrapped(llm) == {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}
    trained = {n for n, p in llm.named_parameters() if p.requires_grad}
    assert trained and all(".layers.1.self_attn." in n and "lora_" in n for n in trained)


def test_a_regex_puts_lora_on_the_encoder_layers_it_matches():
    import torch

    from llmasr.config_io import from_dict
    from llmasr.models.builder import build_encoder
    from llmasr.models.config import EncoderConfig

    section = {"type": "conformer", "conf": {}, "freeze": True, "lora": {"r": 2, "target_modules": ""}}
    section["lora"]["target_modules"] = r"encoders\.0\.self_attn\.linear_(q|v)"
    enc = build_encoder(from_dict(EncoderConfig, section, "model.encoder"), pretrained=False)[0]
    assert _wrapped(enc) == {"encoders.0.self_attn.linear_q", "encoders.0.self_attn.linear_v"}
    assert isinstance(enc.get_submodule("encoders.1.self_attn.linear_q"), torch.nn.Linear)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        # a regex must match the whole name: a leaf name alone matches no layer, and says how to reach it
        ("q_proj|v_proj", r"the regular expression 'q_proj\|v_proj' matches the whole name of no nn.Linear or Conv1D "
         r"layer in the model.llm; their names are like \['model.layers.0.self_attn.q_proj', .*\] \(15 in all; last "
         r"names \['down_proj', .*\]\); it matches the last names \['q_proj', 'v_proj'\], but a regular expression "
         r"must match the whole name: '\.\*\\\.\(q_proj\|v_proj\)' reaches those in every layer"),
        (r".*layers\.7\.self_attn\.q_proj", r"the regular expression '.*' matches the whole name of no nn.Linear"),
        # an embedding is no typo: what it matches is said
        (r"model\.embed_tokens", r".* no nn.Linear or Conv1D layer .*\['model.embed_tokens \(Embedding\)'\]: LoRA "
         r"wraps nn.Linear and Conv1D layers only \(train such a module whole with model.llm.freeze: false\)"),
        # a pattern in a list is a name there, as peft reads it: where it would match as a string, that is said
        ([r".*layers\.1\.self_attn\.q_proj"], r"\[.*\] match no nn.Linear .*; in a list \.\*layers.*q_proj is a "
         r"name, which no module has: a regular expression is written alone, as a string \(target_modules: "
         r"'\.\*layers\\\.1\\\.self_attn\\\.q_proj'\)$"),
        # a whole decoder layer, alone or with its linear layers, as a list entry naming one is refused
        (r"model\.layers\.1", r".* no nn.Linear or Conv1D layer .*\['model.layers.1 \(Qwen2DecoderLayer\)'\]"),
        (r"model\.layers\.1.*", r"the regular expression 'model\\\.layers\\\.1\.\*' also matches modules that are not "
         r"nn.Linear or Conv1D layers: \['model.layers.1 \(Qwen2DecoderLayer\)', 'model.layers.1.self_attn "
         r"\(Qwen2Attention\)', .*\]; make it match the linear layers' names alone"),
    ],
)  # fmt: skip
def test_a_regex_that_reaches_no_linear_layer_or_more_is_refused_at_start_up(tiny_llm_dir, pattern, message):
    """peft had said "Target modules ... not found in the base model" for a regex matching no module, wrapped
    nothing said for one matching a leaf name, and "Target module ... is not supported" for a decoder layer."""
    from llmasr.config_io import ConfigError
    from llmasr.models.llm import load_llm

    with pytest.raises(ConfigError, match=rf"^model\.llm\.lora\.target_modules: {message}"):
        load_llm(tiny_llm_dir, lora={"r": 2, "target_modules": pattern})


def test_a_regex_peft_widens_on_a_fused_moe_is_refused(tmp_path):
    """On an MoE whose experts transformers fuses, peft reads a regex as the last names of what it matches and wraps
    those in every layer: LoRA meant for the last layer went on all of them, unsaid. A regex that matches in every
    layer, and a list of whole names, do what they say."""
    from llmasr.config_io import ConfigError
    from llmasr.models.llm import load_llm
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    path = write_tiny_llm_dir(tmp_path / "moe", arch="qwen3_moe")
    with pytest.raises(ConfigError, match=r"model.llm.lora.target_modules: peft put LoRA on 2 of 4 layers that the "
                       r"regular expression '.*' does not match, e.g. \['model.layers.0.self_attn.q_proj', "
                       r"'model.layers.0.self_attn.v_proj'\]: on this model \(qwen3_moe\) peft reads"):  # fmt: skip
        load_llm(path, lora={"r": 2, "dropout": 0.0, "target_modules": r".*layers\.1\.self_attn\.(q_proj|v_proj)"})
    llm, _ = load_llm(path, lora={"r": 2, "dropout": 0.0, "target_modules": r".*\.experts\.(gate|up|down)_proj"})
    assert _wrapped(llm) == {f"model.layers.{i}.mlp.experts{b}" for i in (0, 1) for b in ("", ".base_layer")}
    whole = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    llm, _ = load_llm(path, lora={"r": 2, "dropout": 0.0, "target_modules": whole})
    assert _wrapped(llm) == set(whole)
