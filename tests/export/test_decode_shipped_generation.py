"""A chat LLM's generation_config.json ships sampling defaults (Qwen2.5-Instruct: do_sample true, temperature 0.7,
top_p 0.8, top_k 20, repetition_penalty 1.05): `llmasr decode` of a run on it stays a deterministic search, and says
which of the shipped settings it leaves unused, which its own decode settings replace (a repetition penalty changes
what an ASR model writes) and which the LLM's generate still applies. It had said nothing of them."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from llmasr.commands.decode import main
from llmasr.testing.run_dirs import model_section, read_lines, train_run

SAID = "llmasr.models.shipped_generation"


@pytest.fixture(scope="module")
def sampled_run(base_dirs, train_corpus, tmp_path_factory):
    """A run of one update on a copy of the tiny LLM whose generation_config.json holds a chat model's sampling
    defaults, a no_repeat_ngram_size and a length_penalty."""
    root = tmp_path_factory.mktemp("sampled")
    llm = shutil.copytree(base_dirs[0], root / "llm")
    gen_file = llm / "generation_config.json"
    gen = json.loads(gen_file.read_text())
    gen.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05, no_repeat_ngram_size=3,
               length_penalty=1.5)  # fmt: skip
    gen_file.write_text(json.dumps(gen))
    return train_run(root / "run", model_section(llm, base_dirs[1], encoder_lora=False), train_corpus).run_dir


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SAID]


def test_decode_names_the_shipped_settings_it_sets_aside_and_stays_a_search(sampled_run, corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=SAID)
    common = ["--checkpoint", str(sampled_run), "--data", str(corpus), "--max-new-tokens", "4", "--num-workers", "0"]
    assert main([*common, "--output", str(tmp_path / "a")]) == 0
    said = _said(caplog)
    assert len(said) == 1, said
    assert (
        "do_sample true, temperature 0.7, top_p 0.8, top_k 20: unused (llmasr decodes by search, never by " in said[0]
    )
    assert "repetition_penalty 1.05 replaced by decode.repetition_penalty 1 (--repetition-penalty)" in said[0]
    assert "no_repeat_ngram_size 3 replaced by decode.no_repeat_ngram_size 0 (--no-repeat-ngram)" in said[0]
    # generate reads length_penalty in a beam search only: this greedy decode leaves it unused
    assert "length_penalty 1.5: unused by a greedy search (beam search reads them: --beam)" in said[0]
    caplog.clear()
    assert main([*common, "--output", str(tmp_path / "b"), "--repetition-penalty", "1.05"]) == 0
    said = _said(caplog)
    assert len(said) == 1 and "repetition_penalty" not in said[0], said  # the decode asked for the LLM's own
    assert read_lines(tmp_path / "a" / "hyp.txt") != [] and main([*common, "--output", str(tmp_path / "c")]) == 0
    assert read_lines(tmp_path / "a" / "hyp.txt") == read_lines(tmp_path / "c" / "hyp.txt")  # no sample drawn


def test_decode_of_an_llm_without_shipped_settings_says_nothing(runs, corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=SAID)
    argv = ["--checkpoint", str(runs[0]), "--data", str(corpus), "--max-new-tokens", "4", "--num-workers", "0"]
    assert main([*argv, "--output", str(tmp_path / "a")]) == 0
    assert _said(caplog) == []


def test_a_transcriber_says_it_too(sampled_run, caplog):
    from llmasr.export.transcribe import Transcriber

    caplog.set_level(logging.INFO, logger=SAID)
    Transcriber.load(checkpoint=sampled_run, repetition_penalty=1.05)
    said = _said(caplog)
    assert len(said) == 1 and "top_k 20: unused" in said[0] and "repetition_penalty" not in said[0], said


def test_the_export_names_the_shipped_settings_it_leaves_out(sampled_run, tmp_path, caplog):
    """The export writes a greedy generation_config.json (a plain generate on llm/ searches as llmasr decodes): it
    had left the LLM's sampling settings out without a word; it names them, and what it keeps."""
    from llmasr.export.export import export_model

    caplog.set_level(logging.INFO, logger="llmasr.export.export")
    out = export_model(sampled_run, tmp_path / "model", dtype="fp32")
    said = [r.getMessage() for r in caplog.records if "generation_config.json" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0] == (
        "the export's llm/generation_config.json: do_sample false; left out the LLM's do_sample true, temperature "
        "0.7, top_p 0.8, top_k 20, repetition_penalty 1.05, no_repeat_ngram_size 3, so that a plain generate on the "
        "export searches as llmasr decodes; kept: length_penalty 1.5"
    )
    saved = json.loads((out / "llm" / "generation_config.json").read_text())
    assert saved["length_penalty"] == 1.5 and "top_k" not in saved
