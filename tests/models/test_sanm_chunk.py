"""Paraformer-streaming's encoder with `context: chunked` (llmasr.models.sanm_chunk): the chunk layout of every
configuration, what a frame's output may depend on, padding and batching, training (a configuration drawn per forward,
train_chunks), and the checks of the settings. FunASR's own outputs for it: tests/models/test_parity_zoo.py (pinned,
configuration 0; configuration i here equals an encoder of configuration i alone) and
tests/models/test_parity_sanm_chunk.py (live, opt-in, every configuration)."""

from __future__ import annotations

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.sanm import SANMEncoder
from llmasr.models.sanm_chunk import CHUNK_KEYS, ChunkDraw, ChunkSettings, chunk_layout
from llmasr.testing.tiny_funasr import tiny_streaming_conf

INPUT = 24
# chunk configuration 0 of each: FunASR Paraformer-streaming's own; left context; look-ahead longer than the stride
# (rows past an utterance's end inside an earlier chunk); no look-ahead and no look-back; an FSMN shifted left; and
# three configurations of those kinds (streaming, sanm_shfit: FunASR's two)
CONFIGS = {
    "streaming": {},
    "pad_left": {"chunk_size": [10], "stride": [5], "pad_left": [2], "encoder_att_look_back_factor": [1]},
    "long_lookahead": {"chunk_size": [16], "stride": [4], "pad_left": [0], "encoder_att_look_back_factor": [2]},
    "no_overlap": {"chunk_size": [6], "stride": [6], "pad_left": [0], "encoder_att_look_back_factor": [0]},
    "sanm_shfit": {"kernel_size": 7, "sanm_shfit": 2},
    "three": {
        "chunk_size": [8, 6, 16],
        "stride": [4, 6, 4],
        "pad_left": [1, 0, 0],
        "encoder_att_look_back_factor": [2, 0, 2],
    },  # fmt: skip
}


def make_conf(name: str) -> dict:
    conf = {**tiny_streaming_conf(), "dropout_rate": 0.0, "attention_dropout_rate": 0.0, **CONFIGS[name]}
    if "chunk_size" in CONFIGS[name]:
        conf["decoder_att_look_back_factor"] = [1]
    return conf


MULTI = [name for name in sorted(CONFIGS) if len(make_conf(name)["chunk_size"]) > 1]


def make(name: str = "streaming", context: str = "chunked", **overrides) -> SANMEncoder:
    torch.manual_seed(0)
    return SANMEncoder(input_size=INPUT, context=context, **{**make_conf(name), **overrides})


