import pytest
import torch

import llmasr
from llmasr.config_io import ConfigError
from llmasr.models.ctc_compress import ctc_compress, ctc_segments
from llmasr.testing.tiny_recipe import random_batch, tiny_model_section

BLANK = 0


def one_hot_log_probs(paths: list[list[int]], vocab: int = 6) -> torch.Tensor:
    """[B, T, V] log-probs whose argmax is `paths` (padded with blanks)."""
    t = max(len(p) for p in paths)
    lp = torch.full((len(paths), t, vocab), -5.0)
    for b, path in enumerate(paths):
        for i, label in enumerate(path + [BLANK] * (t - len(path))):
            lp[b, i, label] = 0.0
    return lp.log_softmax(-1)


def test_segments_follow_the_best_path_runs():
    # blank, 3 3, blank blank, 3, 5 5, blank: repeated 3s split by a blank are two segments
    path = [0, 3, 3, 0, 0, 3, 5, 5, 0]
    x = torch.arange(9, dtype=torch.float32).view(1, 9, 1)
    lp = one_hot_log_probs([path])
    lens = torch.tensor([9])
    y, n = ctc_compress(x, lens, lp, BLANK, "avg")
    assert n.tolist() == [6]
    assert y[0, :, 0].tolist() == [0.0, 1.5, 3.5, 5.0, 6.5, 8.0]
    y, n = ctc_compress(x, lens, lp, BLANK, "avg_no_blank")
    assert n.tolist() == [3]
    assert y[0, :, 0].tolist() == [1.5, 5.0, 6.5]
    y, n = ctc_compress(x, lens, lp, BLANK, "none")
    assert y is x and n is lens


def test_padding_frames_never_count_and_batching_changes_nothing():
    torch.manual_seed(0)
    paths = [[0, 2, 2, 0, 4, 4, 4, 0], [1, 1, 0, 3]]
    lens = torch.tensor([8, 4])
    lp = one_hot_log_probs(paths)
    # padding of utterance 1 (frames 4..7) holds label 4 and large values: it must not leak in
    lp[1, 4:] = one_hot_log_probs([[4, 4, 4, 4]])[0]
    x = torch.randn(2, 8, 3)
    x[1, 4:] = 1e6
    for mode in ("avg", "avg_no_blank"):
        y, n = ctc_compress(x, lens, lp, BLANK, mode)
        for b in range(2):
            n_b = int(lens[b])
            alone, n_alone = ctc_compress(x[b : b + 1, :n_b], lens[b : b + 1], lp[b : b + 1, :n_b], BLANK, mode)
            assert int(n[b]) == int(n_alone[0])
            torch.testing.assert_close(y[b, : n[b]], alone[0])
        assert float(y.abs().max()) < 1e3


def test_an_all_blank_utterance_keeps_one_vector():
    x = torch.randn(2, 5, 4)
    lp = one_hot_log_probs([[0, 0, 0, 0, 0], [0, 2, 0, 0, 0]])
    lens = torch.tensor([3, 5])
    y, n = ctc_compress(x, lens, lp, BLANK, "avg_no_blank")
    assert n.tolist() == [1, 1]
    torch.testing.assert_close(y[0, 0], x[0, :3].mean(0))
    torch.testing.assert_close(y[1, 0], x[1, 1])
    seg, kept, n_seg = ctc_segments(lp.argmax(-1), lens, BLANK, drop_blank=True)
    assert kept[0].tolist() == [True, True, True, False, False] and n_seg.tolist() == [1, 1]


def test_gradient_reaches_every_kept_frame_as_its_share_of_the_mean():
    x = torch.zeros(1, 6, 2, requires_grad=True)
    lp = one_hot_log_probs([[0, 3, 3, 3, 0, 5]])
    y, _ = ctc_compress(x, torch.tensor([6]), lp, BLANK, "avg_no_blank")
    y.sum().backward()
    assert x.grad[0, :, 0].tolist() == pytest.approx([0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, 1.0])


def test_mismatched_shapes_and_unknown_modes_are_named():
    x, lp = torch.zeros(1, 4, 2), one_hot_log_probs([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"\[1, 3, 6\].*\[1, 4, 2\]"):
        ctc_compress(x, torch.tensor([3]), lp, BLANK, "avg")
    with pytest.raises(ValueError, match="mode must be one of"):
        ctc_compress(x, torch.tensor([3]), lp, BLANK, "max")


def test_speech_llm_feeds_the_llm_one_vector_per_ctc_segment(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir, ctc_weight=0.3)
    section["adaptor"] = {"type": "linear", "downsample": 1, "ffn_dim": 32, "ctc_compress": "avg_no_blank"}
    torch.manual_seed(0)
    model = llmasr.build_model(section)
    model.eval()
    batch = random_batch(model, ["zero one two", "three four"], frames=[40, 28], seed=1)
    with torch.no_grad():
        enc, enc_lens = model.encoder(batch.feats, batch.feat_lens)
        lp = model.ctc_head(enc, enc_lens)
        _, want = ctc_segments(lp.argmax(-1), enc_lens, model.ctc_tokenizer.blank_id, drop_blank=True)[1:]
        _, _, audio, audio_lens = model.encode_audio(batch.feats, batch.feat_lens)
    assert audio_lens.tolist() == want.tolist()
    assert audio.shape[1] == int(want.max())
    model.train()
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and float(out.ctc_loss_sum) > 0
    enc_grads = [p.grad for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in enc_grads)
    # generation reads the same compressed audio; batched output equals one-by-one output
    model.eval()
    both = model.generate(batch, max_new_tokens=4)
    for i in range(2):
        assert model.generate(batch.select([i]), max_new_tokens=4) == both[i : i + 1]


def test_compression_without_a_ctc_head_is_a_config_error(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir, ctc_weight=0.0)
    section["adaptor"] = {"type": "linear", "ctc_compress": "avg"}
    with pytest.raises(ConfigError, match=r"model.adaptor.ctc_compress: 'avg'.*model.ctc.weight is 0.0"):
        llmasr.build_model(section)
    section["adaptor"]["ctc_compress"] = "mean"
    section["ctc"] = {"weight": 0.3}
    with pytest.raises(ConfigError, match="ctc_compress"):
        llmasr.build_model(section)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])  # fmt: skip
def test_a_long_segment_of_a_bf16_encoder_is_its_true_mean(device):
    """600 frames in one segment (a long silence): the bf16 output is the mean to bf16 precision. Summed in bf16 as
    CUDA sums (one rounding an add), the count stopped at 256 and the mean drifted."""
    x = (torch.arange(600, dtype=torch.float32) / 100.0).view(1, 600, 1).repeat(1, 1, 4).to(device)
    lp = one_hot_log_probs([[0] * 600]).to(device)
    y, n = ctc_compress(x.bfloat16(), torch.tensor([600]), lp, BLANK, "avg")
    assert y.dtype == torch.bfloat16 and n.tolist() == [1]
    assert float(y[0, 0, 0]) == pytest.approx(float(x.mean()), rel=4e-3)
