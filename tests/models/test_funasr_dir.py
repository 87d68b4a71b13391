"""FunASR model directories: round trip through write_funasr_dir, frontend settings, and every error path."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml

from llmasr.config_io import ConfigError
from llmasr.data.frontend import FrontendConfig, read_kaldi_cmvn
from llmasr.models.funasr_dir import frontend_from_funasr_conf, load_funasr_encoder, read_funasr_config
from llmasr.models.sanm import SANMEncoder
from llmasr.models.state_dict import CheckpointMismatchError
from llmasr.testing.tiny_funasr import (
    build_encoder,
    tiny_sanm_conf,
    tiny_sensevoice_conf,
    tiny_streaming_conf,
    write_funasr_dir,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_funasr_dir(tmp_path_factory.mktemp("paraformer_tiny"), encoder_conf=tiny_sanm_conf(), seed=3)


def _edit_config(model_dir, fn):
    path = model_dir / "config.yaml"
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_directory_layout(tiny_dir):
    assert sorted(p.name for p in tiny_dir.iterdir()) == ["am.mvn", "config.yaml", "model.pt", "tokens.json"]
    cfg = read_funasr_config(tiny_dir)
    assert cfg["encoder"] == "SANMEncoder" and cfg["frontend"] == "WavFrontend"
    assert cfg["frontend_conf"]["lfr_m"] == 7
    state = torch.load(tiny_dir / "model.pt", weights_only=True)
    assert any(k.startswith("decoder.") for k in state) and any(k.startswith("predictor.") for k in state)
    assert all(k.split(".")[0] in ("encoder", "decoder", "predictor") for k in state)
    shift, scale = read_kaldi_cmvn(tiny_dir / "am.mvn")
    assert shift.shape == scale.shape == (560,)
    assert isinstance(json.loads((tiny_dir / "tokens.json").read_text()), list)


def test_round_trip_identical_outputs_and_frontend(tiny_dir):
    enc, fe = load_funasr_encoder(tiny_dir)
    assert isinstance(enc, SANMEncoder)
    assert isinstance(fe, FrontendConfig)
    assert (fe.kind, fe.n_mels, fe.lfr_m, fe.lfr_n, fe.sample_rate) == ("fbank", 80, 7, 6, 16000)
    assert (fe.frame_length_ms, fe.frame_shift_ms, fe.window, fe.dither) == (25.0, 10.0, "hamming", 1.0)
    assert fe.cmvn_file == str((tiny_dir / "am.mvn").resolve())
    assert fe.feature_dim == 560

    state = torch.load(tiny_dir / "model.pt", weights_only=True)
    ref = SANMEncoder(input_size=560, **tiny_sanm_conf()).eval()
    ref.load_state_dict({k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")})
    enc.eval()
    xs = torch.randn(2, 10, 560)
    lens = torch.tensor([10, 6])
    with torch.no_grad():
        torch.testing.assert_close(enc(xs, lens)[0], ref(xs, lens)[0], rtol=0, atol=0)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[f"encoder.{k}"]), k


@pytest.mark.parametrize("nest", ["state_dict", "model_state_dict", "model"])
def test_nested_state_dicts(tmp_path, tiny_dir, nest):
    d = write_funasr_dir(tmp_path / nest, encoder_conf=tiny_sanm_conf(), seed=3, nest_under=nest)
    assert list(torch.load(d / "model.pt", weights_only=True)) == [nest]
    a, _ = load_funasr_encoder(d)
    b, _ = load_funasr_encoder(tiny_dir)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def test_ddp_module_prefix(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "ddp")
    state = torch.load(d / "model.pt", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, d / "model.pt")
    load_funasr_encoder(d)


def test_weights_come_from_configuration_json_init_param(tmp_path, tiny_dir):
    # FunASR's AutoModel loads file_path_metas.init_param; model.pt beside it is not what it reads
    d = _copy(tiny_dir, tmp_path / "init_param")
    (d / "model.pt").rename(d / "model.pt.best")
    other = write_funasr_dir(tmp_path / "other", encoder_conf=tiny_sanm_conf(), seed=4)
    (d / "model.pt").write_bytes((other / "model.pt").read_bytes())
    metas = {"init_param": "/mnt/train/exp/model.pt.best", "frontend_conf": {"cmvn_file": "am.mvn"}}
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": metas}))
    a, _ = load_funasr_encoder(d)
    b, _ = load_funasr_encoder(tiny_dir)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    (d / "model.pt.best").unlink()
    with pytest.raises(ConfigError, match=r"model.pt.best: missing"):
        load_funasr_encoder(d)


def test_conf_overrides(tiny_dir):
    enc, _ = load_funasr_encoder(tiny_dir, conf_overrides={"dropout_rate": 0.0, "attention_dropout_rate": 0.0})
    assert enc.encoders[0].dropout.p == 0.0
    with pytest.raises(ConfigError, match="no_such_key"):
        load_funasr_encoder(tiny_dir, conf_overrides={"no_such_key": 1})


@pytest.mark.parametrize("key,value", [("attention_heads", 8), ("sanm_shfit", 3), ("input_layer", "pe_online")])
def test_conf_overrides_that_change_what_the_weights_compute_are_refused(tiny_dir, key, value):
    """Heads, FSMN shift or input layer over pretrained weights change no tensor's shape, so the strict load passed
    and the encoder computed something the weights were not trained for; a value equal to config.yaml's is fine."""
    stated = tiny_sanm_conf()[key]
    assert load_funasr_encoder(tiny_dir, conf_overrides={key: stated})[0] is not None
    with pytest.raises(ConfigError, match=rf"model.encoder.conf.{key}: {value!r}, but .*config.yaml states {stated!r}"):
        load_funasr_encoder(tiny_dir, conf_overrides={key: value})


