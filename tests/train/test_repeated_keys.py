"""A key on two lines of a training manifest (a manifest pasted into another, two corpora keyed alike) was said by
`llmasr data check` alone: `llmasr check` and train.log said nothing. The start-up screen finds them as it parses
every line, and both warn, naming the key, the file and both lines."""

import logging

import yaml
from check_runner import run_check

from llmasr.data.key_repeats import KeyRepeats
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.resolve import build_loaders, text_side


def _pasted_recipe(root, tiny_llm_dir):
    """A train manifest of 8 lines whose lines 2 and 3 are pasted again at its end (lines 9 and 10)."""
    train = write_tiny_corpus(root / "train", n=8, max_words=2)
    lines = train.read_text().splitlines()
    train.write_text("\n".join([*lines, lines[1], lines[2]]) + "\n")
    data = tiny_recipe_dict(tiny_llm_dir, train=[train], valid=[train], output_dir=root / "run")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, train


def test_train_log_and_the_check_name_a_repeated_key_with_both_its_lines(tiny_llm_dir, tmp_path, capsys, caplog):
    path, train = _pasted_recipe(tmp_path, tiny_llm_dir)
    said = f"'utt00_0001' at {train}:2 and {train}:9; 'utt00_0002' at {train}:3 and {train}:10"
    recipe = load_recipe(path)
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):
        build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    warned = [r.getMessage() for r in caplog.records if "repeat an earlier line's key" in r.getMessage()]
    assert len(warned) == 2, warned  # the train set and the validation set (the same file here)
    assert warned[0].startswith(f"train: 2 line(s) repeat an earlier line's key: {said} (") and "valid: " in warned[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):  # the check's stderr, in its own process
        code, _, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path / "c"))
    assert code == 0, err
    assert any(
        r.getMessage().startswith(f"train: 2 line(s) repeat an earlier line's key: {said}") for r in caplog.records
    )


def test_the_ranks_shares_of_the_screen_merge_to_the_repeats_of_the_whole():
    """Each rank of a node screens every n-th line: a key's first line and its repeat can fall in two shares."""
    keys = ["a", "b", "a", "c", "b", "a", "d"]
    whole = KeyRepeats()
    for i, key in enumerate(keys):
        whole.note(key, i)
    whole.merge([whole.part()])
    parts = []
    for part in range(3):
        share = KeyRepeats()
        for i in range(part, len(keys), 3):
            share.note(keys[i], i)
        parts.append(share.part())
    merged = KeyRepeats()
    merged.merge(parts)
    assert merged.again == whole.again == [(2, 0), (4, 1), (5, 0)]  # (a repeat, its key's first position)
    said = merged.text(lambda i: f"m.jsonl:{i + 1}", keys.__getitem__)
    assert said.startswith("3 line(s) repeat an earlier line's key: 'a' at m.jsonl:1 and m.jsonl:3; 'b' at m.jsonl:2 "
                           "and m.jsonl:5; 'a' at m.jsonl:1 and m.jsonl:6 (")  # fmt: skip


def test_the_screen_keeps_and_sends_a_few_bytes_a_line_not_every_key():
    """The screen runs on every rank at train start-up over every line (tens of millions in a large corpus): a dict of
    every key had held ~140 bytes a line on each rank, and each rank's share, pickled with its keys, was sent to every
    rank. A key is kept, and sent, as a 64-bit hash and its position: as the manifest's own index, 8 bytes each."""
    import pickle
    import tracemalloc

    n = 20_000
    tracemalloc.start()
    share = KeyRepeats()
    for i in range(n):  # each key as parsed from its line, WenetSpeech's (30 characters)
        share.note(f"Y{i:010d}_--5llN02F84_S{i % 997:05d}", i)
    part = share.part()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert held < 40 * n, held  # the arrays, with their growth's slack
    assert len(pickle.dumps(part)) < 20 * n
