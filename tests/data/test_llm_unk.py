"""Transcripts the LLM's tokenizer cannot write (llmasr.data.llm_unk): a WordLevel or SentencePiece-style tokenizer
without byte fallback spells what it lacks as its unk token, and training had taught the LLM to write it without a
word. Tiny LLM directories in their real on-disk formats, asked through `llmasr data check` and the start-up screen."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llmasr.data.screen as screen_mod
from llmasr.commands.data_check import main as data_check
from llmasr.data.config import DataConfig
from llmasr.data.llm_unk import LLMUnk, unk_reach
from llmasr.data.manifest import Manifest
from llmasr.data.screen import screen
from llmasr.data.screen_share import ScreenShare
from llmasr.models.tokenizer import load_tokenizer
from llmasr.testing.thread_ranks import run_ranks as ranks
from llmasr.testing.tiny_corpus import WORDS, tiny_recipe_dict, write_tiny_corpus
from llmasr.testing.tiny_llm import train_bpe_tokenizer, train_char_bpe_tokenizer, write_unk_llm_dir

PLANTED = {3: "one cat two", 7: "zéro 猫", 11: "cat nine", 15: "cat"}  # line index -> transcript


def unk_corpus(tmp_path, planted=PLANTED):
    """The tiny corpus (digit words) with `planted` transcripts in place of some lines'."""
    manifest = write_tiny_corpus(tmp_path / "corpus", n=20)
    recs = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i, text in planted.items():
        recs[i]["target"] = text
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return manifest


@pytest.fixture(scope="module")
def byte_level_unk_llm_dir(tmp_path_factory):
    """A byte-level BPE that names an unk token all the same (GPT-2's is its <|endoftext|>): it can never produce it."""
    tok = train_bpe_tokenizer([" ".join(WORDS)])
    tok.unk_token = "<|endoftext|>"
    return write_unk_llm_dir(tmp_path_factory.mktemp("tiny_byte_level_unk"), tok)


def test_whether_unk_is_reachable_is_read_from_the_tokenizer(
    word_level_llm_dir, unigram_llm_dir, byte_level_unk_llm_dir, tiny_llm_dir, char_bpe_llm_dir
):
    assert unk_reach(load_tokenizer(word_level_llm_dir))[0] == "word"
    assert unk_reach(load_tokenizer(char_bpe_llm_dir)) == ("char", "a BPE without an unk token or byte fallback")
    assert unk_reach(load_tokenizer(unigram_llm_dir))[0] == "char"
    tok = load_tokenizer(byte_level_unk_llm_dir)
    assert tok.unk_token_id is not None and unk_reach(tok) == (None, "a byte-level BPE (every byte has a token)")
    assert LLMUnk.of(tok) is None  # the pass is skipped
    assert unk_reach(load_tokenizer(tiny_llm_dir))[0] is None  # Qwen-style: byte-level, and no unk token


