"""An LLM of known output for decoding tests: hooks that add a scripted bias to a real LLM's next-token logits.

The bias depends on each row's previous generated token (None: the first step), read from the token ids the
generation loop feeds the embedding layer, so it follows every greedy row and every beam alike and keeps the real
model's KV-cache path. `script[prev] = {token: bias}`; a large bias makes the model's choice certain.
"""

from __future__ import annotations

import torch

from llmasr.models.llm import causal_lm_parts


class ScriptedLLM:
    """Context manager: while active, `model.llm`'s logits follow `script` (see the module docstring)."""

    def __init__(self, model, script: dict[int | None, dict[int, float]]):
        self.model, self.script = model, script
        self.last: list[int] | None = None
        self.handles = []

    def __enter__(self):
        embed, _, head = causal_lm_parts(self.model.llm)
        self.handles = [embed.register_forward_pre_hook(self._seen), head.register_forward_hook(self._bias)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _seen(self, module, args):
        ids = args[0]
        # A one-token step of generation, or else a prompt (the model embeds it before generating).
        self.last = ids[:, -1].tolist() if ids.shape[1] == 1 else None

    def _bias(self, module, args, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        rows = range(out.shape[0])
        for r, prev in zip(rows, self.last if self.last is not None else [None] * out.shape[0]):
            for token, bias in self.script.get(prev, {}).items():
                out[r, -1, token] += bias
        return out


def chain_script(tokens: list[int], end_id: int, bias: float = 30.0) -> dict[int | None, dict[int, float]]:
    """A script that spells `tokens` and then the end token (each token must occur once in `tokens`)."""
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"chain_script: the tokens must be distinct to be scripted by their predecessor: {tokens}")
    steps = [None, *tokens]
    return {prev: {nxt: bias} for prev, nxt in zip(steps, [*tokens, end_id])}
