"""A FunASR directory whose model.pt FunASR's DeepSpeed trainer saved as a DeepSpeed checkpoint folder, written by a
real DeepSpeed engine (llmasr.testing.tiny_deepspeed): ZeRO 0-2 folders load as they are, ZeRO-3's partition
placeholders are refused with the way to gather them."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.funasr_dir import load_funasr_encoder
from llmasr.models.state_dict import CheckpointMismatchError
from llmasr.testing.tiny_funasr import as_deepspeed_checkpoint, copy_model_dir, tiny_sanm_conf, write_funasr_dir


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Paraformer directory, its weights, and copies whose model.pt DeepSpeed saved under ZeRO 2 and 3."""
    root = tmp_path_factory.mktemp("ds_folders")
    plain = write_funasr_dir(root / "plain", encoder_conf=tiny_sanm_conf(), seed=5)
    out = {"plain": plain, "weights": torch.load(plain / "model.pt", weights_only=True)}
    for stage in (2, 3):
        out[stage] = copy_model_dir(plain, root / f"zero{stage}")
        as_deepspeed_checkpoint(out[stage], stage)
    return out


def test_the_encoder_loads_from_a_zero2_folder_as_from_the_file(saved, caplog):
    """It was refused as 'a directory, not a weights file', asking for zero_to_fp32 where the weights are whole."""
    d = saved[2]
    assert (d / "model.pt" / "mp_rank_00_model_states.pt").is_file()
    with caplog.at_level(logging.INFO, logger="llmasr.models.ds_checkpoint"):
        encoder, frontend = load_funasr_encoder(d)
    assert frontend.cmvn_file == str(d.resolve() / "am.mvn")
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, saved["weights"]["encoder." + key]), key
    said = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith(f"{d.resolve()}/model.pt/mp_rank_00_model_states.pt: a DeepSpeed checkpoint (ZeRO stage 2")
        and "read its `module` weights" in m
        for m in said
    ), said


def test_llmasr_check_reads_a_zero2_folder_too(saved):
    """`llmasr check` builds on the meta device and reads only the shapes (a memory-mapped load)."""
    with torch.device("meta"):
        encoder, _ = load_funasr_encoder(saved[2], shapes_only=True)
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items()} == {
        k.removeprefix("encoder."): tuple(v.shape) for k, v in saved["weights"].items() if k.startswith("encoder.")
    }


def test_a_zero3_folder_is_refused_naming_it_and_zero_to_fp32(saved):
    d = saved[3]
    with pytest.raises(
        ConfigError,
        match=rf"^{d.resolve()}/model\.pt: a directory, not a weights file: FunASR's DeepSpeed trainer.* It is a "
        r"ZeRO-3 checkpoint \(zero_pp_rank_0_mp_rank_00_model_states\.pt\): its model states hold partition "
        r"placeholders.*zero_to_fp32 \(tag model\.pt\)",
    ):
        load_funasr_encoder(d)


def test_a_zero3_model_states_file_named_by_init_param_is_refused_naming_the_folder(saved, tmp_path):
    """FunASR's AutoModel is told init_param=.../model.pt/<file>: for ZeRO-3's file the placeholders had been read
    as weights and reported as a tokens.json from another model."""
    d = copy_model_dir(saved["plain"], tmp_path / "d")
    (d / "model.pt").unlink()
    folder = d / "model.pt"
    folder.mkdir()
    for f in (saved[3] / "model.pt").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    metas = {
        "init_param": "model.pt/zero_pp_rank_0_mp_rank_00_model_states.pt",
        "frontend_conf": {"cmvn_file": "am.mvn"},
    }
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": metas}), encoding="utf-8")
    with pytest.raises(
        CheckpointMismatchError,
        match=rf"zero_pp_rank_0_mp_rank_00_model_states\.pt: a DeepSpeed ZeRO-3 checkpoint's partition placeholders, "
        rf"not weights: (\d+) of its \1 tensors are empty \(e\.g\. encoder\.\S+: \[0\], \[\d+(, \d+)*\] in the "
        rf"model\); the weights are partitioned in {folder.resolve()}'s \*_optim_states\.pt files\. .*zero_to_fp32 "
        r"\(tag model\.pt\)",
    ):
        load_funasr_encoder(d)


def test_an_init_from_naming_the_folder_reads_it_as_the_zoo_loaders_do(saved):
    """model.encoder/adaptor/ctc.init_from naming a FunASR model.pt its DeepSpeed trainer saved had been refused as
    'file not found' while the path is there; a ZeRO 0-2 folder now gives its weights, ZeRO-3 names zero_to_fp32."""
    from llmasr.models.builder import read_weights

    state = read_weights(str(saved[2] / "model.pt"), "encoder.", "model.encoder")
    want = {k.removeprefix("encoder."): v for k, v in saved["weights"].items() if k.startswith("encoder.")}
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    folder = saved[3] / "model.pt"
    with pytest.raises(
        ConfigError,
        match=rf"^model\.adaptor\.init_from: {folder}: a directory, not a weights file: .* It is a ZeRO-3 checkpoint "
        r".*zero_to_fp32 \(tag model\.pt\).* init_from takes one weights file",
    ):
        read_weights(str(folder), "", "model.adaptor")


def test_an_init_from_folder_is_fingerprinted_by_the_weights_read(saved, tmp_path):
    """Resume and export compare the init_from weights: a folder fingerprinted as 'missing' let changed weights pass."""
    from llmasr.models.fingerprint import file_fingerprint

    d = copy_model_dir(saved["plain"], tmp_path / "d")
    (d / "model.pt").unlink()
    (d / "model.pt").mkdir()
    inner = d / "model.pt" / "mp_rank_00_model_states.pt"
    inner.write_bytes((saved[2] / "model.pt" / "mp_rank_00_model_states.pt").read_bytes())
    before = file_fingerprint(d / "model.pt")
    assert list(before["files"]) == ["model.pt/mp_rank_00_model_states.pt"]
    obj = torch.load(inner, weights_only=False)
    key = next(iter(obj["module"]))
    obj["module"][key] = obj["module"][key] + 1  # the weights the encoder reads, changed
    torch.save(obj, inner)
    assert file_fingerprint(d / "model.pt") != before
