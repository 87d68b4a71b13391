"""What a CTC head's labels ask of a line's audio, known before any audio is loaded.

CTC needs at least one encoder frame per label, and one more between two equal neighbours (a blank parts them). A
character vocabulary over a low frame rate (a Conformer under conv2d8: 12.5 frames a second; a Paraformer's 16.7
with fast speech) leaves such lines no CTC path: training's loss for them is 0 (zero_infinity), so the head learns
nothing from them, which train.log counts (ctc_unaligned) only hours in. `CTCSpelling` is the start-up screen's and
`llmasr data check`'s pass over the transcripts with the dataset's CTC rule (its refusals are bad lines; with
`count`, each line's labels are counted from the same encoding), and `unaligned_text` words the lines whose labels
outnumber the frames their duration gives.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import eq

import numpy as np

EXAMPLES = 5
WORDS_KEPT = 100_000  # distinct words whose labels' summary is kept (an unspaced line is one word: kept briefly)
_ASK = object()


def frames_needed(ids) -> int:
    """The encoder frames CTC labels `ids` need: one each, plus one between each pair of equal neighbours (as
    llmasr.models.ctc.ctc_unalignable counts them)."""
    ids = np.asarray(ids)
    return int(ids.size + np.count_nonzero(ids[1:] == ids[:-1])) if ids.size > 1 else int(ids.size)


class WordCounts:
    """A transcript -> frames_needed of its labels, asking the vocabulary each distinct word once, where it spells
    word by word (the rule's word_spelling, llmasr.models.ctc_vocab.WordSpelling): a word is summed up as (its
    frames, its first label, its last), and two neighbours need one more frame where the one's last label is the
    other's first. None where the transcript must be encoded whole: a word refused or spelled with an id the head
    cannot learn (the whole line then says why, as the dataset does), no labels at all, or whitespace other than one
    space between words where the spelling holds only for that (`spaced`)."""

    def __init__(self, spelling, vocab_size: int, blank: int):
        self.spelling, self.vocab_size, self.blank = spelling, int(vocab_size), int(blank)
        self.rest: dict[str, tuple[int, int, int] | None] = {}
        self.first = self.rest if spelling.first == spelling.rest else {}  # one spelling: one dict
        between = list(spelling.between)
        self.between = self._summary(between) if between else None

    @classmethod
    def of(cls, ctc_labels) -> WordCounts | None:
        """The count for the dataset's CTC rule (llmasr.data.dataset.CTCRule), None where it spells no word alone."""
        spelling = ctc_labels.word_spelling() if hasattr(ctc_labels, "word_spelling") else None
        if spelling is None:
            return None
        tokenizer = ctc_labels.tokenizer
        counts = cls(spelling, tokenizer.vocab_size, tokenizer.blank_id)
        return None if spelling.between and counts.between is None else counts

    def _summary(self, ids: list[int]) -> tuple[int, int, int] | None:
        """(frames_needed, first, last) of a word's labels; (0, -1, -1) for none; None for an id the head cannot
        learn (outside the vocabulary, or the blank: ctc_label_ids refuses it)."""
        if not ids:
            return 0, -1, -1
        if min(ids) < 0 or max(ids) >= self.vocab_size or self.blank in ids:
            return None
        return len(ids) + sum(map(eq, ids, ids[1:])), ids[0], ids[-1]

    def _ask(self, word: str, first: bool) -> tuple[int, int, int] | None:
        try:
            ids = list((self.spelling.first if first else self.spelling.rest)(word))
        except (ValueError, KeyError):  # the whole line gives ctc_label_ids's refusal
            return None
        kept = self.first if first else self.rest
        if len(kept) >= WORDS_KEPT:
            kept.clear()
        kept[word] = found = self._summary(ids)
        return found

    def __call__(self, text: str) -> int | None:
        words = text.split()
        if not words or (self.spelling.spaced and " ".join(words) != text):
            return None
        between, total, last = self.between, 0, -1
        for k, word in enumerate(words):
            kept = (self.rest if k else self.first).get(word, _ASK)
            found = self._ask(word, not k) if kept is _ASK else kept
            if found is None:
                return None
            if k and between is not None:
                total += between[0] + (last == between[1])
                last = between[2]
            if found[0]:
                total += found[0] + (last == found[1])
                last = found[2]
        return total or None


class CTCSpelling:
    """A transcript -> why `ctc_labels` (the dataset's CTC rule: a transcript -> ids, or why there are none) refuses
    it, or None. Without `count`, a character that a vocabulary spells alone it spells in any line, so each distinct
    character is asked once, and only a transcript holding one refused alone is encoded whole. With `count`, every
    transcript's labels are counted as the dataset encodes it: `need` then holds the frames they need
    (frames_needed), 0 where it was refused. Where the vocabulary spells word by word the count asks each distinct
    word once (WordCounts); a transcript it cannot count so is encoded whole."""

    def __init__(self, ctc_labels: Callable[[str], object], count: bool = False):
        self.rule, self.count = ctc_labels, count
        self.spelled: dict[str, bool] = {}
        self.need = 0
        self.words = WordCounts.of(ctc_labels) if count else None

    def __call__(self, target: str) -> str | None:
        self.need = 0
        if self.count:
            text = target.strip()
            need = self.words(text) if self.words is not None else None
            if need is not None:
                self.need = need
                return None
            ids = self.rule(text)
            if isinstance(ids, str):
                return ids
            self.need = frames_needed(ids)
            return None
        spelled, ok = self.spelled, True
        for c in set(target):  # not `chars - spelled.keys()`: that copies every character asked so far, each line
            known = spelled.get(c)
            if known is None:
                known = spelled[c] = c.isspace() or not isinstance(self.rule(c), str)
            ok = ok and known
        if ok:
            return None
        refused = self.rule(target.strip())
        return refused if isinstance(refused, str) else None


