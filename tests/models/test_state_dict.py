"""Reading checkpoint files (llmasr.models.state_dict): weights-only torch files and safetensors, their tensors or
only their shapes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from llmasr.models.state_dict import CheckpointMismatchError, read_safetensors, torch_load


def test_shapes_only_reads_meta_tensors_from_either_format(tmp_path):
    state = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    torch.save({"state_dict": state}, tmp_path / "model.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    save_file(state, str(tmp_path / "model.safetensors"))
    for got in (
        torch_load(tmp_path / "model.pt", shapes_only=True)["state_dict"],
        torch_load(tmp_path / "legacy.pt", shapes_only=True),
        read_safetensors(tmp_path / "model.safetensors", shapes_only=True),
    ):
        assert {k: (v.device.type, tuple(v.shape), v.dtype) for k, v in got.items()} == {
            "a.weight": ("meta", (3, 4), torch.float32),
            "b": ("meta", (5,), torch.int64),
        }
    assert list(read_safetensors(tmp_path / "model.safetensors", ["b"])) == ["b"]


def test_a_file_read_for_its_tensors_can_be_rewritten_while_they_live(tmp_path):
    """The real load holds no mapping of the file: rewriting it (a script that edits model.pt in place) cannot pull
    the tensors' pages away from under them (SIGBUS)."""
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(256, 256), "x": torch.randn(512)}, path)
    state = torch_load(path)
    state["extra"] = torch.zeros(2)
    torch.save(state, path)
    again = torch_load(path)
    assert torch.equal(again["w"], state["w"]) and torch.equal(again["x"], state["x"]) and "extra" in again


def test_unwrap_follows_funasrs_wrappers_in_its_order_and_names_what_is_not_a_tensor():
    from llmasr.models.state_dict import unwrap_state_dict

    weights = {"a.weight": torch.zeros(2)}
    # a trainer's checkpoint: FunASR's load_pretrained_model takes state_dict, then model (it had been refused)
    assert unwrap_state_dict({"state_dict": {"model": weights}, "epoch": 3}) is weights
    assert unwrap_state_dict({"model_state_dict": weights, "optimizer": {}}) is weights
    with pytest.raises(CheckpointMismatchError, match=r"f.pt: .* 1 of its 2 entries are not tensors: 'step' \(int\)"):
        unwrap_state_dict({"state_dict": {**weights, "step": 3}}, source="f.pt")
    with pytest.raises(CheckpointMismatchError, match="f.pt: holds a list, not a state dict"):
        unwrap_state_dict([weights], source="f.pt")
