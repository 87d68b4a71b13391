"""llmasr.export.exported: an export written by an earlier llmasr still loads."""

import shutil

import yaml

from llmasr.export.exported import MODEL_FILE, exported_model_config


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
