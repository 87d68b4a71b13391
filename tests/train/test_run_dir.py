"""Run folders: one run at a time (RUN_DIR/.lock), and a fresh run never mixes with an earlier run's checkpoints."""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from llmasr import run_dir as ck
from llmasr.commands.train import main
from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe, save_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train import run_dir as rd
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "train", n=12)


def recipe(tiny_llm_dir, corpus, run, **kw):
    return load_recipe(data=tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run, **kw))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run, **owner):
    run.mkdir(parents=True, exist_ok=True)
    (run / ck.LOCK_FILE).write_text(json.dumps(owner))


def me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": rd.process_start(os.getpid()), "since": "x"}


# -- the lock ---------------------------------------------------------------------------------------------------------
def test_lock_is_exclusive_and_released_only_by_its_owner(tmp_path):
    lock = rd.RunLock.acquire(tmp_path / "run")
    held = json.loads((tmp_path / "run" / ck.LOCK_FILE).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and lock.notes == []
    with pytest.raises(rd.RunDirError, match=rf"in use by another run \(pid {os.getpid()} on host"):
        rd.RunLock.acquire(tmp_path / "run")  # this process holds it: still one run per folder
    lock.release()
    assert not (tmp_path / "run" / ck.LOCK_FILE).exists()
    lock.release()  # idempotent
    again = rd.RunLock.acquire(tmp_path / "run")
    write_lock(tmp_path / "run", **{**again.owner, "pid": dead_pid()})  # someone else took it over since
    again.release()
    assert (tmp_path / "run" / ck.LOCK_FILE).exists()
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp" in p.name]


def test_lock_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")  # as some FUSE and object-store mounts answer

    monkeypatch.setattr(os, "link", no_links)
    lock = rd.RunLock.acquire(tmp_path)
    assert json.loads((tmp_path / ck.LOCK_FILE).read_text()) == lock.owner
    with pytest.raises(rd.RunDirError, match="in use by another run"):
        rd.RunLock.acquire(tmp_path)
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_lock_is_reported_and_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid, host=socket.gethostname(), start="1", since="yesterday")
    lock = rd.RunLock.acquire(tmp_path)
    assert len(lock.notes) == 1 and f"stale lock of pid {pid}" in lock.notes[0] and "taken over" in lock.notes[0]
    assert json.loads((tmp_path / ck.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    # a live pid whose start time differs is another process that reuses the pid: stale too
    write_lock(tmp_path, **{**me(), "start": "not-the-start-time"})
    rd.RunLock.acquire(tmp_path).release()


def test_two_starts_taking_over_one_stale_lock_leave_one_holder(tmp_path, monkeypatch):
    """Both read the same stale lock; the other start takes it over first. This one must not delete that fresh
    lock as the stale one: it finds the folder held and refuses."""
    write_lock(tmp_path, pid=dead_pid(), host=socket.gethostname(), start="1", since="yesterday")
    judged = rd._refuse_unless_stale
    other = {**me(), "start": rd.process_start(os.getpid())}

    def the_other_start_wins(path, held, mine):
        judged(path, held, mine)  # stale: this start is about to take it over ...
        monkeypatch.setattr(rd, "_refuse_unless_stale", judged)
        path.unlink()  # ... but the other start does so first
        path.write_text(json.dumps(other))

    monkeypatch.setattr(rd, "_refuse_unless_stale", the_other_start_wins)
    with pytest.raises(rd.RunDirError, match="in use by another run"):
        rd.RunLock.acquire(tmp_path)
    assert json.loads((tmp_path / ck.LOCK_FILE).read_text()) == other
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.LOCK_FILE]


def test_locks_that_cannot_be_checked_are_refused_with_their_owner(tmp_path):
    write_lock(tmp_path, pid=123, host="gpu-node-7", start="5", since="Mon")
    with pytest.raises(rd.RunDirError, match="another host.*pid 123 on host gpu-node-7") as err:
        rd.RunLock.acquire(tmp_path)
    assert str(tmp_path / ck.LOCK_FILE) in str(err.value)
    (tmp_path / ck.LOCK_FILE).write_text("garbage")
    with pytest.raises(rd.RunDirError, match=r"\.lock: not a lock llmasr wrote"):
        rd.RunLock.acquire(tmp_path)


def test_fresh_run_refuses_earlier_checkpoints_and_overwrite_clears_them(tmp_path):
    ckpts = ck.checkpoints_dir(tmp_path)
    for u in (2, 4):
        (ckpts / ck.tag_for(u)).mkdir(parents=True)
        (ckpts / ck.tag_for(u) / ck.META).write_text("{}")
    ck.write_atomic(ckpts / ck.LATEST, ck.tag_for(4))
    (tmp_path / ck.TRAIN_LOG).write_text("old run\n")
    (tmp_path / "export").mkdir()
    with pytest.raises(rd.RunDirError, match=r"2 checkpoint\(s\), latest update_00000004.*--resume.*--overwrite"):
        rd.check_fresh_run(tmp_path, overwrite=False)
    assert rd.earlier_checkpoints(tmp_path) == [ck.LATEST, ck.tag_for(2), ck.tag_for(4)]
    notes = rd.check_fresh_run(tmp_path, overwrite=True)
    assert notes and "checkpoints, train.log" in notes[0]
    assert not ckpts.exists() and not (tmp_path / ck.TRAIN_LOG).exists()
    assert (tmp_path / "export").is_dir()  # not the trainer's to delete
    assert rd.check_fresh_run(tmp_path, overwrite=False) == []


def test_a_first_save_cut_short_is_no_earlier_run(tmp_path):
    """A job killed during its first save leaves a tag folder without its meta and no `latest`: `train.resume:
    auto` starts afresh (the folder had been an "earlier run" to continue with --resume, which found nothing)."""
    shard = ck.checkpoints_dir(tmp_path) / ck.tag_for(2) / "mp_rank_00_model_states.pt"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"half")
    assert ck.resume_or_start("auto", tmp_path) is None
    assert rd.earlier_checkpoints(tmp_path) == [] and rd.check_fresh_run(tmp_path, overwrite=False) == []


