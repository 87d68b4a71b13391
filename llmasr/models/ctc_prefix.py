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

A prefix is kept only over its window, and its state holds only those frames: the frames where, spelled exactly, it
is within WINDOW_MARGIN nats of its most likely frame (between its last label and the next one the audio holds);
elsewhere its forward variables are taken as zero. An extension is computed over its parent's window and the frames
after it, as far as the extension itself reaches, so a step costs, and a state keeps, the frames a hypothesis can be
at rather than the whole utterance's; the scores dropped are below e^-WINDOW_MARGIN of the ones kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
# Frames where a prefix spelled exactly is this many nats below its most likely frame are outside its window.
WINDOW_MARGIN = 40.0
# An extension is first computed over its parent's window and this many frames after it (more while it reaches on).
TAIL = 16


@dataclass
class PrefixState:
    """A prefix's forward variables over its window, frames [lo, hi) of its utterance ([hi - lo] each, float64;
    outside the window they are taken as -inf), and its prefix score."""

    r_n: torch.Tensor
    r_b: torch.Tensor
    psi: float
    last: int | None  # the prefix's last label (None for the empty prefix)
    lo: int = 0
    hi: int | None = None  # None: lo + the window's length

    def __post_init__(self):
        if self.hi is None:
            self.hi = self.lo + self.r_n.shape[0]


@dataclass
class Extensions:
    """Every state of a step extended by each of its K labels: prefix scores [N, K], the new states' forward
    variables [N, K, W] over frames base[i] .. base[i] + W - 1 of state i's utterance, and their windows [N, K]
    (frames of the utterance)."""

    psi: torch.Tensor
    r_n: torch.Tensor
    r_b: torch.Tensor
    base: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    labels: torch.Tensor

    def state(self, i: int, k: int) -> PrefixState:
        lo, hi, base = int(self.lo[i, k]), int(self.hi[i, k]), int(self.base[i])
        window = slice(lo - base, hi - base)
        return PrefixState(self.r_n[i, k, window], self.r_b[i, k, window], float(self.psi[i, k]),
                           int(self.labels[i, k]), lo, hi)  # fmt: skip


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
        r_b = self.blank_cum[utt, : self.lens[utt]]
        _, hi = _window(r_b[None])  # it starts at frame 0: all blank so far is the most likely there
        r_b = r_b[: int(hi[0])].clone()
        return PrefixState(torch.full_like(r_b, NEG_INF), r_b, 0.0, None, 0, int(hi[0]))

    def extend(self, utts: list[int], states: list[PrefixState], labels: torch.Tensor) -> Extensions:
        """Every state extended by each of its K labels ([N, K] ids < vocab_size, not blank)."""
        n, k = labels.shape
        frames = self.log_probs.shape[1]
        lens = torch.tensor([self.lens[u] for u in utts])
        lo = torch.tensor([s.lo for s in states])
        width = min(frames, max(s.hi - s.lo for s in states) + TAIL)
        psi = torch.empty(n, k, dtype=torch.float64)
        new_lo, new_hi = torch.empty(n, k, dtype=torch.long), torch.empty(n, k, dtype=torch.long)
        passes, todo = [], torch.arange(n)
        while len(todo):
            psi[todo], ext_n, ext_b, spelled, reaches = self._extend_over(
                [utts[i] for i in todo], [states[i] for i in todo], labels[todo], lo[todo], width, lens[todo]
            )
            passes.append((todo, ext_n, ext_b))
            win_lo, win_hi = _window(spelled.reshape(-1, width))  # a row's wider pass, later, has the last word
            new_lo[todo], new_hi[todo] = win_lo.reshape(-1, k), win_hi.reshape(-1, k)
            # an extension still within the margin at its window's last frame reaches on: a wider window
            todo = todo[(reaches & (lo[todo] + width < lens[todo])[:, None]).any(dim=1)]
            width = min(frames, 2 * width)
        wide = passes[-1][1].shape[2]  # the last pass is the widest
        r_n = torch.full((n, k, wide), NEG_INF, dtype=torch.float64)
        r_b = torch.full_like(r_n, NEG_INF)
        for rows, ext_n, ext_b in passes:  # a wider window covers the narrower one's frames
            r_n[rows, :, : ext_n.shape[2]] = ext_n
            r_b[rows, :, : ext_b.shape[2]] = ext_b
        base = lo[:, None]
        return Extensions(psi, r_n, r_b, lo, base + new_lo, base + new_hi, labels)

    def _extend_over(self, utts, states, labels, lo, width: int, lens):
        """The extensions over frames lo .. lo + width - 1 of each state: (psi [N, K], r_n, r_b and their sum
        spelled [N, K, width], whether each is still within the margin at the last frame [N, K])."""
        utt_idx = torch.tensor(utts)
        frames = self.log_probs.shape[1]
        at = lo[:, None] + torch.arange(width)  # [N, W]
        valid = at < lens[:, None]
        at = at.clamp(max=frames - 1)
        dev = self.log_probs.device
        # x[utt, t, label] for every state, label and window frame: [N, K, W], without a [N, T, V] copy
        xc = self.log_probs[utt_idx.to(dev)[:, None, None], at.to(dev)[:, None, :], labels.to(dev)[:, :, None]]
        zero = torch.zeros((), dtype=torch.float64)
        xc = torch.where(valid[:, None, :], xc.to("cpu", torch.float64), zero)
        xb = torch.where(valid, self.blank[utt_idx[:, None], at], zero)[:, None, :].expand_as(xc)
        neg = torch.tensor(NEG_INF, dtype=torch.float64)
        r_n = _windows_at(states, width, "r_n")[:, None, :]  # the parents over the same frames
        r_b = _windows_at(states, width, "r_b")[:, None, :]
        last = torch.tensor([-1 if s.last is None else s.last for s in states])[:, None, None]
        phi = torch.where(labels[:, :, None] == last, r_b, torch.logaddexp(r_n, r_b))  # [N, K, W]
        empty = torch.tensor([s.last is None for s in states])[:, None] & (lo == 0)[:, None] & valid[:, :1]
        start = torch.where(empty, xc[:, :, 0], neg)  # r_n^{hc}(0): only the empty prefix starts at frame 0 (if any)
        new_n = _linear_recursion(start, phi[:, :, :-1], xc)
        new_b = _linear_recursion(torch.full_like(start, NEG_INF), new_n[:, :, :-1], xb)
        terms = torch.where(valid[:, None, 1:], phi[:, :, :-1] + xc[:, :, 1:], neg)
        psi = torch.logsumexp(torch.cat([start[:, :, None], terms], dim=2), dim=2)
        new_n = torch.where(valid[:, None, :], new_n, neg)
        new_b = torch.where(valid[:, None, :], new_b, neg)
        spelled = torch.logaddexp(new_n, new_b)
        best = spelled.amax(dim=2)
        # after the parent's window nothing flows in, so past the last frame the extension only falls
        reaches = torch.isfinite(best) & (spelled[:, :, -1] >= best - WINDOW_MARGIN)
        return psi, new_n, new_b, spelled, reaches

    def final(self, utt: int, state: PrefixState) -> float:
        """log P(the utterance spells exactly this prefix): -inf unless its window holds the last frame."""
        t = self.lens[utt] - 1
        if t < 0:  # no frames: they spell the empty prefix only
            return 0.0 if state.last is None else NEG_INF
        if not state.lo <= t < state.hi:
            return NEG_INF
        return float(torch.logaddexp(state.r_n[t - state.lo], state.r_b[t - state.lo]))

    def final_all(self, utts: list[int], states: list[PrefixState]) -> torch.Tensor:
        """`final` of every (utterance, state) pair: [N] float64."""
        return torch.tensor([self.final(u, s) for u, s in zip(utts, states)], dtype=torch.float64)


