"""`llmasr check` on a weighted mix of training manifests: what an epoch trains of each (visits, passes, hours) is
the loaders' own batches, at any world size; a manifest the filters empty is named, not lost behind its weight."""

import itertools
import json
import logging
import re

import pytest
import yaml
from check_runner import run_check

from llmasr.data.mixed_manifest import epoch_mix
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.resolve import build_loaders, text_side
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def mix_recipe(tiny_llm_dir, tmp_path_factory):
    """A big corpus at weight 1, a small one at 2.5 (two passes and half of one), one of longer lines at 0.5."""
    root = tmp_path_factory.mktemp("mix")
    big = write_tiny_corpus(root / "big", n=20, max_words=2)
    small = write_tiny_corpus(root / "small", n=5, seed=1, max_words=2)
    half = write_tiny_corpus(root / "half", n=6, seed=2, min_words=4, max_words=4)  # every line longer than theirs
    data = tiny_recipe_dict(tiny_llm_dir, train=[big], valid=[big], output_dir=root / "run")
    data["data"]["train"] = [
        {"path": str(big)},
        {"path": str(small), "weight": 2.5},
        {"path": str(half), "weight": 0.5},
    ]
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, [big, small, half]


def _trained(recipe, world_size: int) -> dict[str, tuple[int, float]]:
    """Each manifest's (visits, seconds) in epoch 0, from the batches every rank's loader deals (a rank's padding
    repeats left out)."""
    seconds, source = {}, {}
    for spec in recipe.data.train:
        for line in open(spec.path, encoding="utf-8"):
            rec = json.loads(line)
            seconds[rec["key"]], source[rec["key"]] = rec["duration"], spec.path
    got = {spec.path: [0, 0.0] for spec in recipe.data.train}
    for rank in range(world_size):
        loader, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=rank, world_size=world_size)
        repeats = sampler.duplicate_steps(0, rank)
        for step, batch in enumerate(sampler.iter_batches(0, rank)):
            if step in repeats:
                continue
            for index in batch:
                key = loader.dataset.manifest[index % len(loader.dataset.manifest)].key
                got[source[key]][0] += 1
                got[source[key]][1] += seconds[key]
    return {path: (n, s) for path, (n, s) in got.items()}


@pytest.mark.parametrize("world_size", [1, 2])
def test_the_report_gives_each_manifest_s_visits_and_hours_as_the_loaders_batch_them(
    mix_recipe, tmp_path, capsys, world_size
):
    """The check had said only "items kept 36 of 36": nothing of what each corpus gives an epoch (train.log had the
    expectation, lines x weight, and no hours)."""
    path, (big, small, half) = mix_recipe
    code, out, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--world-size", str(world_size),
                               "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    trained = _trained(load_recipe(path), world_size)
    assert trained[str(big)][0] == 20 and trained[str(small)][0] in (12, 13) and trained[str(half)][0] == 3
    for manifest, weight, lines in ((big, "1", 20), (small, "2.5", 5), (half, "0.5", 6)):
        visits, seconds = trained[str(manifest)]
        said = re.search(rf"    {re.escape(str(manifest))}: weight {weight}, {lines} lines: (\d+) visits \(([^)]*)\), "
                         r"([\d.]+) s\n", out)  # fmt: skip
        assert said, out
        assert int(said.group(1)) == visits and float(said.group(3)) == pytest.approx(seconds, abs=0.06)
        assert said.group(2) == ("1 pass" if visits == lines else f"{visits / lines:.3g} passes")
    total = sum(v for v, _ in trained.values())
    assert f"    total: {total} visits, " in out
    # train.log's data line words them alike (one owner of the phrase: mixed_manifest.epoch_items)
    assert f"  kept {total} of {total} visits of 31 lines in epoch 0 (data.train's weights); skipped: " in out


def test_train_log_s_data_line_counts_lines_and_visits_as_the_check_does(mix_recipe, caplog):
    """Under weights train.log had said "train data: 31 items" (lines) and the check "items kept 36 of 36" (visits):
    one word for two numbers."""
    path, _ = mix_recipe
    recipe = load_recipe(path)
    visits = sum(v for v, _ in _trained(recipe, 1).values())
    assert visits != 31
    caplog.clear()  # _trained's own line, captured too where an earlier test left llmasr's level at INFO
    with caplog.at_level(logging.INFO, logger="llmasr.data"):
        build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train data: ")]
    assert len(said) == 1 and said[0].startswith(f"train data: {visits} visits of 31 lines in epoch 0 (data.train's "
                                                 "weights), ")  # fmt: skip