def unaligned_text(
    need: np.ndarray, lines: np.ndarray, seconds: np.ndarray, frames_of: Callable[[np.ndarray], np.ndarray],
    named: Callable[[int], str], *, name: str, squeeze: float = 1.0, vocab_kind: str = "token_list",
) -> str | None:  # fmt: skip
    """The warning for the `lines` (indices into `need`, the lines batching keeps) whose CTC labels need more frames
    (`need`: frames_needed, 0 where not counted) than `frames_of(seconds)` gives (the encoder's frames for `seconds`,
    one a line, each as batching budgets it: its stated duration, cut at data.batching.max_duration where
    truncate_to_max cuts it), with their share, the first ones (`named(i)`: manifest:line), the encoder's frame rate
    and the fixes (`vocab_kind`: CTCConfig.vocab_kind, so that no vocabulary is offered that spells them no
    shorter); None where every line aligns. A warning, not a refusal: those lines still train the LLM, the
    others the head. `squeeze`: data.augment.speed_perturb's fastest factor, whose shorter clips are counted apart."""
    lines, seconds = np.asarray(lines, dtype=np.int64), np.asarray(seconds, dtype=np.float64)
    counted = need[lines] > 0
    lines, seconds = lines[counted], seconds[counted]
    if not lines.size:
        return None
    asked = need[lines]
    frames = frames_of(seconds)
    short = asked > frames
    sped = int(np.count_nonzero(~short & (asked > frames_of(seconds / squeeze)))) if squeeze > 1.0 else 0
    if not short.any():
        return None if not sped else _sped_only(name, sped, lines.size, squeeze)
    bad = np.flatnonzero(short)
    rate = float(frames_of(np.array([100.0]))[0]) / 100
    first = "; ".join(
        f"{named(int(lines[j]))} ({int(asked[j])} frames needed, {int(frames[j])} given)" for j in bad[:EXAMPLES]
    )
    more = f"; and {sped} more at data.augment.speed_perturb's fastest factor {squeeze:g}" if sped else ""
    return (
        f"{name}: {bad.size} of {lines.size} lines ({bad.size / lines.size:.1%}) have more CTC labels (one more "
        f"between equal neighbours) than encoder frames (the encoder gives {rate:.3g} frames a second after its "
        f"frontend and subsampling): CTC has no path for them, so their CTC loss is 0 and the CTC head learns nothing "
        f"from them (the LLM still does){more}. First: {first}. To train the head on them: an encoder of a higher "
        f"frame rate (a Conformer's input_layer conv2d gives 25 frames a second, conv2d8 12.5), {_FEWER[vocab_kind]}"
        "model.ctc.weight 0 to train without the CTC branch"
    )


# The vocabularies that spell a line in fewer labels than `vocab_kind`'s (model.ctc.vocab), as the fix names them: the
# LLM's own tokens are the longest on offer, so for them none is named
_FEWER = {
    "token_list": "a subword CTC vocabulary (model.ctc.vocab: a sentencepiece .model, or llm), or ",
    "sentencepiece": "a CTC vocabulary of longer pieces (model.ctc.vocab: llm, or a sentencepiece model trained to "
    "more pieces), or ",
    "tiktoken": "a CTC vocabulary of longer pieces (model.ctc.vocab: llm), or ",
    "llm": "or ",
}


def _sped_only(name: str, sped: int, total: int, squeeze: float) -> str:
    return (
        f"{name}: {sped} of {total} lines have more CTC labels than encoder frames at data.augment.speed_perturb's "
        f"fastest factor {squeeze:g} (not at speed 1): in the epochs that draw it their CTC loss is 0"
    )


def heard_lines(sampler) -> tuple[np.ndarray, np.ndarray]:
    """(the dataset indices `sampler` batches, of those it draws from; the seconds each is budgeted as: its stated
    duration, cut at the sampler's max_duration where truncate_to_max cuts it)."""
    from llmasr.data.item_filters import FILTER_REASONS

    pool = sampler.base_indices if sampler.epoch_indices is None else np.arange(sampler.durations.size)
    skipped = np.concatenate([sampler.skipped_indices(r) for r in FILTER_REASONS])
    lines = pool[~np.isin(pool, skipped)]
    seconds = sampler.durations[lines]
    cut = sampler.truncated_mask[lines]
    seconds[cut] = np.minimum(seconds[cut], sampler.max_duration)
    return lines, seconds
