"""`llmasr check` and a real tiny training start-up warn of transcripts whose shape the byte-level LLM learns as
written (a tab, decomposed "é", word-segmented Chinese), training and validation manifests alike, with their lines
and the fix (llmasr.data.transcript_text); the lines still train."""

from check_runner import run_check

from llmasr.commands.train import main as train_main
from llmasr.testing.tiny_corpus import recipe_with_targets


def recipe_with_shapes(tmp_path, llm_dir):
    planted = {"train": {2: "one\ttwo", 5: "cafe\u0301 one", 8: "而 对 楼市"}, "valid": {3: "two  three"}}
    return recipe_with_targets(tmp_path, llm_dir, planted)


def test_llmasr_check_warns_of_transcript_shapes_in_training_and_validation(tiny_llm_dir, tmp_path, capsys, caplog):
    caplog.set_level("WARNING", logger="llmasr.data")
    recipe, (train, valid) = recipe_with_shapes(tmp_path, tiny_llm_dir)
    code, out, err = run_check(capsys, "--config", str(recipe), "--deepspeed", "zero0", "--out", str(tmp_path / "c"))
    assert code == 0, err
    said = caplog.text
    assert "train: transcripts hold whitespace other than one space between words (1 line)" in said
    assert f"tab in 1 line (first: {train}:3)" in said
    assert f"train: transcripts are not in Unicode NFC (1 line, first: {train}:6)" in said
    assert "train: 1 of the 1 transcripts holding Chinese or Japanese characters (100.0%) have spaces" in said
    assert "valid: transcripts hold whitespace" in said and f"spaces in a row in 1 line (first: {valid}:4)" in said


def test_a_training_start_up_warns_of_transcript_shapes_in_train_log(tiny_llm_dir, tmp_path):
    recipe, (train, _) = recipe_with_shapes(tmp_path, tiny_llm_dir)
    assert train_main(["--config", str(recipe), "--deepspeed", "zero0", "train.max_updates=1"]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    said = log.index("train: transcripts hold whitespace other than one space between words (1 line)")
    assert said < log.index(" train update=")
    assert f"tab in 1 line (first: {train}:3)" in log and "`' '.join(text.split())`" in log
    assert f"train: transcripts are not in Unicode NFC (1 line, first: {train}:6)" in log
    assert f"(first: {train}:9): word-segmented text, as AISHELL's transcripts are" in log