def reach(enc: SANMEncoder, t: int) -> int:
    """The last frame of the chunk in which frame t is new: nothing after it may change t's output."""
    chunk = enc.chunk
    size, stride, left = chunk.chunk_size[0], chunk.stride[0], chunk.pad_left[0]
    return (t // stride) * stride - left + size - 1


def test_layout_by_hand():
    # chunk 4 rows, stride 2, 1 row of left context, gap (5 - 1) // 2 = 2 rows; 5 frames -> 3 chunks, cut after
    # the last frame's row
    chunk = ChunkSettings.from_conf({"chunk_size": [4], "stride": [2], "pad_left": [1]})
    layout = chunk_layout(chunk, kernel_size=5, frames=5)
    assert layout.source.tolist() == [-1, -1, -1, 0, 1, 2, -1, -1, 1, 2, 3, 4, -1, -1, 3, 4]
    assert layout.output_rows.tolist() == [3, 4, 9, 10, 15]
    assert layout.lengths(torch.tensor([5, 3, 2, 1])).tolist() == [16, 10, 5, 4]
    assert layout.content.tolist() == [i % 6 >= 2 for i in range(16)]
    att = layout.attend
    # chunk 1's first stride rows (8, 9) see their own chunk and chunk 0's first stride rows (2, 3); its others
    # (10, 11) their own chunk only; gap rows see nothing and are seen by nothing
    assert att[8].nonzero().flatten().tolist() == [2, 3, 8, 9, 10, 11]
    assert att[11].nonzero().flatten().tolist() == [8, 9, 10, 11]
    assert not att[:, [0, 1, 6, 7]].any() and not att[[0, 1, 6, 7]].any()
    assert layout.attend.shape == (16, 16)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_frame_does_not_hear_past_its_chunk(name):
    enc = make(name).eval()
    torch.manual_seed(1)
    xs, lens = torch.randn(1, 37, INPUT), torch.tensor([37])
    with torch.no_grad():
        base = enc(xs, lens)[0]
        for t in (0, 5, 13, 22):
            last = reach(enc, t)
            later = xs.clone()
            later[:, last + 1 :] = torch.randn(1, 36 - last, INPUT)
            torch.testing.assert_close(enc(later, lens)[0][0, t], base[0, t], rtol=0, atol=1e-6)
            if last + 1 < 37:  # and it does hear its chunk's last frame (the look-ahead is used)
                ahead = xs.clone()
                ahead[:, last] = torch.randn(INPUT)
                assert (enc(ahead, lens)[0][0, t] - base[0, t]).abs().max() > 1e-4


def test_full_context_hears_the_whole_utterance():
    enc = make(context="full").eval()
    xs, lens = torch.randn(1, 30, INPUT), torch.tensor([30])
    later = xs.clone()
    later[:, 20:] = torch.randn(1, 10, INPUT)
    with torch.no_grad():
        assert (enc(later, lens)[0][0, 0] - enc(xs, lens)[0][0, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_output_equals_one_by_one(name):
    enc = make(name).eval()
    lengths = [33, 24, 17, 8, 3, 1]  # whole and partial chunks, one frame
    xs = torch.randn(len(lengths), 36, INPUT)  # padded past the longest too
    with torch.no_grad():
        batched, out_lens = enc(xs, torch.tensor(lengths))
        for b, n in enumerate(lengths):
            alone = enc(xs[b : b + 1, :n], torch.tensor([n]))[0][0]
            torch.testing.assert_close(batched[b, :n], alone, rtol=0, atol=1e-5)
    assert out_lens.tolist() == lengths and batched.shape == (len(lengths), 36, 32)


def test_rows_that_attend_to_nothing_stay_finite_in_training_and_bf16():
    # gap rows, and rows of a short utterance's chunks past its end, have no key; whatever they hold, no output and
    # no gradient of a real row may become NaN through them (the mask is finite for kernels that do not zero them)
    enc = make("long_lookahead").train().to(torch.bfloat16)
    xs = torch.randn(3, 29, INPUT, dtype=torch.bfloat16, requires_grad=True)
    ys, _ = enc(xs, torch.tensor([29, 6, 1]))
    assert torch.isfinite(ys.float()).all()
    ys[0, :29].float().sum().backward()
    assert torch.isfinite(xs.grad.float()).all() and all(torch.isfinite(p.grad.float()).all() for p in enc.parameters())


@pytest.mark.parametrize("index", [0, 1])
def test_gradient_checkpointing_gives_the_same_output_and_gradients(index):
    enc = make().train()
    xs, lens = torch.randn(2, 27, INPUT), torch.tensor([27, 13])
    ys = enc(xs, lens, chunk_index=index)[0]
    ys[0].sum().backward()
    plain = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    enc.gradient_checkpointing = True
    ys2 = enc(xs, lens, chunk_index=index)[0]
    ys2[0].sum().backward()
    torch.testing.assert_close(ys2, ys)
    for a, p in zip(plain, enc.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_context_is_checked():
    with pytest.raises(ConfigError, match=r"SANMEncoder: context must be one of full, chunked, got 'online'"):
        make(context="online")
    plain = {k: v for k, v in tiny_streaming_conf().items() if k not in CHUNK_KEYS}
    with pytest.raises(ConfigError, match=r"context 'chunked' needs chunk settings"):
        SANMEncoder(input_size=INPUT, **{**plain, "input_layer": "pe"}, context="chunked")
    bad = {"chunk_size": [6, 15], "stride": [5, 10], "pad_left": [2, 0]}
    with pytest.raises(ConfigError, match=r"stride \+ pad_left <= chunk_size .* chunk_size 6, stride 5, pad_left 2"):
        make(**bad)
    with pytest.raises(ConfigError, match=r"encoder_att_look_back_factor -1"):
        make(encoder_att_look_back_factor=[-1, 4])
    assert make(**bad, context="full").context == "full"  # configuration 0 is not run: FunASR's other checks only


# -- every configuration: layouts, the draw in training, train_chunks ----------------------------------------------
def test_layout_of_another_configuration_by_hand():
    # configuration 1: chunk 3 rows, stride 3 (no look-ahead), no left context, look-back 2, gap 2; 7 frames -> 3
    # chunks of 2 + 3 rows, the last cut after its first row
    chunk = ChunkSettings.from_conf({"chunk_size": [4, 3], "stride": [2, 3], "pad_left": [1, 0],
                                     "encoder_att_look_back_factor": [1, 2]})  # fmt: skip
    layout = chunk_layout(chunk, kernel_size=5, frames=7, index=1)
    assert layout.source.tolist() == [-1, -1, 0, 1, 2, -1, -1, 3, 4, 5, -1, -1, 6]
    assert layout.output_rows.tolist() == [2, 3, 4, 7, 8, 9, 12]
    assert layout.lengths(torch.tensor([7, 4, 3, 1])).tolist() == [13, 8, 5, 3]
    assert (layout.size, layout.stride, layout.pad_left, layout.gap) == (3, 3, 0, 2)
    att = layout.attend
    # every row is among its chunk's first `stride`: each sees its own chunk and the two before, nothing else
    assert att[12].nonzero().flatten().tolist() == [2, 3, 4, 7, 8, 9, 12]
    assert att[7].nonzero().flatten().tolist() == [2, 3, 4, 7, 8, 9]
    assert att[4].nonzero().flatten().tolist() == [2, 3, 4]
    assert not att[:, [0, 1, 5, 6, 10, 11]].any() and not att[[0, 1, 5, 6, 10, 11]].any()
    # configuration 0 of the same settings is test_layout_by_hand's
    first = chunk_layout(chunk, kernel_size=5, frames=5, index=0)
    assert first.source.tolist() == [-1, -1, -1, 0, 1, 2, -1, -1, 1, 2, 3, 4, -1, -1, 3, 4]
    assert first.output_rows.tolist() == [3, 4, 9, 10, 15]


def test_layouts_are_kept_per_configuration_and_length():
    chunk = ChunkSettings.from_conf({"chunk_size": [4, 3], "stride": [2, 3]})
    a = chunk_layout(chunk, 5, 40, 1)
    assert chunk_layout(chunk, 5, 40, 1) is a  # a batch of the same padded length: built once
    assert chunk_layout(chunk, 5, 40, 0) is not a and chunk_layout(chunk, 5, 41, 1) is not a
    with torch.inference_mode():  # inference tensors cannot be saved for a backward: not shared with training
        assert chunk_layout(chunk, 5, 40, 1) is not a


@pytest.mark.parametrize("name", MULTI)
def test_each_configuration_runs_as_an_encoder_of_that_configuration_alone(name):
    # configuration 0 is pinned against FunASR (test_parity_zoo); configuration i must be the same computation
    enc = make(name).eval()
    conf = ChunkSettings.from_conf(make_conf(name)).to_conf()  # every key one value per configuration
    xs, lengths = torch.randn(4, 41, INPUT), [41, 30, 9, 1]
    with torch.no_grad():
        outs = [enc(xs, torch.tensor(lengths), chunk_index=i)[0] for i in range(len(conf["chunk_size"]))]
        torch.testing.assert_close(enc(xs, torch.tensor(lengths))[0], outs[0], rtol=0, atol=0)  # evaluation: 0
        for i, out in enumerate(outs):
            alone = make(name, **{k: [conf[k][i]] for k in CHUNK_KEYS}).eval()
            want = alone(xs, torch.tensor(lengths))[0]
            for b, n in enumerate(lengths):
                torch.testing.assert_close(out[b, :n], want[b, :n], rtol=0, atol=1e-6)
    assert (outs[1][0, :41] - outs[0][0, :41]).abs().max() > 1e-3  # the configurations compute different things


@pytest.mark.parametrize("name", MULTI)
def test_training_draws_a_configuration_per_forward_as_its_draw_says(name):
    enc = make(name)
    n = len(make_conf(name)["chunk_size"])
    enc.chunk_draw.seed = 5
    xs, lens = torch.randn(2, 33, INPUT), torch.tensor([33, 20])
    with torch.no_grad():
        by_index = [enc.eval()(xs, lens, chunk_index=i)[0] for i in range(n)]
        assert enc.chunk_draw.drawn == 0  # evaluation draws nothing
        enc.train()
        expected, reference = [], ChunkDraw(n, seed=5)
        for _ in range(12):
            expected.append(reference.next())
            torch.testing.assert_close(enc(xs, lens)[0], by_index[expected[-1]], rtol=0, atol=1e-6)
    assert set(expected) == set(range(n))  # every configuration trains (FunASR's uniform draw)
    assert enc.chunk_draw.drawn == 12


def test_train_chunks_first_keeps_configuration_0_in_training():
    enc = make("three", train_chunks="first")
    assert enc.chunk_draw is None and make("three").chunk_draw is not None
    assert make("pad_left").chunk_draw is None  # one configuration: nothing to draw (nor does FunASR)
    xs, lens = torch.randn(2, 33, INPUT), torch.tensor([33, 20])
    with torch.no_grad():
        first = enc.eval()(xs, lens)[0]
        enc.train()
        for _ in range(4):
            torch.testing.assert_close(enc(xs, lens)[0], first, rtol=0, atol=0)


def test_chunk_draw_is_a_function_of_seed_and_count_and_resumes():
    draw = ChunkDraw(3, seed=7)
    whole = [draw.next() for _ in range(40)]
    assert set(whole) == {0, 1, 2}
    assert whole != [ChunkDraw(3, seed=8).next() for _ in range(40)]
    part = ChunkDraw(3, seed=7)
    for _ in range(15):
        part.next()
    state = part.state_dict()
    resumed = ChunkDraw(3)
    resumed.load_state_dict(state)
    assert [resumed.next() for _ in range(25)] == whole[15:]
    with pytest.raises(ValueError, match=r"chunk draw state for 3 chunk configurations, but the encoder has 2"):
        ChunkDraw(2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"chunk_index 3, but there are 3 chunk configurations"):
        make("three")(torch.randn(1, 9, INPUT), torch.tensor([9]), chunk_index=3)


def test_train_chunks_is_checked():
    with pytest.raises(ConfigError, match=r"SANMEncoder: train_chunks must be one of random, first .* got 'all'"):
        make(train_chunks="all")
    with pytest.raises(
        ConfigError, match=r"train_chunks 'first' chooses .* but context is 'full': remove train_chunks"
    ):
        make(context="full", train_chunks="first")
    # a configuration other than 0 that FunASR cannot build: refused when training draws it, named, with the way out
    bad = {"chunk_size": [6, 4], "stride": [5, 3], "pad_left": [0, 2]}
    with pytest.raises(
        ConfigError,
        match=r"in chunk configuration 1 \(train_chunks: random draws it in training; "
        r"train_chunks: first keeps configuration 0\), got chunk_size 4, stride 3",
    ):
        make(**bad)
    assert make(**bad, train_chunks="first").chunk_draw is None
