"""Settings of an LLM's generation_config.json that switch transformers' generate away from greedy or beam search
(contrastive search, DoLa, group and constrained beam search: transformers 5 loads them from the Hub, so an offline
decode failed at its first batch; assisted decoding by prompt lookup, early exit or multi-token prediction), and
stop_strings, which generate applies only given a tokenizer the search had not passed (it raised at the first batch).
`llmasr decode` of a run on such an LLM completes: the mode switches are set aside, named, and change no text; the
stop strings apply as the LLM's own generate applies them."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import pytest

from llmasr.commands.decode import main
from llmasr.testing.run_dirs import model_section, read_lines, train_run

SAID = "llmasr.models.shipped_generation"

# shipped settings -> the part of the decode's line that names them
SWITCHES = {
    "contrastive": ({"penalty_alpha": 0.6, "top_k": 4}, "penalty_alpha 0.6: set aside"),
    "dola": ({"dola_layers": "low"}, "dola_layers low: set aside"),
    "prompt lookup": ({"prompt_lookup_num_tokens": 3}, "prompt_lookup_num_tokens 3: set aside"),
    "early exit": ({"assistant_early_exit": 1}, "assistant_early_exit 1: set aside"),
    "multi-token prediction": ({"use_mtp": True}, "use_mtp true: set aside"),
    "constrained": ({"force_words_ids": [[5]]}, "force_words_ids [[5]]: set aside"),
    "group beam": ({"num_beam_groups": 2, "diversity_penalty": 0.5}, "num_beam_groups 2, diversity_penalty 0.5: set"),
    # generate cannot run these under the search: each failed at the first batch
    "guidance": ({"guidance_scale": 1.5}, "guidance_scale 1.5: set aside"),
    "token healing": ({"token_healing": True}, "token_healing true: set aside"),
    "low memory": ({"low_memory": True}, "low_memory true: set aside"),
}


@pytest.fixture(scope="module")
def llm_run(base_dirs, train_corpus, tmp_path_factory):
    """(LLM dir, run of one update on it): the LLM's generation_config.json is rewritten between decodes."""
    root = tmp_path_factory.mktemp("modes")
    llm = shutil.copytree(base_dirs[0], root / "llm")
    return llm, train_run(root / "run", model_section(llm, base_dirs[1], encoder_lora=False), train_corpus).run_dir


def _decode(run, corpus, out, *extra) -> list[str]:
    argv = ["--checkpoint", str(run), "--data", str(corpus), "--max-new-tokens", "4", "--num-workers", "0"]
    assert main([*argv, "--output", str(out), *extra]) == 0
    return read_lines(out / "hyp.txt")


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SAID]


@pytest.fixture(scope="module")
def plain_hyps(llm_run, corpus, tmp_path_factory):
    """beam flags -> the run's transcripts with the LLM's generation_config.json as written."""
    out = tmp_path_factory.mktemp("plain")
    return {beam: _decode(llm_run[1], corpus, out / (beam or "greedy"), *beam.split()) for beam in ("", "--beam 2")}


