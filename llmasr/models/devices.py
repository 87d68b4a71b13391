"""The device a model is asked to run on, checked against this machine before anything loads (decoding, Transcriber,
an exported model loaded from Python), and device values read back to the host at once (training's logged figures)."""

from __future__ import annotations

import torch


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device when this machine has it; ValueError saying what it has instead (before a model
    moves there, not as torch's assertion at the first tensor)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, ...): {err}") from None
    if device.type not in ("cuda", "cpu"):  # mps, xpu, ...: torch names them whether or not this build has them
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            why = str(err).splitlines()[0].split(". ")[0]  # torch's first sentence, not its page of advice
            raise ValueError(f"device {device}: not available on this machine ({why}); use cpu") from None
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ValueError(f"device {device}: {why}; use cpu")
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def host_values(values: list) -> list:
    """`values` with each device tensor among them (0-dim: a float; n-dim: a flat list of floats) read back in one
    transfer; other values pass through. Each float() or .tolist() of its own makes the host wait for the device
    once more, and the host cannot queue the next kernels while it waits."""
    tensors = [v.detach().reshape(-1).double() for v in values if torch.is_tensor(v)]
    flat = torch.cat(tensors).tolist() if tensors else []
    out, at = [], 0
    for v in values:
        if torch.is_tensor(v):
            out.append(flat[at] if v.dim() == 0 else flat[at : at + v.numel()])
            at += v.numel()
        else:
            out.append(v)
    return out
