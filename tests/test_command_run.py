"""llmasr.command_run: a command's exit status and the one line it prints, who prints it under a launcher, where
tracebacks go, the line a stop signal gives on every rank, and a stdout whose reader left."""

import os

import pytest

from llmasr import command_run, errors
from llmasr.config_io import ConfigError
from llmasr.data.bad_data import TooMuchBadData
from llmasr.train.preemption import Interrupted


def fail_with(err):
    def main(argv):
        raise err

    return main


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_0_reports_what_every_rank_has(monkeypatch, capsys, rank):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv(errors.DEBUG_ENV, "")
    assert command_run.run("llmasr train", fail_with(ConfigError("data.train: no training manifest given")), []) == 2
    expected = "llmasr train: error: data.train: no training manifest given\n" if rank == "0" else ""
    assert capsys.readouterr().err == expected

    own = RuntimeError("CUDA out of memory")
    errors.rank_specific(own, int(rank))  # raised inside the training loop: maybe this rank's alone
    assert command_run.run("llmasr train", fail_with(own), []) == 1
    err = capsys.readouterr().err
    prefix = "llmasr train: error on rank 1" if rank == "1" else "llmasr train: error"
    assert err.startswith(f"{prefix}: RuntimeError: CUDA out of memory")
    assert "LLMASR_DEBUG=1" in err and "Traceback" not in err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_an_error_every_rank_raised_together_is_rank_0s_to_report(monkeypatch, capsys, rank):
    """Validation's refusal on the ranks' summed bad data: every rank raises it inside the training loop, which marks
    its errors as maybe one rank's; each rank had printed it."""
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv(errors.DEBUG_ENV, "")
    together = TooMuchBadData("valid: too much bad data: 9 of 29 items")
    together.every_rank = True
    errors.rank_specific(together, int(rank))
    assert command_run.run("llmasr train", fail_with(together), []) == 2
    expected = "llmasr train: error: valid: too much bad data: 9 of 29 items\n" if rank == "0" else ""
    assert capsys.readouterr().err == expected


