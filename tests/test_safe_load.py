"""Weights-only loading: a checkpoint in torch's legacy (non-zip) format is refused or read like a zip one, with a
CheckpointError that names the file, never a bare error from the lister of pickled globals."""

from __future__ import annotations

import os

import pytest
import torch

from llmasr.safe_load import CheckpointError, load_weights_only, unsafe_globals


class _RunsCode:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_a_legacy_format_file_is_refused_or_read_naming_it(tmp_path):
    flag = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _RunsCode(flag)}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=rf"{evil}: refused: it pickles \S*system"):
        load_weights_only(evil)
    assert not flag.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.arange(3.0)}, plain, _use_new_zipfile_serialization=False)
    assert unsafe_globals(plain) == []  # the lister reads zip archives only: it had raised a bare ValueError
    assert torch.equal(load_weights_only(plain)["w"], torch.arange(3.0))
