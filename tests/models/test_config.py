"""The typed model section: values no model could be built or trained with are refused by their key at load."""

import pytest

from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.adaptor.dropout=1.5", r"model.adaptor.dropout: must be in \[0, 1\), got 1.5"),
        ("model.adaptor.ffn_dim=0", "model.adaptor.ffn_dim: must be >= 1, got 0"),
        ("model.adaptor.n_head=0", "model.adaptor.n_head: must be >= 1, got 0"),
        ("model.adaptor.n_layer=-1", "model.adaptor.n_layer: must be >= 0, got -1"),
        ("model.ctc.decoder.dropout=2", r"model.ctc.decoder.dropout: must be in \[0, 1\), got 2.0"),
        ("model.llm.lora.alpha=0", "model.llm.lora.alpha: must be positive .* at 0 they train nothing"),
        ("model.encoder.lora.alpha=-8", "model.encoder.lora.alpha: must be positive"),
    ],
)
def test_sizes_rates_and_scales_out_of_range_are_refused_by_key(override, message):
    """torch had refused a dropout of 1.5 only once the model was built, naming no key; an ffn_dim of 0 had built an
    adaptor whose output ignores the audio, and a LoRA alpha of 0 adapters that never change."""
    with pytest.raises(ConfigError, match=message):
        load_recipe(data={"model": {"llm": {"path": "llm", "lora": {}}}}, overrides=[override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.encoder.conf.dropout_rate=1.5", r"model.encoder.conf.dropout_rate: must be in \[0, 1\), got 1.5"),
        ("model.encoder.conf.attention_dropout_rate='-0.1'", r"model.encoder.conf.attention_dropout_rate: must be in"),
        ("model.encoder.conf.encoder_layerdrop=1.5", r"model.encoder.conf.encoder_layerdrop: must be in \[0, 1\)"),
    ],
)
def test_an_encoder_dropout_out_of_range_is_refused_by_key(override, message):
    """The encoder's constructor settings are typed when it is built, where torch refused the rate naming no key."""
    with pytest.raises(ConfigError, match=message):
        load_recipe(data={"model": {"llm": {"path": "llm"}}}, overrides=[override])
