"""The check report's language-query lines (llmasr.train.check_languages): with SenseVoice's per-line language
queries, each manifest's lines per query, those naming no language and those in a language SenseVoiceSmall has no
query for (they run with "auto"), the first of each named by file and line."""

from __future__ import annotations

import json
from types import SimpleNamespace

from llmasr.config_io import from_dict
from llmasr.data.check import check_data
from llmasr.data.config import DataConfig
from llmasr.data.frontend import FrontendConfig
from llmasr.data.manifest import Manifest
from llmasr.data.screen import screen, where
from llmasr.train.check_languages import data_check_text, per_line_recipe, tally, tally_lines


def _mixed_languages(tmp_path):
    labels = ["en", "<|zh|>", "German", None, "cmn_hans_cn", "de-DE", "fr", "<|yue|>"]
    path = tmp_path / "m.jsonl"
    lines = [{"key": f"k{i}", "source": "x.wav", "target": "a", **({"lang": lab} if lab else {})} for i, lab in
             enumerate(labels)]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, [
        f"  data.train {path}: zh 2, en 1, yue 1",
        "  data.train: 1 line(s) name no language (lang / language / text_language): 'auto'",
        f"  warning: data.train: 3 line(s) in a language SenseVoiceSmall has no query for run with 'auto': de 2 "
        f"(first {path}:3); fr 1 (first {path}:7)",
    ]


def test_lines_per_query_and_those_without_one_as_the_screen_gathers_them(tmp_path):
    """The start-up screen (training, `llmasr check`) gathers each line's language in its one pass over the lines,
    shared by the ranks of a node: the same counts whichever rank screened which line."""
    path, want = _mixed_languages(tmp_path)
    manifest = Manifest.open(path)
    screen(manifest, languages=(found := {}))
    assert tally_lines("data.train", tally(found, lambda i: "{}:{}".format(*where(manifest, i)))) == want


def test_lines_per_query_as_data_check_gathers_them(tmp_path):
    path, want = _mixed_languages(tmp_path)
    frontend = FrontendConfig()
    report = check_data([path], from_dict(DataConfig, {}, "data"), frontend, probe=False, need_target=False)
    assert data_check_text(report.languages, "data.train") == [
        "## language queries (model.encoder.conf.queries.language per_line)",
        *want,
    ]


def test_only_a_per_line_sensevoice_recipe_reports():
    def recipe(kind: str, conf: dict):
        return SimpleNamespace(model=SimpleNamespace(encoder=SimpleNamespace(type=kind, conf=conf)))

    assert per_line_recipe(recipe("sensevoice", {"queries": {"language": "per_line"}}))
    assert not per_line_recipe(recipe("sensevoice", {"queries": {"language": "zh"}}))
    assert not per_line_recipe(recipe("sensevoice", {"queries": None}))
    assert not per_line_recipe(recipe("paraformer", {}))


def test_check_names_the_lines_without_a_query(tmp_path, capsys):
    """`llmasr check` on a SenseVoice recipe with per-line language queries: a section per data set, the German
    lines named as running with "auto" (SenseVoiceSmall has no German query)."""
    import yaml
    from check_runner import run_check

    from llmasr.commands.data_check import main as data_check
    from llmasr.testing.run_dirs import model_section
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.testing.tiny_funasr import tiny_sensevoice_conf, write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    llm = write_tiny_llm_dir(tmp_path / "llm")
    enc = write_funasr_dir(tmp_path / "sv", model="SenseVoiceSmall", encoder_conf=tiny_sensevoice_conf())
    manifest = write_tiny_corpus(tmp_path / "train", n=6)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for line, lang in zip(lines, ["en", "de", "zh", "German", None, "ja"]):
        line.update({"lang": lang} if lang else {})
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    section = model_section(llm, enc)
    section["encoder"] |= {"type": "sensevoice"}
    section["encoder"]["conf"]["queries"] = {"language": "per_line"}
    recipe = tiny_recipe_dict(llm, train=[manifest], output_dir=tmp_path / "run")
    recipe["model"] = section
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, out, _ = run_check(capsys, "--config", str(tmp_path / "r.yaml"), "--deepspeed", "zero2")
    assert code == 0 and "language queries (model.encoder.conf.queries.language per_line" in out
    assert f"  data.train {manifest}: en 1, ja 1, zh 1\n" in out
    assert f"language SenseVoiceSmall has no query for run with 'auto': de 2 (first {manifest}:2)" in out
    assert data_check(["--recipe", str(tmp_path / "r.yaml"), "--no-probe"]) == 0  # the section before the verdict
    out = capsys.readouterr().out
    section = out.index("## language queries (model.encoder.conf.queries.language per_line)")
    assert out.index(f"  data.train {manifest}: en 1, ja 1, zh 1\n") > section
    assert out.index(f"run with 'auto': de 2 (first {manifest}:2)") < out.index("result: OK")
    recipe["model"]["encoder"]["conf"]["queries"] = {"language": "zh"}  # every line zh's query: the others said
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, out, err = run_check(capsys, "--config", str(tmp_path / "r.yaml"), "--deepspeed", "zero2")
    assert code == 0, err
    assert (
        "note: model.encoder.conf.queries.language 'zh' is every line's query, but 2 line(s) name another language "
        "SenseVoiceSmall has a query for (en 1, ja 1); queries.language per_line gives each line its own" in out
    )
