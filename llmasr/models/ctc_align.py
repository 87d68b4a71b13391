"""Word timestamps: the LLM's transcript force-aligned to the CTC head's frames.

The LLM writes text without times; the CTC head, trained on the same encoder output, says at which frames each label
is heard. The transcript's units (words, and each character of scripts written without spaces: the tokens that
long-audio joining works on, llmasr.data.long_audio) are spelled in the CTC vocabulary as the head was trained: in
the LLM's own vocabulary, a sentencepiece model or a .tiktoken file the text is tokenized whole, and a token that
merges several characters shares its frames among them in order, an equal part each; a token list spells them one by
one. The best CTC path
that spells exactly that label sequence (Viterbi over the usual blank-interleaved states) gives each unit the frames
of its labels: start at its first label's first frame, end after its last label's last frame. A unit the vocabulary
cannot spell, or a transcript longer than the frames can hold, gets no times (None).

CTC spikes come early in a word: the head's last frame of a word lies before its sound ends. `sound_ends` moves each
end to where the stretch of speech it falls in ends (frame energies, llmasr.data.long_audio.speech_runs), never past
the next word's start nor WORD_TAIL_S past the head's frame, so words in running speech last until the next one
starts and a word before a pause lasts until the pause.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from llmasr.models.ctc_vocab import CTCTokenizer
from llmasr.text_units import UNIT

Word = tuple[str, float, float]  # (unit, start seconds, end seconds)
WORD_TAIL_S = 1.0  # a word's sound ends at most this long after the CTC head's last frame of it


def unit_labels(tokenizer: CTCTokenizer, text: str) -> tuple[list[str], list[int], list[range]] | None:
    """(units of `text`, their CTC labels in order, the units each label belongs to: none for a word separator, two
    or more for an LLM token that merges characters), or None when the vocabulary cannot spell a unit."""
    matches = list(UNIT.finditer(text))
    whole = getattr(tokenizer, "spell_units", None)  # a vocabulary that merges characters: the head's tokens
    spelled = whole(text, [m.span() for m in matches]) if whole is not None else None
    if spelled is not None:
        return [m.group() for m in matches], *spelled
    units, labels, owner = [], [], []
    for k, m in enumerate(matches):
        spaced = m.start() > 0 and text[m.start() - 1].isspace()
        try:
            ids, sep = tokenizer.encode_unit(m.group(), spaced)
        except ValueError:  # a character outside a token list without <unk>
            return None
        if not ids:
            return None
        units.append(m.group())
        labels += sep + ids
        owner += [range(0)] * len(sep) + [range(k, k + 1)] * len(ids)
    return units, labels, owner


def viterbi_path(log_probs: np.ndarray, labels: list[int], blank: int) -> np.ndarray | None:
    """The state of every frame on the best CTC path of `labels` through `log_probs` [T, V] (numpy, one
    utterance): state 2i+1 is label i, even states are blanks. None when T frames cannot hold the labels."""
    t_len, n = log_probs.shape[0], len(labels)
    lab = np.asarray(labels, dtype=np.int64)
    need = n + int(np.sum(lab[1:] == lab[:-1])) if n else 0  # a repeated label needs a blank between
    if t_len < max(need, 1):
        return None
    states = np.full(2 * n + 1, blank, dtype=np.int64)
    states[1::2] = lab
    emit = log_probs[:, states]  # [T, S]
    s_len = states.size
    skip = np.zeros(s_len, dtype=bool)  # s may come from s-2: a label after a different label
    skip[3::2] = lab[1:] != lab[:-1]
    score = np.full(s_len, -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # how far back the best predecessor lies: 0, 1 or 2
    choices = np.full((3, s_len), -np.inf)  # from the same state, the one before, the one two before
    for t in range(1, t_len):
        choices[0], choices[1, 1:], choices[2, 2:] = score, score[:-1], score[:-2]
        choices[2, ~skip] = -np.inf
        back[t] = np.argmax(choices, axis=0)
        score = choices[back[t], np.arange(s_len)] + emit[t]
    end = s_len - 1 if s_len == 1 or score[-1] >= score[-2] else s_len - 2
    if not math.isfinite(score[end]):
        return None
    path = np.empty(t_len, dtype=np.int64)
    for t in range(t_len - 1, -1, -1):
        path[t] = end
        end -= back[t, end]
    return path


def align_words(tokenizer: CTCTokenizer, text: str, log_probs: torch.Tensor, frame_seconds: float) -> list[Word] | None:
    """`text`'s units with (start, end) seconds from one utterance's CTC log-probs [T, V] (its valid frames), or
    None when it cannot be aligned. Only the label columns leave the device."""
    spelled = unit_labels(tokenizer, text)
    if spelled is None:
        return None
    units, labels, owner = spelled
    if not units:
        return []
    columns = sorted(set(labels) | {tokenizer.blank_id})
    index = {c: i for i, c in enumerate(columns)}
    picked = log_probs[:, columns].float().cpu().numpy()
    path = viterbi_path(picked, [index[c] for c in labels], index[tokenizer.blank_id])
    if path is None:
        return None
    begun, ended = [-1] * len(labels), [-1] * len(labels)  # each label's first and last frame on the path
    for t, state in enumerate(path.tolist()):
        if state % 2:
            i = state // 2
            begun[i] = t if begun[i] < 0 else begun[i]
            ended[i] = t
    start, end = [math.inf] * len(units), [-math.inf] * len(units)
    for i, units_of in enumerate(owner):
        # a label that merges characters shares its frames among them in order, as they are said: the same span for
        # each had timed them all at once, and a long-audio seam then squeezed some to no time at all
        width = (ended[i] + 1 - begun[i]) / max(len(units_of), 1)
        for j, k in enumerate(units_of):
            start[k] = min(start[k], begun[i] + j * width)
            end[k] = max(end[k], begun[i] + (j + 1) * width)
    if not all(math.isfinite(a) for a in start):  # a unit no label spelled (offsets that skip a character): no times
        return None
    return [(u, round(a * frame_seconds, 3), round(b * frame_seconds, 3)) for u, a, b in zip(units, start, end)]


def sound_ends(words: list[Word] | None, runs: np.ndarray | None) -> list[Word] | None:
    """`words` with each end moved to the end of the stretch of speech it falls in (`runs`: [K, 2] seconds from
    llmasr.data.long_audio.speech_runs, in the words' time), capped by the next word's start and WORD_TAIL_S. An end
    in silence, or audio without clear pauses (no runs), keeps the CTC end."""
    if not words or runs is None or len(runs) == 0:
        return words
    out = []
    for k, (unit, start, end) in enumerate(words):
        i = int(np.searchsorted(runs[:, 0], end, side="left")) - 1  # the last stretch starting before the end
        if i >= 0 and runs[i, 1] > end:
            cap = words[k + 1][1] if k + 1 < len(words) else math.inf
            end = max(end, min(float(runs[i, 1]), cap, end + WORD_TAIL_S))
        out.append((unit, start, round(end, 3)))
    return out
