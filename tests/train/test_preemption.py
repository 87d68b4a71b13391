"""SIGTERM / SIGINT: a stop after the current update with a checkpoint, at once before training or on a second
signal; a 1-rank run in this process (the 2-rank launcher case is in tests/recipes/test_preemption_multirank.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from llmasr import run_dir as ck
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train import preemption as pre
from llmasr.train.progress import Progress
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "train", n=20)


def make_recipe(llm_dir, corpus, run_dir):
    """5 batches an epoch, 3 updates of 2 (the last one short); dropout on, so a wrong RNG state shows."""
    return load_recipe(data=tiny_recipe_dict(llm_dir, train=[corpus], output_dir=run_dir, epochs=2, grad_accum=2,
                                             dropout=0.1, deterministic=True))  # fmt: skip


def signal_at(monkeypatch, update: int, signum: int, copies: int = 1) -> None:
    """Send `signum` to this process (`copies` times, as a launcher forwarding it would) while update `update` is
    being reported, i.e. after it ran and before the loop reaches its boundary check."""
    original = Progress.update

    def update_and_signal(self, u, *args, **kwargs):
        original(self, u, *args, **kwargs)
        if u == update:
            for _ in range(copies):
                os.kill(os.getpid(), signum)

    monkeypatch.setattr(Progress, "update", update_and_signal)


@pytest.mark.parametrize(("signum", "at", "saved_epoch"), [(signal.SIGINT, 2, 0), (signal.SIGTERM, 3, 1)],
                         ids=["SIGINT-mid-epoch", "SIGTERM-at-epoch-end"])  # fmt: skip
def test_signal_saves_and_resume_matches_the_uninterrupted_run(
    tiny_llm_dir, corpus, tmp_path, monkeypatch, signum, at, saved_epoch
):
    whole = train(make_recipe(tiny_llm_dir, corpus, tmp_path / "a"), "zero0")["history"]
    assert len(whole) == 6

    before = signal.getsignal(signum)
    with monkeypatch.context() as m:
        signal_at(m, at, signum, copies=2)
        cut = train(make_recipe(tiny_llm_dir, corpus, tmp_path / "b"), "zero0")
    assert signal.getsignal(signum) is before  # the run's handlers are gone with it
    assert cut["interrupted"] and cut["signal"] == signum
    assert [h["update"] for h in cut["history"]] == list(range(1, at + 1))  # finished update `at`, ran no other
    ckpts = tmp_path / "b" / "checkpoints"
    assert ck.latest(ckpts) == ck.tag_for(at) and cut["checkpoint"] == str(ckpts / ck.tag_for(at))
    assert ck.read_meta(ckpts / ck.tag_for(at)).epoch == saved_epoch
    log = (tmp_path / "b" / "train.log").read_text()
    assert f"stopped by {signal.Signals(signum).name} after update {at}" in log and "--resume" in log

    rest = train(make_recipe(tiny_llm_dir, corpus, tmp_path / "b"), "zero0", resume="latest")["history"]
    assert [h["update"] for h in rest] == list(range(at + 1, 7))
    np.testing.assert_allclose([h["loss"] for h in rest], [h["loss"] for h in whole[at:]], rtol=0, atol=1e-6)


def test_cli_exits_with_the_signal_status_and_one_line(tiny_llm_dir, corpus, tmp_path, monkeypatch, capsys):
    import yaml

    from llmasr.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")))
    signal_at(monkeypatch, 1, signal.SIGTERM)
    assert main(["train", "--config", str(path), "--deepspeed", "zero0"]) == 128 + signal.SIGTERM
    assert "Traceback" not in capsys.readouterr().err
    # the one line goes through the llmasr logger: to stderr on rank 0 and to train.log
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    stopped = [line for line in lines if "stopped by" in line]
    assert len(stopped) == 1 and "stopped by SIGTERM after update 1: checkpoint" in stopped[0]


def test_signal_before_training_interrupts_at_once(tiny_llm_dir, corpus, tmp_path, monkeypatch, capsys):
    """During start-up (here: while the DeepSpeed JSON is resolved) there is nothing to save: stop right there."""
    import yaml

    from llmasr.cli import main
    from llmasr.train import ds_config

    original = ds_config.resolve_ds_config

    def resolve_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(ds_config, "resolve_ds_config", resolve_then_signal)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")))
    assert main(["train", "--config", str(path), "--deepspeed", "zero0"]) == 130
    err = capsys.readouterr().err
    assert "llmasr train: stopped by SIGINT before training started" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


WATCHER_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from llmasr.train import preemption as pre

    with pre.Preemption() as p:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # start-up: interrupts at once
            time.sleep(5)
            sys.exit("not interrupted")
        except pre.Interrupted as err:
            assert err.signum == signal.SIGTERM
    with pre.Preemption() as p:
        p.arm()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's copy: the same request
        time.sleep(0.2)
        assert p.requested and p.signum == signal.SIGINT
        print("ready", flush=True)
        r, w = os.pipe()
        os.read(r, 1)  # blocked in C for good, as in a collective whose peer is gone
    """
)


