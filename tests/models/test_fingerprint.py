import json

import pytest
import torch
from safetensors.torch import save_file

import llmasr.models.fingerprint as fp
from llmasr.models.config import ModelConfig
from llmasr.models.fingerprint import base_fingerprint, fingerprint_differences, weight_identity


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


def test_weights_are_identified_by_their_contents_not_their_size(tmp_path):
    cfg = model_config(tmp_path)
    before = base_fingerprint(cfg)
    assert set(before) == {"llm", "encoder"} and before["encoder"] is None  # no init_from: no extra keys
    (tmp_path / "llm" / "model.safetensors").write_bytes(b"y" * 10)  # same size, other weights
    (diff,) = fingerprint_differences(before, base_fingerprint(cfg))
    assert diff.startswith("llm/model.safetensors: trained on 10 bytes sha256:") and ", now 10 bytes sha256:" in diff
    # tokenizer and remote-code files count too
    (tmp_path / "llm" / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "llm" / "modeling_custom.py").write_text("x = 1\n")
    (tmp_path / "llm" / "README.md").write_text("not part of the model")
    assert fingerprint_differences(before, base_fingerprint(cfg)) == [
        f"llm/modeling_custom.py: trained on absent, now {base_fingerprint(cfg)['llm']['files']['modeling_custom.py']}"
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


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(64, 100, generator=g) for i in range(6)} | {"norm": torch.ones(7)}


@pytest.mark.parametrize("fmt", ["safetensors", "zip", "other"])
def test_large_files_are_sampled_per_tensor_and_catch_any_changed_tensor(tmp_path, monkeypatch, fmt):
    """Above the whole-file limit every tensor is sampled; changing any one tensor (same shapes, same size) shows."""
    monkeypatch.setattr(fp, "_HASH_LIMIT", 1024)
    monkeypatch.setattr(fp, "_SPAN", 4 * 4096)
    path = tmp_path / ("model.safetensors" if fmt == "safetensors" else "model.bin")

    def write(state):
        if fmt == "safetensors":
            save_file(state, str(path))
        elif fmt == "zip":
            torch.save(state, path)
        else:  # a file without a tensor index (raw bytes): sampled every _SPAN bytes
            path.write_bytes(b"".join(t.numpy().tobytes() for t in state.values()))

    write(tensors(0))
    original = weight_identity(path)
    assert original.startswith(f"{path.stat().st_size} bytes sampled-sha256:")
    assert weight_identity(path) == original
    for name in ("layer3.weight", "norm"):
        changed = tensors(0)
        changed[name] = changed[name] + 0.5
        write(changed)
        assert weight_identity(path) != original, name
    write(tensors(0))
    assert weight_identity(path) == original


def test_fingerprints_of_older_llmasr_compare_on_what_they_recorded(tmp_path):
    cfg = model_config(tmp_path)
    now = base_fingerprint(cfg)
    config_hash = now["llm"]["files"]["config.json"]
    legacy = {"llm": {"files": {"config.json": config_hash, "model.safetensors": "10 bytes"}}, "encoder": None}
    assert fingerprint_differences(legacy, now) == []
    (tmp_path / "llm" / "model.safetensors").write_bytes(b"x" * 11)
    assert fingerprint_differences(legacy, base_fingerprint(cfg)) == [
        f"llm/model.safetensors: trained on 10 bytes, now {base_fingerprint(cfg)['llm']['files']['model.safetensors']}"
    ]


def test_encoder_init_from_and_llm_adapter_and_tokenizer_are_covered(tmp_path):
    cfg = model_config(tmp_path)
    enc_file, adapter, tok = tmp_path / "enc.safetensors", tmp_path / "adapter", tmp_path / "tok"
    save_file({"w": torch.ones(3)}, enc_file)
    adapter.mkdir()
    save_file({"lora_A": torch.ones(2)}, adapter / "adapter_model.safetensors")
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    cfg.encoder.init_from, cfg.llm.adapter, cfg.llm.tokenizer = str(enc_file), str(adapter), str(tok)
    before = base_fingerprint(cfg)
    save_file({"w": torch.full((3,), 2.0)}, enc_file)
    save_file({"lora_A": torch.zeros(2)}, adapter / "adapter_model.safetensors")
    (tok / "tokenizer.json").write_text('{"model": {}}')
    diffs = fingerprint_differences(before, base_fingerprint(cfg))
    assert [d.split("/")[0] for d in diffs] == ["encoder_init", "llm_adapter", "llm_tokenizer"]


