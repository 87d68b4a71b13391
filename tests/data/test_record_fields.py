"""llmasr.data.record_fields: the field a manifest's unread field may have meant (near_field)."""

import pytest

from llmasr.data.record_fields import near_field, unread_fields, unread_text


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


@pytest.mark.parametrize(
    "line, missing, said",
    [({"key": "a", "sorce": "a.wav", "target": "hi"}, "source", "the line has 'sorce': did you mean 'source'?"),
     ({"key": "a", "source": "a.wav", "tagret": "hi"}, "target", "the line has 'tagret': did you mean 'target'?"),
     ({"key": "a", "source": "a.wav", "text": "hi"}, "target", "the line has 'text'"),
     ({"key": "a", "wav": "a.wav", "txt": "hi"}, "source", "the line has 'wav'"),
     ({"key": "a", "audio_filepath": "a.wav", "text": "hi"}, "source", "the line has 'audio_filepath'"),
     ({"id": "a", "source": "a.wav", "target": "hi"}, "key", "the line has 'id'")],
)  # fmt: skip
def test_a_missing_field_names_the_field_the_line_gives_in_its_place(tmp_path, line, missing, said):
    """A manifest whose lines misspell `source` or use another toolkit's name for it (WeNet's `wav`/`txt`, NeMo's
    `audio_filepath`/`text`) was refused line by line with "missing field 'source'" alone, and with every line bad
    `llmasr data check` listed no unread field either: nothing said that the field was there under another name."""
    import json

    from llmasr.data.manifest import BadRecord, Manifest

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(BadRecord) as e:
        Manifest.open(str(path))[0]
    assert f"missing field '{missing}'" in e.value.reason and said in e.value.reason
    assert f"rename it '{missing}'" in e.value.reason or "did you mean" in e.value.reason


def test_a_missing_field_without_a_stand_in_says_only_what_is_missing(tmp_path):
    from llmasr.data.manifest import BadRecord, Manifest

    path = tmp_path / "m.jsonl"
    path.write_text('{"key": "a", "source": "a.wav", "voice": "f1"}\n', encoding="utf-8")
    with pytest.raises(BadRecord) as e:
        Manifest.open(str(path))[0]
    assert e.value.reason == "missing field 'target' (a FunASR jsonl record needs key, source, target)"


def test_a_funasr_line_s_own_system_message_is_a_field_llmasr_reads():
    """A FunASR line's `system` (what `llmasr data pseudo-label` writes for a ChatML line's system message) is read
    by the parser: `llmasr data check` and train.log had named it among the fields that change nothing."""
    assert unread_fields({"key": "a", "source": "a.wav", "target": "hi", "system": "You transcribe calls."}) == []
    assert unread_fields({"messages": [], "system": "x"}) == ["system"]  # a ChatML line's is in its messages
