"""llmasr.data.records: the field a manifest's unread field may have meant (near_field)."""

import pytest

from llmasr.data.records import near_field, unread_text


@pytest.mark.parametrize("name", ["id", "emo", "sid", "lid", "sex", "snr", "ts", "spk", "text", "gender", "words"])
def test_a_corpus_s_own_short_fields_are_not_taken_for_misspellings(name):
    # two edits turn any short word into another ("id" -> "end", "sex" -> "key"): train.log warned of each as a typo
    assert near_field(name) is None
    assert "did you mean" not in unread_text(name, 3, "m.jsonl:1")


@pytest.mark.parametrize(
    "name, meant",
    [("lng", "lang"), ("lnag", "lang"), ("hotword", "hotwords"), ("Prompt", "prompt"), ("tagret", "target"),
     ("langauge", "language"), ("hot_words", "hotwords"), ("keys", "key"), ("duraton", "duration")],
)  # fmt: skip
def test_a_misspelt_field_is_given_the_nearest_field_llmasr_reads(name, meant):
    # "lng" is one edit from "lang" and two from "end": the first field in sorted order within two had been named
    assert near_field(name) == meant
