"""DataLoader workers started by llmasr ignore SIGINT and a SIGTERM from anyone but their main process (a Ctrl-C or
a scheduler's SIGTERM reaches the whole job; the trainer still needs its batches to finish the update it saves
after), and still exit cleanly when the main process itself terminates them."""

import os
import signal
import subprocess
import time

import torch
from torch.utils.data import DataLoader, Dataset

from llmasr.data.loader import worker_init


class Numbers(Dataset):
    def __len__(self):
        return 400

    def __getitem__(self, i):
        time.sleep(0.01)
        return torch.tensor(i)


def test_workers_leave_stop_signals_to_the_main_process():
    it = iter(DataLoader(Numbers(), batch_size=2, num_workers=2, worker_init_fn=worker_init))
    assert next(it).tolist() == [0, 1]
    first, second = [w.pid for w in it._workers]
    subprocess.run(["kill", "-TERM", str(first)], check=True)  # from another process: the launcher, the scheduler
    subprocess.run(["kill", "-INT", str(second)], check=True)  # the terminal's Ctrl-C
    time.sleep(1.0)
    assert [w.is_alive() for w in it._workers] == [True, True]
    assert [next(it).tolist() for _ in range(4)] == [[2, 3], [4, 5], [6, 7], [8, 9]]  # no batch lost, no error

    os.kill(first, signal.SIGTERM)  # from the main process, as torch ends a worker: a clean exit
    it._workers[0].join(timeout=10)
    assert it._workers[0].exitcode == 0
    del it
