"""The CTC gate through decode and transcribe (decode.ctc_gate, --ctc-gate): results.jsonl marks what it emptied,
wer.txt and wer.json count it, and without it they count what it would empty and what that would do to the errors."""

from __future__ import annotations

import argparse
import json

import pytest

import llmasr.export.decode as decode_module
from llmasr.commands.decode_flags import search_args, search_settings
from llmasr.commands.transcribe import main as transcribe_main
from llmasr.config_io import ConfigError
from llmasr.export.decode import DecodeError, DecodeOptions, decode_loader, decode_manifest
from llmasr.models.decoding import DecodeConfig
from llmasr.recipe import load_recipe
from llmasr.scoring import score_corpus
from llmasr.testing.run_dirs import write_wav
from llmasr.testing.tiny_recipe import OracleCTCHead

GATED = ("test001", "test003")  # "three four", "nine": the oracle head hears no word in them


def _encoder_lengths(model, manifest) -> dict[str, int]:
    out = {}
    for batch in decode_loader(model, manifest, DecodeConfig(), DecodeOptions(num_workers=0)):
        lens = model.encoder(batch.feats, batch.feat_lens)[1].tolist()
        out.update(zip(batch.keys, lens))
    return out


@pytest.fixture
def oracle(model, corpus, monkeypatch):
    """The model's CTC head replaced by one that hears "one" in every utterance of the corpus but GATED's."""
    lengths = _encoder_lengths(model, corpus)
    assert len(set(lengths.values())) == len(lengths)
    by_len = {n: "" if key in GATED else "one" for key, n in lengths.items()}
    monkeypatch.setitem(model._modules, "ctc_head", OracleCTCHead(model.ctc_tokenizer, by_len))
    return by_len


def _rows(out) -> dict:
    return {r["key"]: r for r in map(json.loads, open(out / "results.jsonl"))}


def test_the_gate_empties_what_the_head_heard_nothing_in_and_wer_counts_both_ways(model, corpus, oracle, tmp_path):
    base = dict(batch_seconds=100.0, max_new_tokens=4, ctc_weight=0.0, confidence=True)
    off = decode_manifest(model, corpus, tmp_path / "off", DecodeConfig(**base), DecodeOptions(num_workers=0))
    on = decode_manifest(model, corpus, tmp_path / "on", DecodeConfig(**base, ctc_gate=True),
                         DecodeOptions(num_workers=0))  # fmt: skip
    rows_off, rows_on = _rows(tmp_path / "off"), _rows(tmp_path / "on")
    assert all(rows_off[k]["hyp"].strip() for k in GATED)  # the LLM wrote words where the head heard none
    for key, row in rows_on.items():
        if key in GATED:
            assert row["hyp"] == "" and row["no_speech"] is True and row["truncated"] is None
            assert row["avg_logprob"] is None and row["logprob"] is None
        else:
            assert row["hyp"] == rows_off[key]["hyp"] and "no_speech" not in row
            assert row["avg_logprob"] == pytest.approx(rows_off[key]["avg_logprob"], abs=1e-3)
    assert "no_speech" not in json.dumps(list(rows_off.values()))
    # without the gate: what it would do, in errors scored as the whole is
    refs = {k: rows_off[k]["ref"] for k in GATED}
    written = score_corpus([(refs[k], rows_off[k]["hyp"]) for k in GATED], "auto")[0].errors
    emptied = sum(len(refs[k].split()) for k in GATED)
    assert off["ctc_gate"] == {"on": False, "would_empty": 2, "empty_references": 0, "errors_written": written,
                               "errors_emptied": emptied, "windows": 0, "window_utterances": 0}  # fmt: skip
    wer_off = (tmp_path / "off" / "wer.txt").read_text()
    assert (f"CTC best path empty in 2 utterances the LLM wrote words for (e.g. key 'test001'); {written} errors "
            f"(words) as written, {emptied} if emptied, 0 of them with an empty reference; decode.ctc_gate "
            "(--ctc-gate) would leave them empty") in wer_off  # fmt: skip
    # with it: what it did; the rest of the corpus scored as before
    assert on["ctc_gate"] == {"on": True, "utterances": 2, "with_reference_words": 2, "reference_units": emptied,
                              "windows": 0, "window_utterances": 0}  # fmt: skip
    assert ("CTC gate: 2 utterances where the CTC head heard no word, left empty, 2 of them with reference words "
            f"({emptied} words deleted)") in (tmp_path / "on" / "wer.txt").read_text()  # fmt: skip
    assert on["errors"] == off["errors"] - written + emptied
    assert on["no_speech"] == off["no_speech"] == 0  # the VAD's count: no VAD here
    assert json.loads((tmp_path / "on" / "wer.json").read_text())["ctc_gate"]["utterances"] == 2


