"""decode_config (a model's saved settings under flags or Transcriber.load's) and search_config (transcribe(batch,
**settings) from Python) put DecodeConfig fields over a config through one reader: the same values give the same
config, checked alike; they differ only in what None means."""

import dataclasses

import pytest

from llmasr.config_io import ConfigError
from llmasr.models.decoding import DecodeConfig, decode_config, search_config

# a value off its default for each field (a field added without one fails the last test)
OTHER = {
    "num_beams": 3, "max_new_tokens": 7, "tokens_per_second": 5.0, "repetition_penalty": 1.2,
    "no_repeat_ngram_size": 3, "batch_seconds": 30.0, "max_llm_tokens": 512, "metric": "cer", "ctc_weight": 0.4,
    "repeat_limit": 3, "max_window_seconds": 20.0, "window_overlap": 0.5, "window_split_pause": 0.3,
    "vad_max_end_silence_ms": 500, "vad_gate": False, "vad_merge_seconds": 0.5, "ctc_gate": True,
    "hotword_boost": 1.5, "timestamps": True, "confidence": True, "trim_leading_silence": False,
}  # fmt: skip


@pytest.mark.parametrize("field", sorted(OTHER))
def test_both_readers_put_a_setting_over_a_config_alike(field):
    base = DecodeConfig(max_new_tokens=9)
    by_flags, (by_search, rest) = (
        decode_config(base, **{field: OTHER[field]}),
        search_config(base, {field: OTHER[field]}),
    )
    assert by_flags == by_search == dataclasses.replace(base, **{field: OTHER[field]}) and rest == {}


@pytest.mark.parametrize("field, value", [("num_beams", "4"), ("timestamps", "false"), ("ctc_weight", "a")])
def test_both_readers_check_a_settings_type_alike(field, value):
    """search_config had put any value in place (dataclasses.replace), its type met only later, if at all."""
    with pytest.raises(ConfigError, match=rf"^decode\.{field}: ") as flags:
        decode_config(DecodeConfig(), **{field: value})
    with pytest.raises(ConfigError, match=rf"^decode\.{field}: ") as search:
        search_config(DecodeConfig(), {field: value})
    assert str(flags.value) == str(search.value)


def test_none_keeps_a_saved_value_under_flags_and_is_set_from_python():
    """A flag not given (None) keeps the saved value; transcribe(batch, max_new_tokens=None) asks for the cap by
    duration over a config that has a cap."""
    base = DecodeConfig(max_new_tokens=9, num_beams=2)
    assert decode_config(base, max_new_tokens=None, num_beams=None) == base
    assert search_config(base, {"max_new_tokens": None})[0] == dataclasses.replace(base, max_new_tokens=None)


def test_every_field_is_compared():
    assert {f.name for f in dataclasses.fields(DecodeConfig)} - set(OTHER) == {"vad"}  # a VAD folder must exist
