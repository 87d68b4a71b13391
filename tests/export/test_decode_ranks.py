"""Decoding on N ranks (llmasr.export.decode_world): each rank's share of the batches, and `llmasr decode` under the
real `deepspeed` launcher on 2 CPU ranks writing the outputs one process writes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from llmasr import slurm_env
from llmasr.commands.decode import main
from llmasr.export.decode import DecodeOptions, decode_loader
from llmasr.export.decode_world import DecodeWorld
from llmasr.models.decoding import DecodeConfig
from llmasr.models.line_prompts import LinePrompts
from llmasr.models.speech_llm import SpeechLLM
from llmasr.rank_verdict import RankFailure, node_name
from llmasr.testing.launcher import assert_no_shm_left, launcher_env, srun_env
from llmasr.testing.run_dirs import write_corpus, write_wav
from llmasr.testing.thread_ranks import lines_counted_by_thread, run_ranks, thread_world
from llmasr.train.process_group import free_port

TEXTS = ["zero one two", "three four", "five six seven eight", "nine", "hello world", "the quick brown fox",
         "one one", "two three four five", "six", "seven eight nine"]  # fmt: skip
BAD = ['{"key": "gone", "source": "wav/nope.wav", "target": "lost"}', "{not json",
       '{"key": "vad", "source": "wav/vad.wav", "target": "cut"}']  # fmt: skip
LONG = '{"key": "long", "source": "wav/long.wav", "target": "one two three four five six"}'  # decoded in windows


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks_corpus")
    path = write_corpus(root, TEXTS, extra_lines=[*BAD, LONG])
    write_wav(root / "wav" / "vad.wav", 0.01, seed=0)  # loads, then is refused: a bad line found by a rank
    write_wav(root / "wav" / "long.wav", 6.0, seed=1)
    return path


def test_ranks_share_the_batches_of_one_plan(model, manifest):
    cfg, opts = DecodeConfig(batch_seconds=1.6), DecodeOptions(num_workers=0)
    plan = [sorted(b) for b in decode_loader(model, manifest, cfg, opts).batch_sampler]
    shares = run_ranks(2, lambda r, gather: list(
        decode_loader(model, manifest, cfg, opts, world=thread_world(r, 2, gather)).batch_sampler
    ))  # fmt: skip
    assert len(plan) % 2 == 1  # an odd count: one rank repeats a batch to keep the count even
    assert len(shares[0]) == len(shares[1]) == (len(plan) + 1) // 2
    assert {tuple(sorted(b)) for b in shares[0] + shares[1]} == {tuple(b) for b in plan}


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    """The corpus with a biasing list of their own on most lines (an empty one on one), and its bad lines."""
    root = tmp_path_factory.mktemp("listed_corpus")
    path = write_corpus(root, TEXTS, extra_lines=BAD)
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, text in enumerate(TEXTS):
        if i % 4:
            rec = json.loads(lines[i])
            rec["hotwords"] = [] if i == 1 else [TEXTS[(i + 3) % len(TEXTS)], *text.split()[: i % 3 + 1]]
            lines[i] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_each_rank_counts_the_prompts_of_its_share_of_the_lines(model, listed, monkeypatch):
    """Every rank read every line's prompt for the window and the budget (a 100k-line manifest of own lists: half a
    minute a rank); now each reads its share and one gather gives every rank the counts one process has."""
    cfg, opts = DecodeConfig(batch_seconds=1.6, max_llm_tokens=150, max_new_tokens=5), DecodeOptions(num_workers=0)
    counted = lines_counted_by_thread(monkeypatch)
    one = decode_loader(model, listed, cfg, opts)
    lines = list(range(len(TEXTS) + len(BAD)))
    assert sorted(counted.pop(threading.current_thread().name)) == lines  # one process: each line once
    gathers = []

    def rank(r, gather):
        def counting(obj):
            gathers.append((r, isinstance(obj, dict) and "asked" in obj))  # a gather of prompt counts
            return gather(obj)

        return decode_loader(model, listed, cfg, opts, world=thread_world(r, 2, counting))

    shares = run_ranks(2, rank)
    assert sorted(counted["rank0"] + counted["rank1"]) == lines  # every line counted once, by one rank
    assert len(counted["rank0"]) == (len(lines) + 1) // 2 and len(counted["rank1"]) == len(lines) // 2
    assert gathers.count((0, True)) == gathers.count((1, True)) == 1  # the window's and the budget's counts at once
    for loader in shares:
        assert all((got == want).all() for got, want in zip(loader.llm_rows, one.llm_rows, strict=True))
    assert sorted(sorted(b) for s in shares for b in s.batch_sampler) == sorted(sorted(b) for b in one.batch_sampler)


def test_a_rank_that_fails_counting_its_share_stops_every_rank(model, listed, monkeypatch):
    """A fault counting one rank's share of the prompts ends every rank in the gather of the counts: the others do
    not wait there for it (over other nodes, until the process group's timeout)."""
    real = LinePrompts._count

    def count(self, *args):
        if threading.current_thread().name == "rank1":
            raise RuntimeError("this node's tokenizer is broken")
        return real(self, *args)

    monkeypatch.setattr(LinePrompts, "_count", count)
    cfg, opts = DecodeConfig(max_llm_tokens=150), DecodeOptions(num_workers=0)
    out = run_ranks(2, lambda r, gather: decode_loader(model, listed, cfg, opts, world=thread_world(r, 2, gather)))
    assert isinstance(out[1], RuntimeError) and str(out[1]) == "this node's tokenizer is broken"
    assert isinstance(out[0], RankFailure), out[0]
    assert str(out[0]).startswith("rank 1 (node ") and "count the decode prompts" in str(out[0])
    assert "this node's tokenizer is broken" in str(out[0])


def srun_decode(common: list[str], output, port: int) -> tuple[int, str, str]:
    """`srun -n 2 python -m llmasr decode ...` in a batch script that set MASTER_ADDR / MASTER_PORT: the two tasks
    (llmasr.testing.launcher.srun_env), each told only its SLURM_* place. (worst exit status, stdout, stderr)."""
    cmd = [sys.executable, "-m", "llmasr", "decode", *common, "--output", str(output)]
    meet = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen(cmd, env=srun_env(r, **meet), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]  # fmt: skip
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return max(p.returncode for p in procs), "".join(o for o, _ in outs), "".join(e for _, e in outs)


def two_ranks_write_what_one_process_writes(exported_dir, manifest, tmp_path, *flags: str, srun=False) -> dict:
    """`llmasr decode` of `manifest` under `flags` in one process and on 2 CPU ranks of the deepspeed launcher (or
    as the 2 tasks of an srun step): the same files, the same wer.json but for the timing. Returns the 2 ranks'
    wer.json."""
    common = ["--model", str(exported_dir), "--data", str(manifest), "--num-workers", "0", *flags]
    assert main([*common, "--output", str(tmp_path / "one")]) == 0
    port = free_port()
    if srun:
        code, stdout, stderr = srun_decode(common, tmp_path / "two", port)
        said = "INFO llmasr.commands.decode: ranks from SLURM (job 4242, srun step 0): rank 0 of 2 tasks on 1 node(s)"
        assert stderr.count(said) == 1, stderr[-3000:]  # rank 0 alone
    else:
        cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), "--module", "llmasr", "decode", *common,
               "--output", str(tmp_path / "two")]  # fmt: skip
        proc = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=300)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        assert "ranks from SLURM" not in stderr
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert_no_shm_left(port)
    assert stdout.count("test.jsonl: WER") == 1  # rank 0 reports, once
    one, two = tmp_path / "one", tmp_path / "two"
    ctc = ("ctc/hyp.txt", "ctc/results.jsonl") if "--ctc" in flags else ()
    for name in ("hyp.txt", "ref.txt", "results.jsonl", "bad.jsonl", *ctc):
        assert (two / name).read_text() == (one / name).read_text(), name
    timing = {"decode_seconds", "rtf", "utts_per_second", "text", "rank_items", "first_batch_seconds"}
    timing |= {"rtf_after_first_batch", "window_plan_seconds"}
    got, want = (json.loads((d / "wer.json").read_text()) for d in (two, one))
    assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in want.items() if k not in timing}
    assert want["rank_items"] == [got["windows"]] and len(got["rank_items"]) == 2 and min(got["rank_items"]) > 0
    assert sum(got["rank_items"]) == got["windows"]  # the batch a rank repeats to keep the count even is skipped
    assert f"2 ranks, items decoded {got['rank_items'][0]} + {got['rank_items'][1]}" in (two / "wer.txt").read_text()
    return got


