import torch
from safetensors.torch import save_file

from llmasr.models.config import ModelConfig
from llmasr.models.fingerprint import base_fingerprint, fingerprint_differences


def model_config(tmp_path, **init) -> ModelConfig:
    llm = tmp_path / "llm"
    llm.mkdir(exist_ok=True)
    (llm / "config.json").write_text('{"model_type": "qwen2"}')
    (llm / "model.safetensors").write_bytes(b"x" * 10)
    cfg = ModelConfig()
    cfg.llm.path = str(llm)
    cfg.adaptor.init_from = init.get("adaptor")
    cfg.ctc.init_from = init.get("ctc")
    return cfg


def test_directories_are_identified_by_config_hash_and_weight_size(tmp_path):
    cfg = model_config(tmp_path)
    before = base_fingerprint(cfg)
    assert set(before) == {"llm", "encoder"} and before["encoder"] is None  # no init_from: no extra keys
    (tmp_path / "llm" / "model.safetensors").write_bytes(b"x" * 11)
    assert fingerprint_differences(before, base_fingerprint(cfg)) == [
        "llm/model.safetensors: trained on 10 bytes, now 11 bytes"
    ]


def test_init_from_files_of_adaptor_and_ctc_are_fingerprinted(tmp_path):
    adaptor, ctc = tmp_path / "adaptor.safetensors", tmp_path / "ctc.pt"
    save_file({"w": torch.zeros(2, 2)}, str(adaptor))
    torch.save({"ctc_lo.weight": torch.zeros(3, 2)}, ctc)
    cfg = model_config(tmp_path, adaptor=str(adaptor), ctc=str(ctc))
    before = base_fingerprint(cfg)
    assert fingerprint_differences(before, base_fingerprint(cfg)) == []
    # same size, other values: a frozen adaptor read again from this file would not be the trained one
    save_file({"w": torch.ones(2, 2)}, str(adaptor))
    diffs = fingerprint_differences(before, base_fingerprint(cfg))
    assert len(diffs) == 1 and diffs[0].startswith("adaptor/adaptor.safetensors: trained on ")
    ctc.unlink()
    assert f"ctc: not found: {ctc}" in fingerprint_differences(before, base_fingerprint(cfg))
