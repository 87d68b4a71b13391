"""FunASR model zoo directories: Paraformer-streaming, SeACo / contextual Paraformer, SenseVoice. Their encoders,
the modules left out, configuration.json's CMVN mapping, chunk settings, and tokens.json against the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.funasr_dir import load_funasr_encoder, read_funasr_config
from llmasr.testing.tiny_funasr import copy_model_dir as _copy
from llmasr.testing.tiny_funasr import edit_config_yaml as _edit_config
from llmasr.testing.tiny_funasr import (
    finetuned_output_dir,
    tiny_sanm_conf,
    tiny_sensevoice_conf,
    tiny_streaming_conf,
    write_funasr_dir,
)
from llmasr.testing.tiny_funasr import rewrite_model_pt as _rewrite_state


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    confs = {
        "ParaformerStreaming": tiny_streaming_conf(),
        "SeacoParaformer": tiny_sanm_conf(),
        "ContextualParaformer": tiny_sanm_conf(),
        "SenseVoiceSmall": tiny_sensevoice_conf(),
    }
    return {m: write_funasr_dir(root / m, model=m, encoder_conf=c, seed=5) for m, c in confs.items()}


def test_zoo_directories_load_their_encoder(zoo):
    kinds = {m: type(load_funasr_encoder(d)[0]).__name__ for m, d in zoo.items()}
    assert kinds == {
        "ParaformerStreaming": "SANMEncoder",
        "SeacoParaformer": "SANMEncoder",
        "ContextualParaformer": "SANMEncoder",
        "SenseVoiceSmall": "SenseVoiceEncoderSmall",
    }
    enc, fe = load_funasr_encoder(zoo["ParaformerStreaming"])
    assert enc.chunk.chunk_size == (12, 15) and enc.chunk.encoder_att_look_back_factor == (4, 4)
    assert (fe.lfr_m, fe.lfr_n, fe.waveform_scale, fe.snip_edges) == (7, 6, 32768.0, True)


def test_zoo_directories_hold_configuration_json_and_seg_dict_as_the_zoo_ships_them(zoo, tmp_path):
    """Paraformer-large's family (streaming, SeACo, contextual) ships configuration.json mapping the CMVN file, the
    token list and the seg_dict the CharTokenizer reads it through; SenseVoiceSmall's maps its sentencepiece model."""
    for m in ("ParaformerStreaming", "SeacoParaformer", "ContextualParaformer"):
        metas = json.loads((zoo[m] / "configuration.json").read_text())["file_path_metas"]
        assert metas["tokenizer_conf"] == {"token_list": "tokens.json", "seg_dict_file": "seg_dict"}, m
        assert metas["frontend_conf"] == {"cmvn_file": "am.mvn"} and metas["init_param"] == "model.pt", m
        tokens = json.loads((zoo[m] / "tokens.json").read_text())
        lines = (zoo[m] / "seg_dict").read_text().splitlines()
        assert lines == [f"{t} {t}" for t in tokens if not t.startswith("<")], m
    assert not (zoo["SenseVoiceSmall"] / "seg_dict").exists()
    bare = write_funasr_dir(tmp_path / "bare", model="SeacoParaformer", encoder_conf=tiny_sanm_conf(), zoo_metas=False)
    assert sorted(p.name for p in bare.iterdir()) == ["am.mvn", "config.yaml", "model.pt", "tokens.json"]


def test_streaming_encoder_with_full_context_is_sanm_on_the_same_weights(zoo, tmp_path):
    streaming, _ = load_funasr_encoder(zoo["ParaformerStreaming"], conf_overrides={"context": "full"})
    chunked, _ = load_funasr_encoder(zoo["ParaformerStreaming"])  # as FunASR runs it (tests/models/test_sanm_chunk.py)
    plain = write_funasr_dir(tmp_path / "plain", encoder_conf=tiny_sanm_conf(), seed=5)
    sanm, _ = load_funasr_encoder(plain)
    sanm.load_state_dict(streaming.state_dict())
    assert (streaming.context, chunked.context, sanm.context) == ("full", "chunked", "full")
    xs, lens = torch.randn(2, 9, 560), torch.tensor([9, 5])
    with torch.no_grad():
        assert torch.equal(streaming.eval()(xs, lens)[0], sanm.eval()(xs, lens)[0])
        assert not torch.allclose(chunked.eval()(xs, lens)[0][0], sanm(xs, lens)[0][0])  # 9 frames: two chunks


def test_context_is_checked_against_the_directory(zoo):
    with pytest.raises(ConfigError, match=r"model.encoder.conf: context must be one of full, chunked, got 'stream'"):
        load_funasr_encoder(zoo["ParaformerStreaming"], conf_overrides={"context": "stream"})
    with pytest.raises(ConfigError, match=r"context 'chunked' needs chunk settings .* this encoder has none"):
        load_funasr_encoder(zoo["SeacoParaformer"], conf_overrides={"context": "chunked"})
    assert load_funasr_encoder(zoo["SeacoParaformer"], conf_overrides={"context": "full"})[0].context == "full"


