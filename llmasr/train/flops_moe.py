"""The FLOP counter's view of a Mixture-of-Experts LLM layer (llmasr.train.flops).

transformers holds an MoE layer's routed experts as 3-D parameters ([experts, out, in]: Qwen3-MoE's and Qwen2-MoE's
gate_up_proj and down_proj) that its forward indexes, and its router as a weight of its own run by F.linear: neither
is an nn.Linear, so the counter's GEMM hooks never see them, though the experts do most of an MoE layer's work. Each
token runs its top-k experts (a shared expert and its gate are nn.Linear layers, counted as such): an experts call
costs 2 * one expert's weight elements * (tokens x k) forward, the router 2 * its weight elements * tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from llmasr.train.param_groups import numel

GEMMS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _shape(p: nn.Parameter) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))  # ZeRO-3 leaves a partitioned parameter's shape [0]


def moe_modules(decoder: nn.Module, experts: int) -> tuple[list[tuple], list[tuple]]:
    """([(fused experts module, one expert's weight elements, its 3-D weights)], [(router, weight elements, its
    weights)]) in `decoder`: modules holding 3-D parameters of `experts` rows, and modules other than linear layers
    holding a 2-D weight of `experts` rows and nothing 3-D. Read once, as built: a wrapper may swap the parameters
    for others while the module runs."""
    fused, routers = [], []
    if experts <= 1:
        return fused, routers
    for module in decoder.modules():
        own = list(module.parameters(recurse=False))
        cubes = [p for p in own if len(_shape(p)) == 3 and _shape(p)[0] == experts]
        if cubes:
            fused.append((module, sum(numel(p) for p in cubes) // experts, cubes))
        elif not isinstance(module, GEMMS):
            rows = [p for p in own if len(_shape(p)) == 2 and _shape(p)[0] == experts]
            if rows:
                routers.append((module, sum(numel(p) for p in rows), rows))
    return fused, routers


def _call(x, rows: int, weights: int, params: list) -> tuple:
    return x, rows, weights, any(p.requires_grad for p in params)


def experts_call(args: tuple, kwargs: dict, weights: int, params: list) -> tuple | None:
    """(hidden states, rows run, one expert's weight elements, whether they train) of one call of a fused experts
    module, forward(hidden_states, top_k_index, top_k_weights); None where the call is not that."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    index = args[1] if len(args) > 1 else kwargs.get("top_k_index")
    if not (torch.is_tensor(hidden) and torch.is_tensor(index)):
        return None
    return _call(hidden, int(index.numel()), weights, params)


def router_call(args: tuple, weights: int, params: list) -> tuple | None:
    """(input, rows, router weight elements, whether they train) of one router call; None where the call takes no
    tensor of the weight's width."""
    x = args[0] if args else None
    if not torch.is_tensor(x) or x.shape[-1] != _shape(params[0])[1]:
        return None
    return _call(x, x.numel() // x.shape[-1], weights, params)


def hooks(decoder: nn.Module, experts: int, armed, gemm_flops, add) -> list:
    """Forward hooks on `decoder`'s fused experts and routers that `add(flops, dtype)` their work while `armed()`;
    `gemm_flops`: the counter's (llmasr.train.flops). Returns the handles."""
    fused, routers = moe_modules(decoder, experts)

    def count(call) -> None:
        if call is not None:
            x, rows, weights, trains = call
            add(gemm_flops(weights, rows, input_grad=x.requires_grad, weight_grad=trains), x.dtype)

    def on_experts(weights: int, params: list):
        return lambda mod, args, kwargs, out: count(experts_call(args, kwargs, weights, params) if armed() else None)

    def on_router(weights: int, params: list):
        return lambda mod, args, out: count(router_call(args, weights, params) if armed() else None)

    return [m.register_forward_hook(on_experts(w, p), with_kwargs=True) for m, w, p in fused] + [
        m.register_forward_hook(on_router(w, p)) for m, w, p in routers
    ]
