"""`llmasr decode --task TEXT / --language LANG`: the default of every line without its own `prompt` / `lang` (a
line's own wins, as a line's own `hotwords` wins over --hotwords FILE). A line without one decodes as the same line
carrying the task would; the decode folder says how it was asked; pseudo-labels carry the task; bad values are
refused at start-up."""

from __future__ import annotations

import json

import pytest

from llmasr.commands.data_pseudo_label import main as pseudo_main
from llmasr.commands.decode import main as decode_main
from llmasr.data.manifest import Manifest
from llmasr.data.transcript_text import has_invisible
from llmasr.testing.run_dirs import TEXTS, write_corpus, write_joined_recording

TASK = "语音转写："
OWN = "Transcribe the audio:"  # line 0's own prompt: it wins over --task
FLAGS = ["--max-new-tokens", "4", "--confidence", "--num-workers", "0"]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """(the corpus with line 0's own prompt and none on the others, the same with TASK on the others): a
    recording of them all decoded in windows ends each."""
    root = tmp_path_factory.mktemp("line_defaults")
    plain = write_corpus(root, TEXTS[:4])
    joined, _ = write_joined_recording(root, TEXTS[:4])
    lines = [json.loads(line) for line in (plain.read_text() + joined.read_text()).splitlines() if line.strip()]
    lines = [dict(r, source=str((plain.parent / r["source"]).resolve())) for r in lines]
    lines[0]["prompt"] = OWN
    rewritten = root / "rewritten.jsonl"
    given = root / "given.jsonl"
    given.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    with_task = [dict(r, prompt=r.get("prompt", TASK)) for r in lines]
    rewritten.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in with_task), encoding="utf-8")
    return given, rewritten


def _decode(exported_dir, manifest, out, *flags) -> dict:
    windows = ["--max-window-seconds", "2", "--window-overlap", "0.5"]
    args = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(out), *FLAGS, *windows, *flags]
    assert decode_main(args) == 0
    return {r["key"]: r for r in map(json.loads, open(out / "results.jsonl", encoding="utf-8"))}


def test_task_is_the_prompt_of_every_line_without_its_own(exported_dir, manifests, tmp_path, capsys):
    given, rewritten = manifests
    asked = _decode(exported_dir, given, tmp_path / "asked", "--task", TASK)
    written = _decode(exported_dir, rewritten, tmp_path / "written")  # each line carries the task itself
    plain = _decode(exported_dir, given, tmp_path / "plain")  # the model's model.prompt.task
    assert {k: r["logprob"] for k, r in asked.items()} == {k: r["logprob"] for k, r in written.items()}
    assert [r["hyp"] for r in asked.values()] == [r["hyp"] for r in written.values()]
    first = next(iter(asked))
    assert asked[first]["logprob"] == plain[first]["logprob"]  # its own prompt won
    others = [k for k in asked if k != first]
    assert all(asked[k]["logprob"] != plain[k]["logprob"] for k in others)
    assert max(r["windows"] for r in asked.values()) > 1  # the long recording's windows were asked with it too
    summary = json.loads((tmp_path / "asked" / "wer.json").read_text())
    assert (summary["task"], summary["language"]) == (TASK, None)
    assert (
        f"asked: task {TASK!r} for the lines without their own `prompt`" in (tmp_path / "asked" / "wer.txt").read_text()
    )
    assert json.loads((tmp_path / "plain" / "wer.json").read_text())["task"] is None
    assert "asked:" not in (tmp_path / "plain" / "wer.txt").read_text()

    capsys.readouterr()  # training on the pseudo-labels asks each line as the decode did
    assert pseudo_main([str(tmp_path / "asked"), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 0
    report = capsys.readouterr().out
    prompts = {u.key.split("-")[0]: u.prompt for u in Manifest.open(tmp_path / "pl.jsonl")}
    # a line whose every text holds a control character the tiny LLM wrote is left out (test_pseudo_labels)
    assert set(prompts) == {
        k for k, r in asked.items() if any(not has_invisible(w["hyp"]) for w in r.get("window_texts", [r]))
    }
    assert prompts[first] == OWN and {prompts[k] for k in others if k in prompts} == {TASK}
    asked_lines = sum(u.prompt == TASK for u in Manifest.open(tmp_path / "pl.jsonl"))  # a window each
    assert f"{asked_lines} kept lines without their own carry the decode's --task {TASK!r} as `prompt`" in report


def test_blank_task_and_a_language_the_model_reads_none_of_are_refused_at_start(exported_dir, manifests, tmp_path,
                                                                                capsys):  # fmt: skip
    given, _ = manifests
    out = tmp_path / "out"
    nowhere = ["--model", str(tmp_path / "no-model"), "--data", str(given), "--output", str(out)]
    assert decode_main([*nowhere, "--task", " "]) == 2  # before the model loads: there is none
    err = capsys.readouterr().err
    assert "task: the prompt's task text, got ' '; leave it out for the model's (--task)" in err
    args = ["--model", str(exported_dir), "--data", str(given), "--output", str(out)]
    assert decode_main([*args, "--language", "en"]) == 2
    assert "--language 'en': this model's encoder reads no language" in capsys.readouterr().err
    assert decode_main([*args, "--language", " "]) == 2
    assert "--language: a language code or name (zh, en, Japanese), got ' '" in capsys.readouterr().err
    assert not out.exists()  # refused before anything is written
