"""Bad lines in the validation set of a tiny training under the real launcher (`deepspeed --num_gpus 2`, CPU ranks):
rank 0's train.log reports every rank's, summed, once per validation pass, each rank names each of its bad lines
once, and the limit holds the ranks' sum, checked where every rank is, so every rank stops alike.

Before, rank 0's train.log named only the lines rank 0 had met (rank 1's were on the console alone), with no total,
each pass naming them again; and a rank whose share passed data.max_bad_fraction refused alone at its pass's last
batch, while the other waited in that pass's collectives ("another rank left the run first")."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from llmasr.testing.launcher import launch_train
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus

pytestmark = pytest.mark.slow

CORRUPT = {f"corrupt{i}": d for i, d in enumerate([0.25, 0.3, 0.6, 0.85, 0.99])}  # found bad as a rank loads them
MISSING = ["missing0", "missing1"]  # found bad by the start-up screen, as the blank transcripts are
BLANK = ["blank0", "blank1"]


@pytest.fixture(scope="module")
def recipe_file(tiny_llm_dir, tmp_path_factory):
    """A recipe validating after each of its 2 updates on 29 lines: 20 good, 5 unreadable, 2 missing, 2 blank."""
    root = tmp_path_factory.mktemp("two_rank_valid")
    train = write_tiny_corpus(root / "corpus", n=8)
    valid = write_tiny_corpus(root / "vcorpus", n=20)
    (root / "vcorpus" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    extra = [{"key": key, "source": "corrupt.wav", "target": "one", "duration": d} for key, d in CORRUPT.items()]
    extra += [{"key": key, "source": f"{key}.wav", "target": "two", "duration": 0.5} for key in MISSING]
    extra += [{"key": key, "source": "wav/utt00_0000.wav", "target": " ", "duration": 0.5} for key in BLANK]
    lines = valid.read_text().splitlines()
    for i, rec in enumerate(extra):  # spread among the good lines: both ranks meet some
        lines.insert(2 * i + 1, json.dumps(rec))
    valid.write_text("\n".join(lines) + "\n")
    data = tiny_recipe_dict(tiny_llm_dir, train=[train], valid=[valid], output_dir=root / "unused", grad_accum=1,
                            epochs=2, valid_every_updates=1)  # fmt: skip
    data["data"]["valid_max_utts"] = 100
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_log_sums_every_ranks_validation_bad_data_once_per_pass(recipe_file, tmp_path):
    run = tmp_path / "run"
    proc = launch_train(recipe_file, "zero0", run, "data.max_bad_fraction=0.5")
    log = (run / "train.log").read_text()
    for update in (1, 2):
        found = re.search(rf"valid: validation at update {update}: 9 bad of 29 items on the 2 ranks together "
                          r"\(31\.03%; rank 0: (\d+) of (\d+), rank 1: (\d+) of (\d+)\), data\.max_bad_fraction = "
                          r"0\.5 holds their sum\. By reason: ([^.]*)\.(.*)", log)  # fmt: skip
        assert found, log[-3000:]
        b0, s0, b1, s1 = map(int, found.groups()[:4])
        assert (b0 + b1, s0 + s1) == (9, 29) and min(b0, b1) > 0  # both ranks met bad lines
        assert found.group(5) == "unreadable or corrupt audio: 5, audio file not found: 2, empty target: 2"
        assert found.group(6).endswith(f"All 9: `llmasr data check --recipe {run / 'recipe.yaml'} --valid` lists them")
        assert (" First: " in found.group(6)) == (update == 1)  # the second pass meets the lines the first named
        assert re.search(rf"valid update={update} .*n_utts=20 ", log)  # the 20 good lines, scored once
    # each rank names the bad lines it loads once (its first pass), rank 0's in train.log too
    console = proc.stdout + proc.stderr
    for key in CORRUPT:
        said = f"(key {key}): audio {recipe_file.parent / 'vcorpus' / 'corrupt.wav'}: unreadable or corrupt audio"
        assert console.count(said) == 1, console[-3000:]
    # the command the line names lists all 9
    listed = subprocess.run([sys.executable, "-m", "llmasr", "data", "check", "--recipe", str(run / "recipe.yaml"),
                             "--valid"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "## bad lines (first 9 of 9)" in listed.stdout, listed.stdout[-2000:] + listed.stderr[-2000:]


def test_validation_past_the_limit_stops_every_rank_with_one_message(recipe_file, tmp_path):
    """9 of 29 lines (31%) past a 30% limit: the ranks' sum refuses, on every rank at once, rank 0 saying why."""
    run = tmp_path / "run"
    proc = launch_train(recipe_file, "zero0", run, "data.max_bad_fraction=0.3", expect_rc=2)
    console = proc.stdout + proc.stderr
    assert console.count("llmasr train: error") == 1, console[-4000:]
    assert (
        "llmasr train: error: valid: too much bad data: 9 of 29 items (31.03%) are unusable, above "
        "data.max_bad_fraction = 0.3 (30.00%) at the end of the validation pass"
    ) in console
    assert "another rank left the run first" not in console
    assert all(f"key={key}:" in console for key in [*CORRUPT, *MISSING, *BLANK])  # both ranks' lines named
