"""What `llmasr decode` on N ranks refuses: nodes that hold different copies of a manifest
(llmasr.export.decode_world.same_manifest: each rank decodes its share of its own copy's lines, so copies that differ
are refused on every rank, never scored), ranks that loaded other models or read other biasing lists, and a refusal
every rank meets alike, said once."""

from __future__ import annotations

import json
import shutil
import threading

from safetensors.torch import load_file, save_file

from llmasr.commands.decode import main
from llmasr.rank_verdict import node_name
from llmasr.testing.run_dirs import TEXTS, write_corpus
from llmasr.testing.thread_ranks import run_ranks, thread_world


def decode_on_two_ranks(monkeypatch, models, manifests, output, *flags):
    """`llmasr decode` on 2 thread ranks, rank r given --model models[r] and --data manifests[r] (its node's copies
    at the same paths); one model for both where `models` is a path."""
    models = models if isinstance(models, list) else [models, models]
    import llmasr.commands.decode as decode_cmd

    mine = threading.local()
    monkeypatch.setattr(decode_cmd.DecodeWorld, "from_env", classmethod(lambda cls: mine.world))

    def rank(r, gather):
        mine.world = thread_world(r, 2, gather)
        return main(["--model", str(models[r]), "--data", str(manifests[r]), "--num-workers", "0",
                     "--max-new-tokens", "2", "--output", str(output), "--device", "cpu", *flags])  # fmt: skip

    return run_ranks(2, rank, timeout=120)


def test_ranks_reading_other_copies_of_a_manifest_decode_none_of_it(exported_dir, tmp_path, monkeypatch, capsys):
    """Rank 1's node holds a stale copy with as many lines (a relative --data read from each rank's own working
    directory): the rows of its lines were joined with rank 0's keys and references, and scored as one decode."""
    ours = write_corpus(tmp_path / "node0", TEXTS)
    stale = write_corpus(tmp_path / "node1", TEXTS)
    lines = [json.loads(line) for line in stale.read_text().splitlines()]
    stale.write_text("".join(json.dumps({**r, "target": "an older " + r["target"]}) + "\n" for r in lines))
    assert decode_on_two_ranks(monkeypatch, exported_dir, [ours, stale], tmp_path / "out") == [2, 2]
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "the ranks read different files" in line]
    assert len(said) == 1, err  # rank 0 says it, once
    assert f"rank 1 (node {node_name()}) {stale} ({len(TEXTS)} lines, sha1 " in said[0]
    assert f"rank 0 (node {node_name()}) {ours} ({len(TEXTS)} lines, sha1 " in said[0]
    assert "a relative --data is read from each rank's working directory" in said[0]
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_ranks_reading_equal_copies_of_a_manifest_at_other_paths_decode_it(exported_dir, tmp_path, monkeypatch):
    """The copies are compared by content: two nodes' equal copies (at two paths here) are one manifest."""
    first = write_corpus(tmp_path / "node0", TEXTS)
    second = write_corpus(tmp_path / "node1", TEXTS)
    assert decode_on_two_ranks(monkeypatch, exported_dir, [first, second], tmp_path / "out") == [0, 0]
    rows = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert [json.loads(r)["key"] for r in rows] == [f"test{i:03d}" for i in range(len(TEXTS))]


def test_a_manifest_one_rank_cannot_read_stops_every_rank(exported_dir, tmp_path, monkeypatch, capsys):
    """A copy only rank 1's node holds empty: every rank stops with rank 1's reason, none goes on alone."""
    ours = write_corpus(tmp_path / "node0", TEXTS)
    empty = tmp_path / "node1" / "test.jsonl"
    empty.parent.mkdir()
    empty.write_text("\n")
    out = decode_on_two_ranks(monkeypatch, exported_dir, [ours, empty], tmp_path / "out")
    assert [getattr(o, "exit_code", o) for o in out] == [2, 2], out
    assert f"rank 1 (node {node_name()}) could not open the manifest {ours}" in str(out[0])
    assert f"manifest {empty}: no records" in str(out[0])


