"""llmasr.data.kaldi: a data directory's utt2lang (Kaldi's language-ID recipes write one) gives each manifest line its
`lang`, which decoding rates each language by; a key it lacks is counted, not guessed."""

import json

import pytest
from test_kaldi_utt2dur import kaldi_dir

from llmasr.commands.data_kaldi import main
from llmasr.data.kaldi import KaldiError, kaldi_to_jsonl
from llmasr.data.manifest import Manifest
from llmasr.data.records import language_of


def test_utt2lang_languages_are_written_and_a_key_it_lacks_is_counted(tmp_path, capsys):
    """`llmasr data kaldi` had left utt2lang unread without a word: a multilingual test set converted from Kaldi
    decoded as one language."""
    d = kaldi_dir(tmp_path)
    (d / "utt2lang").write_text("u0 zh-CN\nu1 English\nu2 <|ja|>\n")  # u3 missing: no lang, counted
    out = tmp_path / "test.jsonl"
    assert main([str(d), str(out)]) == 0
    printed = capsys.readouterr().out
    assert '"languages_from_utt2lang": 3' in printed and '"languages_unknown": 1' in printed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("lang") for r in lines] == ["zh-CN", "English", "<|ja|>", None]
    m = Manifest.open(out)
    assert [language_of(m[i]) for i in range(4)] == ["zh", "en", "ja", None]


def test_utt2lang_keys_segments_and_refuses_a_key_without_a_language(tmp_path):
    d = kaldi_dir(tmp_path, n=2)
    (d / "segments").write_text("s0 u0 0.0 0.5\ns1 u1 0.2 -1\n")
    (d / "text").write_text("s0 a\ns1 b\n")
    (d / "utt2lang").write_text("s0 ko\ns1 en  US\n")  # a blank run inside a value is one space
    counts = kaldi_to_jsonl(d / "wav.scp", d / "text", tmp_path / "o.jsonl", segments=d / "segments",
                            utt2lang=d / "utt2lang")  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["key"], r["lang"]) for r in lines] == [("s0", "ko"), ("s1", "en US")]
    assert (counts["languages_from_utt2lang"], counts["languages_unknown"]) == (2, 0)
    (d / "utt2lang").write_text("s0 ko\ns1\n")
    with pytest.raises(KaldiError, match=r"utt2lang:2: s1: expected '<key> <language>', got no language"):
        kaldi_to_jsonl(d / "wav.scp", d / "text", tmp_path / "o2.jsonl", segments=d / "segments",
                       utt2lang=d / "utt2lang")  # fmt: skip
