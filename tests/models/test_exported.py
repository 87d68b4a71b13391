"""llmasr.models.exported: an export written by an earlier llmasr still loads; the base LLM an adapter export
applies to is checked where its LLM is read."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from llmasr.models.exported import MODEL_FILE, ExportedModelError, exported_model_config


def test_an_export_with_an_adaptor_field_nothing_reads_still_loads(exported_dir, tmp_path, caplog):
    """An export records every adaptor field; one written before unread fields were refused may hold a linear
    adaptor's n_layer. It loads with the field dropped and named, as it was built without it."""
    old = shutil.copytree(exported_dir, tmp_path / "old")
    desc = yaml.safe_load((old / MODEL_FILE).read_text())
    assert desc["adaptor"]["conf"]["type"] == "linear"
    desc["adaptor"]["conf"].update(n_layer=6, num_queries=4)  # num_queries: its default, as every export writes
    (old / MODEL_FILE).write_text(yaml.safe_dump(desc))
    with caplog.at_level("WARNING"):
        cfg = exported_model_config(old)
    assert cfg.adaptor.type == "linear" and cfg.adaptor.n_layer == 2
    assert f"{old / MODEL_FILE}: adaptor.conf.n_layer: only used by type transformer or qformer" in caplog.text
    assert "num_queries" not in caplog.text


def test_an_export_with_a_frontend_field_nothing_reads_still_loads(exported_dir, tmp_path, caplog):
    """An export records every frontend field; one written before unread fields were refused may hold an fbank
    frontend's n_fft (Whisper's setting). It loads with the field dropped and named."""
    old = shutil.copytree(exported_dir, tmp_path / "old")
    desc = yaml.safe_load((old / MODEL_FILE).read_text())
    assert desc["frontend"]["kind"] == "fbank"
    desc["frontend"].update(n_fft=512, chunk_seconds=30.0)  # chunk_seconds: its default, as every export writes
    (old / MODEL_FILE).write_text(yaml.safe_dump(desc))
    with caplog.at_level("WARNING"):
        cfg = exported_model_config(old)
    assert "n_fft" not in cfg.encoder.frontend and cfg.encoder.frontend["chunk_seconds"] == 30.0
    assert f"{old / MODEL_FILE}: frontend.n_fft: a whisper frontend's setting" in caplog.text
    assert "chunk_seconds" not in caplog.text


def test_an_export_with_heads_of_no_ctc_decoder_blocks_still_loads(exported_dir, tmp_path, caplog):
    """An export records every CTC decoder field: one with n_layer 0 and another n_head loads with n_head dropped
    and named (the head was built without blocks to read it)."""
    old = shutil.copytree(exported_dir, tmp_path / "old")
    desc = yaml.safe_load((old / MODEL_FILE).read_text())
    desc["ctc"] = {"weight": 0.3, "vocab": "llm", "decoder": {"n_layer": 0, "ffn_dim": 32, "n_head": 4, "dropout": 0.0}}
    (old / MODEL_FILE).write_text(yaml.safe_dump(desc))
    (old / "ctc_head.safetensors").write_bytes(b"")  # read when the model is built, not here
    with caplog.at_level("WARNING"):
        cfg = exported_model_config(old)
    assert (cfg.ctc.decoder.n_layer, cfg.ctc.decoder.ffn_dim, cfg.ctc.decoder.n_head) == (0, 32, 8)
    assert f"{old / MODEL_FILE}: ctc.decoder.n_head: is read only by the transformer blocks" in caplog.text


@pytest.fixture
def moved_base(tiny_run, tmp_path):
    """An adapter export of `tiny_run`, then its base LLM moved away (moved back after the test)."""
    from llmasr.export.export import export_model

    out = export_model(tiny_run.run_dir, tmp_path / "adapter_export", adapter_only=True)
    base = Path(tiny_run.recipe.model.llm.path)
    shutil.move(base, tmp_path / "moved_llm")
    yield out, base
    shutil.move(tmp_path / "moved_llm", base)


