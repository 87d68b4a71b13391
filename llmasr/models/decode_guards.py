"""Guards that keep a hypothesis from running away: a per-utterance cap on new tokens (from its audio duration) and a
repetition stop (an n-gram repeated back to back past a limit ends the hypothesis).

Both work by forcing the end token inside the search (a transformers logits processor), at the score the model
gives it there, so they hold per utterance in greedy and beam search alike, a batch decodes as its utterances would
alone, and a beam stopped in a loop ranks below one the model ended itself. Which guard ended a
hypothesis is read back from its tokens with the same rules (`truncation`), so every stop is counted.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

# The longest n-gram (in tokens) the repetition stop looks for: a looping sentence, the usual LLM-ASR hallucination,
# is a few dozen tokens.
MAX_NGRAM = 32
# n-grams this short count as one word: a token is a digit in Qwen-style vocabularies, and a word with its comma is
# two ("yeah," "yeah," ...).
WORD_NGRAM = 2
MAX_TOKENS, REPETITION = "max_tokens", "repetition"
END_FLOOR = -1e4  # the least score a forced end takes (the CTC guide may rule the end out: -inf)


def repeated_tail(ids: list[int], copies: int) -> bool:
    """Whether `ids` ends with `copies` back-to-back copies of one n-gram of WORD_NGRAM + 1..MAX_NGRAM tokens, or
    twice as many copies of a shorter one: speech says "1000000", "no no no no no no" and "yeah, yeah, yeah, yeah,
    yeah"; a looping hypothesis runs far past either."""
    for n in range(1, min(MAX_NGRAM, len(ids) // copies) + 1):
        span = n * (2 * copies if n <= WORD_NGRAM else copies)
        if len(ids) >= span and ids[-span:] == ids[-n:] * (span // n):
            return True
    return False


class Guards:
    """Forces the end token on row r (utterance r // num_beams) once it holds caps[utterance] tokens, or once its
    tail repeats an n-gram `repeat_limit` + 1 times, one of WORD_NGRAM tokens or fewer 2 x (repeat_limit + 1) times
    (repeat_limit 0: no repetition stop)."""

    def __init__(self, caps: list[int], repeat_limit: int, end_id: int, num_beams: int):
        self.caps, self.repeat_limit, self.end_id, self.num_beams = caps, int(repeat_limit), int(end_id), num_beams

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        stop = [
            r
            for r, ids in enumerate(input_ids.tolist())
            if self.end_id not in ids and self.reason(ids, self.caps[r // self.num_beams]) is not None
        ]
        if not stop:
            return scores
        out = scores.clone()
        out[stop] = float("-inf")
        # The end pays what the model gives it there (floored, so that the row keeps one finite choice): a beam
        # stopped in its loop had ended for free, ahead of a beam that ended as the model wanted, and won.
        out[stop, self.end_id] = scores[stop, self.end_id].clamp(min=END_FLOOR)
        return out

    def reason(self, ids: list[int], cap: int) -> str | None:
        """Why a hypothesis of these tokens must end now: MAX_TOKENS, REPETITION, or None."""
        if len(ids) >= cap:
            return MAX_TOKENS
        if self.repeat_limit and repeated_tail(ids, self.repeat_limit + 1):
            return REPETITION
        return None

    def truncation(self, ids: list[int], cap: int) -> str | None:
        """Which guard ended the hypothesis `ids` (generated tokens, cut at their end token or not), or None."""
        body = ids[: ids.index(self.end_id)] if self.end_id in ids else ids
        return self.reason(body, cap)


def other_end_ids(generation_config, tokenizer, end_id: int) -> list[int]:
    """The LLM's end tokens other than the prompt's `end_id`: its generation_config's eos_token_id (an id or a list)
    and the tokenizer's eos; Qwen's <|endoftext|> beside the chat template's <|im_end|>."""
    given = getattr(generation_config, "eos_token_id", None)
    ids = [*(given if isinstance(given, (list, tuple)) else [given]), getattr(tokenizer, "eos_token_id", None)]
    return sorted({int(i) for i in ids if i is not None and int(i) != int(end_id)})


class EndTokens:
    """Folds the LLM's other end tokens into the prompt's end token: the end's probability becomes their sum and
    the others are ruled out. An answer that closes with <|endoftext|> then ends, as the LLM's own generate stops
    at every id of its generation_config, instead of running on to its cap; the guards, the CTC guide, the boost
    and the hypothesis all see the one end token. First among the search's processors, on the LLM's own scores."""

    def __init__(self, end_id: int, others: list[int]):
        self.end_id, self.others = int(end_id), list(others)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        others = [i for i in self.others if i < scores.shape[1]]
        if not others:
            return scores
        out = scores.clone()
        out[:, self.end_id] = torch.logsumexp(scores[:, [self.end_id, *others]].float(), dim=1).to(scores.dtype)
        out[:, others] = float("-inf")
        return out


@contextmanager
def caps_alone(llm):
    """The LLM's generation_config max_length (Llama 3 Instruct's sets 4096) set aside while generate runs: the caps
    above bound every row, and beside max_new_tokens transformers logs a warning at every generate call, a line a
    batch."""
    config = llm.generation_config
    kept = config.max_length
    config.max_length = None
    try:
        yield
    finally:
        config.max_length = kept
