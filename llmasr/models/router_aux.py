"""An MoE LLM's router load-balancing loss, as the LLM's own Hugging Face forward adds it to the training loss.

A transformers MoE causal LM (Qwen3-MoE, Qwen2-MoE, Mixtral, ...) adds router_aux_loss_coef x its
load_balancing_loss_func (Switch Transformer's, over every layer's router logits and the attention mask) to the loss
exactly when config.json's output_router_logits is true; the released configs set it false. llmasr computes the
loss from the decoder's hidden states (llmasr.models.losses), not through that forward, so it adds the term itself
on the same condition, with the function of the LLM's own modeling module, and says which at start-up.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llmasr.models.llm import read_config_json, text_setting
from llmasr.models.tokenizer import LLMLoadError

EXPERTS_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")  # transformers' spellings


def num_experts(config) -> int:
    """The routed experts of each MoE layer of an LLM `config` (a transformers config, or config.json as a dict);
    0 for a dense LLM."""
    get = text_setting(config)
    return next((v for v in map(get, EXPERTS_KEYS) if isinstance(v, int) and not isinstance(v, bool) and v > 1), 0)


@dataclass(frozen=True)
class RouterAux:
    coef: float  # config.router_aux_loss_coef
    experts: int
    top_k: int
    loss_fn: Callable  # the modeling module's load_balancing_loss_func

    def __call__(self, router_logits, attention_mask: torch.Tensor) -> torch.Tensor:
        """The unweighted load-balancing loss of one forward's router logits (a tuple, one per MoE layer)."""
        aux = self.loss_fn(tuple(router_logits), self.experts, self.top_k, attention_mask)
        return aux if torch.is_tensor(aux) else attention_mask.new_zeros((), dtype=torch.float32)

    def term(self, aux: torch.Tensor, n_tokens, normalizer) -> torch.Tensor:
        """What one micro batch adds to the loss: coef x its `aux`, weighted by its share of the window's labelled
        tokens (`normalizer`: the window's per rank, llmasr.train.window), so that a window's accumulated term is
        the token-weighted mean of its micro batches' (one batch alone: coef x its own, as the HF forward adds)."""
        return self.coef * aux * n_tokens / normalizer


def router_aux(model) -> RouterAux | None:
    """The term a transformers MoE causal LM `model` (its config and class) adds to its loss; None when it adds none
    (a dense LLM, or output_router_logits false). An MoE whose modeling module has no load_balancing_loss_func is
    refused when its config asks for the term: llmasr cannot add what the forward would."""
    config = model.config
    if not getattr(config, "output_router_logits", False):
        return None
    fn = getattr(sys.modules.get(type(model).__module__), "load_balancing_loss_func", None)
    experts, top_k = num_experts(config), getattr(config, "num_experts_per_tok", None)
    if fn is None or not experts or not isinstance(top_k, int):
        raise LLMLoadError(
            f"model.llm.path: config.json sets output_router_logits true (the router's load-balancing loss in the "
            f"training loss), and llmasr cannot compute that loss for {type(model).__name__} (no "
            "load_balancing_loss_func, num_experts and num_experts_per_tok as transformers' MoE models have); set "
            "it false to train without the term"
        )
    return RouterAux(float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0), experts, top_k, fn)


def router_aux_note(path: str | Path) -> str | None:
    """What the training loss holds of the router's load-balancing loss for the LLM at `path` (None: not an MoE, or
    no config.json there to read: the load says what is wrong with it)."""
    try:
        config = read_config_json(Path(path) / "config.json")
    except (OSError, LLMLoadError):
        return None
    experts, get = num_experts(config), text_setting(config)
    if not experts:
        return None
    what = f"model.llm.path is a Mixture-of-Experts LLM ({experts} experts, top-{get('num_experts_per_tok')})"
    if get("output_router_logits"):
        coef = 0.0 if get("router_aux_loss_coef") is None else get("router_aux_loss_coef")
        return (f"{what}: its router's load-balancing loss is in the training loss, router_aux_loss_coef {coef} x "
                "the loss, as its Hugging Face forward adds it (config.json: output_router_logits true); train.log "
                "logs it as router_aux_loss; llm_loss, valid loss and WER stay the cross-entropy alone")  # fmt: skip
    return (f"{what}: its router's load-balancing loss is not in the training loss (config.json: "
            "output_router_logits false, with which its Hugging Face forward adds none either); set it true in "
            "config.json to add router_aux_loss_coef x that loss")  # fmt: skip