def test_two_ranks_write_what_one_process_writes(exported_dir, manifest, tmp_path):
    got = two_ranks_write_what_one_process_writes(
        exported_dir, manifest, tmp_path, "--batch-seconds", "1.6",
        "--max-llm-tokens", "150",  # batches within it as well, the same plan on each rank
        "--max-new-tokens", "5", "--max-bad-fraction", "0.5", "--ctc", "--max-window-seconds", "2.5",
    )  # fmt: skip
    assert got["utterances"] == len(TEXTS) + 1 and got["skipped"] == len(BAD)
    assert got["split"] == 1 and got["windows"] > len(TEXTS) + 1  # the long line went in windows
    assert len((tmp_path / "two" / "hyp.txt").read_text().splitlines()) == len(TEXTS) + 1


def test_two_ranks_with_a_task_for_the_lines_write_what_one_process_writes(exported_dir, manifest, tmp_path):
    """decode --task: each rank renders and counts (window, budget) every line's prompt with it."""
    got = two_ranks_write_what_one_process_writes(
        exported_dir, manifest, tmp_path, "--batch-seconds", "1.6", "--max-llm-tokens", "150", "--max-new-tokens",
        "5", "--max-bad-fraction", "0.5", "--max-window-seconds", "2.5", "--task", "语音转写：", "--confidence",
    )  # fmt: skip
    assert got["task"] == "语音转写：" and got["split"] == 1


