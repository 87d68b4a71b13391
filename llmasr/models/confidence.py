"""The LLM's own confidence in the hypotheses a search wrote: the log-probability of each hypothesis's tokens, its end
token included, from the raw LLM logits.

The search's processors (repetition penalty, CTC guidance, hotword boost, the guards) change which tokens are written,
not what the model believes of them, so the score is read after the search in one teacher-forced forward of the
prompt with the hypothesis behind it: the same for greedy, beam and CTC-guided searches. The end token's probability
is that of all the LLM's end tokens together, as the search's EndTokens folds them (decode_guards).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmasr.models.llm import causal_lm_parts

# Logits the output head makes at a time (tokens x vocabulary): a batch's hypotheses x a 150k vocabulary in float32
# at once can take gigabytes.
HEAD_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class Confidence:
    """One hypothesis's log-probability under the LLM: `logprob` summed over its `tokens` tokens (the end included)."""

    logprob: float
    tokens: int

    @property
    def avg_logprob(self) -> float:
        return self.logprob / self.tokens if self.tokens else 0.0


def scored_tokens(row: list[int], end_id: int) -> list[int]:
    """A generated row's tokens the hypothesis holds: up to and including its first end token (the padding of a row
    that ended early after it); all of it where it has none."""
    return row[: row.index(end_id) + 1] if end_id in row else list(row)


def joined(parts: list[Confidence]) -> Confidence:
    """The confidence of a text joined from several hypotheses (long audio's windows): their sums and tokens added,
    so the mean is weighted by each window's tokens."""
    return Confidence(sum(p.logprob for p in parts), sum(p.tokens for p in parts))


@torch.no_grad()
def hypothesis_logprobs(llm, merged, rows: list[list[int]], end_ids: list[int], transform=None) -> list[Confidence]:
    """Each row's Confidence under `llm` given its prompt (`merged`: the left-padded prompt embeddings and attention
    mask the search started from). `rows`: the generated token ids per row (scored_tokens each); `end_ids`: the
    prompt's end token first, then the LLM's other end tokens; `transform`: what the LLM's forward does to its head's
    logits (llm.logit_transform). The head runs only at the hypothesis positions, in chunks."""
    embed, decoder, head = causal_lm_parts(llm)
    prompt, prompt_mask = merged.inputs_embeds, merged.attention_mask
    batch, width = prompt_mask.shape
    tokens = [scored_tokens(list(r), end_ids[0]) for r in rows]
    longest = max((len(t) for t in tokens), default=0)
    if not longest:
        return [Confidence(0.0, 0) for _ in rows]
    device = prompt.device
    ids = torch.full((batch, longest), end_ids[0], dtype=torch.long, device=device)
    mask = torch.zeros((batch, longest), dtype=torch.bool, device=device)
    for b, t in enumerate(tokens):
        ids[b, : len(t)] = torch.tensor(t, dtype=torch.long, device=device)
        mask[b, : len(t)] = True
    # the hypothesis right after each row's prompt (prompts are left-padded: the padding of the rows that are shorter
    # here sits at their end, after every token scored, and a causal model never reads it for them)
    inputs = torch.cat([prompt, embed(ids).to(prompt.dtype)], dim=1)
    attention = torch.cat([prompt_mask.to(torch.long), mask.to(torch.long)], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    out = decoder(inputs_embeds=inputs, attention_mask=attention, position_ids=positions, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    # the state at position p predicts the token at p + 1: the prompt's last state predicts the first token
    picked = hidden[:, width - 1 : width - 1 + longest][mask]  # [N, D], row by row
    targets = ids[mask]
    owner = torch.arange(batch, device=device).unsqueeze(1).expand(batch, longest)[mask]
    ends = torch.tensor(end_ids, dtype=torch.long, device=device)
    ends = ends[ends < head.weight.shape[0]] if hasattr(head, "weight") else ends
    per_token = torch.empty(targets.shape[0], dtype=torch.float32, device=device)
    step = max(1, HEAD_CHUNK_ELEMENTS // max(1, getattr(head, "out_features", 0) or 1))
    for start in range(0, targets.shape[0], step):
        logits = head(picked[start : start + step]).float()
        if transform is not None:
            logits = transform(logits)
        logp = torch.log_softmax(logits, dim=-1)
        target = targets[start : start + step]
        got = logp.gather(1, target.unsqueeze(1)).squeeze(1)
        end_logp = torch.logsumexp(logp[:, ends], dim=1)  # the LLM's end tokens as one, as the search sees them
        per_token[start : start + step] = torch.where(target == end_ids[0], end_logp, got)
    sums = torch.zeros(batch, dtype=torch.float64, device=device).index_add_(0, owner, per_token.double())
    return [Confidence(float(s), len(t)) for s, t in zip(sums.tolist(), tokens)]
