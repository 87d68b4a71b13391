"""A token list read through a FunASR seg_dict (llmasr.models.ctc_seg_dict): FunASR's CharTokenizer rule, the
recipe key, `from_encoder` picking it up, and (opt-in) the ids of FunASR's own tokenizer. An export carrying it:
tests/export/test_export_seg_dict.py."""

from __future__ import annotations

import importlib.util
import json
import logging
import os

import pytest
import yaml

from llmasr.config_io import ConfigError, from_dict
from llmasr.models.config import ModelConfig
from llmasr.models.ctc import build_ctc_tokenizer
from llmasr.models.ctc_config import CTCConfig
from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir

# Paraformer-large's layout in small: Chinese characters are their own pieces, English words are cut into pieces
# ending in "@@" where the word goes on
TOKENS = ["<blank>", "<s>", "</s>", "he@@", "llo", "wor@@", "ld", "你", "好", "1", "on@@", "e", "<unk>"]
SEG_DICT = "hello he@@ llo\nworld wor@@ ld\none on@@ e\n你 你\n好 好\n1 1\n"
TEXTS = ["hello 你好 world", "Hello World", "你好1", "one 12 ok?", "HELLO,", "e2e Test-case 你们", "  hello   world  "]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tokens.json").write_text(json.dumps(TOKENS, ensure_ascii=False))
    (tmp_path / "seg_dict").write_text(SEG_DICT, encoding="utf-8")
    return tmp_path


def tokenizer(files):
    return build_ctc_tokenizer(CTCConfig(vocab=str(files / "tokens.json"), seg_dict=str(files / "seg_dict")))


def test_text_is_cut_as_funasr_cuts_it(files):
    tok = tokenizer(files)
    ids = {t: i for i, t in enumerate(TOKENS)}
    unk = ids["<unk>"]
    assert tok.encode("hello 你好 world") == [ids[p] for p in ("he@@", "llo", "你", "好", "wor@@", "ld")]
    assert tok.encode("Hello World") == tok.encode("hello world")  # words are looked up lower-cased
    # a word the seg_dict lacks: character by character when it starts with a letter, digit or Chinese character
    assert tok.encode("one 12 ok?") == [ids["on@@"], ids["e"], ids["1"], unk, unk, unk, unk]
    assert tok.encode("HELLO,") == [unk] * 6 and tok.encode(",hello") == [unk]  # else the whole word is one <unk>
    # "@@" joins the pieces back; as FunASR's sentence_postprocess writes it, no space next to a Chinese character
    assert tok.decode(tok.encode("hello 你好 world one")) == "hello你好world one"
    assert tok.blank_id == 0 and tok.vocab_size == len(TOKENS)


def test_what_is_spelled_unk_is_named_word_by_word(files):
    """What `llmasr data check` and train.log name as spelled <unk>: a word looked up by character gives the
    characters the seg_dict lacks, any other word it lacks is one <unk> as a whole, and each name is checked
    against encode's own <unk> ids."""
    tok = tokenizer(files)
    unk = TOKENS.index("<unk>")
    for word, parts in [("hello", []), ("你好", []), ("12", ["2"]), ("ok?", ["o", "k", "?"]), ("HELLO,", [*"hello,"]),
                        (",hello", [",hello"]), ("你们", ["们"])]:  # fmt: skip
        assert tok.unknown_parts(word) == parts, word
        assert (unk in tok.encode(word)) == bool(parts), word


# Paraformer-large's lists also hold single Latin letters and digits, which spell words and numbers the seg_dict lacks
SPELLED = [
    "<blank>",
    "<s>",
    "</s>",
    "我",
    "有",
    "个",
    "在",
    "公",
    "司",
    "你好",
    "世界",
    "a",
    "b",
    "c",
    "3",
    "5",
    "<unk>",
]
SPELLED_SEG = "".join(f"{t} {t}\n" for t in SPELLED[3:-1]) + "hello he@@ llo\n"
# code-switched text as Chinese corpora write it, and its CTC branch text as FunASR's sentence_postprocess writes it
ROUND_TRIPS = [
    ("我有35个", "我有35个"),
    ("我在ABC公司", "我在ABC公司"),
    ("你好 世界", "你好世界"),
    ("hello 你好", "hello你好"),
]


def spelled_tokenizer(tmp_path):
    (tmp_path / "tokens.json").write_text(json.dumps(SPELLED + ["he@@", "llo"], ensure_ascii=False))
    (tmp_path / "seg_dict").write_text(SPELLED_SEG, encoding="utf-8")
    return build_ctc_tokenizer(CTCConfig(vocab=str(tmp_path / "tokens.json"), seg_dict=str(tmp_path / "seg_dict")))


def test_numbers_and_abbreviations_spelled_piece_by_piece_read_back_whole(tmp_path):
    """A number or an abbreviation the seg_dict lacks is spelled a digit or a letter a piece: the text read back had
    put a space between each ("我有3 5个", "我在a b c公司"), which a reference's "35" and "ABC" score as one
    substitution and one or two insertions; a word of CJK characters ("你好") had been spaced from its neighbours."""
    tok = spelled_tokenizer(tmp_path)
    for text, read_back in ROUND_TRIPS:
        assert tok.decode(tok.encode(text)) == read_back, text
    assert tok.decode(tok.encode("a hello b")) == "a hello b"  # a letter alone is a word