# -- real runs ------------------------------------------------------------------------------------------------------
def test_second_fresh_run_is_refused_and_overwrite_starts_clean(tiny_llm_dir, corpus, tmp_path):
    run = tmp_path / "run"
    train(recipe(tiny_llm_dir, corpus, run, max_updates=2, save_every_updates=1, keep_last=0), "zero0")
    assert not (run / ck.LOCK_FILE).exists()  # released at the end
    before = sorted(p.name for p in ck.checkpoints_dir(run).iterdir())
    assert ck.tag_for(1) in before and ck.tag_for(2) in before
    with pytest.raises(ConfigError, match="holds an earlier run's checkpoints"):
        train(recipe(tiny_llm_dir, corpus, run, max_updates=1), "zero0")
    assert sorted(p.name for p in ck.checkpoints_dir(run).iterdir()) == before
    assert not (run / ck.LOCK_FILE).exists()

    train(recipe(tiny_llm_dir, corpus, run, max_updates=1, keep_last=0), "zero0", overwrite=True)
    ckpts = ck.checkpoints_dir(run)
    assert sorted(p.name for p in ckpts.iterdir() if ck.update_of(p.name) is not None) == [ck.tag_for(1)]
    assert ck.latest(ckpts) == ck.tag_for(1)
    log = (run / ck.TRAIN_LOG).read_text()
    assert log.count(" train update=") == 1 and "--overwrite: removed checkpoints, train.log" in log


def test_a_live_lock_refuses_a_run_and_a_stale_one_is_taken_over(tiny_llm_dir, corpus, tmp_path):
    run = tmp_path / "run"
    write_lock(run, **me())  # a run in progress (this process stands in for it)
    with pytest.raises(ConfigError, match=f"in use by another run \\(pid {os.getpid()}"):
        train(recipe(tiny_llm_dir, corpus, run, max_updates=1), "zero0")
    assert json.loads((run / ck.LOCK_FILE).read_text()) == me()  # the refused run leaves the owner's lock alone
    pid = dead_pid()
    write_lock(run, pid=pid, host=socket.gethostname(), start=None, since="earlier")
    train(recipe(tiny_llm_dir, corpus, run, max_updates=1), "zero0")
    assert f"stale lock of pid {pid}" in (run / ck.TRAIN_LOG).read_text()
    assert not (run / ck.LOCK_FILE).exists()