def test_no_line_where_the_head_hears_every_utterance(model, corpus, tmp_path, monkeypatch):
    lengths = _encoder_lengths(model, corpus)
    heard = OracleCTCHead(model.ctc_tokenizer, dict.fromkeys(lengths.values(), "one"))
    monkeypatch.setitem(model._modules, "ctc_head", heard)
    got = decode_manifest(model, corpus, tmp_path / "o", DecodeConfig(max_new_tokens=2, ctc_weight=0.0),
                          DecodeOptions(num_workers=0))  # fmt: skip
    assert "ctc_gate" not in got and "CTC" not in (tmp_path / "o" / "wer.txt").read_text()


def test_the_flags_and_the_recipe_key():
    p = argparse.ArgumentParser()
    search_args(p)
    assert search_settings(p.parse_args(["--ctc-gate"]))["ctc_gate"] is True
    assert search_settings(p.parse_args(["--no-ctc-gate"]))["ctc_gate"] is False  # over an export's saved true
    assert search_settings(p.parse_args([]))["ctc_gate"] is None
    with pytest.raises(ConfigError, match=r"decode.ctc_gate: .*trains none \(model.ctc.weight 0.0\)"):
        load_recipe(data={"model": {"ctc": {"weight": 0.0}}, "decode": {"ctc_gate": True}})
    assert load_recipe(data={"model": {"ctc": {"weight": 0.3}}, "decode": {"ctc_gate": True}}).decode.ctc_gate


def test_transcribe_marks_a_gated_clip_and_no_ctc_gate_turns_it_off(exported_dir, model, tmp_path, monkeypatch,
                                                                    capsys):  # fmt: skip
    clips = [write_wav(tmp_path / "short.wav", 0.6, seed=1), write_wav(tmp_path / "long.wav", 1.2, seed=2)]
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"key": c.stem, "source": str(c), "target": "x"}) + "\n" for c in clips))
    lengths = _encoder_lengths(model, manifest)
    by_len = {n: "" if key == "short" else "one" for key, n in lengths.items()}
    load = decode_module.load_exported

    def with_oracle(*args, **kwargs):
        loaded = load(*args, **kwargs)
        loaded._modules["ctc_head"] = OracleCTCHead(loaded.ctc_tokenizer, by_len)
        return loaded

    monkeypatch.setattr(decode_module, "load_exported", with_oracle)
    flags = ["--model", str(exported_dir), "--confidence", "--ctc-weight", "0", "--max-new-tokens", "3"]
    assert transcribe_main([*flags, "--ctc-gate", *map(str, clips)]) == 0
    out, err = capsys.readouterr()
    short, long = map(json.loads, out.splitlines())
    assert short["text"] == "" and short["no_speech"] is True and short["avg_logprob"] is None
    assert long["text"].strip() and "no_speech" not in long
    # plain lines too: the empty one is said on stderr, stdout's format kept
    assert (
        f"llmasr transcribe: note: {clips[0]}: no speech found by the CTC gate (--ctc-gate): its text is empty" in err
    )
    assert f"note: {clips[1]}" not in err
    assert transcribe_main([*flags[:2], "--ctc-gate", *map(str, clips)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{clips[0]}\t" and f"note: {clips[0]}: no speech found" in err
    assert transcribe_main([*flags, "--no-ctc-gate", *map(str, clips)]) == 0
    short, long = map(json.loads, capsys.readouterr().out.splitlines())
    assert short["text"].strip() and "no_speech" not in short


def test_a_model_without_a_ctc_head_refuses_the_gate_before_decoding(model, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(model._modules, "ctc_head", None)
    with pytest.raises(DecodeError, match=r"decode.ctc_gate: .*this model has none"):
        decode_manifest(model, corpus, tmp_path / "o", DecodeConfig(ctc_gate=True), DecodeOptions(num_workers=0))
    assert not (tmp_path / "o" / "results.jsonl").exists()