def _windows_at(states: list[PrefixState], width: int, name: str) -> torch.Tensor:
    """The states' forward variables `name` over frames lo .. lo + width - 1 of each: [N, width], -inf past a window."""
    out = torch.full((len(states), width), NEG_INF, dtype=torch.float64)
    for i, s in enumerate(states):
        out[i, : s.hi - s.lo] = getattr(s, name)
    return out


def _linear_recursion(start: torch.Tensor, inflow: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """a(0) = start, a(t) = (a(t-1) + inflow(t-1)) * gain(t) in log space, for all t at once:
    a(t) = G(t) + logcumsumexp(terms)(t), G the cumulative log gain, terms(0) = start - G(0) and
    terms(t) = inflow(t-1) - G(t-1) (shapes [..., T] for start[..., None], inflow [..., T-1], gain [..., T])."""
    cum = gain.cumsum(-1)
    terms = torch.cat([(start - cum[..., 0])[..., None], inflow - cum[..., :-1]], dim=-1)
    return cum + torch.logcumsumexp(terms, dim=-1)


def _window(spelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of [R, T] log-probabilities, the frames [lo, hi) within WINDOW_MARGIN of the row's best (an empty
    window, lo == hi == 0, for a row without a finite value)."""
    if spelled.shape[1] == 0:
        return torch.zeros(spelled.shape[0], dtype=torch.long), torch.zeros(spelled.shape[0], dtype=torch.long)
    best = spelled.amax(dim=1, keepdim=True)
    alive = torch.isfinite(spelled) & (spelled >= best - WINDOW_MARGIN)
    t = torch.arange(spelled.shape[1])
    lo = torch.where(alive, t, spelled.shape[1]).amin(dim=1)
    hi = torch.where(alive, t + 1, 0).amax(dim=1)
    return torch.minimum(lo, hi), hi