def test_the_two_tasks_of_an_srun_step_write_what_one_process_writes(exported_dir, manifest, tmp_path):
    """A batch script's `srun python -m llmasr decode ...` (2 tasks, MASTER_ADDR / MASTER_PORT exported): one decode
    of 2 ranks, rank 0 writing the files one process writes, not two whole decodes into one folder."""
    got = two_ranks_write_what_one_process_writes(
        exported_dir, manifest, tmp_path, "--batch-seconds", "1.6", "--max-new-tokens", "5", "--max-bad-fraction",
        "0.5", "--max-window-seconds", "2.5", srun=True,
    )  # fmt: skip
    assert got["utterances"] == len(TEXTS) + 1 and got["skipped"] == len(BAD) and got["split"] == 1


def test_two_ranks_with_lines_own_lists_and_a_budget_write_what_one_process_writes(exported_dir, listed, tmp_path):
    """Each rank counts its share of the lines' prompts (their own lists) for the window and the budget."""
    got = two_ranks_write_what_one_process_writes(
        exported_dir, listed, tmp_path, "--batch-seconds", "1.2", "--max-llm-tokens", "120", "--max-new-tokens", "4",
        "--max-bad-fraction", "0.5",
    )  # fmt: skip
    assert got["utterances"] == len(TEXTS) and got["skipped"] == len(BAD)
    assert got["hotword_lists"] == sum(bool(i % 4) for i in range(len(TEXTS))) - 1  # the empty list is none


