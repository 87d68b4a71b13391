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