def test_a_refusal_every_rank_meets_alike_is_said_once(exported_dir, tmp_path, monkeypatch, capsys):
    """A flag every rank refuses (a window too short for its overlap): each rank printed it, 8 copies on a node of 8
    GPUs; rank 0 says it. A refusal of one rank's own is still said by that rank (test_decode_ranks)."""
    data = write_corpus(tmp_path / "node0", TEXTS)
    out = decode_on_two_ranks(monkeypatch, exported_dir, [data, data], tmp_path / "out", "--max-window-seconds", "2")
    assert out == [2, 2]
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("llmasr decode: error:")]
    assert said == ["llmasr decode: error: decode.max_window_seconds: a window of 2 s must be at least 2 s and longer "
                    "than twice decode.window_overlap (1 s)"]  # fmt: skip


def test_ranks_that_loaded_other_models_decode_nothing(exported_dir, tmp_path, monkeypatch, capsys):
    """Rank 1's node holds another export at the same path (an adaptor trained on since): each rank decoded its share
    with its own model, and the results were scored as one model's."""
    other = shutil.copytree(exported_dir, tmp_path / "other")
    adaptor = load_file(other / "adaptor.safetensors")
    save_file({name: tensor * 3 for name, tensor in adaptor.items()}, other / "adaptor.safetensors")
    data = write_corpus(tmp_path / "data", TEXTS)
    out = decode_on_two_ranks(monkeypatch, [exported_dir, other], [data, data], tmp_path / "out")
    assert out == [2, 2]
    err = capsys.readouterr().err
    assert (f"llmasr decode: error: rank 1 (node {node_name()}) and rank 0 (node {node_name()}) read different models "
            "or decode settings (a relative --model or --checkpoint is read from each rank's working directory; "
            "--checkpoint without --tag takes the `latest` each rank reads, which a training still running moves); "
            "every node needs the same one:\n  weights: '") in err  # fmt: skip
    assert err.count("read different models") == 1  # rank 0 says it
    assert not (tmp_path / "out").exists()


def test_ranks_that_read_other_biasing_lists_decode_nothing(exported_dir, tmp_path, monkeypatch, capsys):
    """--hotwords lists.txt, a node's copy of it older: the lines of its share were biased with another list."""
    import llmasr.commands.decode as decode_cmd

    data = write_corpus(tmp_path / "data", TEXTS)
    lists = tmp_path / "lists.txt"
    lists.write_text("quick brown\n")
    real = decode_cmd.read_phrase_file
    monkeypatch.setattr(decode_cmd, "read_phrase_file", lambda path: real(path) + (
        ["seven eight"] if threading.current_thread().name == "rank1" else []))  # fmt: skip
    out = decode_on_two_ranks(monkeypatch, exported_dir, [data, data], tmp_path / "out", "--hotwords", str(lists))
    assert out == [2, 2]
    err = capsys.readouterr().err
    assert "read different models or decode settings" in err and "\n  hotwords (the list read): '" in err


def test_ranks_that_read_other_vad_models_decode_nothing(exported_dir, tmp_path, monkeypatch, capsys):
    """--vad DIR names the same words on every rank; rank 1's node holds another VAD there (thread ranks share one
    file system, so rank 1's load reads the other directory): its share of long audio would be cut elsewhere."""
    from llmasr.models.fsmn_vad import FsmnVad
    from llmasr.testing.tiny_vad import write_fsmn_vad_dir

    ours = write_fsmn_vad_dir(tmp_path / "vad", seed=0)
    theirs = write_fsmn_vad_dir(tmp_path / "node1_vad", seed=1)
    real = FsmnVad.from_dir.__func__
    monkeypatch.setattr(FsmnVad, "from_dir", classmethod(lambda cls, path: real(cls, theirs if (
        threading.current_thread().name == "rank1" and str(path) == str(ours)) else path)))  # fmt: skip
    data = write_corpus(tmp_path / "data", TEXTS)
    out = decode_on_two_ranks(monkeypatch, exported_dir, [data, data], tmp_path / "out", "--vad", str(ours))
    assert out == [2, 2]
    err = capsys.readouterr().err
    assert err.count("read different models or decode settings") == 1, err  # rank 0 says it
    assert "\n  vad (the model read): '" in err, err
    assert not (tmp_path / "out").exists()