def test_a_fault_met_decoding_ends_the_run_not_only_its_manifest(exported_dir, manifest, tmp_path, monkeypatch):
    """Only a manifest every rank refuses alike (missing, empty, unreadable) is skipped for the next: a rank going on
    after a fault of its own batch would gather the next manifest's rows into the others' merge of this one."""
    real = SpeechLLM.transcribe

    def fails_on_test001(self, batch, cfg=None, **kwargs):
        if "test001" in batch.keys:
            raise ValueError("a fault of this batch alone")
        return real(self, batch, cfg, **kwargs)

    monkeypatch.setattr(SpeechLLM, "transcribe", fails_on_test001)
    other = write_corpus(tmp_path / "other", ["four five"], name="other")
    args = ["--model", str(exported_dir), "--data", str(manifest), "--data", str(other), "--num-workers", "0",
            "--max-new-tokens", "2", "--output", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(ValueError, match="a fault of this batch alone") as raised:
        main(args)
    assert f"{manifest}:2 (key test001)" in raised.value.__notes__[0]  # the batch is named by its items
    assert not (tmp_path / "out" / "other").exists()


def test_a_manifest_every_rank_refuses_is_named_by_rank_0_alone(exported_dir, tmp_path, monkeypatch, capsys):
    """Every rank meets an empty manifest; the launcher interleaves their stderr, and the message came twice. The
    ranks are threads that gather for real: each opens the manifest and they exchange what they found."""
    import llmasr.commands.decode as decode_cmd

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    mine = threading.local()
    monkeypatch.setattr(decode_cmd.DecodeWorld, "from_env", classmethod(lambda cls: mine.world))

    def rank(r, gather):
        mine.world = thread_world(r, 2, gather)
        args = ["--model", str(exported_dir), "--data", str(empty), "--output", str(tmp_path / "out")]
        return main([*args, "--device", "cpu"])

    root, level = logging.getLogger(), logging.getLogger().level
    try:
        assert run_ranks(2, rank, timeout=60) == [2, 2]
        assert capsys.readouterr().err.count(f"manifest {empty}: no records") == 1  # rank 0's alone
    finally:
        root.setLevel(level)  # a rank > 0 quiets the root logger


def test_the_world_comes_from_the_launcher_and_each_rank_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a node of two GPUs, as the launcher sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert DecodeWorld.from_env({}) == DecodeWorld(0, 1, 0)
    world = DecodeWorld.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert world == DecodeWorld(3, 4, 1) and not world.leader
    assert str(world.device("cuda")) == "cuda:1" and str(world.device("cuda:0")) == "cuda:0"
    assert str(world.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="RANK 4 with WORLD_SIZE 4"):
        DecodeWorld.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="must be integers"):
        DecodeWorld.from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_the_tasks_of_an_srun_step_are_the_ranks_of_one_decode(monkeypatch):
    """`srun -n 4` on 2 nodes sets SLURM_* only: task 3 decodes every 4th batch as rank 3, not everything alone. With
    --gpus-per-task=1 it sees one GPU, its own, as cuda:0."""
    monkeypatch.setattr(slurm_env, "_adopted", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    environ = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
               "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "MASTER_ADDR": "gpu01",
               "MASTER_PORT": "29500"}  # fmt: skip
    unset = {k: v for k, v in environ.items() if not k.startswith("MASTER")}
    world = DecodeWorld.from_env(environ)
    assert world == DecodeWorld(3, 4, 0) and str(world.device("cuda")) == "cuda:0"  # local rank 0 of its own GPU
    with pytest.raises(ValueError, match="needs MASTER_ADDR and MASTER_PORT"):  # decode's main prints it, status 2
        DecodeWorld.from_env(unset)