def test_frontend_from_funasr_conf_mapping(tmp_path):
    cmvn = tmp_path / "x.mvn"
    from llmasr.data.frontend import write_kaldi_cmvn

    write_kaldi_cmvn(cmvn, np.zeros(80), np.ones(80))
    fe = frontend_from_funasr_conf(
        {
            "fs": "16k",
            "n_mels": 80,
            "lfr_m": 1,
            "lfr_n": 1,
            "dither": 0.0,
            "upsacle_samples": False,
            "filter_length_min": -1,
            "snip_edges": False,
        },
        cmvn,
    )
    assert (fe.sample_rate, fe.dither, fe.waveform_scale, fe.snip_edges) == (16000, 0.0, 1.0, False)
    assert fe.cmvn_file == str(cmvn.resolve())
    assert frontend_from_funasr_conf({}, None).cmvn_file is None


# ---- errors -----------------------------------------------------------------------------------------------


def test_missing_am_mvn(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "am.mvn").unlink()
    with pytest.raises(ConfigError, match=r"am\.mvn.*missing.*AddShift"):
        load_funasr_encoder(d)


def test_cmvn_file_from_config_when_am_mvn_absent(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "am.mvn").rename(d / "cmvn.txt")
    _edit_config(d, lambda c: c["frontend_conf"].update(cmvn_file="cmvn.txt"))
    _, fe = load_funasr_encoder(d)
    assert fe.cmvn_file == str((d / "cmvn.txt").resolve())
    _edit_config(d, lambda c: c["frontend_conf"].update(cmvn_file=None))  # explicit null: trained without CMVN
    _, fe = load_funasr_encoder(d)
    assert fe.cmvn_file is None


def test_cmvn_file_named_by_the_training_machine_is_found_here_by_name(tmp_path, tiny_dir):
    """config.yaml as FunASR training writes it: cmvn_file an absolute path on that machine, configuration.json
    mapping no CMVN. The file of that name in the directory is it (its error had said am.mvn was missing)."""
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["frontend_conf"].update(cmvn_file="/root/.cache/modelscope/para/am.mvn"))
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": {"init_param": "model.pt"}}))
    _, fe = load_funasr_encoder(d)
    assert fe.cmvn_file == str((d / "am.mvn").resolve())
    _edit_config(d, lambda c: c["frontend_conf"].update(cmvn_file="/root/.cache/modelscope/para/cmvn.ark"))
    named = r"frontend_conf.cmvn_file names /root/.cache/modelscope/para/cmvn.ark, which is neither there nor in "
    with pytest.raises(ConfigError, match=named + r".*am.mvn is, but configuration.json maps"):
        load_funasr_encoder(d)


