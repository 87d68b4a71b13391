"""The language a manifest line names, as decode's results group it: a lhotse cut's supervision names it ("English",
as lhotse's recipes write it), a FunASR jsonl line gives a code ("en", "<|en|>", "eng"); one language is one key."""

from __future__ import annotations

import json

import pytest
import torch

import llmasr
from llmasr.data.languages import language_key
from llmasr.export.decode import DecodeOptions, decode_manifest
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.run_dirs import write_wav
from llmasr.testing.tiny_recipe import tiny_model_section


@pytest.fixture(scope="module")
def model(tiny_llm_dir):
    torch.manual_seed(0)
    return llmasr.build_model(tiny_model_section(tiny_llm_dir)).eval()


def lhotse_cut(key: str, wav, language: str) -> dict:
    sup = {"id": f"{key}-sup", "recording_id": key, "start": 0.0, "duration": 0.5, "channel": 0, "text": "hello",
           "language": language}  # fmt: skip
    recording = {"id": key, "sources": [{"type": "file", "channels": [0], "source": str(wav)}],
                 "sampling_rate": 16000, "num_samples": 8000, "duration": 0.5, "channel_ids": [0]}  # fmt: skip
    return {"id": key, "start": 0.0, "duration": 0.5, "channel": 0, "type": "MonoCut", "supervisions": [sup],
            "recording": recording}  # fmt: skip


def test_a_lhotse_manifests_language_names_and_a_jsonl_ones_codes_are_one_key(model, tmp_path):
    """decode's results had grouped a lhotse manifest's lines under "english" and "mandarin" and a jsonl's under "en"
    and "zh": the same languages, rated apart, and a cut set joined from two recipes had two groups for English."""
    wavs = [write_wav(tmp_path / f"u{i}.wav", 0.5, seed=i) for i in range(5)]
    cut_langs = ["English", "en", "English", "Mandarin", "Chinese"]
    cuts = [lhotse_cut(f"c{i}", wav, lang) for i, (wav, lang) in enumerate(zip(wavs, cut_langs))]
    (tmp_path / "cuts.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cuts), encoding="utf-8")
    line_langs = [("lang", "en"), ("lang", "EN"), ("lang", "eng"), ("text_language", "<|zh|>"), ("lang", "zho")]
    lines = [
        {"key": f"j{i}", "source": str(wav), "target": "hello", field: lang}
        for i, (wav, (field, lang)) in enumerate(zip(wavs, line_langs))
    ]
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    cfg = DecodeConfig(max_new_tokens=2, batch_seconds=100.0)
    for name in ("cuts", "lines"):
        out = tmp_path / f"out_{name}"
        summary = decode_manifest(model, tmp_path / f"{name}.jsonl", out, cfg, DecodeOptions(num_workers=0))
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["lang"] for r in rows] == ["en", "en", "en", "zh", "zh"], name
        assert {lang: g["utterances"] for lang, g in summary["by_language"].items()} == {"en": 3, "zh": 2}, name


@pytest.mark.parametrize(
    "label, key",
    [("English", "en"), (" <|EN|> ", "en"), ("deu", "de"), ("ger", "de"), ("Français", "fr"), ("普通话", "zh"),
     ("Cantonese", "yue"), ("<|yue|>", "yue"), ("jw", "jv"),
     # a script or region subtag: the language (SenseVoice's and Whisper's tokens have no regions)
     ("en-US", "en"), ("zh_CN", "zh"), ("zh-Hant-TW", "zh"), ("cmn_hans_cn", "zh"), ("es-419", "es"),
     ("zh-yue", "yue"), ("<|ko-KR|>", "ko"),
     # not in the table: kept as written, case-folded (a dialect, a code-switched label, a variant: a group the
     # user may want apart; "en" is no region)
     ("zh-en", "zh-en"), ("en-uk", "en-uk"), ("de-CH-1901", "de-ch-1901"), ("Swiss German", "swiss german"),
     ("  ", None)],
)  # fmt: skip
def test_language_key(label, key):
    assert language_key(label) == key


def test_a_region_tag_is_its_language_and_the_summary_names_the_spellings_it_gathered(model, tmp_path):
    """A test set joined from a corpus that writes "zh" and one that writes "zh-CN" (Common Voice's) had two Chinese
    groups in wer.txt, each rated apart, and "en-US" beside "en" two English ones; one group now, and the summary
    says which labels it gathered, so that a merge is seen."""
    wavs = [write_wav(tmp_path / f"u{i}.wav", 0.5, seed=i) for i in range(6)]
    labels = [("lang", "zh"), ("lang", "zh-CN"), ("language", "zh_TW"), ("text_language", "<|EN|>"),
              ("lang", "en-US"), ("lang", "zh-en")]  # fmt: skip
    targets = ["你好", "你好", "你好", "hello", "hello", "你好hello"]
    lines = [{"key": f"j{i}", "source": str(wav), "target": text, field: label}
             for i, (wav, text, (field, label)) in enumerate(zip(wavs, targets, labels))]  # fmt: skip
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), "utf-8")
    out = tmp_path / "out"
    cfg = DecodeConfig(max_new_tokens=2, batch_seconds=100.0)
    summary = decode_manifest(model, tmp_path / "m.jsonl", out, cfg, DecodeOptions(num_workers=0))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["lang"] for r in rows] == ["zh", "zh", "zh", "en", "en", "zh-en"]
    groups = summary["by_language"]
    assert {lang: g["utterances"] for lang, g in groups.items()} == {"zh": 3, "en": 2, "zh-en": 1}
    # the labels merged, beside the groups; "<|EN|>" is "en" as written, and "zh-en" its own key
    assert summary["language_labels"] == {"zh": ["zh-CN", "zh_TW"], "en": ["en-US"]}
    text = (out / "wer.txt").read_text(encoding="utf-8")
    assert "\n  zh (written zh-CN, zh_TW): CER " in text and "\n  en (written en-US): WER " in text
    assert "\n  zh-en: CER " in text
    assert json.loads((out / "wer.json").read_text(encoding="utf-8"))["language_labels"] == summary["language_labels"]
