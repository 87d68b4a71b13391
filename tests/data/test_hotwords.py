"""Hotwords in the data: the manifest field, bad lists as bad data, the training list sampler, phrase files."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter

import numpy as np
import pytest

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.hotword_units import join_units
from llmasr.data.hotwords import (
    CorpusStats,
    HotwordSampler,
    HotwordsConfig,
    PhraseFileError,
    read_phrase_file,
    units,
    warn_weighted,
)
from llmasr.data.manifest import BadRecord, Manifest
from llmasr.data.screen import screen
from llmasr.testing.run_dirs import older_position


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMASR_CACHE_DIR", str(tmp_path / "cache"))


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records))
    return path


def rec(key, target="a b", **extra):
    return {"key": key, "source": f"{key}.wav", "target": target, "duration": 1.0, **extra}


# ------------------------------------------------------------------------------------------------------ manifest


def test_manifest_hotwords_field(tmp_path):
    cut = {
        "id": "c1", "start": 0.0, "duration": 1.0, "channel": 0,
        "supervisions": [{"text": "hi there", "custom": {"hotwords": ["there"]}}],
        "recording": {"sources": [{"type": "file", "channels": [0], "source": "x.wav"}]},
    }  # fmt: skip
    path = write_jsonl(tmp_path / "m.jsonl", [rec("u1", hotwords=["Qwen", " SeACo Paraformer "]), rec("u2"),
                                              rec("u3", hotwords=[]), cut])  # fmt: skip
    m = Manifest.open(path)
    assert m[0].hotwords == ["Qwen", "SeACo Paraformer"]
    assert m[1].hotwords is None  # no field: none given (decoding's --hotwords list may apply)
    assert m[2].hotwords == []  # an explicit empty list: none, and nothing else applies
    assert m[3].hotwords == ["there"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Qwen", "field 'hotwords' must be a list of strings, got str"),
        ({"a": 1}, "field 'hotwords' must be a list of strings, got dict"),
        (["ok", 3], "field 'hotwords'[1] must be a string, got int"),
        (["ok", "  "], "field 'hotwords'[1] is an empty phrase"),
    ],
)
def test_bad_hotwords_are_bad_lines(tmp_path, value, reason):
    path = write_jsonl(tmp_path / "m.jsonl", [rec("good"), rec("bad", hotwords=value)])
    (tmp_path / "good.wav").write_bytes(b"")  # the screen checks that a line's audio file exists
    m = Manifest.open(path)
    with pytest.raises(BadRecord) as err:
        m[1]
    assert err.value.line == 2 and err.value.key == "bad" and reason in err.value.reason
    assert str(err.value).startswith(f"{path}:2: ")
    bad, _ = screen(m)  # counted like any bad line, by the start-up screen
    assert [(b.line, b.key) for b in bad] == [(2, "bad")] and reason in bad[0].reason


def test_bad_hotwords_in_a_cut(tmp_path):
    cut = {
        "id": "c1", "duration": 1.0, "supervisions": [{"text": "hi", "custom": {"hotwords": [""]}}],
        "recording": {"sources": [{"type": "file", "channels": [0], "source": "x.wav"}]},
    }  # fmt: skip
    with pytest.raises(BadRecord, match=r"supervisions\[0\]\.custom\.hotwords'\[0\] is an empty phrase"):
        Manifest.open(write_jsonl(tmp_path / "c.jsonl", [cut]))[0]


# -------------------------------------------------------------------------------------------------- phrase files


def test_phrase_file(tmp_path):
    good = tmp_path / "p.txt"
    good.write_text("Qwen\n  通义千问 \nSeACo Paraformer\n", encoding="utf-8")
    assert read_phrase_file(good) == ["Qwen", "通义千问", "SeACo Paraformer"]
    with pytest.raises(PhraseFileError, match="not found"):
        read_phrase_file(tmp_path / "missing.txt")
    blank = tmp_path / "blank.txt"
    blank.write_text("a\n\nb\n")
    with pytest.raises(PhraseFileError, match=rf"{blank}:2: empty line"):
        read_phrase_file(blank)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(PhraseFileError, match=rf"{latin}:2: not UTF-8"):
        read_phrase_file(latin)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(PhraseFileError, match="no phrases"):
        read_phrase_file(empty)
    windows = tmp_path / "notepad.txt"  # a BOM and CRLF line ends: the first phrase must not carry the BOM
    windows.write_bytes("\ufeffVelmont\r\n通义千问\r\n".encode("utf-8"))
    assert read_phrase_file(windows) == ["Velmont", "通义千问"]


def test_a_phrase_file_in_gbk_or_utf16_says_how_to_convert_it(tmp_path):
    """A list saved by a Chinese Windows editor (GBK, or Notepad's "Unicode", UTF-16) had been refused as "not UTF-8
    text (invalid continuation byte at byte 2)", with no word of the encoding it is in or how to convert it."""
    gbk = tmp_path / "热词.txt"
    gbk.write_bytes("通义千问\r\n小米手机\r\n".encode("gbk"))
    want = f"{gbk}:1: not UTF-8 text (invalid continuation byte at byte 2); it reads as GB18030/GBK Chinese: "
    with pytest.raises(PhraseFileError, match=re.escape(want + "convert it, e.g. iconv -f GB18030 -t UTF-8 热词.txt")):
        read_phrase_file(gbk)
    utf16 = tmp_path / "notepad.txt"
    utf16.write_bytes("通义千问\r\n".encode("utf-16"))
    with pytest.raises(PhraseFileError, match=re.escape("notepad.txt:1: not UTF-8 text (invalid start byte at byte 0); "
                       "it is UTF-16 (Windows Notepad's 'Unicode'): save it as UTF-8")):  # fmt: skip
        read_phrase_file(utf16)
    latin = tmp_path / "latin.txt"  # cp1252 whose "ès" decodes as one GB18030 character is not called Chinese
    latin.write_bytes("Hermès\n".encode("cp1252"))
    with pytest.raises(PhraseFileError, match=re.escape("latin.txt:1: not UTF-8 text (invalid continuation byte at "
                       "byte 4); save it as UTF-8")):  # fmt: skip
        read_phrase_file(latin)


def test_a_phrase_repeated_in_a_file_is_read_once_with_a_warning(tmp_path, caplog):
    """A repeated line had been rendered into every prompt again (`llmasr decode --hotwords`: "nine, world, nine,
    nine"), which no drawn training list holds, and counted as phrases again."""
    path = tmp_path / "dup.txt"
    path.write_bytes("\ufeffnine\r\nworld\nnine\n  nine  \n".encode())
    assert read_phrase_file(path) == ["nine", "world"]
    assert f"{path}: 2 repeated phrase(s) left out, line (first line): 3 (1), 4 (1)" in caplog.text
    # a start-up reads a distractor file several times (the recipe's check, each loader's): said once, not at each
    assert read_phrase_file(path) == ["nine", "world"] and caplog.text.count("repeated phrase") == 1
    path.write_bytes(b"nine\nnine\n")  # the file changed: said of its new lines
    assert read_phrase_file(path) == ["nine"] and caplog.text.count("repeated phrase") == 2


def test_a_phrase_is_read_as_its_words_one_space_apart(tmp_path, caplog):
    """A tab, a no-break space or a run of spaces inside a phrase (or the BOM of a file joined on with `cat`) had
    reached the prompt as written, and the search's boost, which matches the phrase's own token spelling, never
    found it in a transcript: "quick\tbrown" earned nothing on "the quick brown fox". A file's phrases and a
    manifest line's are read alike, and phrases equal once read are one phrase."""
    path = tmp_path / "odd.txt"
    path.write_bytes("Zhang\tWei\nNew  York\nSeACo\u00a0Paraformer\n\ufeffQwen\nNew York\n".encode())
    assert read_phrase_file(path) == ["Zhang Wei", "New York", "SeACo Paraformer", "Qwen"]
    assert f"{path}: 1 repeated phrase(s) left out, line (first line): 5 (2)" in caplog.text
    m = Manifest.open(write_jsonl(tmp_path / "m.jsonl", [rec("u1", hotwords=["Zhang\tWei", " New \u00a0 York "])]))
    assert m[0].hotwords == ["Zhang Wei", "New York"]


def test_a_phrase_repeated_or_decomposed_is_one_phrase_in_a_file_and_a_manifest(tmp_path, caplog):
    """A manifest line's `["nine", "nine"]` had been rendered into its prompt twice (decode's wer.txt counted 2
    phrases, its hotword scores 1), and "Café" typed decomposed (NFD, as macOS writes file names) beside the
    composed one was a second phrase in a file and a list alike; each is now read composed, a repeat once."""
    import unicodedata

    nfd = unicodedata.normalize("NFD", "Café")
    assert nfd != "Café"
    path = tmp_path / "nfd.txt"
    path.write_text(f"{nfd}\nCafé\nnine\n", encoding="utf-8")
    assert read_phrase_file(path) == ["Café", "nine"]
    assert f"{path}: 1 repeated phrase(s) left out, line (first line): 2 (1)" in caplog.text
    cut = {
        "id": "c1", "start": 0.0, "duration": 1.0, "channel": 0,
        "supervisions": [{"text": "hi there", "custom": {"hotwords": ["there", "there"]}}],
        "recording": {"sources": [{"type": "file", "channels": [0], "source": "x.wav"}]},
    }  # fmt: skip
    m = Manifest.open(write_jsonl(tmp_path / "m.jsonl", [rec("u1", hotwords=["nine", nfd, " nine", "Café"]), cut]))
    assert m[0].hotwords == ["nine", "Café"] and m[1].hotwords == ["there"]


@pytest.mark.parametrize(
    ("brk", "name"),
    [
        ("\u2028", "U+2028 (LINE SEPARATOR)"),
        ("\x0c", "U+000C (a control character)"),
        ("\x85", "U+0085 (a control character)"),
    ],
)
def test_a_phrase_file_with_another_line_break_inside_a_line_is_refused(tmp_path, brk, name):
    """A line separator, form feed or NEL (which some editors show as a line end) inside a line had been read as a
    space: "Qwen" and "Kubernetes" became the one phrase "Qwen Kubernetes", unsaid."""
    path = tmp_path / "breaks.txt"
    path.write_text(f"nine\nQwen{brk}Kubernetes\n", encoding="utf-8")
    with pytest.raises(PhraseFileError, match=re.escape(f"{path}:2: holds {name}, which some editors show as a line")):
        read_phrase_file(path)


def test_a_phrase_file_with_cr_line_ends_is_read_a_phrase_a_line(tmp_path):
    """A file whose lines end in \r alone had been read as one phrase holding every line; line numbers in errors
    count each \r, \n or \r\n once."""
    cr = tmp_path / "cr.txt"
    cr.write_bytes("alpha\rbeta gamma\r通义千问".encode())
    assert read_phrase_file(cr) == ["alpha", "beta gamma", "通义千问"]
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes(b"a\r\nb\rc\n\r\n")
    with pytest.raises(PhraseFileError, match=r"mixed.txt:4: empty line"):
        read_phrase_file(mixed)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"a\rb\r\nc\xe9\r")
    with pytest.raises(PhraseFileError, match=r"latin.txt:3: not UTF-8"):
        read_phrase_file(latin)