@pytest.mark.parametrize("beam", ["", "--beam 2"], ids=["greedy", "beam"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_shipped_settings_that_switch_the_search_are_set_aside(llm_run, plain_hyps, corpus, tmp_path, caplog, switch,
                                                               beam):  # fmt: skip
    llm, run = llm_run
    shipped, named = SWITCHES[switch]
    gen_file = llm / "generation_config.json"
    plain = gen_file.read_text()
    caplog.set_level(logging.INFO, logger=SAID)
    try:
        gen_file.write_text(json.dumps({**json.loads(plain), **shipped}))
        assert plain_hyps[beam] != [] and _decode(run, corpus, tmp_path, *beam.split()) == plain_hyps[beam]
    finally:
        gen_file.write_text(plain)
    said = _said(caplog)
    assert len(said) == 1 and named in said[0], said


def test_shipped_stop_strings_apply(llm_run, corpus, tmp_path, caplog):
    """The search passes generate the prompt's tokenizer, as stop strings need: a stop string that never occurs
    changes no text, and the decode names it applied."""
    llm, run = llm_run
    gen_file = llm / "generation_config.json"
    plain = gen_file.read_text()
    want = _decode(run, corpus, tmp_path / "plain")
    caplog.set_level(logging.INFO, logger=SAID)
    try:
        gen_file.write_text(json.dumps({**json.loads(plain), "stop_strings": ["\u0000never"]}))
        assert _decode(run, corpus, tmp_path / "stops") == want
    finally:
        gen_file.write_text(plain)
    said = _said(caplog)
    assert len(said) == 1 and said[0].endswith(
        "applied as the LLM's generate applies them: stop_strings ['\\x00never']"
    )


def test_the_export_leaves_out_the_shipped_settings_that_switch_the_search(llm_run, tmp_path, caplog):
    """The export writes a generation_config.json a plain generate searches by as llmasr decodes: it had kept a shipped
    penalty_alpha (a plain greedy generate on the export was contrastive search, loaded from the Hub) or
    prompt_lookup_num_tokens."""
    from transformers import GenerationConfig

    from llmasr.export.export import export_model

    llm, run = llm_run
    gen_file = llm / "generation_config.json"
    plain = gen_file.read_text()
    caplog.set_level(logging.INFO, logger="llmasr.export.export")
    try:
        gen_file.write_text(json.dumps({**json.loads(plain), "penalty_alpha": 0.6, "prompt_lookup_num_tokens": 3}))
        out = export_model(run, tmp_path / "model", dtype="fp32")
    finally:
        gen_file.write_text(plain)
    said = [r.getMessage() for r in caplog.records if "generation_config.json" in r.getMessage()]
    assert len(said) == 1 and "left out the LLM's penalty_alpha 0.6, prompt_lookup_num_tokens 3," in said[0], said
    saved = GenerationConfig.from_pretrained(out / "llm")
    assert saved.penalty_alpha is None and saved.prompt_lookup_num_tokens is None
    assert saved.get_generation_mode() == "greedy_search"


@pytest.mark.parametrize("beam", ["", "--beam 2"], ids=["greedy", "beam"])
def test_a_shipped_stop_string_that_occurs_ends_the_row_untruncated(llm_run, corpus, tmp_path, beam):
    """A row a shipped stop string ends is ended by the LLM, not by a guard: generate pads it to the batch's longest
    row with no end token, and results.jsonl must not report those pads as a cap or a repetition stop."""
    llm, run = llm_run
    gen_file = llm / "generation_config.json"
    plain = gen_file.read_text()
    _decode(run, corpus, tmp_path / "plain", "--max-new-tokens", "8", *beam.split())
    before = [json.loads(line) for line in open(tmp_path / "plain" / "results.jsonl")]
    stop = Counter(c for r in before for c in r["hyp"][:2]).most_common(1)[0][0]  # early in some row
    try:
        gen_file.write_text(json.dumps({**json.loads(plain), "stop_strings": [stop]}))
        _decode(run, corpus, tmp_path / "stops", "--max-new-tokens", "8", *beam.split())
    finally:
        gen_file.write_text(plain)
    rows = [json.loads(line) for line in open(tmp_path / "stops" / "results.jsonl")]
    cut = [r for r in rows if r["hyp"].endswith(stop)]
    assert cut and all(r["truncated"] is None for r in cut), (stop, [(r["hyp"], r["truncated"]) for r in rows])


def test_the_confidence_of_a_row_a_stop_string_ends_is_that_of_its_own_tokens(llm_run, corpus, tmp_path):
    """generate pads a row a shipped stop string ends to the batch's longest row; its confidence must score the row's
    tokens alone, as when the utterance is decoded by itself (no other row, no padding), not those pads too."""
    llm, run = llm_run
    gen_file = llm / "generation_config.json"
    plain = gen_file.read_text()
    flags = ("--max-new-tokens", "8", "--confidence")
    _decode(run, corpus, tmp_path / "plain", *flags)
    before = [json.loads(line) for line in open(tmp_path / "plain" / "results.jsonl")]
    stop = Counter(c for r in before for c in r["hyp"][:2]).most_common(1)[0][0]
    lines = {json.loads(line)["key"]: line for line in corpus.read_text().splitlines()}
    try:
        gen_file.write_text(json.dumps({**json.loads(plain), "stop_strings": [stop]}))
        _decode(run, corpus, tmp_path / "batch", *flags)
        rows = [json.loads(line) for line in open(tmp_path / "batch" / "results.jsonl")]
        longest = max(len(r["hyp"]) for r in rows)
        cut = [r for r in rows if r["hyp"].endswith(stop) and len(r["hyp"]) < longest]  # generate padded these
        assert cut, (stop, [r["hyp"] for r in rows])
        for r in cut:
            alone = tmp_path / r["key"]
            alone.mkdir()
            (alone / "one.jsonl").write_text(lines[r["key"]].replace('"wav/', f'"{corpus.parent}/wav/') + "\n")
            _decode(run, alone / "one.jsonl", alone / "out", *flags)
            (one,) = [json.loads(line) for line in open(alone / "out" / "results.jsonl")]
            assert one["hyp"] == r["hyp"]
            # results.jsonl rounds to 4 places: the batch and the lone row may round apart by one step
            assert one["avg_logprob"] == pytest.approx(r["avg_logprob"], abs=2e-4), (r, one)
            assert one["logprob"] == pytest.approx(r["logprob"], abs=1e-3), (r, one)
    finally:
        gen_file.write_text(plain)
