"""SenseVoiceEncoderSmall: FunASR's LayerNorm (eps 1e-5, computed in float32), its accepted-and-ignored settings,
the recipe type `sensevoice` through the builder, and gradient checkpointing."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from llmasr.config_io import ConfigError, from_dict
from llmasr.models.builder import build_encoder
from llmasr.models.config import EncoderConfig
from llmasr.models.sensevoice import FP32LayerNorm, SenseVoiceEncoderSmall
from llmasr.testing.tiny_funasr import tiny_sensevoice_conf, write_funasr_dir

CONF = dict(input_size=24, output_size=16, attention_heads=2, linear_units=32, num_blocks=2, tp_blocks=2)


def test_layer_norms_are_fp32_eps_1e5():
    enc = SenseVoiceEncoderSmall(**CONF)
    norms = [m for m in enc.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 4 + 2 and all(isinstance(m, FP32LayerNorm) and m.eps == 1e-5 for m in norms)
    norm = FP32LayerNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(3, 16) * 1e-3 + 7).to(torch.bfloat16)  # small variance around a large mean: fp32 matters
    want = F.layer_norm(x.float(), (16,), norm.weight, norm.bias, 1e-5).to(torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16 and torch.equal(norm(x), want)


def test_ignored_settings_warn_unknown_ones_fail(caplog):
    with caplog.at_level(logging.WARNING, logger="llmasr.models.sensevoice"):
        SenseVoiceEncoderSmall(
            **CONF, input_layer="pe", normalize_before=True, pos_enc_class="x.SinusoidalPositionEncoder"
        )
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="llmasr.models.sensevoice"):
        SenseVoiceEncoderSmall(**CONF, normalize_before=False)
    assert "normalize_before=False is ignored" in caplog.records[0].getMessage()
    with pytest.raises(
        ConfigError, match=r"unknown encoder_conf key 'tp_block' \(value 3\); did you mean 'tp_blocks'\?"
    ):
        SenseVoiceEncoderSmall(**CONF, tp_block=3)


def test_tp_blocks_run_after_after_norm():
    enc = SenseVoiceEncoderSmall(**CONF).eval()
    xs, lens = torch.randn(2, 9, 24), torch.tensor([9, 4])
    with torch.no_grad():
        full = enc(xs, lens)[0]
        enc.tp_encoders = torch.nn.ModuleList()
        assert not torch.allclose(enc(xs, lens)[0], full)


def test_recipe_type_sensevoice(tmp_path):
    d = write_funasr_dir(tmp_path / "sv", model="SenseVoiceSmall", encoder_conf=tiny_sensevoice_conf())
    enc, fe = build_encoder(from_dict(EncoderConfig, {"type": "sensevoice", "path": str(d)}, "model.encoder"))
    assert isinstance(enc, SenseVoiceEncoderSmall) and fe.feature_dim == 560
    with pytest.raises(
        ConfigError, match=r"type is 'paraformer' but .*holds a SenseVoiceEncoderSmall \('sensevoice'\)"
    ):
        build_encoder(from_dict(EncoderConfig, {"type": "paraformer", "path": str(d)}, "model.encoder"))
    conf = {**tiny_sensevoice_conf(), "input_size": 560}
    fresh, _ = build_encoder(
        from_dict(EncoderConfig, {"type": "sensevoice", "conf": conf, "frontend": {"lfr_m": 7}}, "e")
    )
    assert set(fresh.state_dict()) == set(enc.state_dict())


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    enc = SenseVoiceEncoderSmall(**CONF, dropout_rate=0.0, attention_dropout_rate=0.0).train()
    xs, lens = torch.randn(2, 9, 24), torch.tensor([9, 4])
    grads = []
    for ckpt in (False, True):
        enc.gradient_checkpointing = ckpt
        enc.zero_grad()
        enc(xs, lens)[0].square().sum().backward()
        grads.append([p.grad.clone() for p in enc.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_bad_features_or_lengths_are_named():
    enc = SenseVoiceEncoderSmall(**CONF)
    size = enc.input_size
    with pytest.raises(ValueError, match=rf"SenseVoiceEncoderSmall expects \[B, T, {size}\] features, got \[1, 4, 3\]"):
        enc(torch.zeros(1, 4, 3), torch.tensor([4]))
    with pytest.raises(ValueError, match=r"SenseVoiceEncoderSmall: lengths must be in \[1, 4\].*got \[5\]"):
        enc(torch.zeros(1, 4, size), torch.tensor([5]))


@pytest.mark.parametrize(
    "queries, named",
    [
        ({"language": "zh", "use_itn": True}, r"queries.use_itn is not a key .*FunASR's use_itn / textnorm is itn: tr"),
        ({"textnorm": "withitn"}, r"queries.textnorm is not a key .*itn: true or false here"),
        ({"languages": "zh"}, r"queries.languages is not a key .*did you mean 'language'"),
        ({"language": "<|zh|>"}, r"queries.language '<\|zh\|>' is not one of .*write 'zh', not FunASR's tag"),
        ({"itn": "woitn"}, r"queries.itn must be true or false, got 'woitn' \(FunASR's woitn is itn: false\)"),
    ],
)
def test_funasr_spellings_of_the_queries_are_named_with_the_recipe_key(tmp_path, queries, named):
    """FunASR's generate() spells the query settings language="<|zh|>"-style tags, use_itn=True or
    textnorm="withitn": a recipe that copies them is told which key and value the queries take."""
    d = write_funasr_dir(tmp_path / "sv", model="SenseVoiceSmall", encoder_conf=tiny_sensevoice_conf())
    section = {"type": "sensevoice", "path": str(d), "conf": {"queries": queries}}
    with pytest.raises(ConfigError, match=named):
        build_encoder(from_dict(EncoderConfig, section, "model.encoder"))