def test_a_later_signal_exits_at_once_even_from_a_blocked_main_thread(tmp_path):
    script = tmp_path / "watcher.py"
    script.write_text(WATCHER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(pre.FORWARDED_WITHIN_S + 0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert "second SIGTERM: exiting now, without saving" in proc.stderr.read()


USR1_SCRIPT = textwrap.dedent(
    """
    import os, signal, time
    from llmasr.train import preemption as pre

    with pre.Preemption() as p:
        p.arm()
        os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's --signal=USR1@SECONDS notice
        time.sleep(0.2)
        assert p.requested and p.signum == signal.SIGUSR1
    print(pre.exit_status(signal.SIGUSR1), flush=True)
    """
)


def test_sigusr1_requests_a_stop_as_sigterm_does(tmp_path):
    """A scheduler's SIGUSR1 notice (SLURM --signal=USR1@SECONDS) stops the run with a checkpoint; its default
    action had killed the rank on the spot, saving nothing."""
    script = tmp_path / "usr1.py"
    script.write_text(USR1_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, str(128 + signal.SIGUSR1)), proc.stderr


def test_agreed_stop_without_a_group_is_the_local_request():
    import torch

    p = pre.Preemption()
    assert p.agreed_stop(torch.device("cpu")) is None
    p.signum = signal.SIGTERM
    assert p.agreed_stop(torch.device("cpu")) == signal.SIGTERM
    assert pre.exit_status(signal.SIGINT) == 130


def test_after_training_a_signal_interrupts_at_once_and_says_so():
    with pre.Preemption() as p:
        p.arm()
        p.arm(False)  # the loop ended: the final summary is being written
        with pytest.raises(pre.Interrupted) as err:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert err.value.signum == signal.SIGTERM and err.value.when == "after training ended"


def test_a_start_up_signal_python_dropped_inside_a_finalizer_stops_the_run_when_training_would_start():
    """The start-up signal's Interrupted raised inside a __del__ (a regex or a tokenizer freed just then), where
    Python prints "Exception ignored" and goes on: the rank trained on, against "stops at once, nothing to save"."""

    class Freed:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.5)  # the handler runs here, in the finalizer

    with pre.Preemption() as p:
        Freed()  # freed at once: the Interrupted goes to sys.unraisablehook, not to this frame
        assert p.signum == signal.SIGUSR1
        with pytest.raises(pre.Interrupted) as err:
            p.arm()
    assert err.value.signum == signal.SIGUSR1 and err.value.when == "before training started"


def test_the_launchers_copy_after_a_saved_stop_is_ignored():
    """Ctrl-C reaches the rank during an update: the loop saves and ends (disarmed); the launcher's forwarded
    SIGTERM arrives within FORWARDED_WITHIN_S. It is the same request, already honoured: it had raised Interrupted
    in the clean-up, and the command said "after training ended (nothing to save)" and exited 143, not 130."""
    try:
        with pre.Preemption() as p:
            p.arm()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler and the watcher have it
            p.arm(False)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
    except pre.Interrupted as err:
        pytest.fail(f"the forwarded copy raised {err!r}")
    assert p.signum == signal.SIGINT


def test_a_stop_saves_before_it_would_validate(tiny_llm_dir, corpus, tmp_path, monkeypatch):
    """SIGTERM during update 2 of a run that validates every 2 updates: it saves at once, without the validation
    pass (a real one could outlast the scheduler's grace period and the rank be killed unsaved)."""
    from llmasr.train import trainer

    validated = []
    original = trainer.validate_by_set  # the trainer's validation pass
    monkeypatch.setattr(trainer, "validate_by_set", lambda *a, **k: validated.append(1) or original(*a, **k))
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], valid=[corpus], output_dir=tmp_path / "run", epochs=2,
                            grad_accum=1, valid_every_updates=2)  # fmt: skip
    signal_at(monkeypatch, 2, signal.SIGTERM)
    cut = train(load_recipe(data=data), "zero0")
    assert cut["interrupted"] and [h["update"] for h in cut["history"]] == [1, 2]
    assert validated == [] and ck.latest(tmp_path / "run" / "checkpoints") == ck.tag_for(2)


