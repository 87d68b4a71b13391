"""`llmasr check` and a real tiny training start-up warn of the transcripts the LLM's tokenizer cannot write (its unk
token), training and validation manifests alike (llmasr.data.llm_unk); a byte-level tokenizer says nothing."""

import json

from check_runner import run_check

from llmasr.commands.train import main as train_main
from llmasr.testing.tiny_corpus import recipe_with_targets


def recipe_with_unk(tmp_path, llm_dir):
    """A recipe training `llm_dir` on the tiny corpus, 2 of its 20 transcripts holding "cat" (not a digit word), and
    validating on a manifest of its own with one."""
    return recipe_with_targets(tmp_path, llm_dir, {"train": {4: "one cat", 9: "cat"}, "valid": {1: "two cat"}})


def test_llmasr_check_warns_of_unk_transcripts_in_training_and_validation(
    word_level_llm_dir, tiny_llm_dir, tmp_path, capsys, caplog
):
    """In this process the warnings are log records (the `llmasr` console script writes them to stderr)."""
    caplog.set_level("WARNING", logger="llmasr.data")
    recipe, (train, valid) = recipe_with_unk(tmp_path, word_level_llm_dir)
    code, out, err = run_check(capsys, "--config", str(recipe), "--deepspeed", "zero0", "--out", str(tmp_path / "c"))
    assert code == 0, err
    err = caplog.text
    assert f"train: 2 of 20 transcripts (10.00%) hold text the tokenizer of {word_level_llm_dir} cannot write" in err
    assert f"First: {train}:5, {train}:10. Spelled '<unk>': 'cat' in 2 lines." in err
    assert "valid: 1 of 6 transcripts (16.67%)" in err and f"First: {valid}:2." in err
    byte_level = tmp_path / "byte_level.yaml"
    byte_level.write_text(recipe.read_text().replace(str(word_level_llm_dir), str(tiny_llm_dir)))
    caplog.clear()
    code, out, err = run_check(capsys, "--config", str(byte_level), "--deepspeed", "zero0", "--out", str(tmp_path))
    assert code == 0, err
    assert "cannot write" not in caplog.text


def test_llmasr_check_warns_of_the_characters_a_bpe_without_unk_drops(char_bpe_llm_dir, tmp_path, capsys, caplog):
    caplog.set_level("WARNING", logger="llmasr.data")
    recipe, (train, valid) = recipe_with_unk(tmp_path, char_bpe_llm_dir)
    recs = [json.loads(line) for line in train.read_text().splitlines()]
    recs[6]["target"] = "three 猫"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    code, out, err = run_check(capsys, "--config", str(recipe), "--deepspeed", "zero0", "--out", str(tmp_path / "c"))
    assert code == 0, err
    said = f"train: 1 of 20 transcripts (5.00%) hold characters the tokenizer of {char_bpe_llm_dir} drops"
    assert said in caplog.text and f"First: {train}:7. Dropped: '猫' in 1 line." in caplog.text
    assert "valid:" not in caplog.text  # its "cat" is written


def test_a_training_start_up_warns_of_unk_transcripts_in_train_log(unigram_llm_dir, tmp_path):
    """The SentencePiece-style LLM lacks "猫": its line trains, and train.log says so before the first update."""
    recipe, (train, _) = recipe_with_unk(tmp_path, unigram_llm_dir)
    recs = [json.loads(line) for line in train.read_text().splitlines()]
    recs[6]["target"] = "three 猫"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    assert train_main(["--config", str(recipe), "--deepspeed", "zero0", "train.max_updates=1"]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    said = log.index(f"train: 1 of 20 transcripts (5.00%) hold text the tokenizer of {unigram_llm_dir} cannot write")
    assert said < log.index(" train update=")
    assert f"First: {train}:7. Spelled '<unk>': '猫' in 1 line." in log
    assert "valid: 1 of 6 transcripts" not in log  # its pieces spell "cat"
