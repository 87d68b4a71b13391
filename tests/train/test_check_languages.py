"""The check report's language-query lines (llmasr.train.check_languages): with SenseVoice's per-line language
queries, each manifest's lines per query, those naming no language and those in a language SenseVoiceSmall has no
query for (they run with "auto"), the first of each named by file and line."""

from __future__ import annotations

import json
from types import SimpleNamespace

from llmasr.data.manifest import Manifest
from llmasr.train.check_languages import manifest_language_lines, per_line_recipe


def test_lines_per_query_and_those_without_one(tmp_path):
    labels = ["en", "<|zh|>", "German", None, "cmn_hans_cn", "de-DE", "fr", "<|yue|>"]
    path = tmp_path / "m.jsonl"
    lines = [{"key": f"k{i}", "source": "x.wav", "target": "a", **({"lang": lab} if lab else {})} for i, lab in
             enumerate(labels)]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    got = manifest_language_lines("data.train", Manifest.open(path))
    assert got == [
        f"  data.train {path}: zh 2, en 1, yue 1",
        "  data.train: 1 line(s) name no language (lang / language / text_language): 'auto'",
        f"  warning: data.train: 3 line(s) in a language SenseVoiceSmall has no query for run with 'auto': de 2 "
        f"(first {path}:3); fr 1 (first {path}:7)",
    ]


def test_only_a_per_line_sensevoice_recipe_reports():
    def recipe(kind: str, conf: dict):
        return SimpleNamespace(model=SimpleNamespace(encoder=SimpleNamespace(type=kind, conf=conf)))

    assert per_line_recipe(recipe("sensevoice", {"queries": {"language": "per_line"}}))
    assert not per_line_recipe(recipe("sensevoice", {"queries": {"language": "zh"}}))
    assert not per_line_recipe(recipe("sensevoice", {"queries": None}))
    assert not per_line_recipe(recipe("paraformer", {}))