@pytest.mark.parametrize("at", [2, 3], ids=["due-mid-epoch", "epoch-end"])
def test_a_validation_a_stop_put_off_is_run_by_the_resume(tiny_llm_dir, corpus, tmp_path, monkeypatch, at):
    """A stop saves before a due validation (the grace period may not hold one); the checkpoint says it is owed, and
    the resume runs it first: its metrics are the uninterrupted run's at that update, logged, and recorded in that
    checkpoint's meta and the best list (they had been missing for good, and the checkpoint never ranked)."""

    def recipe(run):
        return load_recipe(data=tiny_recipe_dict(
            tiny_llm_dir, train=[corpus], valid=[corpus], output_dir=run, epochs=2, grad_accum=2,
            valid_every_updates=2, best_k=10, keep_last=0,
        ))  # fmt: skip

    whole = train(recipe(tmp_path / "a"), "zero0")
    want = ck.read_meta(tmp_path / "a" / "checkpoints" / ck.tag_for(at)).metrics
    assert want  # validated at `at` (every 2 updates; 3 is the first epoch's end)
    with monkeypatch.context() as m:
        signal_at(m, at, signal.SIGTERM)
        assert train(recipe(tmp_path / "b"), "zero0")["interrupted"]
    ckpts = tmp_path / "b" / "checkpoints"
    assert ck.read_meta(ckpts / ck.tag_for(at)).metrics == {}
    assert f"valid update={at} " not in (tmp_path / "b" / "train.log").read_text()

    rest = train(recipe(tmp_path / "b"), "zero0", resume="latest")
    got = ck.read_meta(ckpts / ck.tag_for(at)).metrics
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5, atol=1e-6)
    assert ck.tag_for(at) in [b["tag"] for b in ck.read_best(ckpts)]
    assert f"valid update={at} " in (tmp_path / "b" / "train.log").read_text()
    assert rest["metrics"]["loss"] == pytest.approx(whole["metrics"]["loss"], abs=1e-5)


@pytest.mark.parametrize(
    ("at", "overrides"), [(6, []), (4, ["train.max_updates=4"])], ids=["last-epoch", "max-updates"]
)
def test_a_stop_during_the_last_update_leaves_the_run_to_finish_its_validation(
    tiny_llm_dir, corpus, tmp_path, monkeypatch, at, overrides
):
    """SIGTERM during the run's last update: the checkpoint is saved without the final validation, so the run is not
    over. It had ended as finished (exit status 0, no stop line) and the last checkpoint never ranked; now it stops
    as any stop does, and the resume runs that validation and ranks the checkpoint."""
    run = tmp_path / "run"

    def recipe():
        data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], valid=[corpus], output_dir=run, epochs=2, grad_accum=2,
                                best_k=10, keep_last=0)  # fmt: skip
        return load_recipe(data=data, overrides=overrides)

    with monkeypatch.context() as m:
        signal_at(m, at, signal.SIGTERM)
        cut = train(recipe(), "zero0")
    assert cut["interrupted"] and cut["signal"] == signal.SIGTERM
    assert f"stopped by SIGTERM after update {at}" in (run / "train.log").read_text()
    ckpts = run / "checkpoints"
    assert ck.read_meta(ckpts / ck.tag_for(at)).metrics == {}
    rest = train(recipe(), "zero0", resume="latest")
    assert rest["history"] == [] and rest["metrics"]
    assert ck.read_meta(ckpts / ck.tag_for(at)).metrics == rest["metrics"]
    assert ck.tag_for(at) in [b["tag"] for b in ck.read_best(ckpts)]