def test_the_base_llm_of_an_adapter_export_is_checked_only_when_the_llm_is_read(moved_base):
    """Decoding reads the LLM: a base that moved is refused. A caller that takes only the speech side (a recipe
    starting from the export's encoder) gets the section without the base being looked for."""
    out, base = moved_base
    with pytest.raises(ExportedModelError, match=f"the base LLM {base} this adapter export applies to is missing"):
        exported_model_config(out)
    cfg = exported_model_config(out, read_llm=False)
    assert cfg.encoder.init_from == str(out / "encoder.safetensors")
    assert (cfg.llm.path, cfg.llm.adapter) == (str(base), str(out / "adapter"))


def test_an_export_that_lost_its_tokenizer_vocabulary_is_refused_naming_it(exported_dir, tmp_path):
    """DIR/llm without tokenizer.json (a copy that left it out) had loaded: transformers builds the tokenizer from
    tokenizer_config.json alone, with its special tokens and no vocabulary, every text encoded to no token, so the
    model was prompted with nothing and its answers decoded to nothing, or (with a CTC head on the LLM's
    vocabulary) refused as a head of another vocabulary. It is refused, naming the folder and what is missing."""
    from llmasr.models.exported import load_exported
    from llmasr.models.llm import LLMLoadError

    damaged = shutil.copytree(exported_dir, tmp_path / "damaged")
    (damaged / "llm" / "tokenizer.json").unlink()
    with pytest.raises(LLMLoadError, match=rf"{damaged / 'llm'}: the tokenizer holds its 3 special tokens and no "
                                           r"vocabulary: its vocabulary file is missing \(tokenizer.json"):  # fmt: skip
        load_exported(damaged)


@pytest.mark.parametrize("section", ["decode", "training", "prompt", "ctc"])
def test_an_optional_section_that_is_not_a_mapping_is_refused_naming_it(exported_dir, tmp_path, section):
    """A hand-edited description whose decode (or training) section is a list passed the checks and reached the user
    of `llmasr decode --model` / `transcribe` as a raw TypeError or AttributeError naming neither file nor section."""
    from llmasr.models.exported import read_description

    edited = shutil.copytree(exported_dir, tmp_path / "edited")
    desc = yaml.safe_load((edited / MODEL_FILE).read_text())
    desc[section] = ["num_beams", 4]
    (edited / MODEL_FILE).write_text(yaml.safe_dump(desc))
    said = f"{edited / MODEL_FILE}: the {section} section is a list, not a mapping"
    with pytest.raises(ExportedModelError, match=re.escape(said)):
        read_description(edited)


@pytest.mark.parametrize("inside", ["llm", "adapter", "vad"])
def test_a_folder_inside_an_export_names_the_export(exported_dir, tmp_path, inside):
    """`--model exp/run/export/llm` (the folder that loads with from_pretrained alone) was refused as "not a
    directory written by `llmasr export`", without a word that its parent is one."""
    from llmasr.models.exported import read_description

    export = shutil.copytree(exported_dir, tmp_path / "export")
    (export / inside).mkdir(exist_ok=True)
    with pytest.raises(ExportedModelError, match=rf"inside the export {re.escape(str(export))}: give --model "):
        read_description(export / inside)


def test_a_device_this_machine_lacks_is_named_before_the_model_loads(exported_dir, monkeypatch):
    """load_exported(dir, device="cuda") on a machine without CUDA had built the whole model, then stopped in torch's
    AssertionError "Torch not compiled with CUDA enabled" at model.to(device)."""
    import torch

    from llmasr.models import exported

    def unread(*args, **kwargs):
        raise AssertionError("the export was read before the device was checked")

    monkeypatch.setattr(exported, "exported_model_config", unread)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device cuda(:0)?: (this torch build has no CUDA|no CUDA device is vis)"):
        exported.load_exported(exported_dir, device="cuda")