def test_an_adapters_config_is_covered_and_older_fingerprints_still_compare(tmp_path):
    """The adapter's scaling (lora_alpha, use_rslora) lives in adapter_config.json: changing it changed what export
    merged and decode computed, and the fingerprint had not seen it."""
    cfg = model_config(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"lora_A": torch.ones(2)}, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    cfg.llm.adapter = str(adapter)
    before = base_fingerprint(cfg)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 64}))
    diffs = fingerprint_differences(before, base_fingerprint(cfg))
    assert [d.split(":")[0] for d in diffs] == ["llm_adapter/adapter_config.json"]
    recorded = {k: v for k, v in before["llm_adapter"]["files"].items() if k != "adapter_config.json"}
    older = {**before, "llm_adapter": {"scheme": 3, "files": recorded}}
    assert fingerprint_differences(older, base_fingerprint(cfg)) == []  # recorded before the file was covered


def test_a_funasr_directory_is_fingerprinted_by_the_files_it_is_read_from(tmp_path):
    """configuration.json's init_param may name model.pb or model.pt.avg10 (no weight suffix): that file is what
    the encoder loads, and a sentencepiece model or seg_dict decides the CTC vocabulary; all had gone unhashed.
    A fingerprint saved before they were hashed compares on what it recorded."""
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.yaml").write_text("encoder: SANMEncoder\n")
    (enc / "configuration.json").write_text(json.dumps({"file_path_metas": {"init_param": "model.pt.avg10"}}))
    (enc / "model.pt.avg10").write_bytes(b"a" * 10)
    (enc / "vocab.bpe.model").write_bytes(b"spm")
    (enc / "seg_dict").write_text("hello h e l l o\n")
    cfg = model_config(tmp_path)
    cfg.encoder.path = str(enc)
    before = base_fingerprint(cfg)
    assert {"model.pt.avg10", "vocab.bpe.model", "seg_dict"} <= set(before["encoder"]["files"])
    (enc / "model.pt.avg10").write_bytes(b"b" * 10)
    (enc / "vocab.bpe.model").write_bytes(b"SPM")
    diffs = fingerprint_differences(before, base_fingerprint(cfg))
    assert [d.split(":")[0] for d in diffs] == ["encoder/model.pt.avg10", "encoder/vocab.bpe.model"]
    older = {"scheme": 2, "files": {"config.yaml": before["encoder"]["files"]["config.yaml"]}}
    assert fingerprint_differences({**before, "encoder": older}, base_fingerprint(cfg)) == []


