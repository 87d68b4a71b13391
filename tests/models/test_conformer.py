"""ConformerEncoder: lengths per subsampling variant, padding invariance, checkpointing, config and load errors."""

from __future__ import annotations

import copy

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.conformer import ConformerEncoder
from llmasr.models.state_dict import CheckpointMismatchError, load_into
from llmasr.models.subsampling import TooShortInputError, min_input_frames, subsampled_lengths
from llmasr.testing.tiny_whisper import tiny_conformer_conf

VARIANTS = ["conv2d", "conv2d2", "conv2d6", "conv2d8", "linear"]


def small_conf(input_layer: str = "conv2d", rel_pos_type: str = "latest", **extra) -> dict:
    conf = tiny_conformer_conf(input_size=24)
    conf.update(input_layer=input_layer, rel_pos_type=rel_pos_type, cnn_module_kernel=5, **extra)
    return conf


def randomised(conf: dict, seed: int = 0) -> ConformerEncoder:
    torch.manual_seed(seed)
    enc = ConformerEncoder(**conf)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    return enc


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_lengths_match_conv_arithmetic(variant):
    enc = randomised(small_conf(variant)).eval()
    for n in range(min_input_frames(variant), 40, 3):
        with torch.no_grad():
            ys, ys_lens = enc(torch.randn(1, n, 24), torch.tensor([n]))
        assert ys.shape == (1, int(ys_lens[0]), 32), (variant, n, ys.shape, ys_lens)
    lens = torch.tensor([50, 31, 17])
    with torch.no_grad():
        ys, ys_lens = enc(torch.randn(3, 50, 24), lens)
    assert torch.equal(ys_lens, subsampled_lengths(lens, variant))
    assert ys.size(1) == int(ys_lens.max())
    for b in range(3):
        assert torch.all(ys[b, int(ys_lens[b]) :] == 0)


def test_subsampling_formulas():
    lens = torch.tensor([7, 8, 11, 15, 100, 3])
    assert subsampled_lengths(lens, "conv2d").tolist() == [1, 1, 2, 3, 24, 0]
    assert subsampled_lengths(lens, "conv2d6").tolist() == [0, 0, 1, 1, 15, 0]
    assert subsampled_lengths(lens, "conv2d8").tolist() == [0, 0, 0, 1, 11, 0]
    assert subsampled_lengths(lens, "conv2d2").tolist() == [1, 1, 3, 5, 47, 0]
    assert subsampled_lengths(lens, "linear").tolist() == lens.tolist()
    assert [min_input_frames(v) for v in ("conv2d", "conv2d2", "conv2d6", "conv2d8")] == [7, 7, 11, 15]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rel_pos_type", ["latest", "legacy"])
def test_padding_does_not_change_valid_frames(variant, rel_pos_type):
    enc = randomised(small_conf(variant, rel_pos_type)).eval()
    lens = [45, 30, 19]
    torch.manual_seed(1)
    singles = [torch.randn(1, n, 24) for n in lens]
    with torch.no_grad():
        alone = [enc(x, torch.tensor([x.size(1)])) for x in singles]
        for extra in (0, 13):
            batch = 100.0 * torch.randn(len(lens), max(lens) + extra, 24)  # garbage in the padding
            for b, x in enumerate(singles):
                batch[b, : x.size(1)] = x[0]
            ys, ys_lens = enc(batch, torch.tensor(lens))
            for b, (y1, l1) in enumerate(alone):
                assert int(ys_lens[b]) == int(l1[0])
                torch.testing.assert_close(ys[b, : int(l1[0])], y1[0], atol=2e-5, rtol=1e-5)


def test_legacy_positions_past_5000_padded_frames_are_each_utterances_own():
    """The legacy position table holds positions max(5000, T)-1, ...: an utterance padded past 5000 frames (200 s
    after conv2d subsampling) had read the padded batch's positions, not those it reads alone."""
    torch.manual_seed(0)
    enc = ConformerEncoder(8, output_size=8, attention_heads=2, linear_units=8, num_blocks=1, input_layer="linear",
                           use_cnn_module=False, rel_pos_type="legacy").eval()  # fmt: skip
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn_like(p))
        lens = [20, 5003]
        xs = torch.randn(2, 5010, 8)
        batch, _ = enc(xs, torch.tensor(lens))
        for b, n in enumerate(lens):
            alone, _ = enc(xs[b : b + 1, :n], torch.tensor([n]))
            torch.testing.assert_close(batch[b, :n], alone[0], atol=1e-4, rtol=1e-4)


def test_zero_length_utterance_in_batch():
    enc = randomised(small_conf()).eval()
    with torch.no_grad():
        ys, ys_lens = enc(torch.randn(2, 30, 24), torch.tensor([30, 3]))
    assert ys_lens.tolist() == [6, 0]
    assert torch.isfinite(ys).all() and torch.all(ys[1] == 0)


def test_too_short_batch_is_a_clear_error():
    enc = randomised(small_conf("conv2d8")).eval()
    with pytest.raises(TooShortInputError, match="at least 15"):
        enc(torch.randn(1, 10, 24), torch.tensor([10]))