def test_resume_and_overwrite_on_the_command_line(tiny_llm_dir, corpus, tmp_path, capsys):
    """--resume continues the folder's own run; continuing another folder's checkpoint here is a new history for
    this folder, so its earlier checkpoints are refused unless --overwrite; --overwrite never deletes the
    checkpoint being resumed."""
    a, b = tmp_path / "a", tmp_path / "b"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=a, max_updates=1)))

    def cli(*args):
        code = main(["--config", str(path), "--deepspeed", "zero0", *args])
        return code, capsys.readouterr().err

    assert cli("--resume")[0] == 2  # nothing to resume yet
    assert cli()[0] == 0
    code, err = cli("--resume", "--overwrite", "train.max_updates=2")
    assert code == 2 and f"--overwrite would delete {ck.checkpoints_dir(a) / ck.tag_for(1)}" in err
    assert cli(f"train.output_dir={b}", "train.max_updates=2")[0] == 0  # b's own run: update_2
    source = ck.checkpoints_dir(a) / ck.tag_for(1)
    code, err = cli("--resume", str(source), f"train.output_dir={b}", "train.max_updates=3")
    assert code == 2 and f"continuing {source} here would overwrite and mix with them" in err
    assert cli("--overwrite", "--resume", str(source), f"train.output_dir={b}", "train.max_updates=3")[0] == 0
    tags = sorted(p.name for p in ck.checkpoints_dir(b).iterdir() if ck.update_of(p.name) is not None)
    log = (b / ck.TRAIN_LOG).read_text()  # b's own run and its log are gone; a's went on from update 1 (2 in all)
    assert tags == [ck.tag_for(2)] and f"resumed from {source}" in log and log.count(" train update=2 ") == 1
    assert log.count(" train update=") == 1 and "--overwrite: removed checkpoints, train.log" in log
    assert source.is_dir() and not (a / ck.LOCK_FILE).exists() and not (b / ck.LOCK_FILE).exists()


# -- two ranks --------------------------------------------------------------------------------------------------------
def launch(recipe_file, run, *options):
    from llmasr.train.process_group import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--module", "llmasr", "train",
           "--config", str(recipe_file), "--deepspeed", "zero0", *options, f"train.output_dir={run}"]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_learn_rank0s_refusal_and_exit_with_one_message(tiny_llm_dir, corpus, tmp_path):
    """Only rank 0 checks the folder (and a resume's recipe); rank 1 must not wait for it in a collective, and the
    message appears once."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "unused")))
    used = tmp_path / "used"
    (ck.checkpoints_dir(used) / ck.tag_for(3)).mkdir(parents=True)
    ck.write_atomic(ck.checkpoints_dir(used) / ck.LATEST, ck.tag_for(3))
    locked = tmp_path / "locked"
    write_lock(locked, **me())
    changed = tmp_path / "changed"  # a run saved under another seed, resumed with this recipe
    (ck.checkpoints_dir(changed) / ck.tag_for(3)).mkdir(parents=True)
    (ck.checkpoints_dir(changed) / ck.tag_for(3) / ck.META).write_text("{}")  # complete: `latest` names a checkpoint
    ck.write_atomic(ck.checkpoints_dir(changed) / ck.LATEST, ck.tag_for(3))
    saved = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=changed, seed=5)
    save_recipe(load_recipe(data=saved), changed / ck.RECIPE_FILE)
    cases = [(used, "holds an earlier run's checkpoints", ()), (locked, "in use by another run", ()),
             (changed, "train.seed: 5 -> 0", ("--resume",))]  # fmt: skip
    for run, why, extra in cases:
        proc = launch(path, run, *extra)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert out.count("llmasr train: error:") == 1 and why in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    assert json.loads((locked / ck.LOCK_FILE).read_text()) == me()


def test_a_fresh_run_after_one_that_saved_nothing_keeps_its_own_log(tiny_llm_dir, tmp_path):
    """A run that died before its first checkpoint leaves train.log and TensorBoard events; the next fresh run in the
    folder (allowed: nothing to resume) had appended to the log and drawn both runs' curves over the same updates.
    The old ones are moved aside, named in the new log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train.trainer import train

    corpus = write_tiny_corpus(tmp_path / "corpus", n=12)
    run = tmp_path / "run"
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run, grad_accum=1)
    train(load_recipe(data=data), "zero0", stop_after_updates=2)  # ends without saving, as a crash would
    assert not any(p.name.startswith("update_") for p in (run / "checkpoints").iterdir())
    history = train(load_recipe(data=data), "zero0")["history"]
    log = (run / "train.log").read_text()
    updates = [line.split(" train update=")[1].split()[0] for line in log.splitlines() if " train update=" in line]
    assert updates == [str(h["update"]) for h in history] and updates[0] == "1"
    aside = sorted(p.name for p in run.iterdir() if ".before-" in p.name)
    assert [name.split(".before-")[0] for name in aside] == ["tensorboard", "train.log"]
    assert "moved aside the train.log and tensorboard of an earlier run without checkpoints" in log
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [h["update"] for h in history]


