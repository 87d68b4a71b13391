"""Two nodes simulated on this machine on the real multi-node launch path: one `deepspeed.launcher.launch` a node,
each in its own working directory (llmasr.testing.launcher.launch_nodes). Every other multi-rank test runs the ranks
of one launcher, one node."""

import json
import shutil
import socket
import time
from pathlib import Path

import yaml

from llmasr.testing.launcher import launch_nodes


def test_an_output_dir_the_nodes_do_not_share_stops_both_naming_each_nodes_folder(tiny_recipe_file, tmp_path):
    """A relative train.output_dir is a folder of each node's working directory, as node-local disks give each
    node its own: both nodes stop at start with one message naming both folders and both nodes (the message had
    named only `train.output_dir run`), long before the process group's timeout."""
    recipe = yaml.safe_load(tiny_recipe_file.read_text())
    recipe["train"]["output_dir"] = "run"
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
        (node / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    t0 = time.monotonic()
    (code0, out0), (code1, out1) = launch_nodes(["train", "--config", "recipe.yaml", "--deepspeed", "zero0"], nodes)
    assert time.monotonic() - t0 < 200 and code0 == code1 == 2, out0[-3000:] + out1[-3000:]
    said = [line for line in out0.splitlines() if "llmasr train: error" in line]
    assert len(said) == 1 and "llmasr train: error" not in out1 and "Traceback" not in out0 + out1, out0[-3000:]
    host = socket.gethostname()
    assert said[0].startswith("llmasr train: error: train.output_dir run is not one folder every rank shares: ")
    assert f"rank 0 (node {host}#0) wrote .shared-by-rank0-" in said[0] and f" in {nodes[0] / 'run'}, " in said[0]
    assert f"rank 1 (node {host}#1) in {nodes[1] / 'run'}: no such file" in said[0]
    assert said[0].endswith("(a relative path is read from each rank's working directory)")
    assert not (nodes[1] / "run").exists()  # rank 0 alone makes the folder: node 1 made none of its own


def test_an_audio_file_one_node_lacks_stops_both_naming_its_line_reason_and_path(tiny_recipe_file, tmp_path):
    """Each node reads its own copy of the data (relative paths, from its working directory); node 1's lacks one
    wav. Both stop before training, naming the line as node 1 read it (its manifest, not node 0's), why it is bad
    there and the audio path it looked for: the message had named node 0's manifest:line alone."""
    recipe = yaml.safe_load(tiny_recipe_file.read_text())
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        for part in ("train", "valid"):
            shutil.copytree(Path(recipe["data"][part][0]).parent, node / part)
        data = {**recipe["data"], "train": ["train/data.jsonl"], "valid": ["valid/data.jsonl"], "max_bad_fraction": 0.5}
        ours = {**recipe, "data": data}
        (node / "recipe.yaml").write_text(yaml.safe_dump(ours))
    gone = json.loads((nodes[1] / "train/data.jsonl").read_text().splitlines()[6])["source"]
    (nodes[1] / "train" / gone).unlink()
    (code0, out0), (code1, out1) = launch_nodes(["train", "--config", "recipe.yaml", "--deepspeed", "zero0"], nodes)
    assert code0 == code1 == 2 and "Traceback" not in out0 + out1, out0[-3000:] + out1[-3000:]
    host, manifest = socket.gethostname(), nodes[1] / "train" / "data.jsonl"
    assert "llmasr train: error: the ranks do not see the same training data:" in out0, out0[-3000:]
    assert f"\n  1 line(s) screened bad on rank 1 (node {host}#1) only:\n" in out0, out0[-3000:]
    assert f"\n    {manifest}:7 key=utt00_0006: audio {nodes[1] / 'train' / gone}: file not found\n" in out0
