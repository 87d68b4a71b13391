"""A tiny stand-in for SpeechLLM with the same branch attributes: encoder, adaptor, ctc_head, llm."""

import pytest
import torch
from torch import nn


class TinyRMSNorm(nn.Module):
    """Like HF's Qwen2RMSNorm: a norm that is not a torch norm subclass."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class TinyRelAttn(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.linear_q = nn.Linear(dim, dim)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, dim // heads))  # 2-d, must still not decay
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, dim // heads))

    def forward(self, x):
        return self.linear_q(x) + self.pos_bias_u.flatten().mean() + self.pos_bias_v.flatten().mean()


class FakeSpeechLLM(nn.Module):
    def __init__(self, freeze_encoder=False, freeze_llm=False, ctc=True, dim=8, vocab=12):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, dim), TinyRelAttn(dim), nn.LayerNorm(dim))
        self.adaptor = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim, bias=False))
        self.ctc_head = nn.Linear(dim, vocab) if ctc else None
        self.llm = nn.ModuleDict(
            {
                "embed": nn.Embedding(vocab, dim),
                "proj": nn.Linear(dim, dim),
                "norm": TinyRMSNorm(dim),
                "head": nn.Linear(dim, vocab, bias=False),
            }
        )
        for module, frozen in ((self.encoder, freeze_encoder), (self.llm, freeze_llm)):
            for p in module.parameters():
                p.requires_grad_(not frozen)

    def forward(self, x, tokens):
        h = self.adaptor(self.encoder(x))
        h = self.llm["norm"](self.llm["proj"](h + self.llm["embed"](tokens)))
        loss = self.llm["head"](h).logsumexp(-1).mean()
        if self.ctc_head is not None:
            loss = loss + 0.1 * self.ctc_head(h).logsumexp(-1).mean()
        return loss


@pytest.fixture
def make_model():
    """FakeSpeechLLM(freeze_encoder=..., freeze_llm=..., ctc=...), seeded."""

    def make(**kwargs):
        torch.manual_seed(0)
        return FakeSpeechLLM(**kwargs)

    return make
