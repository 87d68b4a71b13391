"""DataLoader workers started by llmasr ignore SIGINT, SIGUSR1 and a SIGTERM from anyone but their main process (a
Ctrl-C or a scheduler's SIGTERM reaches the whole job; the trainer still needs its batches to finish the update it
saves after), and still exit cleanly when the main process itself terminates them."""

import os
import signal
import subprocess
import threading
import time

import torch
from torch.utils.data import DataLoader, Dataset

from llmasr.data.worker_start import worker_init


class Numbers(Dataset):
    def __len__(self):
        return 400

    def __getitem__(self, i):
        time.sleep(0.01)
        return torch.tensor(i)


def test_workers_leave_stop_signals_to_the_main_process():
    it = iter(DataLoader(Numbers(), batch_size=2, num_workers=2, worker_init_fn=worker_init))
    # One batch from each worker: both have run their init (a plain DataLoader forks them with the signals open; a
    # signal before the init is test_a_stop_signal_before_the_worker_init_waits_for_it's case).
    assert [next(it).tolist() for _ in range(2)] == [[0, 1], [2, 3]]
    first, second = [w.pid for w in it._workers]
    subprocess.run(["kill", "-TERM", str(first)], check=True)  # from another process: the launcher, the scheduler
    subprocess.run(["kill", "-INT", str(second)], check=True)  # the terminal's Ctrl-C
    subprocess.run(["kill", "-USR1", str(second)], check=True)  # a scheduler's notice (SLURM --signal=USR1@T)
    time.sleep(1.0)
    assert [w.is_alive() for w in it._workers] == [True, True]
    assert [next(it).tolist() for _ in range(4)] == [[4, 5], [6, 7], [8, 9], [10, 11]]  # no batch lost, no error

    os.kill(first, signal.SIGTERM)  # from the main process, as torch ends a worker: a clean exit
    it._workers[0].join(timeout=10)
    assert it._workers[0].exitcode == 0
    del it


class Rows(list):  # a collated batch (the loader sets .duplicate on it); module level: workers pickle it
    duplicate = False


GO = {}  # the file slow_init waits for; set before the workers fork, so they inherit it


def slow_init(worker_id: int, **kwargs) -> None:
    """A worker still starting when the signal comes (a new epoch's, right after an update): its init waits until
    the test has signalled it, so that the signal surely comes first."""
    deadline = time.monotonic() + 60
    while not GO["file"].exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{GO['file']} never came")
        time.sleep(0.01)
    worker_init(worker_id, **kwargs)


def test_a_stop_signal_before_the_worker_init_waits_for_it(tmp_path, monkeypatch):
    """SpeechDataLoader forks its workers with the stop signals blocked, so a SIGTERM or SIGINT that reaches a worker
    before its init function has run is taken by that function's rules (ignored) instead of killing the worker."""
    import psutil

    from llmasr.data import speech_loader
    from llmasr.data.speech_loader import SpeechDataLoader

    class Batches:  # the batch_sampler interface SpeechDataLoader's __iter__ reads
        epoch, _resume = 0, None

        def __iter__(self):
            return iter([[2 * k, 2 * k + 1] for k in range(6)])

        def __len__(self):
            return 6

        def duplicate_steps(self):
            return frozenset()

        epoch_indices = None  # no weighted mix

    class Counted:
        static = []

        def new_epoch(self, visits=None): ...

        def advance(self, progress): ...

        def update(self, batch): ...

        def end_epoch(self): ...

    # SpeechDataLoader starts its workers with worker_init whatever worker_init_fn it is given: the test had slowed
    # a function it never called, and its signals came after the init (what the test above checks).
    monkeypatch.setattr(speech_loader, "worker_init", slow_init)
    loader = SpeechDataLoader(Numbers(), batch_sampler=Batches(), num_workers=2,
                              collate_fn=lambda items: Rows(int(i) for i in items))  # fmt: skip
    loader.bad_data = Counted()

    before = {p.pid for p in psutil.Process().children()}  # earlier tests may have left children of their own
    GO["file"] = tmp_path / "go"

    def signal_the_starting_workers():
        try:
            deadline, workers = time.monotonic() + 30, []
            while len(workers) < 2 and time.monotonic() < deadline:
                workers = [p for p in psutil.Process().children() if p.pid not in before]
                time.sleep(0.05)
            sent.extend(w.pid for w in workers)
            if len(workers) == 2:  # both wait in slow_init: before leave_signals_to_main
                subprocess.run(["kill", "-TERM", str(workers[0].pid)], check=True)
                subprocess.run(["kill", "-INT", str(workers[1].pid)], check=True)
        finally:
            GO["file"].touch()

    sent = []
    sender = threading.Thread(target=signal_the_starting_workers)
    sender.start()
    got = [list(b) for b in loader]  # the main thread starts the workers, as the trainer does
    sender.join()
    assert len(sent) == 2
    assert got == [[2 * k, 2 * k + 1] for k in range(6)]  # every batch, no dead worker


def test_a_python_with_the_fork_deadlock_is_named_before_a_multirank_run_with_workers():
    from llmasr.data.worker_start import fork_deadlock_warning

    text = fork_deadlock_warning(2, 1, version=(3, 11, 7, "final", 0))
    assert "Python 3.11.7" in text and "gh-112275" in text and "3.11.10" in text and "data.num_workers 0" in text
    assert fork_deadlock_warning(2, 1, version=(3, 11, 10, "final", 0)) is None  # fixed
    assert fork_deadlock_warning(2, 1, version=(3, 12, 0, "final", 0)) is None
    assert fork_deadlock_warning(1, 4, version=(3, 11, 7, "final", 0)) is None  # one rank: no collective threads
    assert fork_deadlock_warning(8, 0, version=(3, 11, 7, "final", 0)) is None  # no workers: no fork
    assert "3.10.15" in fork_deadlock_warning(4, 2, version=(3, 10, 12, "final", 0))
