"""Fixtures of the train tests: a tiny stand-in for SpeechLLM with the same branch attributes (encoder, adaptor,
ctc_head, llm), the recipe file the `llmasr check` tests check, and a converted tiny Nano a recipe starts from."""

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus


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


@pytest.fixture(scope="module")
def recipe_file(tiny_llm_dir, tmp_path_factory):
    """The `llmasr check` tests' recipe: 3 epochs of a 20-utterance corpus, grad_accum 2, CTC weight 0.3, warmup_cosine
    (test modules may define a recipe_file of their own)."""
    root = tmp_path_factory.mktemp("check")
    train_m, dev_m = write_tiny_corpus(root / "train", n=20), write_tiny_corpus(root / "dev", n=4, seed=1)
    data = tiny_recipe_dict(tiny_llm_dir, train=[train_m], valid=[dev_m], output_dir=root / "run", epochs=3,
                            grad_accum=2, ctc_weight=0.3)  # fmt: skip
    data["optim"]["scheduler"] = {"type": "warmup_cosine", "warmup_steps": 2}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


NANO_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "fun-asr-nano_lora_zero2.yaml"


@pytest.fixture(scope="module")
def nano_start(tmp_path_factory):
    """A tiny Fun-ASR-Nano converted (llmasr_model.yaml beside its weights) and a function of overrides giving the
    shipped Nano recipe that starts from it, sized for one CPU update into `run_dir`."""
    from llmasr.convert.funasr_nano import convert_funasr
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_nano import write_nano_dir
    from tests.recipes.test_real_recipes import nano_overrides

    root = tmp_path_factory.mktemp("nano_start")
    out = convert_funasr(write_nano_dir(root / "src"), root / "nano")
    corpus = write_tiny_corpus(root / "corpus", n=2)
    base = [*nano_overrides(out), f"data.train=[{corpus}]", f"data.valid=[{corpus}]", "train.precision=fp32",
            "data.num_workers=0", "model.llm.gradient_checkpointing=false", "train.max_updates=1"]  # fmt: skip

    def recipe(run_dir, *overrides):
        return load_recipe(NANO_RECIPE, [*base, f"train.output_dir={run_dir}", *overrides])

    return out, recipe


@pytest.fixture
def nan_updates(monkeypatch):
    """A set of update numbers (add to it at any time) whose next training batch gets a NaN feature: its gradient is
    not finite, so the update is skipped, as an fp16 loss-scale overflow is."""
    from llmasr.train.engine import TrainEngine

    real, bad = TrainEngine.to_device, set()

    def to_device(self, batch):
        out = real(self, batch)
        if self.module.training and self.global_steps + 1 in bad:
            bad.discard(self.global_steps + 1)
            out.feats[0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(TrainEngine, "to_device", to_device)
    return bad


@pytest.fixture
def drawn(monkeypatch):
    """The chunk configuration of every streaming encoder forward in this process, in order (the real layout is
    built and run)."""
    from llmasr.models import sanm

    seen, real = [], sanm.chunk_layout

    def spy(chunk, kernel_size, frames, index=0, device=None):
        seen.append(index)
        return real(chunk, kernel_size, frames, index, device)

    monkeypatch.setattr(sanm, "chunk_layout", spy)
    return seen
