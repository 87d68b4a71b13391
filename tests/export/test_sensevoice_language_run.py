"""SenseVoice with per-line language queries (model.encoder.conf.queries.language: per_line) end to end: a tiny run
trains on lines in several languages, each line's `lang` reaching the encoder as its row's query (training,
validation); the export records the setting; decoding its dev set gives each line its own language, as validation
did (the teacher-forced loss of the run's checkpoint equals the exported model's on the same batches), and
`Transcriber(language=...)` gives a file the query a line of that language gets, as `llmasr decode --language`
gives every line without its own `lang` (scored in no language group: its `lang` is its reference label)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from llmasr.commands.data_pseudo_label import main as pseudo_main
from llmasr.commands.decode import main as decode_main
from llmasr.data.manifest import Manifest
from llmasr.export.decode import DecodeOptions, decode_manifest
from llmasr.export.export import export_model
from llmasr.export.transcribe import TranscribeError, Transcriber
from llmasr.models.decoding import decode_config
from llmasr.models.exported import load_exported, read_description
from llmasr.models.sensevoice import SenseVoiceEncoderSmall
from llmasr.testing.run_dirs import model_section, train_run
from llmasr.testing.tiny_corpus import write_tiny_corpus
from llmasr.testing.tiny_funasr import tiny_sensevoice_conf, write_funasr_dir
from llmasr.train.resolve import build_loaders, text_side

LABELS = ["en", "<|zh|>", "Japanese", "de", None, "cmn_hans_cn"]  # keys en, zh, ja, de (no query: auto), none, zh
KEYS = ["en", "zh", "ja", "de", None, "zh"]


def _corpus(directory, n: int, seed: int):
    manifest = write_tiny_corpus(directory, n=n, seed=seed)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i, line in enumerate(lines):
        line.update({"lang": LABELS[i % 6]} if LABELS[i % 6] else {})
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture
def languages_seen(monkeypatch):
    """Every `languages` list the SenseVoice encoder is called with, in order."""
    seen = []
    forward = SenseVoiceEncoderSmall.forward

    def spy(self, xs, xs_lens, languages=None):
        seen.append(None if languages is None else list(languages))
        return forward(self, xs, xs_lens, languages)

    monkeypatch.setattr(SenseVoiceEncoderSmall, "forward", spy)
    return seen


def test_per_line_languages_train_export_decode(tmp_path, languages_seen, capsys):
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    llm_dir = write_tiny_llm_dir(tmp_path / "llm")
    enc_dir = write_funasr_dir(tmp_path / "sv", model="SenseVoiceSmall", encoder_conf=tiny_sensevoice_conf(), seed=4)
    train, dev = _corpus(tmp_path / "train", 12, 0), _corpus(tmp_path / "dev", 6, 1)
    section = model_section(llm_dir, enc_dir)
    section["encoder"]["type"] = "sensevoice"
    section["encoder"]["conf"]["queries"] = {"language": "per_line", "itn": False}
    section["ctc"] = {"weight": 0.3, "from_encoder": True}
    run = train_run(tmp_path / "run", section, train, updates=2, valid=dev, data={"valid_max_utts": 100})
    said = (run.run_dir / "train.log").read_text()  # at start-up: the German lines run with "auto"
    for name, path, n in (("data.train", train, 2), ("data.valid", dev, 1)):
        assert (f"{name}: {n} line(s) in a language SenseVoiceSmall has no query for run with 'auto': de {n} (first "
                f"{path}:4)") in said  # fmt: skip
    keys = {json.loads(line)["key"]: KEYS[i] for i, line in enumerate(dev.read_text().splitlines())}
    train_keys = {json.loads(line)["key"]: KEYS[i % 6] for i, line in enumerate(train.read_text().splitlines())}
    assert languages_seen and all(langs is not None for langs in languages_seen)  # every call: the rows' languages
    assert {lang for langs in languages_seen for lang in langs} == set(KEYS)

    out = export_model(run.run_dir, tmp_path / "model", dtype="fp32")
    assert read_description(out)["encoder"]["conf"]["queries"] == {"language": "per_line", "itn": False}
    model = load_exported(out).eval()
    ref = run.reference_model()
    cfg = decode_config(run.recipe.decode)
    # validation's own loader: its batches carry the CTC labels a model training a CTC head needs (decode's carry none)
    loader = build_loaders(run.recipe, text_side(run.recipe.model), rank=0, world_size=1)[2]
    sums = torch.zeros(5, dtype=torch.float64)  # llm loss, tokens, ctc loss, utterances; llm loss all "auto"
    for batch in loader:  # validation's teacher-forced pass over each line with its language, reproduced
        assert batch.languages == [keys[k] for k in batch.keys]
        with torch.no_grad():
            got, want = model(batch), ref(batch)
            auto = model(dataclasses.replace(batch, languages=None))  # every row "auto"
        torch.testing.assert_close(
            got.llm_loss_sum, want.llm_loss_sum, rtol=1e-5, atol=1e-5
        )  # LoRA merged into the weights
        torch.testing.assert_close(
            got.ctc_loss_sum, want.ctc_loss_sum, rtol=1e-5, atol=1e-5
        )  # LoRA merged into the weights
        sums += torch.tensor([float(got.llm_loss_sum), float(got.n_tokens), float(got.ctc_loss_sum), got.n_utts, 0.0])
        sums[4] += float(auto.llm_loss_sum)
        if any(keys[k] in ("en", "zh", "ja") for k in batch.keys):  # a row with a query of its own: not "auto"'s
            assert not torch.allclose(got.ctc_loss_sum, auto.ctc_loss_sum)
    # validation's LLM loss, as train.log states it
    logged = re.search(r"valid update=2 .*? llm_loss=([0-9.]+)", (run.run_dir / "train.log").read_text())
    assert sums[1] > 0 and sums[3] == 6 and f"{float(sums[0] / sums[1]):.4f}" == logged.group(1)
    assert f"{float(sums[4] / sums[1]):.4f}" != logged.group(1)  # every row "auto": not what validation computed

    languages_seen.clear()
    decode_manifest(model, dev, tmp_path / "dec", cfg, DecodeOptions())
    rows = [json.loads(line) for line in (tmp_path / "dec" / "results.jsonl").read_text().splitlines()]
    assert languages_seen and {lang for langs in languages_seen for lang in langs} == set(KEYS)
    asr = Transcriber(model, cfg)
    wav = {
        json.loads(line)["key"]: tmp_path / "dev" / json.loads(line)["source"] for line in dev.read_text().splitlines()
    }
    for row in rows:  # a file transcribed in its line's language reads as the line decoded
        language = keys[row["key"]] if keys[row["key"]] in ("en", "zh", "ja") else None
        assert asr(str(wav[row["key"]]), language=language) == row["hyp"], row["key"]
    with pytest.raises(TranscribeError, match=r"language 'German'.* has a query for auto, en, .*not 'de'"):
        asr(str(wav[rows[0]["key"]]), language="German")

    # long audio: each window of a line runs with the line's language
    clips = [sf.read(str(path))[0] for path in wav.values()]
    lines = []
    for i, lang in enumerate(("Japanese", "en")):
        sf.write(str(tmp_path / f"long{i}.wav"), np.concatenate(clips[i:] + clips[:i] + clips), 16000)
        lines.append(
            json.dumps({"key": f"long{i}", "source": str(tmp_path / f"long{i}.wav"), "target": "x", "lang": lang})
        )
    (tmp_path / "long.jsonl").write_text("\n".join(lines) + "\n")
    languages_seen.clear()
    windowed = dataclasses.replace(cfg, max_window_seconds=2.0, window_overlap=0.5)
    decode_manifest(model, tmp_path / "long.jsonl", tmp_path / "long", windowed, DecodeOptions())
    rows = [json.loads(line) for line in (tmp_path / "long" / "results.jsonl").read_text().splitlines()]
    seen = [lang for langs in languages_seen for lang in langs]
    assert [r["windows"] for r in rows] == [seen.count("ja"), seen.count("en")] and rows[0]["windows"] > 1
    assert train_keys  # the train lines' languages were those seen above

    # decode --language: the query of every line without its own `lang`, each window of a long one included
    languages_seen.clear()
    args = ["--model", str(out), "--num-workers", "0", "--language", "en"]
    assert decode_main([*args, "--data", str(dev), "--output", str(tmp_path / "en")]) == 0
    assert {lang for langs in languages_seen for lang in langs} == set(KEYS) - {None}  # the line of none: "en"
    rows = [json.loads(line) for line in (tmp_path / "en" / "results.jsonl").read_text().splitlines()]
    (bare,) = [r for r in rows if keys[r["key"]] is None]
    assert asr(str(wav[bare["key"]]), language="en") == bare["hyp"]
    summary = json.loads((tmp_path / "en" / "wer.json").read_text())
    assert summary["language"] == "en" and summary["by_language"]["en"]["utterances"] == 1  # line 0's own alone
    assert "asked: language en for the lines without their own `lang`" in (tmp_path / "en" / "wer.txt").read_text()
    (tmp_path / "bare.jsonl").write_text("".join(line.replace(', "lang": "en"', "") + "\n" for line in lines[1:]))
    languages_seen.clear()
    flags = ["--max-window-seconds", "2", "--window-overlap", "0.5"]
    assert decode_main([*args, *flags, "--data", str(tmp_path / "bare.jsonl"), "--output", str(tmp_path / "w")]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "w" / "results.jsonl").read_text().splitlines()]
    assert row["windows"] > 1 and [lang for langs in languages_seen for lang in langs] == ["en"] * row["windows"]
    capsys.readouterr()
    assert pseudo_main([str(tmp_path / "en"), "--output", str(tmp_path / "pl.jsonl"), "--keep-truncated"]) == 0
    labels = {u.key: u.lang for u in Manifest.open(tmp_path / "pl.jsonl")}
    own = {r["key"]: r.get("lang", "en") for r in map(json.loads, dev.read_text().splitlines())}  # "en": none own
    assert labels and labels == {k: own[k] for k in labels} and (bare["key"] in labels or not bare["hyp"].strip())
    assert decode_main([*args[:-1], "German", "--data", str(dev), "--output", str(tmp_path / "de")]) == 2
    assert "--language 'German': SenseVoiceSmall has a query for auto, en, " in capsys.readouterr().err
