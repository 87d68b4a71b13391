"""run_window on the real tiny SpeechLLM under DeepSpeed: what one accumulation window reads back from the device.

On a GPU every read of a device tensor (float(t), int(t), .item(), .tolist(), bool(t), nonzero) makes the host wait
for all queued kernels: a read after each micro batch keeps the host from queueing the next micro batch while the
device runs the current one. On this CPU the device is simulated: the model's tensors and the batches
TrainEngine.to_device makes are marked, every op's output made from a marked tensor is marked, and the reads of
marked tensors are counted where they are made."""

import dataclasses
import traceback
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import llmasr
from llmasr.config_io import from_dict
from llmasr.testing.tiny_recipe import random_batch, tiny_model_section
from llmasr.train.config import OptimConfig, TrainConfig

TARGETS = ["zero one two", "three four", "five six seven eight", "nine", "one one", "two three four five"]
aten = torch.ops.aten
SYNCS = (aten._local_scalar_dense, aten.nonzero)
TRAINING = ("/llmasr/train/", "/llmasr/data/", "/llmasr/models/devices.py")  # the training loop's own code and its
# one read back (llmasr.models.devices.host_values), not the model's, not DeepSpeed's


def _on_device(t) -> bool:
    return torch.is_tensor(t) and getattr(t, "_on_device", False)


def _mark(tree) -> None:
    for t in pytree.tree_leaves(tree):
        if torch.is_tensor(t):
            t._on_device = True


def _where() -> str:
    """The innermost frame outside torch and this file: the code that asked for the read."""
    for frame in reversed(traceback.extract_stack()):
        name = frame.filename.replace("\\", "/")
        if "/torch/" not in name and not name.endswith("test_window.py"):
            return f"{name.split('/site-packages/')[-1]}:{frame.name}"
    return "?"


class DeviceReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        from_device = any(_on_device(t) for t in pytree.tree_leaves((args, kwargs)))
        if from_device and func.overloadpacket in SYNCS:
            self.reads[_where()] += 1
        out = func(*args, **kwargs)
        if from_device:
            _mark(out)
        return out


class ListReads(TorchFunctionMode):  # tolist reads a CPU tensor without an aten op
    def __init__(self, reads: Counter):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "tolist" and _on_device(args[0]):
            self.reads[_where()] += 1
        return func(*args, **(kwargs or {}))


def window_reads(llm_dir, k: int) -> Counter:
    """The device reads of one window of `k` micro batches (after one unmeasured window), by where they happen."""
    from llmasr.train.ds_config import resolve_ds_config
    from llmasr.train.engine import TrainEngine
    from llmasr.train.flops import FlopCounter
    from llmasr.train.param_groups import build_param_groups
    from llmasr.train.process_group import init_distributed
    from llmasr.train.schedulers import build_group_schedules
    from llmasr.train.window import run_window

    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(llm_dir, ctc_weight=0.3))
    model.train()
    full = random_batch(model, TARGETS, seed=3)
    batches = [full.select([i]) for i in range(k)]
    optim = from_dict(OptimConfig, {"scheduler": {"type": "constant"}})
    ds = resolve_ds_config("zero2", TrainConfig(grad_accum=k, precision="fp32"), world_size=1)
    groups = build_param_groups(model, optim)
    te = TrainEngine(model, groups, build_group_schedules(groups, optim, 100), ds, init_distributed().device)
    counter = FlopCounter(te.module)
    run_window(te, batches, world_size=1, counter=counter)
    _mark([*te.module.parameters(), *te.module.buffers()])

    real = te.to_device

    def to_device(batch):  # copies, so that the host batch's own tensors stay unmarked
        moved = real(batch)
        copies = {f.name: getattr(moved, f.name).clone() for f in dataclasses.fields(moved)
                  if torch.is_tensor(getattr(moved, f.name))}  # fmt: skip
        _mark(copies)
        return dataclasses.replace(moved, **copies)

    te.to_device = to_device
    reads = DeviceReads()
    with ListReads(reads.reads), reads:
        stats = run_window(te, batches, world_size=1, counter=counter)
    assert stats["n_utts"] == k and stats["count"].flops > 0
    return reads.reads


@pytest.mark.parametrize("k", [2, 3])
def test_a_window_reads_back_from_the_device_once(tiny_llm_dir, k):
    """The window's losses, token counts, accuracy, CTC-unaligned rows and FLOP counts stay on the device until the
    window has run, then come back in one read (each micro batch had read back its own, several times)."""
    reads = window_reads(tiny_llm_dir, k)
    own = {where: n for where, n in reads.items() if any(part in where for part in TRAINING)}
    own.update({where: n for where, n in reads.items() if where.endswith("speech_llm.py:forward")})
    assert sum(own.values()) == 1, own
    assert sum(reads.values()) > 1  # the model's own reads (data-dependent shapes) are seen: the marking works