def test_features_normalized_by_the_model_are_refused(tmp_path, tiny_dir):
    """config.yaml's `normalize` (UtteranceMVN, GlobalMVN): FunASR applies it before the encoder; llmasr had
    ignored it without a word."""
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(normalize=None))
    load_funasr_encoder(d)
    _edit_config(d, lambda c: c.update(normalize="UtteranceMVN", normalize_conf={}))
    with pytest.raises(ConfigError, match=r"config.yaml: normalize is 'UtteranceMVN'; FunASR normalizes the features"):
        load_funasr_encoder(d)


def test_missing_model_pt(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "model.pt").unlink()
    with pytest.raises(ConfigError, match=r"model\.pt: missing.*state dict"):
        load_funasr_encoder(d)


def test_missing_config_and_directory(tmp_path, tiny_dir):
    with pytest.raises(ConfigError, match="not found"):
        load_funasr_encoder(tmp_path / "nowhere")
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"config\.yaml: missing.*encoder_conf"):
        load_funasr_encoder(d)


def _rewrite_state(d, fn):
    state = torch.load(d / "model.pt", weights_only=True)
    fn(state)
    torch.save(state, d / "model.pt")


def test_missing_key_named(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(d, lambda s: s.pop("encoder.encoders.0.feed_forward.w_1.bias"))
    with pytest.raises(CheckpointMismatchError, match=r"missing from checkpoint: encoders\.0\.feed_forward\.w_1\.bias"):
        load_funasr_encoder(d)


def test_unexpected_key_named(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(d, lambda s: s.update({"encoder.encoders.1.norm1.weight": torch.ones(32)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected in checkpoint: encoders\.1\.norm1\.weight"):
        load_funasr_encoder(d)


def test_no_encoder_tensors(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(d, lambda s: [s.pop(k) for k in list(s) if k.startswith("encoder.")])
    with pytest.raises(CheckpointMismatchError, match=r"no tensors under 'encoder\.'.*decoder\."):
        load_funasr_encoder(d)


def test_shape_mismatch_names_key_and_shapes(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["encoder_conf"].update(linear_units=48))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"encoders0\.0\.feed_forward\.w_1\.weight: checkpoint \[64, 32\] vs model \[48, 32\]",
    ):
        load_funasr_encoder(d)


def test_reinit_keys_allow_listed_mismatch(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(d, lambda s: s.update({"encoder.after_norm.weight": torch.ones(7)}))
    with pytest.raises(CheckpointMismatchError, match="after_norm.weight"):
        load_funasr_encoder(d)
    enc, _ = load_funasr_encoder(d, reinit_keys=["after_norm.*"])
    assert enc.after_norm.weight.shape == (32,)
    state = torch.load(tiny_dir / "model.pt", weights_only=True)
    assert torch.equal(enc.encoders[0].norm1.weight, state["encoder.encoders.0.norm1.weight"])


@pytest.mark.parametrize("where", ["top", "encoder_conf"])
def test_input_size_disagreeing_with_frontend(tmp_path, tiny_dir, where):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: (c if where == "top" else c["encoder_conf"]).update(input_size=400))
    with pytest.raises(ConfigError, match=r"input_size is 400.*80 \* 7 = 560"):
        load_funasr_encoder(d)


def test_input_size_agreeing_is_fine(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(input_size=560))
    load_funasr_encoder(d)


def test_unknown_encoder_class(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(encoder="BranchformerEncoder"))
    supported = "SANMEncoder, SANMEncoderChunkOpt, ConformerEncoder, SenseVoiceEncoderSmall"
    with pytest.raises(ConfigError, match=rf"BranchformerEncoder.*{supported}"):
        load_funasr_encoder(d)


def test_unknown_frontend(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(frontend="WhisperFrontend"))
    with pytest.raises(ConfigError, match=r"WhisperFrontend.*WavFrontend, WavFrontendOnline"):
        load_funasr_encoder(d)


def test_unknown_encoder_conf_key(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["encoder_conf"].update(num_block=2))
    with pytest.raises(ConfigError, match="'num_block'"):
        load_funasr_encoder(d)


def test_harmless_real_config_keys(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(
        d,
        lambda c: c["encoder_conf"].update(
            tf2torch_tensor_name_prefix_torch="encoder", tf2torch_tensor_name_prefix_tf="seq2seq/encoder"
        ),
    )
    load_funasr_encoder(d)


def test_build_encoder_matches_loader(tiny_dir):
    enc = build_encoder("SANMEncoder", tiny_sanm_conf(), 560)
    assert set(enc.state_dict()) == set(load_funasr_encoder(tiny_dir)[0].state_dict())


def test_conformer_directory_round_trip(tmp_path):
    pytest.importorskip("llmasr.models.conformer")
    conf = {
        "output_size": 32,
        "attention_heads": 4,
        "linear_units": 64,
        "num_blocks": 2,
        "input_layer": "conv2d",
        "pos_enc_layer_type": "rel_pos",
        "selfattention_layer_type": "rel_selfattn",
        "macaron_style": True,
        "use_cnn_module": True,
        "cnn_module_kernel": 7,
    }
    frontend = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10}
    d = write_funasr_dir(
        tmp_path / "conformer", encoder_type="ConformerEncoder", encoder_conf=conf, frontend_conf=frontend
    )
    enc, fe = load_funasr_encoder(d)
    assert type(enc).__name__ == "ConformerEncoder"
    assert (fe.lfr_m, fe.lfr_n, fe.feature_dim) == (1, 1, 80)
    state = torch.load(d / "model.pt", weights_only=True)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[f"encoder.{k}"]), k


# ---- FunASR model zoo: Paraformer-streaming, SeACo / contextual Paraformer, SenseVoice ------------------------


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


def test_streaming_encoder_is_sanm_on_the_same_weights(zoo, tmp_path):
    streaming, _ = load_funasr_encoder(zoo["ParaformerStreaming"])
    plain = write_funasr_dir(tmp_path / "plain", encoder_conf=tiny_sanm_conf(), seed=5)
    sanm, _ = load_funasr_encoder(plain)
    sanm.load_state_dict(streaming.state_dict())
    xs, lens = torch.randn(2, 9, 560), torch.tensor([9, 5])
    with torch.no_grad():
        assert torch.equal(streaming.eval()(xs, lens)[0], sanm.eval()(xs, lens)[0])


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


@pytest.mark.parametrize(
    "edit, said",
    [({"foo": 1}, r"SANMEncoder: unknown encoder_conf key 'foo'"),
     ({"num_blocks": "many"}, r"\.num_blocks: expected an integer, got 'many'")],
)  # fmt: skip
def test_encoder_conf_the_encoder_refuses_is_named_by_config_yaml(tiny_dir, tmp_path, edit, said):
    """The settings come from the directory's config.yaml: the refusal had named no file (or the recipe's
    model.encoder.conf, which does not hold the key), whether the weights are read or not."""
    from llmasr.models.builder import build_encoder
    from llmasr.models.config import EncoderConfig

    d = tmp_path / "d"
    shutil.copytree(tiny_dir, d)
    _edit_config(d, lambda c: c["encoder_conf"].update(edit))
    where = re.escape(f"{d / 'config.yaml'} encoder_conf")
    with pytest.raises(ConfigError, match=rf"^{where}(: )?{said}"):
        load_funasr_encoder(d)
    with pytest.raises(ConfigError, match=rf"^{where}(: )?{said}"):
        build_encoder(EncoderConfig(type="paraformer", path=str(d)), pretrained=False)
