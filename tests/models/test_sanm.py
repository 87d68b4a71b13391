"""SANMEncoder: shapes, lengths, padding invariance, gradient checkpointing, config checking."""

from __future__ import annotations

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.sanm import SANMEncoder, sinusoidal_position_encoding
from llmasr.testing.tiny_funasr import tiny_sanm_conf


def make(**overrides) -> SANMEncoder:
    torch.manual_seed(0)
    return SANMEncoder(input_size=560, **{**tiny_sanm_conf(), **overrides})


def test_shapes_lengths_and_key_names():
    enc = make().eval()
    xs = torch.randn(3, 12, 560)
    lens = torch.tensor([12, 7, 1])
    ys, ys_lens = enc(xs, lens)
    assert ys.shape == (3, 12, 32)
    assert enc.output_size() == 32
    assert ys_lens.tolist() == [12, 7, 1]
    sd = enc.state_dict()
    assert sd["encoders0.0.self_attn.linear_q_k_v.weight"].shape == (96, 560)
    assert sd["encoders0.0.self_attn.fsmn_block.weight"].shape == (32, 1, 11)
    assert "encoders0.0.self_attn.fsmn_block.bias" not in sd
    assert sd["encoders0.0.norm1.weight"].shape == (560,)
    assert sd["encoders.0.self_attn.linear_q_k_v.weight"].shape == (96, 32)
    assert {k.split(".")[0] for k in sd} == {"encoders0", "encoders", "after_norm"}
    assert not any(k.startswith("encoders.1.") for k in sd)  # num_blocks 2 = encoders0.0 + encoders.0
    for k in ("self_attn.linear_out.weight", "feed_forward.w_1.weight", "feed_forward.w_2.bias", "norm2.bias"):
        assert f"encoders.0.{k}" in sd


def test_padding_does_not_change_valid_frames():
    enc = make().eval()
    short = torch.randn(1, 5, 560)
    long = torch.randn(1, 14, 560)
    batch = torch.zeros(2, 14, 560)
    batch[0] = long[0]
    batch[1, :5] = short[0]
    batch[1, 5:] = 1e3  # garbage in the padding must not leak
    with torch.no_grad():
        ys, _ = enc(batch, torch.tensor([14, 5]))
        alone_short, _ = enc(short, torch.tensor([5]))
        alone_long, _ = enc(long, torch.tensor([14]))
    torch.testing.assert_close(ys[1, :5], alone_short[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ys[0], alone_long[0], atol=1e-5, rtol=1e-5)


def test_position_encoding_formula():
    pe = sinusoidal_position_encoding(3, 8)
    # positions start at 1; timescale increment ln(10000) / (depth/2 - 1); [sin | cos] halves
    inc = torch.log(torch.tensor(10000.0)) / 3
    inv = torch.exp(-inc * torch.arange(4.0))
    pos = torch.tensor([1.0, 2.0, 3.0])[:, None]
    torch.testing.assert_close(pe[0], torch.cat([torch.sin(pos * inv), torch.cos(pos * inv)], 1))


def test_input_scaled_before_position_encoding():
    # a zero-block encoder is not allowed, so check via the first block's input: hook norm1
    enc = make().eval()
    seen = {}
    enc.encoders0[0].norm1.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    xs = torch.randn(1, 4, 560)
    with torch.no_grad():
        enc(xs, torch.tensor([4]))
    torch.testing.assert_close(seen["x"], xs * 32**0.5 + sinusoidal_position_encoding(4, 560))


def test_gradient_checkpointing_same_output_and_grads():
    enc = make(dropout_rate=0.0, attention_dropout_rate=0.0)
    enc.train()
    xs = torch.randn(2, 9, 560)
    lens = torch.tensor([9, 6])

    def run():
        enc.zero_grad()
        x = xs.clone().requires_grad_(True)
        ys, _ = enc(x, lens)
        (ys[0].square().sum() + ys[1, :6].sum()).backward()
        return ys.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in enc.named_parameters()}

    y0, gx0, g0 = run()
    enc.gradient_checkpointing = True
    y1, gx1, g1 = run()
    torch.testing.assert_close(y0, y1)
    torch.testing.assert_close(gx0, gx1)
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], msg=name)