def test_a_rank_whose_peer_left_does_not_report_that_as_the_error(monkeypatch, capsys, tmp_path):
    """Rank 0 waiting in a collective when rank 1 fails (a file its node lacks) gets gloo's 'Connection closed by
    peer': that is rank 1's error, which rank 1 reports; rank 0 says only that another rank left (it had printed the
    gloo error as the run's, beside rank 1's)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(errors, "_store", lambda: object())  # in a process group
    monkeypatch.setattr(errors, "PEER_EXIT_WAIT_S", 0.0)
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:10888")
    log = tmp_path / "train.log"
    # the run's log may hold a stop signal's "saving a checkpoint" above this: it says no save followed
    log.write_text("SIGTERM received: finishing the current update, then saving a checkpoint and exiting\n")

    def in_run(argv):
        errors.traceback_to(log)
        fail_with(gone)(argv)

    assert command_run.run("llmasr train", in_run, []) == 1
    assert "another rank left the run first" in log.read_text() and "nothing was saved" in log.read_text()
    err = capsys.readouterr().err
    assert "llmasr train: error" not in err
    assert err == (
        "llmasr train: rank 0 stopped: another rank left the run first (its message, if it gave one, says why); "
        "nothing was saved on the way out\n"
    )
    monkeypatch.setattr(errors, "_store", lambda: None)  # outside a process group it is the error itself
    command_run.run("llmasr train", fail_with(gone), [])
    assert capsys.readouterr().err.startswith("llmasr train: error: RuntimeError: [gloo")


def test_tracebacks_go_to_the_registered_log_and_with_debug_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(errors.DEBUG_ENV, "")
    log = tmp_path / "train.log"

    def main(argv):
        errors.traceback_to(log)
        raise KeyError("encoder.weight")

    assert command_run.run("llmasr train", main, []) == 1
    assert "Traceback" in log.read_text() and "KeyError: 'encoder.weight'" in log.read_text()
    err = capsys.readouterr().err
    assert f"(the traceback: in {log})" in err and "Traceback" not in err
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    assert command_run.run("llmasr export", fail_with(KeyError("x")), []) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_stop_signal_outside_training_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    assert command_run.run("llmasr train", fail_with(Interrupted(15)), []) == 143
    assert capsys.readouterr().err == "llmasr train: stopped by SIGTERM before training started (nothing to save)\n"
    assert command_run.run("llmasr decode", fail_with(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "llmasr decode: stopped by SIGINT\n"
    monkeypatch.setenv("RANK", "1")  # a launcher's rank 1, stopped as training starts: it had said nothing
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert command_run.run("llmasr train", fail_with(Interrupted(15)), []) == 143
    assert (
        capsys.readouterr().err == "llmasr train: rank 1 stopped by SIGTERM before training started (nothing to save)\n"
    )


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_on_any_rank_is_one_line_naming_it(tmp_path, name):
    """A launcher's rank 1 stopped by a signal where its command installed no handler (the model loading): it ended
    without a word, by the signal; it now says so with its rank, and exits 128 + N as a shell reports it."""
    import signal
    import subprocess
    import sys

    stop = f"lambda argv: os.kill(os.getpid(), signal.{name})"
    script = (
        f"import os, signal, sys\nfrom llmasr import command_run\n"
        f"sys.exit(command_run.run('llmasr decode', {stop}, []))\n"
    )
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 128 + getattr(signal, name), done.stderr
    assert done.stderr == f"llmasr decode: rank 1 stopped by {name}\n"
    one = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=one, timeout=120)
    assert (done.returncode, done.stderr) == (128 + getattr(signal, name), f"llmasr decode: stopped by {name}\n")


def test_a_stop_signal_ends_a_rank_stuck_in_a_call_that_does_not_return(tmp_path):
    """A rank blocked in C++ (a rendezvous waiting for a rank 0 that never comes: RANK=1 left over in the shell, or a
    collective whose peer hangs) took no notice of SIGTERM once Python's handler stood in for the default action: it
    now ends STUCK_GRACE_S later, saying so."""
    import signal
    import subprocess
    import sys
    import time

    from llmasr.train.process_group import free_port

    script = (
        "import datetime, sys\n"
        "import llmasr.stop_watch as w\n"
        "w.STUCK_GRACE_S = 1.0\n"
        "from llmasr import command_run, errors\n"
        "def main(argv):\n"
        "    from torch.distributed import TCPStore\n"
        "    print('waiting', flush=True)\n"
        "    with errors.stop_signals_raise('while meeting rank 0'):\n"
        f"        TCPStore('127.0.0.1', {free_port()}, is_master=False, timeout=datetime.timedelta(seconds=120))\n"
        "sys.exit(command_run.run('llmasr decode', main, []))\n"
    )
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "TORCH_CPP_LOG_LEVEL": "FATAL"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline() == "waiting\n"
    time.sleep(1.0)  # into the store's connect: a signal before it is taken as anywhere else (the tests above)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)  # the store's own timeout: 120 s
    assert proc.returncode == 143, err
    assert err.endswith("llmasr decode: rank 1 stopped by SIGTERM while meeting rank 0, stuck in a call that did not "
                        "return within 1 s (nothing to save)\n"), err  # fmt: skip


def test_stdout_whose_reader_left_ends_the_command_quietly_as_sigpipe_would():
    """`llmasr transcribe ... | head -2`: head leaves after its lines, and the next line's write raised BrokenPipeError,
    reported as an error with the line it was raised at, exit status 1. The reader is gone, not the command at fault:
    it ends quietly with the shell's status for SIGPIPE (141), as a tool SIGPIPE stops ends."""
    import subprocess
    import sys

    program = (
        "import sys\nfrom llmasr import command_run\n"
        "def main(argv):\n"
        "    for i in range(10 ** 6):\n"
        "        sys.stdout.write(f'line {i}\\n')\n"
        "        sys.stdout.flush()\n"
        "sys.exit(command_run.run('llmasr transcribe', main, []))\n"
    )
    with subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout.readline() == b"line 0\n"
        proc.stdout.close()  # the reader leaves, as head does
        err = proc.stderr.read().decode()
    assert proc.returncode == 141 and err == ""