def test_a_manifest_whose_lines_the_filters_all_skip_is_named(mix_recipe, tmp_path, capsys, caplog):
    """max_duration below every line of one corpus: the check and train.log had counted its lines among the skipped
    and said nothing of the corpus, so a mix weighted to hear it trained on the others alone."""
    path, (big, small, half) = mix_recipe
    recipe = load_recipe(path)
    longest_other = max(json.loads(line)["duration"] for m in (big, small) for line in open(m, encoding="utf-8"))
    shortest_half = min(json.loads(line)["duration"] for line in open(half, encoding="utf-8"))
    assert longest_other < shortest_half, "the fixture's third corpus must hold the longest lines"
    cut = f"data.batching.max_duration={(longest_other + shortest_half) / 2:.3f}"
    code, out, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path), cut)
    assert code == 0, err
    assert f"    {half}: weight 0.5, 6 lines: 0 visits (0 passes), 0.0 s\n" in out
    want = f"{half}: every epoch skips all 6 of its lines (6 too_long): whatever its weight (0.5), the mix trains on"
    assert f"  warning: {want}" in out
    recipe = load_recipe(path, [cut])
    with caplog.at_level(logging.INFO, logger="llmasr.data"):
        build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"train: {want}") for m in said if "every epoch skips" in m), said
    assert any(f"{half}: weight 0.5, 6 lines: 0 visits" in m for m in said if "epoch 0 of the mix" in m), said


def test_lines_with_a_prompt_of_their_own_are_named_beside_the_recipe_s_prompt(mix_recipe, tmp_path, capsys, caplog):
    """A Chinese corpus whose lines each carry `prompt: 语音转写：` beside an English one on model.prompt's: the check's
    prompt section had said only "trained on: ... 'Transcribe the audio.'", as if every line trained on it, and a
    test set without those prompts decodes them with the recipe's."""
    path, (big, small, half) = mix_recipe
    recs = [json.loads(line) for line in open(half, encoding="utf-8")]
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps(dict(r, source=str(half.parent / r["source"]), prompt="语音转写："),
                                      ensure_ascii=False) + "\n" for r in recs[:4]), encoding="utf-8")  # fmt: skip
    code, out, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path),
                               f"data.train[2].path={own}")  # fmt: skip
    assert code == 0, err
    said = (f"lines with a prompt of their own, trained on it instead of model.prompt's: {own}: 4 of its lines "
            f"(first: {own}:1 '语音转写：')")  # fmt: skip
    assert f"\n  {said} (a test set is decoded with its lines' own prompts" in out, out
    recipe = load_recipe(path, [f"data.train[2].path={own}"])
    caplog.clear()  # the check's own line, captured too where an earlier test left llmasr.data's level at INFO
    with caplog.at_level(logging.INFO, logger="llmasr.data"):
        build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    assert [r.getMessage() for r in caplog.records if "of their own" in r.getMessage()] == [f"train: {said} (a test "
            "set is decoded with its lines' own prompts, else the recipe's: give its lines the prompt they trained "
            "on)"]  # fmt: skip
    caplog.clear()
    code, out, _ = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path))
    assert code == 0 and "of their own" not in out  # no line has one: nothing said


def test_train_log_says_the_mix_of_the_epoch_each_starts_and_a_resume_of_the_epoch_it_resumes(
    mix_recipe, tmp_path, capsys
):
    """A resume into epoch 1 had logged "epoch 0 of the mix" (the loaders are built before the checkpoint says its
    epoch), and so had `llmasr check --resume`; later epochs said nothing, though a fraction of a weight draws other
    lines each epoch."""
    path, (big, small, half) = mix_recipe
    run = tmp_path / "run"
    first = load_recipe(path, [f"train.output_dir={run}", "train.epochs=1"])
    train(first, "zero0")
    code, out, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero0", "--resume", "--out",
                               str(tmp_path), f"train.output_dir={run}", "train.epochs=3")  # fmt: skip
    assert code == 0, err
    below = out[out.index("  data.train's mix, epoch 1 as the ranks train it") :].splitlines()[1:]
    checked = list(itertools.takewhile(lambda line: line.startswith("    "), below))
    train(load_recipe(path, [f"train.output_dir={run}", "train.epochs=3"]), "zero0", resume="latest")
    log = (run / "train.log").read_text(encoding="utf-8")
    said = re.findall(r"train: epoch (\d+) of the mix as the ranks train it: (.*)", log)
    resumed = log.index("resumed from")
    assert [int(e) for e, _ in said] == [0, 1, 2], said
    assert log.index("epoch 1 of the mix") > resumed  # said once the resume knows its epoch, not before
    loader, sampler, _ = build_loaders(first, text_side(first.model), rank=0, world_size=1)
    for epoch, line in said:  # each the loaders' own count of its epoch (a weight of 0.5 draws 3 of 6 lines anew)
        assert line == "; ".join(epoch_mix(loader.dataset.manifest, sampler, int(epoch))[0]), epoch
    assert [c.strip() for c in checked] == said[1][1].split("; ")  # the check's epoch is the one the resume trains