def test_a_validation_put_off_in_another_run_folder_is_run_and_left_out_of_it(
    tiny_llm_dir, corpus, tmp_path, monkeypatch
):
    """A stopped run's checkpoint continued in another folder: the resume runs the validation the stop put off, and
    records it nowhere (that folder is another run's, and this one holds no checkpoint of the update). It had
    looked for the checkpoint in this run's folder after validating and failed there."""

    def recipe(run):
        return load_recipe(data=tiny_recipe_dict(tiny_llm_dir, train=[corpus], valid=[corpus], output_dir=run,
                                                 epochs=2, grad_accum=2, valid_every_updates=2))  # fmt: skip

    with monkeypatch.context() as m:
        signal_at(m, 2, signal.SIGTERM)
        assert train(recipe(tmp_path / "b"), "zero0")["interrupted"]
    source = tmp_path / "b" / "checkpoints" / ck.tag_for(2)
    meta = (source / ck.META).read_bytes()
    rest = train(recipe(tmp_path / "c"), "zero0", resume=str(source))
    assert [h["update"] for h in rest["history"]] == [3, 4, 5, 6]
    assert "valid update=2 " in (tmp_path / "c" / "train.log").read_text()
    assert (source / ck.META).read_bytes() == meta
    assert not (tmp_path / "c" / "checkpoints" / ck.tag_for(2)).exists()


@pytest.mark.parametrize(("at", "every"), [(2, 2), (3, 0)], ids=["mid-epoch", "epoch-end"])
def test_a_stop_during_a_validation_pass_abandons_it_and_saves(tiny_llm_dir, corpus, tmp_path, monkeypatch, at, every):
    """SIGTERM while the validation after update `at` scores its first batch: the pass is abandoned, the update saved
    with the validation owed, and the resume runs it. The pass had run to its end, then another update and a second
    save (a real pass could outlast the scheduler's grace period: the ranks killed unsaved)."""
    from llmasr.train import validate as validate_module

    run = tmp_path / "run"

    def recipe():
        data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], valid=[corpus], output_dir=run, epochs=2, grad_accum=2,
                                valid_every_updates=every, best_k=10, keep_last=0)  # fmt: skip
        data["data"]["valid_max_utts"] = 20  # several batches
        return load_recipe(data=data)

    scored = []
    original = validate_module._batch_sums

    def score_and_signal(*args, **kwargs):
        scored.append(1)
        if len(scored) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(validate_module, "_batch_sums", score_and_signal)
        cut = train(recipe(), "zero0")
    assert cut["interrupted"] and cut["signal"] == signal.SIGTERM
    assert [h["update"] for h in cut["history"]] == list(range(1, at + 1)) and len(scored) == 1
    ckpts = run / "checkpoints"
    assert ck.latest(ckpts) == ck.tag_for(at) and ck.read_meta(ckpts / ck.tag_for(at)).metrics == {}
    log = (run / "train.log").read_text()
    assert f"valid update={at} " not in log and f"stopped by SIGTERM after update {at}" in log

    train(recipe(), "zero0", resume="latest")
    assert f"valid update={at} " in (run / "train.log").read_text()
    assert ck.read_meta(ckpts / ck.tag_for(at)).metrics


@pytest.mark.parametrize(("at", "every", "saved_epoch"), [(1, 1, 0), (3, 0, 1)], ids=["mid-epoch", "epoch-end"])
def test_a_stop_during_a_save_stops_after_it(tiny_llm_dir, corpus, tmp_path, monkeypatch, at, every, saved_epoch):
    """SIGTERM while update `at` is being saved: that checkpoint is the stop's, and the run exits after it. It had
    trained another update and saved again, a second save the scheduler's grace period may not hold."""
    from llmasr.train.run_checkpoints import RunCheckpoints

    original = RunCheckpoints.save

    def signal_and_save(self, *args, **kwargs):
        if self.engine.global_steps == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunCheckpoints, "save", signal_and_save)
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run", epochs=2, grad_accum=2,
                            save_every_updates=every, keep_last=0)  # fmt: skip
    cut = train(load_recipe(data=data), "zero0")
    assert cut["interrupted"] and cut["signal"] == signal.SIGTERM
    assert [h["update"] for h in cut["history"]] == list(range(1, at + 1))
    ckpts = tmp_path / "run" / "checkpoints"
    assert ck.list_tags(ckpts) == [ck.tag_for(at)] and ck.latest(ckpts) == ck.tag_for(at)
    assert ck.read_meta(ckpts / ck.tag_for(at)).epoch == saved_epoch
