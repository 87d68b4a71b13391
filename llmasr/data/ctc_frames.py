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

import numpy as np

EXAMPLES = 5


def frames_needed(ids) -> int:
    """The encoder frames CTC labels `ids` need: one each, plus one between each pair of equal neighbours (as
    llmasr.models.ctc.ctc_unalignable counts them)."""
    ids = np.asarray(ids)
    return int(ids.size + np.count_nonzero(ids[1:] == ids[:-1])) if ids.size > 1 else int(ids.size)


class CTCSpelling:
    """A transcript -> why `ctc_labels` (the dataset's CTC rule: a transcript -> ids, or why there are none) refuses
    it, or None. Without `count`, a character that a vocabulary spells alone it spells in any line, so each distinct
    character is asked once, and only a transcript holding one refused alone is encoded whole. With `count`, every
    transcript is encoded whole, once, as the dataset encodes it: `need` then holds the frames its labels need
    (frames_needed), 0 where it was refused."""

    def __init__(self, ctc_labels: Callable[[str], object], count: bool = False):
        self.rule, self.count = ctc_labels, count
        self.spelled: dict[str, bool] = {}
        self.need = 0

    def __call__(self, target: str) -> str | None:
        self.need = 0
        if self.count:
            ids = self.rule(target.strip())
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
    named: Callable[[int], str], *, name: str, squeeze: float = 1.0,
) -> str | None:  # fmt: skip
    """The warning for the `lines` (indices into `need`, the lines batching keeps) whose CTC labels need more frames
    (`need`: frames_needed, 0 where not counted) than `frames_of(seconds)` gives (the encoder's frames for `seconds`,
    one a line, each as batching budgets it: its stated duration, cut at data.batching.max_duration where
    truncate_to_max cuts it), with their share, the first ones (`named(i)`: manifest:line), the encoder's frame rate
    and the fixes; None where every line aligns. A warning, not a refusal: those lines still train the LLM, the
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
        "frame rate (a Conformer's input_layer conv2d gives 25 frames a second, conv2d8 12.5), a subword CTC "
        "vocabulary (model.ctc.vocab: a sentencepiece .model, or llm), or model.ctc.weight 0 to train without the CTC "
        "branch"
    )


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