def test_a_rank_whose_node_lacks_a_file_stops_every_rank_before_decoding(exported_dir, manifest, tmp_path, monkeypatch,
                                                                         capsys):  # fmt: skip
    """Rank 1's node has no copy of the manifest: it had refused alone before joining the others, and on another node
    (whose launcher does not stop the rest) rank 0 waited for it in the process group's start for two hours."""
    import threading

    import llmasr.commands.decode as decode_cmd

    mine = threading.local()
    monkeypatch.setattr(decode_cmd.DecodeWorld, "from_env", classmethod(lambda cls: mine.world))
    gone = tmp_path / "node1" / "test.jsonl"

    def rank(r, gather):
        mine.world = thread_world(r, 2, gather)
        return main(["--model", str(exported_dir), "--data", str(gone if r else manifest), "--num-workers", "0",
                     "--output", str(tmp_path / "out"), "--device", "cpu"])  # fmt: skip

    assert run_ranks(2, rank, timeout=60) == [2, 2]
    err = capsys.readouterr().err
    assert f"llmasr decode: error: --data: {gone}: no such manifest file" in err
    assert (f"llmasr decode: error: rank 1 (node {node_name()}) could not start; every rank stops with it:\n  --data: "
            f"{gone}") in err  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_several_ranks_that_cannot_start_stop_every_rank_with_the_worst_exit_status(exported_dir, tmp_path,
                                                                                    monkeypatch, capsys):  # fmt: skip
    """The start-up verdicts are llmasr.rank_verdict's: rank 0 names the first rank that failed and counts the
    rest; a refused rank says its own refusal; a rank that failed otherwise raises its error; every rank that did not
    fail returns the worst exit status of the failed ones (1 for an error that is not a refusal)."""
    import threading

    import llmasr.commands.decode as decode_cmd

    mine = threading.local()
    monkeypatch.setattr(decode_cmd.DecodeWorld, "from_env", classmethod(lambda cls: mine.world))
    oom = RuntimeError("CUDA out of memory on this node")

    def prepare(args, world):
        if world.rank == 1:
            raise decode_cmd.Refused("--output /out: not writable on this node")
        if world.rank == 2:
            raise oom
        return "never used: another rank failed"

    monkeypatch.setattr(decode_cmd, "_prepare", prepare)

    def rank(r, gather):
        mine.world = thread_world(r, 4, gather)
        return main(["--model", str(exported_dir), "--data", "x.jsonl", "--output", str(tmp_path / "out"),
                     "--device", "cpu"])  # fmt: skip

    out = run_ranks(4, rank, timeout=60)
    assert out[0] == 2 and out[1] == 2 and out[2] is oom and out[3] == 2  # rank 1's refusal: 2, rank 2's error: 1
    err = capsys.readouterr().err
    assert err.count("llmasr decode: error: --output /out: not writable on this node") == 1  # rank 1's own
    said = [line for line in err.splitlines() if "could not start" in line]
    assert said == [f"llmasr decode: error: rank 1 (node {node_name()}) (and 1 other rank(s)) could not start; "
                    "every rank stops with it:"], err  # fmt: skip


def test_ranks_that_ask_for_other_lines_all_refuse_to_merge_their_counts():
    """Ranks reading different manifests ask for the counts of other lines: every rank says so, none merges them."""

    def rank(r, gather):
        lines = np.arange(6 if r else 5)
        tokens, fields = np.full(6, -1), np.zeros(6, dtype=np.uint8)
        tokens[thread_world(r, 2, gather).line_share(lines)] = 7
        thread_world(r, 2, gather).merge_lines(lines, tokens, fields)
        return tokens

    out = run_ranks(2, rank, timeout=20)
    assert all(isinstance(e, ValueError) for e in out), out
    assert "rank 1 asked for the counts of 6 lines, rank 0 for 5" in str(out[0]) and str(out[0]) == str(out[1])


def test_a_bad_line_met_decoding_is_named_with_the_rank_and_node_that_met_it():
    """A clip one node's copy lacks is met only by the rank that decodes it, at a path that reads the same on every
    node: the refusal named the line and that path, not which node lacks the file."""
    from llmasr.data.bad_data import BadDataTracker

    def rank(r, gather):
        tracker = BadDataTracker(0.0, name="decode test.jsonl", enforce=False)
        if r == 1:
            tracker.add_bad({"manifest": "test.jsonl", "line": 4, "key": "u3", "reason": "audio: file not found"})
        return thread_world(r, 2, gather).merge({r: {"hyp": "x"}}, tracker)[1]

    for merged in run_ranks(2, rank, timeout=20):
        assert merged.bad == 1 and merged.exceeded
        assert f"test.jsonl:4 key=u3: audio: file not found (met by rank 1 (node {node_name()}))" in merged.message()


def test_a_save_latest_does_not_name_is_said_once_on_two_ranks(trained_run, corpus, tmp_path, copy_run):
    """`decode --checkpoint RUN_DIR` where `latest` is one save behind a complete one takes the newer and warns of
    it: every rank loads the model, and each rank said it (the launcher interleaves them); rank 0 says it, once."""
    run = copy_run(trained_run, tmp_path / "run")
    ckpts = run / "checkpoints"
    (ckpts / "latest").write_text("update_00000003")
    os.utime(ckpts / "update_00000004" / "llmasr_meta.json")  # written before `latest` would have been
    port = free_port()
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), "--module", "llmasr", "decode", "--checkpoint",
           str(run), "--data", str(corpus), "--num-workers", "0", "--max-new-tokens", "2", "--output",
           str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_no_shm_left(port)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "cut short before `latest`" in line]
    assert len(said) == 1, said
    assert "update_00000004 is complete" in said[0] and "--tag update_00000003" in said[0]
