"""CTC prefix scores over windows (models.ctc_prefix): on a long, peaked head the windowed scores equal the scores
over every frame, while each extension is computed over the few frames its hypothesis can be at."""

from __future__ import annotations

import math

import pytest
import torch

from llmasr.models import ctc_prefix
from llmasr.models.ctc_prefix import CTCPrefixScorer

BLANK, VOCAB = 0, 50


def peaked_head(spans: list[tuple[int, int, int]], frames: int, seed: int = 0) -> torch.Tensor:
    """Log-probs [1, frames, VOCAB] of a trained-looking head: token `c` fires on frames [a, b) for each (c, a, b),
    the blank everywhere else."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, VOCAB, generator=g)
    fired = torch.zeros(frames, dtype=torch.bool)
    for c, a, b in spans:
        logits[a:b, c] += 14.0
        logits[a:b, BLANK] += 3.0
        fired[a:b] = True
    logits[~fired, BLANK] += 12.0
    return logits.log_softmax(-1)[None]


def spoken(frames: int, seed: int = 1) -> list[tuple[int, int, int]]:
    """Tokens of 1-2 frames with 1-5 blank frames between them, and one pause of 60 frames."""
    g = torch.Generator().manual_seed(seed)
    spans, t = [], 3
    while t < frames - 10:
        c = int(torch.randint(1, VOCAB, (1,), generator=g))
        n = int(torch.randint(1, 3, (1,), generator=g))
        spans.append((c, t, t + n))
        t += n + int(torch.randint(1, 6, (1,), generator=g)) + (60 if len(spans) == 12 else 0)
    return spans


def spell_all_steps(scorer, labels, others):
    """Per step of spelling `labels`: the psi of the right next label and of `others`, and the state's window."""
    state, rows = scorer.initial(0), []
    for c in labels:
        cand = torch.tensor([[c, *[o for o in others if o != c]]])
        ext = scorer.extend([0], [state], cand)
        rows.append((ext.psi[0].tolist(), state.hi - state.lo))
        state = ext.state(0, 0)
        assert state.r_n.shape == state.r_b.shape == (state.hi - state.lo,)  # a state holds its window only
    return rows, scorer.final(0, state)


def test_windowed_scores_equal_the_scores_over_every_frame(monkeypatch):
    frames = 400
    spans = spoken(frames)
    log_probs = peaked_head(spans, frames)
    labels = [c for c, _, _ in spans]
    others = [1, 7, 23, 42]
    windowed, end = spell_all_steps(CTCPrefixScorer(log_probs, torch.tensor([frames]), BLANK), labels, others)
    monkeypatch.setattr(ctc_prefix, "WINDOW_MARGIN", math.inf)  # every frame stays in every window
    exact, exact_end = spell_all_steps(CTCPrefixScorer(log_probs, torch.tensor([frames]), BLANK), labels, others)
    assert len(labels) > 60
    for (got, width), (want, full) in zip(windowed, exact):
        assert full == frames or full > 100  # over every frame the state spans most of the utterance
        assert width < frames / 3  # the pause's 60 frames and a few tokens around them at most
        assert got[0] == pytest.approx(want[0], abs=1e-9)  # the right next label: the same score
        for g, w in zip(got[1:], want[1:]):  # the others: never above, and the same wherever they could matter
            assert g <= w + 1e-9
            if w > want[0] - ctc_prefix.WINDOW_MARGIN / 2:
                assert g == pytest.approx(w, abs=1e-6)
    assert end == pytest.approx(exact_end, abs=1e-9)
    assert sum(width for _, width in windowed) / len(windowed) < frames / 10


def test_an_extension_after_a_long_pause_is_followed_to_its_next_label():
    """Two tokens 150 frames apart: the first token's extension is still within the margin at the end of its first
    window, which grows until it reaches the second token."""
    frames = 200
    log_probs = peaked_head([(5, 2, 4), (9, 154, 156)], frames)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([frames]), BLANK)
    first = scorer.extend([0], [scorer.initial(0)], torch.tensor([[5]])).state(0, 0)
    assert first.lo <= 4 and first.hi >= 154
    second = scorer.extend([0], [first], torch.tensor([[9, 5]]))
    assert second.psi[0, 0] > -1.0 and second.psi[0, 1] < second.psi[0, 0] - 5  # the spoken token, not a repeat
    assert scorer.final(0, second.state(0, 0)) > -1.0


def test_a_prefix_the_audio_cannot_hold_has_an_empty_window_and_no_score():
    frames = 4
    log_probs = peaked_head([(5, 1, 2)], frames)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([frames]), BLANK)
    state = scorer.initial(0)
    for c in (5, 6, 7, 8, 9):  # five labels in four frames
        ext = scorer.extend([0], [state], torch.tensor([[c]]))
        state = ext.state(0, 0)
    assert state.psi == -math.inf and state.lo == state.hi
    assert scorer.extend([0], [state], torch.tensor([[3]])).psi[0, 0] == -math.inf


def test_an_utterance_without_frames_spells_the_empty_prefix_only():
    """Zero frames (beside a row that has them): every label is impossible and the end certain, as CTC's definition
    gives, not the other way round."""
    log_probs = peaked_head([(5, 1, 2)], 4).expand(2, -1, -1).clone()
    scorer = CTCPrefixScorer(log_probs, torch.tensor([4, 0]), BLANK)
    ext = scorer.extend([0, 1], [scorer.initial(0), scorer.initial(1)], torch.tensor([[5, 6], [5, 6]]))
    assert ext.psi[1].tolist() == [-math.inf, -math.inf] and ext.psi[0, 0] > -1.0
    assert scorer.final(1, scorer.initial(1)) == 0.0 and scorer.final(1, ext.state(1, 0)) == -math.inf