def test_the_files_export_copies_are_fingerprinted(tmp_path):
    """The chat template, the CTC vocabulary and seg_dict and the CMVN file are read again by export and decode:
    one edited after training had been exported without a word (a CTC head spelling other tokens). A checkpoint of
    an older llmasr, without these entries, is compared on the rest."""
    cfg = model_config(tmp_path)
    files = {"chat.jinja": "{{ messages }}", "tokens.json": '["a", "b"]', "seg_dict": "ab a b\n", "am.mvn": "x"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cfg.prompt.chat_template, cfg.ctc.vocab = str(tmp_path / "chat.jinja"), str(tmp_path / "tokens.json")
    cfg.ctc.seg_dict, cfg.encoder.frontend = str(tmp_path / "seg_dict"), {"cmvn_file": str(tmp_path / "am.mvn")}
    before = base_fingerprint(cfg)
    assert {"prompt_template", "ctc_vocab", "ctc_seg_dict", "cmvn"} <= set(before)
    (tmp_path / "tokens.json").write_text('["b", "a"]')  # the same size, the tokens in another order
    (tmp_path / "chat.jinja").write_text("{{ message }}")
    diffs = fingerprint_differences(before, base_fingerprint(cfg))
    assert [d.split("/")[0] for d in diffs] == ["ctc_vocab", "prompt_template"]
    older = {k: v for k, v in before.items() if k in ("llm", "encoder")}
    assert fingerprint_differences(older, base_fingerprint(cfg)) == []
    cfg.prompt.chat_template = "{{ messages }}"  # the text itself: nothing to fingerprint
    assert "prompt_template" not in base_fingerprint(cfg)
    assert "prompt_template: a file when trained, none now" in fingerprint_differences(before, base_fingerprint(cfg))


def test_weights_in_a_deepspeed_checkpoint_folder_are_fingerprinted(tmp_path):
    """model.pt saved by FunASR's DeepSpeed trainer is a folder whose mp_rank_00_model_states.pt the encoder reads:
    it went unhashed (only files directly in the directory were), so a changed base passed a resume unnoticed."""
    enc = tmp_path / "enc"
    (enc / "model.pt").mkdir(parents=True)
    (enc / "config.yaml").write_text("encoder: SANMEncoder\n")
    states = enc / "model.pt" / "mp_rank_00_model_states.pt"
    states.write_bytes(b"a" * 10)
    (enc / "model.pt" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 10)
    cfg = model_config(tmp_path)
    cfg.encoder.path = str(enc)
    before = base_fingerprint(cfg)
    assert "model.pt/mp_rank_00_model_states.pt" in before["encoder"]["files"]
    (enc / "model.pt" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"p" * 10)  # not read
    assert fingerprint_differences(before, base_fingerprint(cfg)) == []
    states.write_bytes(b"b" * 10)
    diffs = fingerprint_differences(before, base_fingerprint(cfg))
    assert [d.split(":")[0] for d in diffs] == ["encoder/model.pt/mp_rank_00_model_states.pt"]


def test_a_streaming_encoder_run_chunked_is_part_of_the_base(tmp_path):
    """Trained tensors belong to the context the Paraformer-streaming encoder ran in: a run saved by an llmasr that
    ran it with full context (no entry) is refused when it would now run chunked, naming the setting that goes on
    as trained."""
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, tiny_streaming_conf, write_funasr_dir

    enc = write_funasr_dir(tmp_path / "s", model="ParaformerStreaming", encoder_conf=tiny_streaming_conf())
    cfg = model_config(tmp_path)
    cfg.encoder.path = str(enc)
    now = base_fingerprint(cfg)
    assert now["encoder_context"] == "chunked"
    older = {k: v for k, v in now.items() if k != "encoder_context"}
    (diff,) = fingerprint_differences(older, now)
    assert diff.startswith("encoder_context: trained with full context, now chunked") and "context: full" in diff
    cfg.encoder.conf = {"context": "full"}
    assert (
        "encoder_context" not in base_fingerprint(cfg) and fingerprint_differences(older, base_fingerprint(cfg)) == []
    )
    assert fingerprint_differences(now, base_fingerprint(cfg))[0].startswith("encoder_context: trained with chunked")
    cfg.encoder.path, cfg.encoder.conf = str(write_funasr_dir(tmp_path / "p", encoder_conf=tiny_sanm_conf())), {}
    assert "encoder_context" not in base_fingerprint(cfg)


def test_tensors_sample_tells_other_weights_apart():
    """What the ranks of one decode compare of the model each loaded (llmasr.export.decode_world.decode_identity)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    same = fp.tensors_sample(model)
    assert fp.tensors_sample(model) == same and len(same) == 16
    with torch.no_grad():
        model[0].weight.view(-1)[2048] += 1e-3  # the middle of the matrix: a run of values sampled there
    assert fp.tensors_sample(model) != same
    assert fp.tensors_sample(model.to(torch.bfloat16)) != fp.tensors_sample(model.float())  # the dtype loaded
