"""FunASR model directories that load: round trip through write_funasr_dir, the state dict's nestings and prefixes,
conf overrides, and the frontend settings config.yaml maps to."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.data.frontend import FrontendConfig, read_kaldi_cmvn
from llmasr.models.funasr_dir import frontend_from_funasr_conf, load_funasr_encoder, read_funasr_config
from llmasr.models.sanm import SANMEncoder
from llmasr.testing.tiny_funasr import build_encoder, tiny_sanm_conf, write_funasr_dir
from llmasr.testing.tiny_funasr import copy_model_dir as _copy


def test_directory_layout(tiny_dir):
    files = ["am.mvn", "config.yaml", "configuration.json", "model.pt", "seg_dict", "tokens.json"]
    assert sorted(p.name for p in tiny_dir.iterdir()) == files
    metas = json.loads((tiny_dir / "configuration.json").read_text())["file_path_metas"]
    assert metas == {"init_param": "model.pt", "config": "config.yaml", "frontend_conf": {"cmvn_file": "am.mvn"},
                     "tokenizer_conf": {"token_list": "tokens.json", "seg_dict_file": "seg_dict"}}  # fmt: skip
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


def test_reinit_keys_given_as_one_text_is_named_before_any_file_is_read(tmp_path, monkeypatch):
    """load_funasr_encoder(dir, reinit_keys="encoders.0.*") had matched the text's letters as patterns: nothing was
    re-initialised, unsaid."""
    from llmasr.config_io import ConfigError
    from llmasr.models import funasr_dir
    from llmasr.models.funasr_dir import load_funasr_encoder

    def unread(*args, **kwargs):
        raise AssertionError("the directory was read before reinit_keys was checked")

    monkeypatch.setattr(funasr_dir, "funasr_encoder_spec", unread)
    said = (
        r"^model.encoder.reinit_keys: a list of name patterns, got the text 'encoders.0.\*'; pass \['encoders.0.\*'\]$"
    )
    with pytest.raises(ConfigError, match=said):
        load_funasr_encoder(tmp_path, reinit_keys="encoders.0.*")
