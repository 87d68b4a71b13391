"""A tiny Paraformer-streaming training under the real launcher (`deepspeed --num_gpus 2`, CPU ranks) on a manifest
with bad lines, launched once for both tests: every rank draws the same chunk configuration for each batch (ranks
that drew apart would run different graphs: wrong gradients under ZeRO, or a hang), a resume at one rank draws on
where the checkpoint left the draw, and train.log reports the bad data of every rank summed at each epoch's end."""

import json
import re
from pathlib import Path

import pytest
import yaml

from llmasr import run_dir as ck
from llmasr.recipe import load_recipe
from llmasr.testing.launcher import launch_train
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.testing.tiny_funasr import tiny_streaming_conf, write_funasr_dir
from llmasr.train.trainer import train

pytestmark = pytest.mark.slow

# A launched rank: llmasr's entry point, with the chunk configuration of every encoder forward appended to a file of
# the rank's own (the spy of the `drawn` fixture, in another process).
RANK_SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
from llmasr.cli import entry
from llmasr.models import sanm

real, record = sanm.chunk_layout, {record!r} + "." + os.environ["RANK"]

def spy(chunk, kernel_size, frames, index=0, device=None):
    with open(record, "a") as out:
        out.write(f"{{index}}\\n")
    return real(chunk, kernel_size, frames, index, device)

sanm.chunk_layout = spy
sys.exit(entry())
"""

CORRUPT = [f"corrupt{i}" for i in range(4)]  # stated durations: found bad only when a rank loads them
BAD_KEYS = [*CORRUPT, "missing"]  # the missing file is found by the start-up screen


@pytest.fixture(scope="module")
def launched(tiny_llm_dir, tmp_path_factory):
    """(run folder, recipe file, the draws of rank 0 and rank 1) of a 2-epoch run at grad_accum 1 that saves every
    update: 20 good lines and 5 bad."""
    root = tmp_path_factory.mktemp("two_rank_streaming")
    enc = write_funasr_dir(root / "enc", model="ParaformerStreaming", encoder_conf=tiny_streaming_conf())
    manifest = write_tiny_corpus(root / "corpus", n=20)
    (root / "corpus" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    extra = [{"key": key, "source": "corrupt.wav", "target": "one", "duration": 0.5} for key in CORRUPT]
    extra.append({"key": "missing", "source": "gone.wav", "target": "two", "duration": 0.5})
    manifest.write_text(manifest.read_text() + "".join(json.dumps(r) + "\n" for r in extra))
    data = tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=root / "unused", encoder_dir=enc, grad_accum=1,
                            epochs=2, save_every_updates=1, keep_last=0)  # fmt: skip
    data["data"]["max_bad_fraction"] = 0.5  # no rank refuses: the run reaches its epochs' ends
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    script = root / "rank.py"
    script.write_text(RANK_SCRIPT.format(root=str(Path(__file__).resolve().parents[2]), record=str(root / "draws")))
    run = root / "run"
    launch_train(recipe_file, "zero0", run, entry=(str(script),))
    draws = [[int(i) for i in (root / f"draws.{rank}").read_text().split()] for rank in (0, 1)]
    return run, recipe_file, draws


def train_updates(run: Path) -> list[str]:
    return [line for line in (run / "train.log").read_text().splitlines() if " train update=" in line]


def test_both_ranks_draw_alike_and_a_resume_at_one_rank_draws_on(launched, drawn, tmp_path):
    run, recipe_file, (rank0, rank1) = launched
    assert len(rank0) == len(train_updates(run)) >= 6  # one micro batch per rank and update
    assert rank0 == rank1  # the same configuration on both ranks, batch by batch
    assert set(rank0) == {0, 1}  # and both configurations train

    # update 1 drew once on each rank; one rank at grad_accum 2 trains the same batches per update from there on
    one = load_recipe(recipe_file, [f"train.output_dir={tmp_path / 'one'}", "train.grad_accum=2"])
    history = train(one, "zero0", resume=str(run / "checkpoints" / ck.tag_for(1)))["history"]
    assert history[0]["update"] == 2
    assert len(drawn) >= len(rank0) - 1 and drawn[: len(rank0) - 1] == rank0[1:]


def test_train_log_reports_every_ranks_bad_data_summed_at_each_epoch_end(launched):
    """Each rank counts (and data.max_bad_fraction checks) its own share; rank 0's train.log had shown only its own
    bad items, one by one. The sum comes where every rank is anyway: the end of an epoch."""
    run = launched[0]
    log = (run / "train.log").read_text()
    for epoch in (0, 1):
        found = re.search(rf"train: epoch {epoch}: 5 bad of 25 items on the 2 ranks together \(20\.00%; "
                          r"rank 0: (\d+) of (\d+), rank 1: (\d+) of (\d+)\).*", log)  # fmt: skip
        assert found, log[-3000:]
        b0, s0, b1, s1 = map(int, found.groups())
        assert (b0 + b1, s0 + s1) == (5, 25) and min(b0, b1) > 0  # both ranks met bad lines
        line = found.group(0)
        assert "unreadable or corrupt audio: 4, audio file not found: 1" in line
        assert all(f"key={key}:" in line for key in BAD_KEYS)  # rank 1's named too
