"""The class a bad line is counted under (`llmasr data check`'s by-reason table, training's and decoding's counts) is
one of the named classes, never a reason's own words cut short: a path cut out of "audio path X holds a NUL
character", or the field name that opens "'duration' (0.5 s) contradicts 'end' - 'start'"."""

import json

from speech_fakes import write_wav

from llmasr.config_io import from_dict
from llmasr.data.bad_reasons import REASON_CATEGORIES, reason_category
from llmasr.data.check import check_data
from llmasr.data.config import DataConfig
from llmasr.data.frontend import FrontendConfig


def test_lines_bad_by_the_manifest_alone_count_under_a_named_class(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0)
    lines = [
        '{"key": "x", "key": "y", "source": "a.wav", "target": "hi"}',  # a field given twice
        {"key": "nul", "source": "a\u0000.wav", "target": "hi"},
        {"key": "seg", "source": "a.wav", "target": "hi", "start": 0.0, "end": 0.3, "duration": 0.5},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    data = from_dict(DataConfig, {"num_workers": 0}, "data")
    bad = check_data([str(path)], data, FrontendConfig()).bad
    assert len(bad) == 3, bad
    named = {category for _, category in REASON_CATEGORIES}
    got = {b["line"]: reason_category(b["reason"]) for b in bad}
    assert got == {1: "field given twice", 2: "NUL in a path", 3: "fields that disagree"}, bad
    assert set(got.values()) <= named