def test_train_chunks_is_checked_against_the_directory(zoo, tmp_path):
    # FunASR's draw by default, configuration 0 alone when asked; refused where it means nothing or names no choice
    assert load_funasr_encoder(zoo["ParaformerStreaming"])[0].chunk_draw.n == 2
    first, _ = load_funasr_encoder(zoo["ParaformerStreaming"], conf_overrides={"train_chunks": "first"})
    assert first.chunk_draw is None and first.context == "chunked"
    with pytest.raises(ConfigError, match=r"model.encoder.conf: train_chunks must be one of random, first .* 'frist'"):
        load_funasr_encoder(zoo["ParaformerStreaming"], conf_overrides={"train_chunks": "frist"})
    with pytest.raises(ConfigError, match=r"model.encoder.conf: train_chunks 'random' .* but context is 'full'"):
        load_funasr_encoder(zoo["ParaformerStreaming"], conf_overrides={"context": "full", "train_chunks": "random"})
    with pytest.raises(ConfigError, match=r"model.encoder.conf: train_chunks 'first' .* but context is 'full'"):
        load_funasr_encoder(zoo["SeacoParaformer"], conf_overrides={"train_chunks": "first"})
    # a directory whose configuration 1 FunASR cannot build trains under train_chunks: first only
    bad = _copy(zoo["ParaformerStreaming"], tmp_path / "bad")
    _edit_config(bad, lambda c: c["encoder_conf"].update(pad_left=[0, 6]))
    with pytest.raises(ConfigError, match=r"in chunk configuration 1 \(train_chunks: random draws it .*pad_left 6"):
        load_funasr_encoder(bad)
    assert load_funasr_encoder(bad, conf_overrides={"train_chunks": "first"})[0].chunk_draw is None


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"pad_left": [5, 0]}, "encoder_conf: context 'chunked' needs stride + pad_left <= chunk_size"),
        ({"stride": [8]}, "SANMEncoderChunkOpt: encoder_conf.stride has 1 values but chunk_size has 2"),
        ({"encoder_att_look_back_factor": [4, 4, 4]}, "encoder_conf.encoder_att_look_back_factor has 3 values"),
    ],
)
def test_a_refused_chunk_setting_names_the_config_yaml_that_states_it(zoo, tmp_path, edit, said):
    """The chunk settings come from the directory's config.yaml (the recipe may not change them): a refusal names
    that file, not model.encoder.conf (whose recipe line it had pointed at)."""
    bad = _copy(zoo["ParaformerStreaming"], tmp_path / "bad")
    _edit_config(bad, lambda c: c["encoder_conf"].update(edit))
    with pytest.raises(ConfigError) as err:
        load_funasr_encoder(bad)
    assert str(err.value).startswith(f"{bad.resolve() / 'config.yaml'}") and said in str(err.value), err.value


def test_left_out_modules_named_once(zoo, caplog):
    with caplog.at_level("INFO", logger="llmasr.models.funasr_checks"):
        load_funasr_encoder(zoo["SeacoParaformer"])
    records = [r.getMessage() for r in caplog.records]
    assert len(records) == 1
    assert "(SeacoParaformer)" in records[0]
    assert records[0].endswith("bias_embed, bias_encoder, decoder, hotword_output_layer, predictor, seaco_decoder")


def test_sensevoice_needs_no_tokens_json_and_takes_cmvn_from_configuration_json(zoo):
    d = zoo["SenseVoiceSmall"]
    assert not (d / "tokens.json").exists()
    assert read_funasr_config(d)["frontend_conf"]["cmvn_file"] is None  # config.yaml says null ...
    _, fe = load_funasr_encoder(d)
    assert fe.cmvn_file == str((d / "am.mvn").resolve())  # ... configuration.json maps am.mvn, as FunASR reads it


