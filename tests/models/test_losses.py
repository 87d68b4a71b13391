import torch
from torch import nn

from llmasr.models.losses import IGNORE_INDEX, full_logits_cross_entropy, labels_only_cross_entropy


def test_labels_only_loss_equals_full_logits_cross_entropy():
    torch.manual_seed(0)
    vocab, hidden_size = 1000, 16
    head = nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(4, 30, hidden_size)
    labels = torch.full((4, 30), IGNORE_INDEX)
    labels[:, 20:] = torch.randint(0, vocab, (4, 10))
    labels[1, 25:] = IGNORE_INDEX  # padding
    got = labels_only_cross_entropy(hidden, labels, head)
    ref = full_logits_cross_entropy(head(hidden), labels)
    assert int(got.n_tokens) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert torch.allclose(got.loss_sum, ref, rtol=0, atol=1e-6 * max(1.0, float(ref.abs())))
    assert abs(float(got.loss_sum / got.n_tokens) - float(ref / got.n_tokens)) < 1e-6


def test_labels_only_gradient_equals_full_logits_gradient():
    torch.manual_seed(1)
    head = nn.Linear(8, 50)
    hidden = torch.randn(2, 12, 8, requires_grad=True)
    labels = torch.full((2, 12), IGNORE_INDEX)
    labels[:, 6:] = torch.randint(0, 50, (2, 6))
    labels_only_cross_entropy(hidden, labels, head).loss_sum.backward()
    g1, w1 = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.weight.grad = None
    full_logits_cross_entropy(head(hidden), labels).backward()
    assert torch.allclose(hidden.grad, g1, atol=1e-6)
    assert torch.allclose(head.weight.grad, w1, atol=1e-6)


def test_token_accuracy_counts_argmax_hits():
    head = nn.Linear(3, 3, bias=False)
    head.weight.data = torch.eye(3)
    hidden = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])  # position 0 predicts 1 (wrong: argmax 0), position 1 predicts 0
    out = labels_only_cross_entropy(hidden, labels, head)
    assert int(out.n_tokens) == 2 and int(out.n_correct) == 0
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    assert int(labels_only_cross_entropy(hidden, labels, head).n_correct) == 2


def _tiny(kind: str):
    """A tiny causal LM of a family whose forward transforms the output head's logits (random weights)."""
    import transformers

    common = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    if kind == "gemma2":
        config = transformers.Gemma2Config(**common, head_dim=8, final_logit_softcapping=2.0)
        return transformers.Gemma2ForCausalLM(config)
    if kind == "granite":
        return transformers.GraniteForCausalLM(transformers.GraniteConfig(**common, logits_scaling=4.0))
    return transformers.CohereForCausalLM(transformers.CohereConfig(**common, logit_scale=0.25))


def test_the_loss_applies_the_llms_own_logit_transform():
    """Gemma 2's soft cap, Granite's and Cohere's logit scales: the labels-only loss equals the model's own forward
    loss (it had run the raw head, training another distribution than generation scores)."""
    from llmasr.models.llm import causal_lm_parts, logit_transform

    torch.manual_seed(0)
    for kind in ("gemma2", "granite", "cohere"):
        model = _tiny(kind).eval()
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(30.0)  # logits large enough for the transform to matter
        ids = torch.randint(0, 64, (2, 7))
        labels = ids.clone()
        labels[:, :3] = IGNORE_INDEX
        with torch.no_grad():
            ref = model(input_ids=ids, labels=labels).loss * (labels[:, 1:] != IGNORE_INDEX).sum()
            _, decoder, head = causal_lm_parts(model)
            hidden = decoder(input_ids=ids).last_hidden_state
            ours = labels_only_cross_entropy(hidden, labels, head, transform=logit_transform(model.config))
            raw = labels_only_cross_entropy(hidden, labels, head)
        torch.testing.assert_close(ours.loss_sum, ref, rtol=1e-5, atol=1e-4, msg=kind)
        assert abs(float(raw.loss_sum) - float(ref)) > 1.0, kind
    assert logit_transform({"model_type": "qwen2"}) is None
    assert logit_transform({"model_type": "gemma3", "text_config": {"final_logit_softcapping": 30.0}}) is not None


def test_the_label_mask_is_searched_once():
    """The labelled positions are found once (one nonzero) for both the hidden states and the targets."""
    from llmasr.testing.op_count import aten_ops

    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 8)
    labels = torch.tensor([[IGNORE_INDEX] * 3 + [4, 5, 6], [IGNORE_INDEX] * 4 + [7, 8]])
    head = nn.Linear(8, 10)
    assert aten_ops(labels_only_cross_entropy, hidden, labels, head)["aten::nonzero"] == 1


class _SumsCE(nn.Module):
    """What liger's fused linear cross-entropy returns (the summed CE of `_input @ lin_weight.T`, the token
    accuracy), for LigerLabelsHead without CUDA."""

    def __init__(self, reduction="sum", return_token_accuracy=True):
        super().__init__()

    def forward(self, lin_weight, _input, target, bias=None):
        from types import SimpleNamespace

        logits = nn.functional.linear(_input, lin_weight, bias).float()
        hits = (logits.argmax(-1) == target).float().mean()
        return SimpleNamespace(loss=nn.functional.cross_entropy(logits, target, reduction="sum"), token_accuracy=hits)


def test_group_sums_are_each_groups_rows_alone():
    """`groups`: each group's (loss, tokens, hits) equal its rows' own call, plain and fused alike; the batch's sums
    are those without groups, and a group with no row sums to 0."""
    from llmasr.models.fused_kernels import LigerLabelsHead

    torch.manual_seed(2)
    head = nn.Linear(8, 40, bias=False)
    hidden = torch.randn(4, 14, 8)
    labels = torch.full((4, 14), IGNORE_INDEX)
    labels[:, 7:] = torch.randint(0, 40, (4, 7))
    labels[2, 11:] = IGNORE_INDEX
    with torch.no_grad():  # some hits in rows of both groups
        labels[:2, 8:11] = head(hidden[:2, 7:10]).argmax(-1)
    groups = torch.tensor([2, 0, 2, 0])
    for fused in (None, LigerLabelsHead(head, _SumsCE)):
        whole = labels_only_cross_entropy(hidden, labels, head, fused)
        got = labels_only_cross_entropy(hidden, labels, head, fused, groups=groups, n_groups=3)
        assert torch.equal(got.loss_sum, whole.loss_sum) and int(got.n_correct) == int(whole.n_correct) >= 6
        assert got.by_group[1].tolist() == [0.0, 0.0, 0.0]
        for g, rows in [(0, [1, 3]), (2, [0, 2])]:
            alone = labels_only_cross_entropy(hidden[rows], labels[rows], head, fused)
            torch.testing.assert_close(got.by_group[g, 0], alone.loss_sum.float(), rtol=1e-5, atol=1e-5)
            assert got.by_group[g, 1:].tolist() == [float(alone.n_tokens), float(alone.n_correct)]
