"""Adaptors: shapes, lengths, padding invariance, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.adaptors import build_adaptor
from llmasr.models.config import AdaptorConfig

IN_DIM, LLM_DIM = 16, 24
TYPES = ["linear", "conv", "transformer", "qformer"]


def make(kind: str, k: int = 3, **kw):
    own = {"transformer": {"n_layer": 2, "n_head": 4}, "qformer": {"n_layer": 2, "n_head": 4, "num_queries": 2}}
    cfg = AdaptorConfig(type=kind, downsample=k, ffn_dim=32, **own.get(kind, {}), **kw)
    torch.manual_seed(0)
    return build_adaptor(cfg, IN_DIM, LLM_DIM).eval()


def expected_lengths(kind: str, lens: torch.Tensor, k: int, q: int = 2) -> list[int]:
    if kind == "linear":
        return torch.clamp(lens // k, min=1).tolist()
    if kind in ("conv", "transformer"):
        return ((lens - 1) // k + 1).tolist()
    return (-(-lens // (k * q)) * q).tolist()


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_shapes_and_lengths(kind, k):
    model = make(kind, k)
    lens = torch.tensor([13, 7, 2, 1])
    x = torch.randn(4, 13, IN_DIM)
    y, out_lens = model(x, lens)
    assert y.shape[0] == 4 and y.shape[2] == LLM_DIM
    assert y.shape[1] == int(out_lens.max())
    assert out_lens.dtype == torch.long
    assert out_lens.tolist() == model.output_lengths(lens).tolist() == expected_lengths(kind, lens, k)
    assert min(out_lens.tolist()) >= 1
    nonzero_rows = (y.abs().sum(-1) > 0).sum(1)
    assert nonzero_rows.tolist() == out_lens.tolist()


def test_linear_drops_trailing_frames_and_pads_short_items():
    model = make("linear", 3)
    x = torch.randn(1, 8, IN_DIM)
    y, n = model(x, torch.tensor([8]))
    assert n.tolist() == [2]  # frames 6 and 7 are dropped, as FunASR does
    y2, _ = model(x[:, :6], torch.tensor([6]))
    torch.testing.assert_close(y, y2)
    # Two frames with k=3: one token, from the two frames padded up with a zero frame.
    y3, n3 = model(x[:, :2], torch.tensor([2]))
    assert n3.tolist() == [1]
    padded = torch.cat([x[:, :2], torch.zeros(1, 1, IN_DIM)], dim=1)
    torch.testing.assert_close(y3, model(padded, torch.tensor([3]))[0])


@pytest.mark.parametrize("kind", TYPES)
def test_padding_invariance(kind):
    model = make(kind, 2)
    long = torch.randn(1, 19, IN_DIM)
    short = torch.randn(1, 5, IN_DIM)
    alone, n_alone = model(short, torch.tensor([5]))
    # Garbage (not zeros) in the padded frames: the adaptor must ignore it.
    batch = torch.cat([long, torch.cat([short, 100 * torch.randn(1, 14, IN_DIM)], dim=1)])
    y, n = model(batch, torch.tensor([19, 5]))
    assert n[1] == n_alone[0]
    torch.testing.assert_close(y[1, : n[1]], alone[0, : n_alone[0]], atol=1e-5, rtol=1e-5)
    assert torch.all(y[1, n[1] :] == 0)


@pytest.mark.parametrize("kind", TYPES)
def test_gradients_reach_every_parameter(kind):
    model = make(kind, 2).train()
    x = torch.randn(3, 11, IN_DIM, requires_grad=True)
    y, n = model(x, torch.tensor([11, 6, 3]))
    y.pow(2).sum().backward()
    assert x.grad is not None and x.grad[:, :3].abs().sum() > 0
    assert torch.all(x.grad[2, 3:] == 0)  # padded frames get no gradient
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_transformer_state_dict_uses_funasr_names():
    keys = set(make("transformer", 2).state_dict())
    for key in [
        "linear1.weight",
        "linear2.bias",
        "blocks.0.self_attn.linear_q.weight",
        "blocks.1.self_attn.linear_out.bias",
        "blocks.0.feed_forward.w_1.weight",
        "blocks.1.norm2.weight",
    ]:
        assert key in keys
    assert make("transformer", 2).blocks[0].feed_forward.w_1.out_features == LLM_DIM // 4
    assert set(make("linear", 2).state_dict()) == {"linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"}


def test_unknown_type_names_choices():
    cfg = AdaptorConfig(type="mlp")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'mlp'.*linear, conv, transformer, qformer"):
        build_adaptor(cfg, IN_DIM, LLM_DIM)


def test_bad_heads_and_downsample():
    with pytest.raises(ConfigError, match="n_head"):
        build_adaptor(AdaptorConfig(type="transformer", n_head=5), IN_DIM, LLM_DIM)
    with pytest.raises(ConfigError, match="n_head"):
        build_adaptor(AdaptorConfig(type="qformer", n_head=5), IN_DIM, LLM_DIM)
    with pytest.raises(ConfigError, match="downsample"):
        build_adaptor(AdaptorConfig(type="linear", downsample=0), IN_DIM, LLM_DIM)


@pytest.mark.parametrize("kind", TYPES)
def test_bad_inputs_are_named(kind):
    model = make(kind, 2)
    with pytest.raises(ValueError, match="utterance 1"):
        model(torch.randn(2, 6, IN_DIM), torch.tensor([6, 0]))
    with pytest.raises(ValueError, match="utterance 0"):
        model(torch.randn(2, 6, IN_DIM), torch.tensor([7, 3]))
    with pytest.raises(ValueError, match=r"\[B, T, 16\]"):
        model(torch.randn(2, 6, IN_DIM + 1), torch.tensor([6, 3]))


def test_llm_dim_comes_from_the_caller():
    model = build_adaptor(AdaptorConfig(type="conv", ffn_dim=8), IN_DIM, 40)
    y, _ = model(torch.randn(1, 4, IN_DIM), torch.tensor([4]))
    assert y.shape[-1] == 40


def test_qformer_rate():
    # window = downsample * num_queries frames -> num_queries tokens: one token per `downsample` frames.
    model = make("qformer", 4)
    y, n = model(torch.randn(1, 80, IN_DIM), torch.tensor([80]))
    assert n.tolist() == [20] and y.shape[1] == 20


def test_heads_that_do_not_divide_the_llm_width_name_their_key():
    """The transformer adaptor's blocks work at the LLM width; the error had named no recipe key."""
    with pytest.raises(ConfigError, match=r"model.adaptor.n_head: .* LLM width 24, which n_head=5"):
        build_adaptor(AdaptorConfig(type="transformer", n_head=5), IN_DIM, LLM_DIM)


def test_a_qformer_without_layers_is_refused():
    """The queries read the frames only through the Q-Former's layers: with n_layer 0 every utterance had become the
    same embeddings (the learned queries, projected), whatever its audio, and training went on."""
    with pytest.raises(ConfigError, match=r"model.adaptor.n_layer: must be >= 1 for a qformer.*got 0"):
        build_adaptor(AdaptorConfig(type="qformer", n_layer=0, n_head=4, num_queries=2), IN_DIM, LLM_DIM)
    one = build_adaptor(AdaptorConfig(type="qformer", n_layer=1, n_head=4, num_queries=2), IN_DIM, LLM_DIM).eval()
    lens = torch.tensor([8])
    assert not torch.allclose(one(torch.randn(1, 8, IN_DIM), lens)[0], one(torch.randn(1, 8, IN_DIM), lens)[0])