def test_configuration_json_cmvn_mapping(tmp_path, zoo):
    d = _copy(zoo["SenseVoiceSmall"], tmp_path / "sv")
    (d / "am.mvn").rename(d / "other.mvn")
    meta = json.loads((d / "configuration.json").read_text())
    meta["file_path_metas"]["frontend_conf"]["cmvn_file"] = "other.mvn"
    (d / "configuration.json").write_text(json.dumps(meta))
    assert load_funasr_encoder(d)[1].cmvn_file == str((d / "other.mvn").resolve())
    meta["file_path_metas"]["frontend_conf"]["cmvn_file"] = "gone.mvn"
    (d / "configuration.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"configuration.json: file_path_metas.frontend_conf.cmvn_file names gone"):
        load_funasr_encoder(d)


def test_configuration_json_without_cmvn_means_none(tmp_path, zoo, caplog):
    d = _copy(zoo["SenseVoiceSmall"], tmp_path / "sv")
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": {"init_param": "model.pt"}}))
    with caplog.at_level("WARNING"):
        assert load_funasr_encoder(d)[1].cmvn_file is None
    assert any("am.mvn is present but neither" in r.getMessage() for r in caplog.records)


def test_wav_frontend_online_ignores_what_funasr_ignores(tmp_path, zoo, caplog):
    d = _copy(zoo["ParaformerStreaming"], tmp_path / "s")
    _edit_config(d, lambda c: c["frontend_conf"].update(upsacle_samples=False, snip_edges=False))
    with caplog.at_level("WARNING"):
        fe = load_funasr_encoder(d)[1]
    assert (fe.waveform_scale, fe.snip_edges) == (32768.0, True)
    assert sum("WavFrontendOnline always uses" in r.getMessage() for r in caplog.records) == 2
    _edit_config(d, lambda c: c.update(frontend="WavFrontend"))  # the offline frontend honours them
    assert (load_funasr_encoder(d)[1].waveform_scale, load_funasr_encoder(d)[1].snip_edges) == (1.0, False)


def test_chunk_settings_only_for_chunk_opt(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["encoder_conf"].update(chunk_size=[12, 15]))
    with pytest.raises(ConfigError, match=r"chunk settings chunk_size, which only SANMEncoderChunkOpt.*SANMEncoder"):
        load_funasr_encoder(d)


def test_chunk_settings_checked(tmp_path, zoo):
    d = _copy(zoo["ParaformerStreaming"], tmp_path / "s")
    _edit_config(d, lambda c: c["encoder_conf"].update(stride=[8]))
    with pytest.raises(ConfigError, match=r"stride has 1 values but chunk_size has 2"):
        load_funasr_encoder(d)
    _edit_config(d, lambda c: c["encoder_conf"].update(stride=[8, 10], pad_left=[0]))  # FunASR repeats pad_left[0]
    assert load_funasr_encoder(d)[0].chunk.pad_left == (0, 0)


def _write_tokens(d, n):
    (d / "tokens.json").write_text(json.dumps([f"t{i}" for i in range(n)]))


@pytest.mark.parametrize(
    "model,drop,key",
    [
        ("Paraformer", (), "decoder.output_layer.weight"),
        ("ParaformerStreaming", ("decoder.output_layer.weight",), "decoder.embed.0.weight"),
        ("SeacoParaformer", ("decoder.output_layer.weight", "decoder.embed.0.weight"), "hotword_output_layer.weight"),
    ],
)
def test_tokens_json_disagreeing_with_the_checkpoint(tmp_path, tiny_dir, zoo, model, drop, key):
    d = _copy(tiny_dir if model == "Paraformer" else zoo[model], tmp_path / "d")
    _rewrite_state(d, lambda s: [s.pop(k) for k in drop])
    _write_tokens(d, 8404)
    pattern = rf"tokens.json lists 8404 tokens but .*model.pt has {key} of shape \[16, \d+\] \(16 rows\)"
    with pytest.raises(ConfigError, match=pattern):
        load_funasr_encoder(d)


def test_tokens_json_against_ctc_head(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(
        d, lambda s: s.update({"ctc.ctc_lo.weight": torch.zeros(20, 32), "ctc.ctc_lo.bias": torch.zeros(20)})
    )
    with pytest.raises(ConfigError, match=r"tokens.json lists 16 tokens but .*ctc.ctc_lo.weight of shape \[20, 32\]"):
        load_funasr_encoder(d)
    _write_tokens(d, 20)
    with pytest.raises(ConfigError, match=r"lists 20 tokens but .*decoder.output_layer.weight"):
        load_funasr_encoder(d)


def test_unreadable_tokens_json(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "tokens.json").write_text('{"a": 1}')
    with pytest.raises(ConfigError, match=r"tokens.json: must hold a JSON list \(token list\), got dict"):
        load_funasr_encoder(d)


def test_finetuned_output_directory_takes_config_yaml_cmvn(tmp_path, tiny_dir):
    """FunASR's fine-tuning output: configuration.json (copied from the pretrained model) names am.mvn, which is not
    there; FunASR then applies config.yaml's cmvn_file (the pretrained am.mvn by full path), and so does llmasr."""
    out = finetuned_output_dir(tiny_dir, tmp_path / "finetuned")
    enc, fe = load_funasr_encoder(out)
    assert fe.cmvn_file == str((tiny_dir / "am.mvn").resolve())
    ref, _ = load_funasr_encoder(tiny_dir)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), ref.state_dict().values()))
    _edit_config(out, lambda c: c["frontend_conf"].update(cmvn_file=str(tmp_path / "gone.mvn")))
    with pytest.raises(
        ConfigError, match=r"cmvn_file names am.mvn, which is not in .*cmvn_file names .*gone.mvn, not here"
    ):
        load_funasr_encoder(out)