@pytest.mark.parametrize("rel_pos_type", ["latest", "legacy"])
def test_gradient_checkpointing_same_outputs_and_grads(rel_pos_type):
    conf = small_conf("conv2d", rel_pos_type, stochastic_depth_rate=0.0)
    enc = randomised(conf).train()
    xs, lens = torch.randn(2, 40, 24), torch.tensor([40, 27])
    results = []
    for flag in (False, True):
        run = copy.deepcopy(enc)
        run.gradient_checkpointing = flag
        torch.manual_seed(5)  # same dropout masks in both runs
        ys, ys_lens = run(xs, lens)
        (ys**2).sum().backward()
        grads = {n: p.grad.clone() for n, p in run.named_parameters() if p.grad is not None}
        results.append((ys.detach(), ys_lens, grads, {n: b.clone() for n, b in run.named_buffers()}))
    (y0, l0, g0, b0), (y1, l1, g1, b1) = results
    torch.testing.assert_close(y0, y1)
    assert torch.equal(l0, l1)
    # the recompute in the backward runs BatchNorm again: its running statistics move once a step all the same
    assert any("num_batches_tracked" in n for n in b0) and b0.keys() == b1.keys()
    for name in b0:
        torch.testing.assert_close(b0[name], b1[name], msg=name)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_parameters_beside_float32_buffers_run_the_batch_norm_in_float32(dtype):
    """DeepSpeed's bf16/fp16 engine casts the parameters and keeps the buffers: the BatchNorm's weight is then half
    and its running statistics float32, which torch's batch_norm refused. It runs in float32: the output is the
    float32 encoder's within half precision, and the statistics stay float32 and move as the float32 encoder's."""
    ref = randomised(small_conf(dropout_rate=0.0, positional_dropout_rate=0.0)).train()
    half = copy.deepcopy(ref)
    for p in half.parameters():
        p.data = p.data.to(dtype)
    xs, lens = torch.randn(2, 40, 24), torch.tensor([40, 31])
    for mode in ("train", "eval"):
        ref.train(mode == "train"), half.train(mode == "train")
        want, _ = ref(xs, lens)
        got, _ = half(xs.to(dtype), lens)
        assert got.dtype == dtype and torch.allclose(got.float(), want, atol=0.1, rtol=0.05), mode
    for (name, a), b in zip(ref.named_buffers(), half.buffers()):
        assert b.dtype == a.dtype and torch.allclose(a.float(), b.float(), atol=1e-2), name
    assert int(half.encoders[0].conv_module.norm.num_batches_tracked) == 1


def test_state_dict_names_follow_funasr():
    enc = ConformerEncoder(**small_conf())
    keys = set(enc.state_dict())
    for key in (
        "embed.conv.0.weight",
        "embed.conv.2.bias",
        "embed.out.0.weight",
        "encoders.0.self_attn.linear_q.weight",
        "encoders.0.self_attn.linear_pos.weight",
        "encoders.0.self_attn.pos_bias_u",
        "encoders.0.self_attn.pos_bias_v",
        "encoders.1.feed_forward.w_1.weight",
        "encoders.1.feed_forward_macaron.w_2.bias",
        "encoders.1.conv_module.pointwise_conv1.weight",
        "encoders.1.conv_module.depthwise_conv.weight",
        "encoders.1.conv_module.norm.running_var",
        "encoders.1.conv_module.pointwise_conv2.bias",
        "encoders.1.norm_ff_macaron.weight",
        "encoders.1.norm_mha.weight",
        "encoders.1.norm_conv.weight",
        "encoders.1.norm_final.bias",
        "after_norm.weight",
    ):
        assert key in keys, key
    assert not any("linear_pos.bias" in k or k.startswith("pos_enc") for k in keys)


def test_funasr_recipe_conf_is_accepted_and_defaults_to_legacy():
    # encoder_conf of FunASR's examples/aishell/conformer recipe (no rel_pos_type: FunASR's default, legacy)
    conf = {
        "output_size": 32,
        "attention_heads": 4,
        "linear_units": 64,
        "num_blocks": 1,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.0,
        "input_layer": "conv2d",
        "normalize_before": True,
        "pos_enc_layer_type": "rel_pos",
        "selfattention_layer_type": "rel_selfattn",
        "activation_type": "swish",
        "macaron_style": True,
        "use_cnn_module": True,
        "cnn_module_kernel": 15,
    }
    enc = ConformerEncoder(input_size=80, **conf)
    assert enc.output_size() == 32
    assert enc.encoders[0].self_attn.legacy


def test_unknown_conf_key_is_named():
    """By the recipe's key, with the nearest option (a typo's had been named as encoder.conf.KEY, with no hint)."""
    with pytest.raises(ConfigError, match="encoder.conf.cnn_kernel"):
        ConformerEncoder(**small_conf(), cnn_kernel=15)
    with pytest.raises(
        ConfigError,
        match=r"^model\.encoder\.conf\.droput_rate: not a ConformerEncoder option; did you mean 'dropout_rate'\?",
    ):
        ConformerEncoder(**small_conf(), droput_rate=0.1)


@pytest.mark.parametrize(
    "key,value",
    [
        ("input_layer", "conv2dpad"),
        ("rel_pos_type", "newest"),
        ("pos_enc_layer_type", "abs_pos"),
        ("positionwise_layer_type", "conv1d"),
        ("activation_type", "gelu"),
        ("interctc_layer_idx", [1]),
        ("cnn_module_kernel", 4),
    ],
)
def test_unsupported_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"encoder.conf.{key}"):
        ConformerEncoder(**{**small_conf(), key: value})


def test_mismatched_checkpoint_reports_key_and_both_shapes():
    enc = ConformerEncoder(**small_conf())
    other = ConformerEncoder(**{**small_conf(), "linear_units": 48})
    with pytest.raises(CheckpointMismatchError) as err:
        load_into(enc, other.state_dict(), source="ckpt.pt")
    text = str(err.value)
    assert "encoders.0.feed_forward.w_1.weight: checkpoint [48, 32] vs model [64, 32]" in text
    report = load_into(enc, other.state_dict(), source="ckpt.pt", reinit_keys=["encoders.*.feed_forward*"])
    assert "encoders.0.feed_forward.w_1.weight" in report.reinitialised
