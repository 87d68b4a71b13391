"""The demo's hotword material: made-up names that training hears seldom, and a held-out-voice split in which each
utterance comes with a biasing list (its name, if it has one, among distractor names).

A name heard 40 times in 9,000 utterances (a common word is heard hundreds of times) is what a hotword is in real
use: a word the model has barely learned, that the user knows may occur. The `hotword` split is spoken by the test
voices; its manifest carries each list in the `hotwords` field, so `llmasr decode` biases with it, and
`--hotwords-unprompted` scores the same lists without them in the prompt. A fifth of its utterances hold no name at
all: there the whole list is distractors, which is where a model that copies from its prompt shows it. A
`hotword_dev` split built the same way in training voices, with lists of its own, is where decoding settings such
as the boost are chosen (bench/hotword_boost.py), so the held-out split only reports them.
"""

from __future__ import annotations

import numpy as np

# Pronounceable by espeak-ng's English rules, none an English word or close to one of the corpus words.
# The names' syllables: the demo's tokenizer spells each name in these pieces (as a real LLM's BPE splits a rare
# name into familiar pieces) while every other corpus word is one token.
SYLLABLES = {
    "zandor": ["zan", "dor"], "keltrix": ["kel", "trix"], "mirabo": ["mi", "ra", "bo"], "quenlar": ["quen", "lar"],
    "brevik": ["bre", "vik"], "tolmara": ["tol", "ma", "ra"], "yusandi": ["yu", "san", "di"],
    "fengrove": ["fen", "grove"], "oskarra": ["os", "kar", "ra"], "velmont": ["vel", "mont"],
    "drakuna": ["dra", "ku", "na"], "halvesto": ["hal", "ves", "to"], "jorunda": ["jo", "run", "da"],
    "pimsley": ["pims", "ley"], "raskovin": ["ras", "ko", "vin"], "umberko": ["um", "ber", "ko"],
}  # fmt: skip
NAMES = list(SYLLABLES)
NO_NAME_SHARE = 0.2  # share of hotword-split utterances without a name: lists of distractors only
_SEED_OFFSET = 7919  # names are drawn from their own generator: the rest of the corpus plan stays as it was


def plant_names(items: list[dict], names: list[str], per_name: int, seed: int) -> None:
    """Insert each name into `per_name` distinct training items (at a random word position), in place."""
    if not names or per_name <= 0:
        return
    need = len(names) * per_name
    if need > len(items):
        raise ValueError(f"{len(names)} names x {per_name} need {need} training utterances, the plan has {len(items)}")
    rng = np.random.default_rng(seed + _SEED_OFFSET)
    chosen = rng.choice(len(items), size=need, replace=False)
    for j, idx in enumerate(chosen):
        item = items[int(idx)]
        words = item["target"].split()
        words.insert(int(rng.integers(0, len(words) + 1)), names[j // per_name])
        item["target"] = " ".join(words)


def hotword_texts(
    n: int, base_texts: list[str], names: list[str], distractors: int, seed: int
) -> list[tuple[str, list[str]]]:
    """`n` (text, biasing list) pairs: a base text with one name inserted (or none, NO_NAME_SHARE of them) and a
    shuffled list of that name plus `distractors` other names."""
    if len(names) < distractors + 1:
        raise ValueError(f"hotword lists of 1 + {distractors} names need at least {distractors + 1} names")
    rng = np.random.default_rng(seed + 2 * _SEED_OFFSET)
    out = []
    for i in range(n):
        words = base_texts[i % len(base_texts)].split()
        pick = [names[int(k)] for k in rng.choice(len(names), size=distractors + 1, replace=False)]
        if rng.random() >= NO_NAME_SHARE:
            words.insert(int(rng.integers(0, len(words) + 1)), pick[0])
        order = rng.permutation(len(pick))
        out.append((" ".join(words), [pick[int(k)] for k in order]))
    return out
