"""The FLOP counter's view of a Mixture-of-Experts LLM layer (llmasr.train.flops).

transformers holds an MoE layer's routed experts as 3-D parameters ([experts, out, in]: Qwen3-MoE's and Qwen2-MoE's
gate_up_proj and down_proj) that its forward indexes, and its router as a weight of its own run by F.linear: neither
is an nn.Linear, so the counter's GEMM hooks never see them, though the experts do most of an MoE layer's work. Each
token runs its top-k experts (a shared expert and its gate are nn.Linear layers, counted as such): an experts call
costs 2 * one expert's weight elements * (tokens x k) forward, the router 2 * its weight elements * tokens.
"""

from __future__ import annotations

from torch import nn

from llmasr.train.param_groups import numel

GEMMS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _shape(p: nn.Parameter) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))  # ZeRO-3 leaves a partitioned parameter's shape [0]


def moe_modules(decoder: nn.Module, experts: int) -> tuple[list[nn.Module], list[nn.Module]]:
    """(fused experts modules, routers) in `decoder`: modules holding 3-D parameters of `experts` rows, and modules
    other than linear layers holding a 2-D weight of `experts` rows and nothing 3-D."""
    fused, routers = [], []
    if experts <= 1:
        return fused, routers
    for module in decoder.modules():
        own = [_shape(p) for p in module.parameters(recurse=False)]
        if any(len(s) == 3 and s[0] == experts for s in own):
            fused.append(module)
        elif not isinstance(module, GEMMS) and any(len(s) == 2 and s[0] == experts for s in own):
            routers.append(module)
    return fused, routers


def experts_call(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """(hidden states, rows run, weight elements of one expert, whether any expert weight trains) of one call of a
    fused experts module, forward(hidden_states, top_k_index, top_k_weights); None where the call is not that."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    index = args[1] if len(args) > 1 else kwargs.get("top_k_index")
    if not (hasattr(hidden, "requires_grad") and hasattr(index, "numel")):
        return None
    weights = [p for p in module.parameters(recurse=False) if len(_shape(p)) == 3]
    experts = _shape(weights[0])[0]
    per_expert = sum(numel(p) for p in weights) // experts
    return hidden, int(index.numel()), per_expert, any(p.requires_grad for p in weights)


def router_call(module: nn.Module, args: tuple) -> tuple:
    """(input, rows, router weight elements, whether they train) of one router call; None where the call takes no
    tensor of the weight's width."""
    x = args[0] if args else None
    weights = [p for p in module.parameters(recurse=False) if len(_shape(p)) == 2]
    if not hasattr(x, "requires_grad") or not weights or x.shape[-1] != _shape(weights[0])[1]:
        return None
    return x, x.numel() // x.shape[-1], sum(numel(p) for p in weights), any(p.requires_grad for p in weights)


def hooks(decoder: nn.Module, experts: int, armed, gemm_flops, add) -> list:
    """Forward hooks on `decoder`'s fused experts and routers that `add(flops, dtype)` their work while `armed()`;
    `gemm_flops`: the counter's (llmasr.train.flops). Returns the handles."""
    fused, routers = moe_modules(decoder, experts)

    def count(call) -> None:
        if call is not None:
            x, rows, weights, trains = call
            add(gemm_flops(weights, rows, input_grad=x.requires_grad, weight_grad=trains), x.dtype)

    on_experts = lambda mod, args, kwargs, out: count(experts_call(mod, args, kwargs) if armed() else None)  # noqa: E731
    on_router = lambda mod, args, out: count(router_call(mod, args) if armed() else None)  # noqa: E731
    return [m.register_forward_hook(on_experts, with_kwargs=True) for m in fused] + [
        m.register_forward_hook(on_router) for m in routers
    ]