# -- a folder every node shares ---------------------------------------------------------------------------------------
def claim_on_ranks(views, monkeypatch, resumes=(None, None)):
    """claim_run_dir on thread ranks, rank r seeing the run folder at views[r] (one path on every node of a shared
    filesystem; node-local disks give each node a folder of its own)."""
    import threading

    from llmasr.testing.thread_ranks import run_ranks

    mine = threading.local()  # each thread rank's gather, behind the process group's collectives
    monkeypatch.setattr(rd, "broadcast_object", lambda obj: mine.gather(obj)[0])
    monkeypatch.setattr(rd, "all_gather_object", lambda obj: mine.gather(obj), raising=False)

    def rank(r, gather):
        mine.gather = gather
        return rd.claim_run_dir(views[r], rank=r, resume=resumes[r], overwrite=False)

    return run_ranks(len(views), rank, timeout=60)


def test_ranks_of_one_shared_folder_claim_it_and_leave_nothing_behind(tmp_path, monkeypatch):
    lock, other = claim_on_ranks([tmp_path / "run", tmp_path / "run"], monkeypatch)
    assert isinstance(lock, rd.RunLock) and other is None
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [ck.LOCK_FILE, ck.CHECKPOINTS]
    lock.release()


def test_a_rank_that_does_not_see_rank0s_folder_stops_every_rank_naming_it(tmp_path, monkeypatch):
    """Node-local disks: rank 1's train.output_dir is a folder of its own node. The run had trained on, each node's
    shards on its own disk and the meta recording only the files rank 0's node held; its resume then continued on
    node 0 and started afresh on node 1, whose ranks waited in different collectives until the job was killed."""
    monkeypatch.setattr("llmasr.train.shared_dir.WAIT_S", 0.5)
    node0, node1 = tmp_path / "node0" / "run", tmp_path / "node1" / "run"
    node1.mkdir(parents=True)
    zero, one = claim_on_ranks([node0, node1], monkeypatch)
    for err in (zero, one):
        assert isinstance(err, rd.RunDirError), err
        assert f"train.output_dir {node0 if err is zero else node1} is not one folder every rank shares" in str(err)
        assert f"rank 1 (node {socket.gethostname()}) in {node1}: no such file" in str(err)  # the folders it sees
        assert f" in {node0}, which these ranks do not see" in str(err)  # and the one rank 0 wrote in
    assert not zero.quiet and one.quiet  # rank 0 says it, once
    assert not (node0 / ck.LOCK_FILE).exists() and [p.name for p in node0.iterdir()] == [ck.CHECKPOINTS]


def test_ranks_that_would_start_differently_stop_before_either_starts(tmp_path, monkeypatch):
    lock_or_err = claim_on_ranks([tmp_path / "run", tmp_path / "run"], monkeypatch, resumes=(None, "latest"))
    for err in lock_or_err:
        assert isinstance(err, rd.RunDirError), err
        assert "rank 0 would start afresh; rank 1 (node " in str(err) and "would resume from 'latest'" in str(err)
    assert not (tmp_path / "run" / ck.LOCK_FILE).exists()