def test_gradient_checkpointing_with_dropout_matches_plain_run():
    # the recomputation restores the RNG state, so dropout masks in backward match those of the forward
    enc = make(dropout_rate=0.3, attention_dropout_rate=0.3)
    enc.train()
    xs = torch.randn(2, 9, 560)
    lens = torch.tensor([9, 6])
    results = []
    for flag in (False, True):
        enc.gradient_checkpointing = flag
        enc.zero_grad()
        torch.manual_seed(3)
        ys, _ = enc(xs, lens)
        ys.square().sum().backward()
        results.append((ys.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)


def test_dropout_active_in_training_only():
    enc = make(dropout_rate=0.5)
    xs = torch.randn(1, 6, 560)
    lens = torch.tensor([6])
    enc.eval()
    with torch.no_grad():
        a, _ = enc(xs, lens)
        b, _ = enc(xs, lens)
    torch.testing.assert_close(a, b)
    enc.train()
    with torch.no_grad():
        c, _ = enc(xs, lens)
    assert not torch.allclose(a, c)


def test_bad_lengths_and_shapes():
    enc = make().eval()
    with pytest.raises(ValueError, match="lengths"):
        enc(torch.randn(2, 5, 560), torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="lengths"):
        enc(torch.randn(2, 5, 560), torch.tensor([6, 5]))
    with pytest.raises(ValueError, match=r"\[B, T, 560\]"):
        enc(torch.randn(2, 5, 80), torch.tensor([5, 5]))


def test_harmless_funasr_keys_accepted():
    make(
        tf2torch_tensor_name_prefix_torch="encoder",
        tf2torch_tensor_name_prefix_tf="seq2seq/encoder",
        positionwise_conv_kernel_size=1,
        interctc_layer_idx=[],
        lora_list=None,
        lora_rank=8,
    )


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"attention_head": 4}, "attention_head"),
        (
            {"droput_rate": 0.1},
            r"unknown encoder_conf key 'droput_rate' \(value 0.1\); did you mean 'dropout_rate'\?",
        ),
        ({"input_layer": "conv2d"}, "input_layer"),
        ({"selfattention_layer_type": "selfattn"}, "selfattention_layer_type"),
        ({"positionwise_layer_type": "conv1d"}, "positionwise_layer_type"),
        ({"pos_enc_class": "ScaledPositionalEncoding"}, "pos_enc_class"),
        ({"lora_list": ["q", "v"]}, "lora_list"),
        ({"concat_after": True}, "concat_after"),
        ({"attention_heads": 5}, "attention_heads 5"),
    ],
)
def test_config_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        make(**overrides)


def test_a_block_issues_no_mask_conversion_and_no_padded_copy():
    """The key mask is made once per forward in the additive form scaled_dot_product_attention would make of a bool
    mask at every call (where / scalar_tensor in each of 50 blocks, forward and recomputation), and the FSMN's
    symmetric zero padding is the convolution's own (no constant_pad_nd copy of v per block): the ops two more
    blocks add hold neither."""
    from llmasr.testing.op_count import aten_ops

    xs, lens = torch.randn(2, 13, 560), torch.tensor([13, 6])

    def ops(blocks: int):
        enc = make(num_blocks=blocks).train()
        return aten_ops(lambda: enc(xs, lens)[0].sum().backward())

    per_two_blocks = ops(4) - ops(2)
    assert per_two_blocks["aten::scaled_dot_product_attention"] == 2
    # a bool mask's conversion is a `where` per call; the CPU's math kernel has one of its own in _safe_softmax
    assert per_two_blocks["aten::where"] == per_two_blocks["aten::_safe_softmax"]
    assert per_two_blocks["aten::constant_pad_nd"] == per_two_blocks["aten::pad"] == 0


def test_the_once_made_key_bias_gives_the_bool_masks_attention_and_gradients():
    """key_padding_bias is what sdpa makes of the bool mask (0 / -inf in the query's dtype), with rows 8 elements
    apart (the memory-efficient kernel's alignment) and its own length; outputs and gradients are the bool mask's."""
    import torch.nn.functional as F

    from llmasr.models.attention_kernels import key_padding_bias

    valid = torch.arange(13)[None, :] < torch.tensor([13, 6, 1])[:, None]
    for dtype in (torch.float32, torch.bfloat16):
        bias = key_padding_bias(valid, dtype)
        assert bias.shape == (3, 1, 1, 13) and bias.dtype == dtype and bias.stride(0) % 8 == 0
        q = torch.randn(3, 4, 13, 8, dtype=dtype, requires_grad=True)
        got, want = (F.scaled_dot_product_attention(q, q, q, attn_mask=m) for m in (bias, valid[:, None, None, :]))
        assert torch.equal(got, want)
        g_got, g_want = (torch.autograd.grad(y.float().square().sum(), q)[0] for y in (got, want))
        assert torch.equal(g_got, g_want)


def test_shifted_fsmn_still_pads_left_more_than_right():
    """sanm_shfit > 0 shifts the FSMN window into the future: the padding stays explicit and asymmetric."""
    enc = make(sanm_shfit=2).eval()
    attn = enc.encoders[0].self_attn
    assert attn.padding == (7, 3) and attn.fsmn_block.padding == (0,)
    plain = make().encoders[0].self_attn
    assert plain.padding is None and plain.fsmn_block.padding == (5,)


@pytest.mark.parametrize(
    ("shape", "lens", "message"),
    [
        ((2, 9, 80), [9, 5], r"SANMEncoder expects \[B, T, 560\] features, got \[2, 9, 80\]"),
        ((2, 9, 560), [10, 5], r"SANMEncoder: lengths must be in \[1, 9\] \(one per item\), got \[10, 5\]"),
        ((2, 9, 560), [0, 5], r"lengths must be in \[1, 9\].*got \[0, 5\]"),
        ((2, 9, 560), [9], r"lengths must be in \[1, 9\] \(one per item\), got \[9\]"),
    ],
)
def test_bad_features_or_lengths_are_named(shape, lens, message):
    with pytest.raises(ValueError, match=message):
        make()(torch.zeros(shape), torch.tensor(lens))
