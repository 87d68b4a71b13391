"""CTC prefix scoring (Watanabe et al., hybrid CTC/attention): the log-probability that a CTC head's output, over
one utterance's frames, begins with a given label prefix, extended one label at a time.

For a prefix h the state holds, per frame t, the log-probabilities r_n(t) / r_b(t) that the first t+1 frames spell h
ending in a non-blank / blank frame. Extending h by a label c:

    r_n^{hc}(t) = (r_n^{hc}(t-1) + phi(t-1)) * y_t(c),      phi(t) = r_n^h(t) + r_b^h(t)  (r_b^h(t) if c == last(h))
    r_b^{hc}(t) = (r_n^{hc}(t-1) + r_b^{hc}(t-1)) * y_t(blank)
    psi(hc)     = r_n^{hc}(0) + sum_t phi(t-1) y_t(c)        (the prefix probability)

Both recursions are first-order linear, so they are solved for every frame at once with cumulative sums in log
space (logcumsumexp, float64) instead of a Python loop over frames. The end of the hypothesis scores
r_n^h(T-1) + r_b^h(T-1), the probability that the whole utterance spells exactly h.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass
class PrefixState:
    """A prefix's forward variables over its utterance's frames ([T] each, float64) and its prefix score."""

    r_n: torch.Tensor
    r_b: torch.Tensor
    psi: float
    last: int | None  # the prefix's last label (None for the empty prefix)


class CTCPrefixScorer:
    """Prefix scores over CTC log-probs [B, T, V] with valid lengths [B]; each utterance is scored on its own
    frames only, so a row's scores do not depend on the other rows of its batch."""

    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int):
        self.blank_id = int(blank_id)
        self.lens = [int(n) for n in lens.tolist()]
        # The log-probs stay where they are (a full-vocabulary copy, e.g. an LLM vocabulary over long audio, would be
        # large); each step gathers only its candidates' columns, into float64 on the CPU.
        self.log_probs = log_probs.detach()
        self.vocab_size = log_probs.shape[-1]
        # Frames past an utterance's end get a finite stand-in (never read: scores stop at len-1), so the
        # cumulative sums below never subtract -inf from -inf.
        self.valid = torch.arange(log_probs.shape[1])[None, :] < torch.tensor(self.lens)[:, None]
        self.blank = self._valid_only(self.log_probs[..., self.blank_id].to("cpu", torch.float64), self.valid)
        self.blank_cum = self.blank.cumsum(-1)  # B[t]: log prod of blank probabilities up to t

    @staticmethod
    def _valid_only(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, x, torch.zeros((), dtype=x.dtype))

    def initial(self, utt: int) -> PrefixState:
        """The empty prefix: all frames blank so far."""
        r_b = torch.where(self.valid[utt], self.blank_cum[utt], torch.tensor(NEG_INF, dtype=torch.float64))
        return PrefixState(torch.full_like(r_b, NEG_INF), r_b, 0.0, None)

    def extend(self, utts: list[int], states: list[PrefixState], labels: torch.Tensor):
        """Prefix scores of every state extended by each of its K labels ([N, K] ids < vocab_size, not blank):
        (psi [N, K] float64, r_n [N, K, T], r_b [N, K, T])."""
        utt_idx = torch.tensor(utts)
        dev = self.log_probs.device
        frames = torch.arange(self.log_probs.shape[1], device=dev)
        # x[utt, t, label] for every state, label and frame: [N, K, T], without a [N, T, V] copy
        xc = self.log_probs[utt_idx.to(dev)[:, None, None], frames[None, None, :], labels.to(dev)[:, :, None]]
        xc = self._valid_only(xc.to("cpu", torch.float64), self.valid[utt_idx][:, None, :])
        r_n = torch.stack([s.r_n for s in states])[:, None, :]  # [N, 1, T]
        r_b = torch.stack([s.r_b for s in states])[:, None, :]
        last = torch.tensor([-1 if s.last is None else s.last for s in states])[:, None, None]
        phi = torch.where(labels[:, :, None] == last, r_b, torch.logaddexp(r_n, r_b))  # [N, K, T]
        empty = torch.tensor([s.last is None for s in states])[:, None]
        start = torch.where(empty, xc[:, :, 0], torch.tensor(NEG_INF, dtype=torch.float64))  # r_n^{hc}(0)
        new_n = _linear_recursion(start, phi[:, :, :-1], xc)
        xb = self.blank[utt_idx][:, None, :].expand_as(xc)
        new_b = _linear_recursion(torch.full_like(start, NEG_INF), new_n[:, :, :-1], xb)
        valid = self.valid[utt_idx][:, None, 1:]
        terms = torch.where(valid, phi[:, :, :-1] + xc[:, :, 1:], torch.tensor(NEG_INF, dtype=torch.float64))
        psi = torch.logsumexp(torch.cat([start[:, :, None], terms], dim=2), dim=2)
        return psi, new_n, new_b

    def final(self, utt: int, state: PrefixState) -> float:
        """log P(the utterance spells exactly this prefix)."""
        t = self.lens[utt] - 1
        return float(torch.logaddexp(state.r_n[t], state.r_b[t]))

    def final_all(self, utts: list[int], states: list[PrefixState]) -> torch.Tensor:
        """`final` of every (utterance, state) pair at once: [N] float64."""
        last = torch.tensor([self.lens[u] - 1 for u in utts])[:, None]
        r_n = torch.stack([s.r_n for s in states]).gather(1, last)[:, 0]
        return torch.logaddexp(r_n, torch.stack([s.r_b for s in states]).gather(1, last)[:, 0])


def _linear_recursion(start: torch.Tensor, inflow: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """a(0) = start, a(t) = (a(t-1) + inflow(t-1)) * gain(t) in log space, for all t at once:
    a(t) = G(t) + logcumsumexp(terms)(t), G the cumulative log gain, terms(0) = start - G(0) and
    terms(t) = inflow(t-1) - G(t-1) (shapes [..., T] for start[..., None], inflow [..., T-1], gain [..., T])."""
    cum = gain.cumsum(-1)
    terms = torch.cat([(start - cum[..., 0])[..., None], inflow - cum[..., :-1]], dim=-1)
    return cum + torch.logcumsumexp(terms, dim=-1)
