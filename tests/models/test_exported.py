"""llmasr.models.exported: an export written by an earlier llmasr still loads."""

import shutil

import yaml

from llmasr.models.exported import MODEL_FILE, exported_model_config


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