@pytest.mark.parity
@pytest.mark.skipif(
    os.environ.get("LLMASR_PARITY") != "1" or importlib.util.find_spec("funasr") is None,
    reason="opt-in: set LLMASR_PARITY=1 and install funasr",
)
def test_live_text_equals_funasr_sentence_postprocess(tmp_path):
    from funasr.utils.postprocess_utils import sentence_postprocess

    tok = spelled_tokenizer(tmp_path)
    for text, _ in ROUND_TRIPS:
        ids = tok.encode(text)
        assert tok.decode(ids) == sentence_postprocess([tok.tokens[i] for i in ids])[0], text


def test_a_list_with_a_separator_entry_decodes_seg_dict_pieces_as_funasr_does(tmp_path):
    """A token list that also holds a word separator (<space>): the seg_dict's pieces carry no separator, and the
    text they decode to is FunASR's ("@@" had stayed in it, and the words ran together); <unk> is left out."""
    (tmp_path / "tokens.json").write_text(json.dumps([*TOKENS, "<space>"], ensure_ascii=False))
    (tmp_path / "seg_dict").write_text(SEG_DICT, encoding="utf-8")
    tok = build_ctc_tokenizer(CTCConfig(vocab=str(tmp_path / "tokens.json"), seg_dict=str(tmp_path / "seg_dict")))
    assert tok.decode(tok.encode("你好 hello world 你好")) == "你好hello world你好"
    assert tok.decode(tok.encode("hello ok")) == "hello"


def test_without_the_seg_dict_a_word_outside_the_list_is_spelled_in_letters_and_it_is_pointed_out(files, caplog):
    with caplog.at_level(logging.WARNING, logger="llmasr.models.ctc"):
        plain = build_ctc_tokenizer(CTCConfig(vocab=str(files / "tokens.json")))
        build_ctc_tokenizer(CTCConfig(vocab=str(files / "tokens.json")))
    noted = [r.getMessage() for r in caplog.records if "seg_dict" in r.getMessage()]
    assert len(noted) == 1 and f"model.ctc.seg_dict: {files / 'seg_dict'}" in noted[0]  # once a process
    assert plain.encode("one") != tokenizer(files).encode("one")


def test_the_recipe_key_is_for_token_lists_and_their_pieces(files, tmp_path):
    for vocab in ("llm", "x.model", "x.tiktoken"):
        with pytest.raises(ConfigError, match=r"model.ctc.seg_dict: spells text into the entries of a token list"):
            from_dict(CTCConfig, {"weight": 0.3, "vocab": vocab, "seg_dict": str(files / "seg_dict")}, "model.ctc")
    (tmp_path / "other.json").write_text(json.dumps(["<blank>", "a", "b"]))
    with pytest.raises(ConfigError, match=r"spells words with pieces the token list .*other.json lacks .*no <unk>"):
        build_ctc_tokenizer(CTCConfig(vocab=str(tmp_path / "other.json"), seg_dict=str(files / "seg_dict")))


def test_from_encoder_takes_the_seg_dict_the_directory_names(tmp_path, tiny_llm_dir):
    """Paraformer-large's configuration.json maps tokenizer_conf.seg_dict_file to the seg_dict beside tokens.json."""
    d = write_funasr_dir(tmp_path / "seaco", model="SeacoParaformer", encoder_conf=tiny_sanm_conf())
    metas = json.loads((d / "configuration.json").read_text())["file_path_metas"]  # as the zoo ships it
    assert metas["tokenizer_conf"] == {"token_list": "tokens.json", "seg_dict_file": "seg_dict"}
    section = {"encoder": {"path": str(d)}, "llm": {"path": str(tiny_llm_dir)}, "ctc": {"weight": 0.3}}
    section["ctc"]["from_encoder"] = True
    cfg = from_dict(ModelConfig, section, "model")
    assert cfg.ctc.seg_dict == str(d.resolve() / "seg_dict") and cfg.ctc.vocab == str(d.resolve() / "tokens.json")
    assert type(build_ctc_tokenizer(cfg.ctc)).__name__ == "SegDictCTCTokenizer"
    config = yaml.safe_load((d / "config.yaml").read_text())
    # without configuration.json, as FunASR's AutoModel reads the directory: the seg_dict beside config.yaml, though
    # config.yaml names none (it had been left out, and English words spelled letter by letter)
    (d / "configuration.json").unlink()
    assert from_dict(ModelConfig, section, "model").ctc.seg_dict == str(d.resolve() / "seg_dict")
    (d / "seg_dict").rename(d / "seg_dict.kept")
    assert from_dict(ModelConfig, section, "model").ctc.seg_dict is None  # none beside it, none named
    config["tokenizer_conf"]["seg_dict_file"] = "/data/old_machine/seg_dict.kept"  # found beside it by its name
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    assert from_dict(ModelConfig, section, "model").ctc.seg_dict == str(d.resolve() / "seg_dict.kept")


@pytest.mark.parity
@pytest.mark.skipif(
    os.environ.get("LLMASR_PARITY") != "1" or importlib.util.find_spec("funasr") is None,
    reason="opt-in: set LLMASR_PARITY=1 and install funasr",
)
def test_live_ids_equal_funasr_char_tokenizer(files):
    from funasr.tokenizer.char_tokenizer import CharTokenizer

    theirs = CharTokenizer(token_list=str(files / "tokens.json"), seg_dict=str(files / "seg_dict"), unk_symbol="<unk>")
    ours = tokenizer(files)
    for text in TEXTS[:-1]:  # the last has runs of spaces, which FunASR makes <unk>s of (see the module)
        assert ours.encode(text) == theirs.encode(text), text
