"""Reading checkpoint files (llmasr.models.state_dict): weights-only torch files and safetensors, their tensors or
only their shapes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from llmasr.models.state_dict import CheckpointMismatchError, read_safetensors, torch_load, unwrap_state_dict


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


@pytest.fixture(scope="module")
def model_states(tmp_path_factory):
    """(the weights, the mp_rank_00_model_states.pt a real DeepSpeed engine (ZeRO-0) saved of them with FunASR's
    client state)."""
    from llmasr.testing.tiny_deepspeed import deepspeed_save

    root = tmp_path_factory.mktemp("ds_states")
    state = {"encoder.w": torch.randn(4, 3), "encoder.b": torch.randn(4), "encoder.n": torch.arange(3)}
    torch.save(state, root / "plain.pt")
    return state, deepspeed_save(root / "plain.pt", root / "out", "model.pt", 0) / "mp_rank_00_model_states.pt"


def test_deepspeed_model_states_give_their_module_weights_else_the_client_state_dict(model_states, tmp_path):
    state, path = model_states
    got = unwrap_state_dict(torch_load(path), source=str(path))
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)
    saved = torch.load(path, weights_only=True)
    del saved["module"]
    torch.save(saved, tmp_path / "client_only.pt")
    got = unwrap_state_dict(torch_load(tmp_path / "client_only.pt"), source="client_only")
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)


def test_deepspeed_model_states_with_deepspeeds_loss_scaler_load_weights_only(model_states, tmp_path):
    """An fp16 optimizer's state may pickle DeepSpeed's loss scaler, a type llmasr.safe_load allows: it was refused
    as not weights-only."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    state, path = model_states
    saved = torch.load(path, weights_only=True)
    saved["optimizer"] = {
        "loss_scaler": DynamicLossScaler(2.0**16, 1000, 1.0, 2, False),
        "state": {},
        "param_groups": [],
    }
    torch.save(saved, tmp_path / "fp16.pt")
    got = unwrap_state_dict(torch_load(tmp_path / "fp16.pt"), source="fp16")
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_model_states_file_pickling_other_objects_is_refused_naming_them(model_states, tmp_path):
    """A trainer that saves its argparse arguments in the client state: refused, the global named, never unpickled."""
    import argparse

    _, path = model_states
    saved = torch.load(path, weights_only=True)
    saved["args"] = argparse.Namespace(lr=1.0)
    torch.save(saved, tmp_path / "args.pt")
    with pytest.raises(
        CheckpointMismatchError, match=rf"^{tmp_path / 'args.pt'}: refused: it pickles argparse\.Namespace, which is"
    ):
        torch_load(tmp_path / "args.pt")