# ------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"source": "both"}, "hotwords.source"),
        ({"unit": "byte"}, "hotwords.unit"),
        ({"ngram": [0, 2]}, "hotwords.ngram"),
        ({"ngram": [3, 2]}, "hotwords.ngram"),
        ({"list_size": [0, 3]}, "hotwords.list_size"),
        (
            {"true_phrases": [1, 4], "list_size": [2, 3]},
            "hotwords.true_phrases: up to 4 reference phrases a list, but data.hotwords.list_size allows at most 3",
        ),
        ({"empty_prob": 1.5}, "hotwords.empty_prob"),
        ({"enable": True, "distractors": "/no/such/file.txt"}, "hotwords.distractors: hotword file not found"),
    ],
)
def test_config_is_checked(section, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(HotwordsConfig, section, "data.hotwords")


def test_drawing_settings_where_no_list_is_drawn_are_named():
    """enable with source manifest uses the manifest's lists as given, as enable false does: drawing settings set
    there, or with enable false, had trained with no list drawn and no word."""

    def idle(section):
        return from_dict(HotwordsConfig, section, "data.hotwords").idle_settings()

    assert idle({"enable": True, "source": "manifest"}) == [
        "data.hotwords.source: manifest draws no list: training uses the manifest's lists as given, as it does with "
        "enable false (manifest_or_sample or sample draw lists)"
    ]
    assert idle({"list_size": [3, 5], "rarity": 2.0}) == [
        "data.hotwords: list_size, rarity set, but enable is false: no list is drawn, so it does nothing"
    ]
    assert idle({"enable": True, "source": "manifest", "empty_prob": 0.5})[1].endswith(
        "empty_prob set, but source is manifest: no list is drawn, so it does nothing"
    )
    assert idle({}) == [] and idle({"enable": True, "list_size": [3, 5]}) == []  # drawn: every setting is read
    # every drawn list empty: the lists had trained as none, and nothing said the section was idle
    assert idle({"enable": True, "empty_prob": 1.0}) == [
        "data.hotwords.empty_prob: 1 leaves every drawn list empty: no line without a list of its own trains with "
        "one, and the other drawing settings do nothing; lower it (the default 0.2) or set enable false"
    ]
    assert idle({"enable": True, "empty_prob": 0.99}) == []


# ------------------------------------------------------------------------------------------------------ sampling

CORPUS = ["the cat sat on the mat", "the dog and the cat", "zanzibar the cat", "the the the dog"]


def sampler(tmp_path, texts=CORPUS, **cfg) -> HotwordSampler:
    path = write_jsonl(tmp_path / "train.jsonl", [rec(f"u{i}", t) for i, t in enumerate(texts)])
    c = from_dict(HotwordsConfig, {"enable": True, **cfg}, "data.hotwords")
    return HotwordSampler.build(c, Manifest.open(path), seed=7)


def test_corpus_counts_and_pool(tmp_path):
    s = sampler(tmp_path, ngram=[1, 2], pool_size=1000)
    assert s.stats.counts["the"] == 8 and s.stats.counts["zanzibar"] == 1
    assert "zanzibar the" in s.pool and "cat sat" in s.pool
    small = sampler(tmp_path, ngram=[1, 1], pool_size=3)
    assert len(small.stats.pool) == 3  # the pool keeps pool_size n-gram occurrences
    assert units("Hello, world! (Qwen-2.5)", "word") == ["Hello", "world", "Qwen-2.5"]
    assert units("通义，千问", "char") == ["通", "义", "千", "问"]


def test_lists_are_deterministic_per_item_and_epoch(tmp_path):
    s = sampler(tmp_path, empty_prob=0.0, list_size=[3, 5])
    target = "the cat sat on the mat"
    a = [s.pick(None, target, i, 0) for i in range(20)]
    again = sampler(tmp_path, empty_prob=0.0, list_size=[3, 5])  # another worker, or a resumed run
    assert a == [again.pick(None, target, i, 0) for i in range(20)]
    assert a != [s.pick(None, target, i, 1) for i in range(20)]  # a new epoch draws new lists
    assert a != [s.pick(None, target, i + 1, 0) for i in range(20)]  # and every item its own


def test_true_phrases_favour_rare_words(tmp_path):
    s = sampler(tmp_path, ngram=[1, 1], true_phrases=[1, 1], list_size=[1, 1], empty_prob=0.0, rarity=1.0)
    picks = Counter(w for i in range(400) for w in s.pick(None, "zanzibar the cat", i, 0))
    # weights 1 (zanzibar) : 1/8 (the) : 1/3 (cat)
    assert picks["zanzibar"] > 2 * picks["cat"] > 0 and picks["cat"] > picks["the"]
    flat = sampler(tmp_path, ngram=[1, 1], true_phrases=[1, 1], list_size=[1, 1], empty_prob=0.0, rarity=0.0)
    uniform = Counter(w for i in range(400) for w in flat.pick(None, "zanzibar the cat", i, 0))
    assert abs(uniform["zanzibar"] - uniform["the"]) < 60


@pytest.mark.parametrize("distractors", ["corpus", "file"])
def test_no_drawn_phrase_is_longer_than_longest_phrase_bytes(tmp_path, distractors):
    """The context check counts a list drawn without a token cap by its longest phrase: a reference n-gram (the
    corpus's longest, "zanzibar the": 12 bytes) or a distractor from the file (Paraformer-Large: 16)."""
    pool = tmp_path / "pool.txt"
    pool.write_text("Qwen\nParaformer-Large\n")
    where = {"distractors": str(pool)} if distractors == "file" else {}
    s = sampler(tmp_path, ngram=[1, 2], true_phrases=[1, 2], list_size=[4, 4], empty_prob=0.0, **where)
    assert s.longest_phrase_bytes == (16 if distractors == "file" else len("zanzibar the"))
    drawn = {p for i in range(200) for t in CORPUS for p in s.pick(None, t, i, 0)}
    assert max(len(p.encode()) for p in drawn) == s.longest_phrase_bytes


def test_a_pool_too_small_for_list_size_is_named_at_start_up(tmp_path):
    """A 2-phrase distractor file under list_size [6, 8] had drawn lists of 3 phrases, and nothing said so."""
    pool = tmp_path / "pool.txt"
    pool.write_text("Kubernetes\nZanzibar\n")
    s = sampler(tmp_path, distractors=str(pool), true_phrases=[1, 1], list_size=[6, 8], empty_prob=0.0)
    assert max(len(s.pick(None, t, i, 0)) for i, t in enumerate(CORPUS)) == 3
    assert (
        f"data.hotwords.distractors: {pool} holds 2 distinct phrase(s), but a list may ask for 7 distractors "
        "(list_size's maximum 8 less true_phrases' minimum 1): lists will hold fewer phrases than list_size [6, 8] "
        "says" in s.short_pool()
    )
    said = sampler(tmp_path, pool_size=3, true_phrases=[1, 1], list_size=[6, 8]).short_pool()
    assert "the training texts gave 3 distinct corpus distractor(s) (pool_size 3), but a list may ask" in said
    # room enough: nothing said
    assert sampler(tmp_path, distractors=str(pool), true_phrases=[1, 1], list_size=[2, 3]).short_pool() is None


def test_a_pool_too_small_is_said_by_rank_0_alone(tmp_path, caplog):
    """Every rank builds its sampler: the warning had been logged once a rank (eight times on eight GPUs), where
    the sampler's other start-up line is rank 0's."""
    from llmasr.data.config import DataConfig
    from llmasr.data.loader import _hotword_sampler

    path = write_jsonl(tmp_path / "train.jsonl", [rec(f"u{i}", t) for i, t in enumerate(CORPUS)])
    hotwords = {"enable": True, "pool_size": 3, "true_phrases": [1, 1], "list_size": [6, 8]}
    data_cfg = from_dict(DataConfig, {"train": [str(path)], "hotwords": hotwords}, "data")
    for rank, said in ((1, False), (0, True)):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            _hotword_sampler(data_cfg, Manifest.open(path), train=True, rank=rank)
        assert ("distinct corpus distractor(s) (pool_size 3), but a list may ask" in caplog.text) == said, rank


def test_lists_mix_true_phrases_and_distractors_shuffled(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("Qwen\nSeACo\nthe cat\nParaformer\nLoRA\nDeepSpeed\n")
    s = sampler(tmp_path, ngram=[1, 2], true_phrases=[1, 1], list_size=[4, 4], empty_prob=0.0, distractors=str(pool))
    target = "the cat sat on the mat"
    first = []
    for i in range(60):
        got = s.pick(None, target, i, 0)
        true = [p for p in got if f" {p} " in f" {target} "]
        false = [p for p in got if p not in true]
        assert len(got) == 4 and len(set(got)) == 4 and len(true) == 1, got
        assert set(false) <= {"Qwen", "SeACo", "Paraformer", "LoRA", "DeepSpeed"}  # "the cat" is in the reference
        first.append(got[0] in true)
    assert 0 < sum(first) < 40  # the true phrase has no fixed place


def test_a_distractor_is_never_a_word_scoring_finds_spoken(tmp_path):
    """ "york" is a word of "a New-York minute" as scoring reads it (the hyphen splits words there): a list that
    offered it as a distractor taught the prompt that a spoken word was absent."""
    pool = tmp_path / "pool.txt"
    pool.write_text("york\nQwen\nSeACo\nLoRA\nDeepSpeed\n")
    s = sampler(tmp_path, ngram=[1, 1], true_phrases=[1, 1], list_size=[4, 4], empty_prob=0.0, distractors=str(pool))
    lists = [s.pick(None, "a New-York minute", i, 0) for i in range(100)]
    assert not any("york" in got for got in lists)
    assert any("york" in s.pick(None, "a minute", i, 0) for i in range(100))  # elsewhere it is a distractor


def test_empty_share_and_sources(tmp_path):
    s = sampler(tmp_path, empty_prob=0.3)
    empty = sum(not s.pick(None, "the cat sat", i, 0) for i in range(1000))
    assert 240 < empty < 360
    assert s.pick(["given"], "the cat", 0, 0) == ["given"]  # manifest_or_sample: a line's list as given
    assert s.pick([], "the cat", 0, 0) == []
    always = sampler(tmp_path, source="sample", empty_prob=0.0)
    assert always.pick(["given"], "the cat sat", 0, 0) != ["given"]
    assert sampler(tmp_path, source="manifest") is None  # nothing drawn: the dataset uses the manifest's lists


def test_char_unit_lists(tmp_path):
    texts = ["通义千问很好", "千问模型", "通义实验室"]
    s = sampler(tmp_path, texts, unit="char", ngram=[2, 3], true_phrases=[1, 1], list_size=[3, 3], empty_prob=0.0)
    got = s.pick(None, "通义千问很好", 5, 0)
    assert len(got) == 3 and sum(p in "通义千问很好" for p in got) == 1
    assert all(2 <= len(p) <= 3 for p in got)


def test_the_default_unit_cuts_chinese_into_characters_and_keeps_words_whole(tmp_path):
    """unit auto (the default): a character of a script written without spaces is a unit, a word between spaces
    another. With word (the old default) a Chinese transcript was one unit, so its 'true phrase' was the whole
    reference and every distractor a whole other sentence; with char, English words were cut into letters."""
    assert units("我用iPhone打电话给张三", "auto") == ["我", "用", "iPhone", "打", "电", "话", "给", "张", "三"]
    assert units("Hello, world! (Qwen-2.5)", "auto") == units("Hello, world! (Qwen-2.5)", "word")
    texts = ["今天天气很好我们去公园散步", "我用iPhone打电话给张三", "明天下雨我们在家看书"]
    s = sampler(tmp_path, texts, ngram=[2, 3], true_phrases=[1, 1], list_size=[4, 4], empty_prob=0.0)
    target = texts[0]
    for i in range(40):
        got = s.pick(None, target, i, 0)
        true = [p for p in got if p in target]
        assert len(true) == 1 and 2 <= len(true[0]) <= 3, got  # two or three characters, not the sentence
        assert all(p not in target for p in got if p not in true)  # no distractor is part of the reference
    assert any("iPhone" in p for p in s.pool)  # a Latin word stays whole among characters


def test_a_phrase_of_mixed_chinese_and_english_is_written_as_the_reference_writes_it(tmp_path):
    """ "买了iPhone手机" cut by unit auto is 买 了 iPhone 手 机: a phrase across the word and a character had been
    joined with a space ("了 iPhone", "iPhone 手"), so training prompts listed phrases no transcript writes, true
    phrases and corpus distractors alike. One written with spaces keeps them."""
    texts = ["我买了iPhone手机和MacBook", "我买了 iPhone 手机", "小米14手机很好用", "用GPT4模型写代码"]
    s = sampler(tmp_path, texts, ngram=[2, 3], true_phrases=[1, 3], list_size=[3, 3], empty_prob=0.0, rarity=0.0,
                pool_size=1000)  # fmt: skip
    assert join_units(["了", "iPhone"], "auto") == "了 iPhone"  # without word from the text: spaced, as before
    for target in texts:
        for i in range(30):
            true = [p for p in s.pick(None, target, i, 0) if p.replace(" ", "") in target.replace(" ", "")]
            assert true and all(p in target for p in true), (target, true)
    assert all(any(p in t for t in texts) for p in s.pool), [p for p in s.pool if not any(p in t for t in texts)]
    assert "了iPhone" in s.pool and "了 iPhone" in s.pool and "iPhone手机" in s.pool


@pytest.mark.parametrize("unit", ["auto", "word", "char"])
def test_no_phrase_is_punctuation_or_symbols_only(tmp_path, unit):
    """ "+" in "A + B = C" is a unit of no letter or digit: scoring drops it, so a list holding it had a phrase that
    cannot be scored (B-WER, recall), and being rare it was the favourite true phrase; nor is it a distractor."""
    from llmasr.scoring import score_utterance
    from llmasr.scoring_bias import score_biased

    texts = ["A + B = C", "I ❤ NY", "C++ and C# are fine", "one = two"]
    s = sampler(tmp_path, texts, unit=unit, ngram=[1, 1], true_phrases=[1, 2], list_size=[4, 6], empty_prob=0.0)
    assert units("A + B = C ❤", unit) == ["A", "B", "C"]
    for target in texts:
        for i in range(40):
            got = s.pick(None, target, i, 0)
            assert got and not score_biased(score_utterance(target, target), got).unscorable, (target, got)
    assert units("C++ $5 ①", "word") == ["C++", "$5", "①"]  # a word with a letter or digit stays as written


def test_stats_weight_of_unseen_units():
    stats = CorpusStats(Counter({"a": 4}), [])
    assert stats.weight(("a",), 1.0) == 0.25 and stats.weight(("a", "zz"), 1.0) == 1.0
    assert np.isclose(stats.weight(("a",), 0.5), 0.5)


def test_readme_documents_every_hotword_key():
    import dataclasses
    import re
    from pathlib import Path

    from llmasr.models.config import PromptConfig

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("\n## Hotwords\n")
    section = text[start : text.find("\n## ", start + 5)]
    rows = {m for line in section.splitlines() if line.startswith("| `") for m in re.findall(r"^\| `(\w+)`", line)}
    wanted = {f.name for f in dataclasses.fields(HotwordsConfig)}
    wanted |= {f.name for f in dataclasses.fields(PromptConfig) if f.name.startswith("hotwords")}
    assert wanted == rows, (wanted - rows, rows - wanted)
    assert "--hotwords FILE" in section


def test_weighted_lists_are_warned_of_once_each_in_bounded_memory(caplog):
    """A long-lived Transcriber given a FunASR-runtime list per call had kept every list warned of, its phrases too,
    for as long as it ran. A digest of each of the latest lists is kept (WARNED_KEPT of them): a list is still warned of
    once with a thousand others between."""
    import tracemalloc

    from llmasr.data import hotwords

    def weighted(n: int, size: int = 50) -> list[str]:
        return [f"phrase {n} word {i} {i}" for i in range(size)]

    caplog.set_level(logging.ERROR, logger=hotwords.__name__)  # no log records kept while memory is measured
    first = weighted(-1)
    assert warn_weighted(first, first, "hotwords")
    assert all(warn_weighted(weighted(n), weighted(n), "hotwords") for n in range(1000))
    assert not warn_weighted(first, first, "hotwords")  # once, with a thousand others between
    assert warn_weighted(first, first, "other")  # another place: warned of there too
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3000):
            phrases = weighted(n + 10**6)
            assert warn_weighted(phrases, phrases, "hotwords")
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2**20, kept  # every list's phrases had stayed: 11 MiB


def test_a_funasr_runtime_hotword_file_is_read_as_written_with_a_warning(tmp_path, caplog):
    """FunASR-runtime's hotword files write a weight after each phrase ("阿里巴巴 20"): read as phrases, they had biased
    towards "20" too, without a word. Every line so (two or more) is warned of once, naming the file and its first
    lines; nothing is stripped (the numbers may be part of the phrases)."""
    runtime = tmp_path / "hotwords.txt"
    runtime.write_text("阿里巴巴 20\n达摩院\t15\n魔搭 10\nParaformer 5\n", encoding="utf-8")
    cfg = from_dict(HotwordsConfig, {"enable": True, "distractors": str(runtime)}, "data.hotwords")
    cfg.validate("data.hotwords")  # data.hotwords.distractors: checked at config time, read again by the sampler
    s = sampler(tmp_path, distractors=str(runtime))
    assert s.pool == ["阿里巴巴 20", "达摩院 15", "魔搭 10", "Paraformer 5"]  # as written
    warned = [r.getMessage() for r in caplog.records if "FunASR-runtime" in r.getMessage()]
    assert len(warned) == 1  # once, though the file is read twice
    assert warned[0].startswith(
        f"{runtime}: every phrase ends in a number after a space ({runtime}:1 '阿里巴巴 20', {runtime}:2 '达摩院 15', "
        f"{runtime}:3 '魔搭 10', ...), as FunASR-runtime's hotword files write a weight after each phrase"
    )
    assert "remove them (sed -E 's/[[:space:]]+[+-]?[0-9]+$//')" in warned[0]
    caplog.clear()
    for name, text in (("one.txt", "阿里巴巴 20\n"), ("some.txt", "iPhone 15\nWindows 11\nPixel\n")):
        path = tmp_path / name  # a lone phrase, or only some: phrases that end in a number
        path.write_text(text, encoding="utf-8")
        read_phrase_file(path)
    assert "FunASR-runtime" not in caplog.text


def test_a_resume_of_a_position_an_older_llmasr_saved_says_the_lists_are_drawn_otherwise(tmp_path):
    """An llmasr before the bottom-k pool drew corpus distractors from a reservoir sample: resumed, the same line's
    list at the same epoch differs (32 of 40 lists of the demo's corpus), and that had gone unsaid. Its positions are
    those without `unusable`; a checkpoint at an epoch's end holds none, and lists from a phrase file or the
    manifest's own lists are drawn as before."""
    old = older_position()  # as that llmasr wrote it
    drawn = HotwordsConfig(enable=True)
    said = drawn.redrawn({"sampler": old, "bad_data": []})
    assert said.startswith("data.hotwords: the checkpoint was saved by an older llmasr, which drew the biasing lists' "
                           "corpus distractors from another sample")  # fmt: skip
    assert drawn.redrawn({"sampler": {**old, "unusable": [0, "da39a3ee"]}}) is None
    assert drawn.redrawn(None) is None
    (tmp_path / "names.txt").write_text("alpha\nbeta\n")
    for cfg in (HotwordsConfig(), HotwordsConfig(enable=True, source="manifest"),
                HotwordsConfig(enable=True, distractors=str(tmp_path / "names.txt"))):  # fmt: skip
        assert cfg.redrawn({"sampler": old}) is None