def test_each_character_or_word_asked_once_finds_what_whole_lines_find(word_level_llm_dir, unigram_llm_dir):
    """The cheap pass (each distinct character or word asked once, whole lines only where one is refused or a
    composing normaliser may join characters) against every line tokenized whole, on lines of known and unknown
    words, accented letters written whole and as a combining accent, a ligature NFKC splits, CJK and punctuation."""
    pieces = [*WORDS, "cat", "zéro", "ze\u0301ro", "ﬁve", "猫", "!", "one,two", "e\u0301", "\u0301"]
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(pieces, size=int(rng.integers(1, 5)))) for _ in range(400)]
    for path in (word_level_llm_dir, unigram_llm_dir):
        tok = load_tokenizer(path)
        asker = LLMUnk.of(tok)
        for line in lines:
            whole = tok(line, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            assert bool(asker.unknown(line)) == (tok.unk_token_id in whole), (path.name, line)
        assert len(asker._units) < 40  # asked once each, not once a line


def test_data_check_names_the_lines_and_what_became_unk_most_lines_first(
    word_level_llm_dir, unigram_llm_dir, byte_level_unk_llm_dir, tmp_path, capsys
):
    manifest = unk_corpus(tmp_path)
    assert data_check([str(manifest), "--no-probe", "--llm", str(word_level_llm_dir)]) == 0  # a warning, not bad
    out = capsys.readouterr().out
    assert "## transcripts the LLM's tokenizer cannot write" in out and "bad: 0" in out
    assert "4 of 20 transcripts (20.00%) hold text the tokenizer of" in out and "(a WordLevel vocabulary" in out
    assert f"First: {manifest}:4, {manifest}:8, {manifest}:12, {manifest}:16." in out
    assert "Spelled '<unk>': 'cat' in 3 lines; 'zéro' in 1 line; '猫' in 1 line." in out
    assert "Normalise the transcripts" in out and "model.resize_token_embeddings" in out

    assert data_check([str(manifest), "--no-probe", "--llm", str(unigram_llm_dir)]) == 0  # its pieces spell "cat"
    out = capsys.readouterr().out
    assert "1 of 20 transcripts (5.00%) hold text" in out and f"First: {manifest}:8." in out
    assert "Spelled '<unk>': 'é' in 1 line; '猫' in 1 line." in out

    assert data_check([str(manifest), "--no-probe", "--llm", str(byte_level_unk_llm_dir)]) == 0
    out = capsys.readouterr().out
    assert "## the LLM's tokenizer\n" in out and "spells any text (a byte-level BPE" in out
    assert "cannot write" not in out


def test_data_check_names_the_characters_a_bpe_without_unk_drops(char_bpe_llm_dir, tmp_path, capsys):
    """A BPE with no unk token writes no token at all for a character it lacks: the line had trained the LLM to leave
    it out, and the pass had skipped such a tokenizer as one that "spells any text"."""
    planted = {3: "one cat two", 7: "zéro 猫", 11: "ze\u0301ro nine", 15: "señor"}
    manifest = unk_corpus(tmp_path, planted)
    assert data_check([str(manifest), "--no-probe", "--llm", str(char_bpe_llm_dir)]) == 0  # a warning, not bad
    out = capsys.readouterr().out
    assert "## transcripts the LLM's tokenizer cannot write" in out and "bad: 0" in out
    assert f"3 of 20 transcripts (15.00%) hold characters the tokenizer of {char_bpe_llm_dir} drops" in out
    assert "(a BPE without an unk token or byte fallback): it writes no token for them" in out
    assert f"First: {manifest}:8, {manifest}:12, {manifest}:16." in out
    assert "Dropped: 'é' in 2 lines; 'ñ' in 1 line; '猫' in 1 line." in out  # the accent composed by its NFKC


def test_the_characters_dropped_asked_once_each_are_those_the_whole_lines_lose(char_bpe_llm_dir, tmp_path):
    """Against each line's round trip (encode, decode, compare what is left but spaces), on lines of known letters,
    letters it lacks written whole and as a combining accent, a ligature NFKC splits, CJK, and a word it lacks added
    as a token of its own (then nothing of it is dropped)."""
    pieces = [*WORDS, "cat", "zéro", "ze\u0301ro", "ﬁve", "猫", "señor", "one,two", "ñ猫ñ"]
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(pieces, size=int(rng.integers(1, 5)))) for _ in range(400)]
    added = train_char_bpe_tokenizer([" ".join(WORDS)])
    added.add_tokens(["señor"])
    for path in (char_bpe_llm_dir, write_unk_llm_dir(tmp_path / "added", added)):
        tok = load_tokenizer(path)
        asker = LLMUnk.of(tok)
        norm = tok.backend_tokenizer.normalizer.normalize_str
        for line in lines:
            back = tok.decode(tok(line, add_special_tokens=False, split_special_tokens=True)["input_ids"])
            lost = "".join(back.split()) != "".join(norm(line).split())
            assert bool(asker.unknown(line)) == lost, (path.name, line)
        assert len(asker._units) < 40  # asked once each, not once a line
    assert LLMUnk.of(tok).unknown("señor ñ") == ["ñ"]


def test_data_check_with_a_recipe_asks_its_llm(word_level_llm_dir, tmp_path, capsys):
    import yaml

    manifest = unk_corpus(tmp_path, {2: "cat"})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(word_level_llm_dir, train=[str(manifest)], output_dir=tmp_path)))
    assert data_check(["--recipe", str(recipe), "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "1 of 20 transcripts (5.00%)" in out and f"First: {manifest}:3." in out and "'cat' in 1 line" in out
    gone = tmp_path / "gone.yaml"  # a recipe whose LLM is not on this machine: the rest is still checked
    gone.write_text(recipe.read_text().replace(str(word_level_llm_dir), str(tmp_path / "no_llm")))
    assert data_check(["--recipe", str(gone), "--no-probe"]) == 0
    assert "not asked: the LLM" in capsys.readouterr().out


def test_the_screen_counts_unk_over_every_rank_s_part_and_rank_0_warns(word_level_llm_dir, tmp_path, caplog):
    caplog.set_level("INFO", logger="llmasr.data")
    path = unk_corpus(tmp_path)
    asker = LLMUnk.of(load_tokenizer(word_level_llm_dir), source="the LLM")
    whole: dict = {}
    screen(Manifest.open(str(path)), llm_unk=(asker, whole))
    assert whole == {"lines": 4, "first": [3, 7, 11, 15], "parts": {"cat": [3, 3], "zéro": [1, 7], "猫": [1, 7]}}

    def rank(r, gather):
        mine: dict = {}
        screen(Manifest.open(str(path)), None, None, ScreenShare(r, 3, gather, "node"), llm_unk=(asker, mine))
        return mine

    assert ranks(3, rank) == [whole] * 3
    cfg = DataConfig()
    screen_mod.start_tracker(Manifest.open(str(path)), cfg, name="train", indices=None, rank=0, world_size=1,
                             llm_unk=asker)  # fmt: skip
    said = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert said[0].getMessage().startswith("train: 4 of 20 transcripts (20.00%) hold text the LLM cannot write")
    caplog.clear()
    screen_mod.start_tracker(Manifest.open(str(path)), cfg, name="train", indices=None, rank=1, world_size=2,
                             llm_unk=asker)  # fmt: skip
    assert "cannot write" not in caplog.text  # rank 0 says it
