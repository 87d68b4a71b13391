"""CTC-guided LLM decoding: the LLM's next-token scores joined with the CTC head's prefix scores.

With a CTC vocabulary of the LLM's own token ids (model.ctc.vocab "llm"), each step of greedy or beam search scores
candidate tokens (and always the end token) by

    (1 - w) * log P_llm(c | h) + w * (log psi_ctc(h c) - log psi_ctc(h))

(the end token's CTC term: log P_ctc(exactly h) - log psi_ctc(h)); every other token is ruled out. The candidates are
the LLM's top tokens joined with the tokens the audio supports where the hypothesis stands (those the CTC head gives at
least AUDIO_TOKEN_PROB on a frame where its next label can be): a word the encoder hears is never out of reach because
the LLM ranks it low. Summed over a hypothesis this is (1 - w) log P_llm + w log P_ctc, so a token the audio does not
support (an insertion) or an end before the audio is spelled out loses. With any other CTC vocabulary the LLM's n-best
list is rescored by the CTC forward score of each hypothesis re-tokenised into that vocabulary (`rescore_nbest`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from llmasr.models.ctc_prefix import CTCPrefixScorer, Extensions, PrefixState

# LLM candidates scored by CTC per hypothesis and step (the end token is always scored as well).
CANDIDATES = 8
# A token the CTC head gives at least this probability on a frame is a candidate, whatever the LLM's rank of it ...
AUDIO_TOKEN_PROB = 0.01
# ... on a frame where the next label can be: the prefix spelled exactly up to the frame before is within this many
# nats of its best (models.ctc_guidance.CTCPrefixGuide._reachable).
REACH_MARGIN = 10.0
# Prefix scores are floored here so that an impossible prefix (more labels than frames) stays comparable.
FLOOR = -1.0e4


class CTCPrefixGuide:
    """A transformers logits processor (called with the generated ids [rows, n] and log-probs [rows, V]); row r
    belongs to utterance r // num_beams. States are kept per (utterance, prefix), so beam reordering needs nothing."""

    def __init__(self, scorer: CTCPrefixScorer, weight: float, end_id: int, num_beams: int, extra=None):
        """`extra`: per utterance, token ids to score at every step besides the LLM's top and the audio's tokens
        (e.g. the utterance's hotword spellings), or None."""
        self.scorer, self.weight, self.end_id, self.num_beams = scorer, float(weight), int(end_id), int(num_beams)
        # (utterance, prefix) -> {label: (row, candidate)} in the last step's extensions: where each prefix it
        # proposed (the prefix and one of its labels) is; keyed by the parent, so a step hashes each prefix once
        self.kept: dict[tuple[int, tuple[int, ...]], dict[int, tuple[int, int]]] = {}
        self.step: Extensions | None = None
        # The per-row candidate work below runs in numpy: small arrays, where a torch call's overhead would dominate.
        self.support = [(f.numpy(), t.numpy()) for f, t in frame_support(scorer, AUDIO_TOKEN_PROB)]
        self.extra = None if extra is None else [np.asarray(ids, dtype=np.int64).reshape(-1) for ids in extra]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, prefixes = [], []
        for r, ids in enumerate(input_ids.tolist()):
            if self.end_id not in ids:  # a finished greedy row only receives padding
                rows.append(r)
                prefixes.append(tuple(ids))
        if not rows:
            return scores
        utts = [r // self.num_beams for r in rows]
        states = [self._state(u, p) for u, p in zip(utts, prefixes)]
        # Candidates are picked on the LLM's device; only they travel to the CTC side (CPU, float64).
        here = scores if len(rows) == scores.shape[0] else scores[rows]
        labels, ok = self._candidates(here, utts, states)
        ext = self.scorer.extend(utts, states, labels.clamp(max=self.scorer.vocab_size - 1))
        old = torch.tensor([s.psi for s in states], dtype=torch.float64)[:, None].clamp(min=FLOOR)
        ends = self.scorer.final_all(utts, states)[:, None]
        delta = torch.cat([ext.psi.clamp(min=FLOOR) - old, ends.clamp(min=FLOOR) - old], dim=1)
        self._keep(utts, prefixes, labels, ok, ext)
        labels = torch.cat([labels, torch.full_like(labels[:, :1], self.end_id)], dim=1)
        ok = torch.cat([ok, torch.ones_like(ok[:, :1])], dim=1)
        llm = here.gather(1, labels.to(here.device)).cpu().double()
        joint = (1 - self.weight) * llm + self.weight * delta
        out = torch.full_like(scores, float("-inf"))  # every token that is not a candidate is ruled out
        # Only real candidates are written: a padding slot holds id 0 too, and must not overwrite token 0's score.
        at = (torch.tensor(rows)[:, None].expand_as(labels)[ok].to(scores.device), labels[ok].to(scores.device))
        out[at] = joint[ok].to(scores.device, scores.dtype)
        if len(rows) < scores.shape[0]:
            guided = set(rows)
            done = [r for r in range(scores.shape[0]) if r not in guided]
            out[done] = scores[done]
        return out

    def _candidates(self, scores: torch.Tensor, utts: list[int], states) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row ([N, K]): the LLM's top tokens other than the end token, joined with the audio's tokens that can
        come next (`_reachable`) and the utterance's `extra` tokens (a token the LLM rules out, -inf, stays out),
        and which of them can be scored (an id past the CTC vocabulary, the blank's id or padding cannot)."""
        # one more than CANDIDATES: the end token, scored anyway, is dropped from the LLM's list
        top = scores.topk(min(CANDIDATES + 1, scores.shape[1]), dim=1).indices.cpu().numpy()
        rows = []
        for ids, u, state in zip(top, utts, states):
            more = [self._reachable(u, state)] + ([self.extra[u]] if self.extra is not None else [])
            ids = np.unique(np.concatenate([ids[ids != self.end_id][:CANDIDATES], *more]))
            rows.append(ids[(ids < scores.shape[1]) & (ids != self.end_id)])
        width = max(len(r) for r in rows)
        labels_np = np.zeros((len(rows), max(width, 1)), dtype=np.int64)
        ok_np = np.zeros(labels_np.shape, dtype=bool)
        for i, r in enumerate(rows):
            labels_np[i, : len(r)], ok_np[i, : len(r)] = r, True
        labels, ok = torch.from_numpy(labels_np), torch.from_numpy(ok_np)
        ok &= torch.isfinite(scores.gather(1, labels.to(scores.device))).cpu()  # only the candidates are looked at
        blank = self.scorer.blank_id
        ok &= (labels < self.scorer.vocab_size) & (labels != blank)
        return torch.where(ok, labels, torch.zeros_like(labels)), ok

    def _reachable(self, utt: int, state: PrefixState) -> np.ndarray:
        """The audio's tokens on frames where the prefix's next label can be: frame t counts when the prefix,
        spelled exactly, is within REACH_MARGIN of its most likely end at frame t - 1 (frame 0 for the empty
        prefix). Elsewhere the prefix score of the extension is negligible, and scoring every token of a long
        window at every step would cost the CTC side more than the LLM's step."""
        frames, tokens = self.support[utt]
        near = np.zeros(self.scorer.lens[utt] + 1, dtype=bool)
        spelled = np.logaddexp(state.r_n.numpy(), state.r_b.numpy())  # the prefix's window: elsewhere far below
        if len(spelled):
            near[state.lo + 1 : state.hi + 1] = spelled >= spelled.max() - REACH_MARGIN
        near[0] = state.last is None
        return np.unique(tokens[near[frames]])

    def _state(self, utt: int, prefix: tuple[int, ...]) -> PrefixState:
        """A prefix's state: kept from the step that proposed it, or (a token no candidate list held, e.g. forced
        by another processor) extended from its parent's."""
        at = self.kept.get((utt, prefix[:-1]), {}).get(prefix[-1]) if prefix else None
        if at is not None:
            return self.step.state(*at)
        if not prefix:
            return self.scorer.initial(utt)
        parent = self._state(utt, prefix[:-1])
        label = prefix[-1] if prefix[-1] < self.scorer.vocab_size and prefix[-1] != self.scorer.blank_id else 0
        return self.scorer.extend([utt], [parent], torch.tensor([[label]])).state(0, 0)

    def _keep(self, utts, prefixes, labels: torch.Tensor, ok: torch.Tensor, step: Extensions | None) -> None:
        """Remember where this step's extensions are (the next step's prefixes are among them); older ones go."""
        self.step, self.kept = step, {}
        for i, (utt, prefix, row, good) in enumerate(zip(utts, prefixes, labels.tolist(), ok.tolist())):
            self.kept[(utt, prefix)] = {label: (i, k) for k, (label, valid) in enumerate(zip(row, good)) if valid}


def frame_support(scorer: CTCPrefixScorer, min_prob: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per utterance, (frames, tokens) (CPU) of every token other than the blank that the CTC head gives at least
    `min_prob` on a frame within the utterance's length; one utterance at a time, so a large vocabulary is never
    copied for the whole batch."""
    found = []
    blank_at_most = math.log1p(-min_prob) + 1e-6 if min_prob < 1 else float("-inf")
    for b, n in enumerate(scorer.lens):
        frames = scorer.log_probs[b, :n]
        # where the blank holds more than 1 - min_prob no other token reaches min_prob: only the rest is scanned
        # (a small tolerance keeps a frame that rounding would put on the line)
        open_ = (frames[:, scorer.blank_id] <= blank_at_most).nonzero()[:, 0]
        held = frames[open_] >= math.log(min_prob)
        held[:, scorer.blank_id] = False
        at = held.nonzero()
        found.append((open_[at[:, 0]].cpu(), at[:, 1].cpu()))
    return found


def rescore_nbest(
    nbest: list[list[tuple[str, float]]], log_probs: torch.Tensor, lens: torch.Tensor, tokenizer, weight: float
) -> list[int]:
    """Index of the best hypothesis per utterance among its n-best [(text, LLM log-probability)], by
    (1 - w) * LLM + w * log P_ctc(text re-tokenised into the CTC vocabulary). A character the vocabulary maps to its
    blank (SenseVoice's <unk>) is left out of the labels, which may not hold the blank; a text it cannot spell at
    all (no <unk>) scores the floor instead of stopping the decode."""
    best = []
    for b, hyps in enumerate(nbest):
        frames = log_probs[b, : int(lens[b])].float().cpu()
        joint = []
        for text, llm_score in hyps:
            try:
                ids = [i for i in tokenizer.encode(text) if i != tokenizer.blank_id] if text.strip() else []
            except ValueError:  # a character outside a token list without <unk>
                ctc = FLOOR
            else:
                ctc = _ctc_log_prob(frames, ids, tokenizer.blank_id)
            joint.append((1 - weight) * llm_score + weight * max(ctc, FLOOR))
        best.append(max(range(len(hyps)), key=lambda i: joint[i]))
    return best


def _ctc_log_prob(frames: torch.Tensor, ids: list[int], blank_id: int) -> float:
    """log P_ctc(ids | frames [T, V]) (-inf when the labels need more frames than there are)."""
    loss = F.ctc_loss(
        frames[:, None, :], torch.tensor([ids], dtype=torch.long).reshape(1, -1), torch.tensor([frames.shape[0]]),
        torch.tensor([len(ids)]), blank=blank_id, reduction="sum", zero_infinity=False,
    )  # fmt: skip
    return -float(loss)
