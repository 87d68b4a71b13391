"""Hotword (biasing) lists: the `data.hotwords` recipe section, phrase files, and the per-utterance lists training
samples.

A training list mixes phrases of the reference (words, or n-grams of up to `ngram[1]` units, picked with a weight
that favours rare units by the training corpus's counts) with distractors (phrases that do not occur in the
reference, from a phrase file or from the corpus itself), shuffled so the true phrases have no fixed place. Some
utterances get no list (`empty_prob`), so the model also learns to transcribe without one. Each list is drawn from
numpy Generator([seed, epoch, key, HOTWORD_STREAM]), with the item's visit key (its index, or its own key for a
repeated visit: llmasr.data.visit_keys): the same visit in the same epoch gets the same list on any worker or rank,
after a resume too, and the draws never shift the augmentation's (a separate stream).

Phrase files (a distractor pool, or `llmasr decode --hotwords`): UTF-8 text, one phrase a line; an empty line or
text that is not UTF-8 is an error naming the file and line; a phrase repeated is read once, with a warning.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from llmasr.config_io import ConfigError
from llmasr.config_paths import path_field
from llmasr.data.corpus_stats import CorpusStats
from llmasr.data.hotword_units import glued_units, holds, join_units, ngrams, units
from llmasr.data.records import phrase_text
from llmasr.text_files import not_utf8
from llmasr.text_units import normalize
from llmasr.unread_fields import as_section, changed

log = logging.getLogger(__name__)
HOTWORD_STREAM = 0x686F74  # "hot": the Generator stream of hotword lists, apart from augmentation's
SOURCES = ("sample", "manifest", "manifest_or_sample")
UNITS = ("auto", "word", "char")


# What str.splitlines ends a line at besides \n and \r (vertical tab, form feed, file/group/record separators, NEL,
# line and paragraph separators): inside a line, phrase_text had read each as a space, two phrases as one.
_OTHER_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


class PhraseFileError(ValueError):
    """A phrase file that cannot be read as one phrase a line."""


def read_phrase_file(path: str | Path) -> list[str]:
    """The distinct phrases of a UTF-8 file, one a line, in order (each as phrase_text reads it: surrounding spaces
    stripped, inner runs of spaces and tabs one space; a trailing newline is fine; a line ends at \n, \r\n or \r,
    as Python's universal newlines read it)."""
    path = Path(path)
    if path.is_dir():
        raise PhraseFileError(f"{path}: a directory, not a hotword file")
    if not path.is_file():
        # FunASR's generate(hotword="魔搭 达摩院") reads text that names no .txt file as the phrases, split at spaces
        text = str(path)
        funasr = (
            f"; FunASR's hotword text form (phrases split at spaces) is not read here: write the phrases "
            f"{text.split()} one a line into a UTF-8 file and give its path (or, for one phrase with a space, the "
            f"line {' '.join(text.split())!r})"
            if len(text.split()) > 1 and "/" not in text and not text.endswith(".txt")
            else ""
        )
        raise PhraseFileError(f"hotword file not found: {path}{funasr}")
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # a BOM (Windows editors) is no part of the first phrase
    lines = data.splitlines()  # CR-only line ends (classic Mac editors) had made the whole file one phrase
    phrases: dict[str, int] = {}  # phrase -> its first line
    repeats = []
    for lineno, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PhraseFileError(f"{path}:{lineno}: {not_utf8(err, path)}") from None
        if brk := next((c for c in line if c in _OTHER_BREAKS), None):  # had joined two phrases into one, unsaid
            raise PhraseFileError(
                f"{path}:{lineno}: holds U+{ord(brk):04X} ({unicodedata.name(brk, 'a control character')}), which some "
                "editors show as a line end, inside the line: one phrase a line, each ended by \\n, \\r\\n or \\r"
            )
        text = phrase_text(line)
        if not text:
            raise PhraseFileError(f"{path}:{lineno}: empty line (one phrase a line; remove the empty line)")
        if text in phrases:
            repeats.append(f"{lineno} ({phrases[text]})")
        phrases.setdefault(text, lineno)
    if not phrases:
        raise PhraseFileError(f"{path}: no phrases (one phrase a line)")
    warn_weighted([f"{path}:{line} {text!r}" for text, line in phrases.items()], list(phrases), str(path))
    # a prompt would render it twice (a drawn training list never does), its tokens spent again; said once a file, which
    # a start-up reads twice (the recipe's check, the training loader's sampler)
    if repeats and _first_time("repeats", str(path), *repeats):
        more = f" and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        log.warning("%s: %d repeated phrase(s) left out, line (first line): %s%s", path, len(repeats),
                    ", ".join(repeats[:5]), more)  # fmt: skip
    return list(phrases)


# FunASR-runtime's hotword files write a weight after each phrase ("阿里巴巴 20"), and its readers skip a line without
# one, so such a file has a weight on every line. Where only some phrases end in a number they are phrases ("iPhone
# 15", "Windows 11"), and so may a single one be: two or more, every one ending so, are warned of.
_WEIGHTED = re.compile(r" [+-]?\d+$")
# The lists warned of (a training start reads a distractor file twice), by a digest each and the latest few
# only: a long-lived Transcriber given a list per call had kept every list, its phrases too.
_WARNED: OrderedDict[bytes, None] = OrderedDict()
WARNED_KEPT = 1024
_WARNED_LOCK = threading.Lock()


def _first_time(*said) -> bool:
    """Whether `said` (a warning's kind and what it names) is not among the latest WARNED_KEPT warned of; it is then."""
    key = hashlib.blake2b(repr(said).encode(), digest_size=16).digest()
    with _WARNED_LOCK:  # a Transcriber called from several threads
        if key in _WARNED:
            _WARNED.move_to_end(key)
            return False
        _WARNED[key] = None
        if len(_WARNED) > WARNED_KEPT:
            _WARNED.popitem(last=False)
    return True


def warn_weighted(shown: list[str], phrases: list[str], where: str) -> bool:
    """Warn (once per list and `where`, of the latest WARNED_KEPT lists warned of) where `phrases` look like
    FunASR-runtime's `PHRASE WEIGHT` lines: at least two, every one ending in a space and an integer (`shown`: how to
    name each, its file and line). Nothing is stripped: the numbers may be part of the phrases. Returns whether it
    warned."""
    if len(phrases) < 2 or not all(_WEIGHTED.search(p) for p in phrases) or not _first_time(where, *phrases):
        return False
    log.warning(
        "%s: every phrase ends in a number after a space (%s%s), as FunASR-runtime's hotword files write a weight "
        "after each phrase (PHRASE WEIGHT). llmasr reads a line as one phrase, the number included, and biases "
        "towards it too; it weighs every phrase alike (--hotword-boost, or hotword_boost, sets that weight). If "
        "these are weights, remove them (sed -E 's/[[:space:]]+[+-]?[0-9]+$//'); if the numbers are part of the "
        "phrases, nothing is wrong", where, ", ".join(shown[:3]), ", ..." if len(shown) > 3 else "",
    )  # fmt: skip
    return True


def _pair(path: str, name: str, values: list[int], low: int) -> None:
    if len(values) != 2 or not all(isinstance(v, int) for v in values) or not low <= values[0] <= values[1]:
        raise ConfigError(f"{path}.{name}: expected [min, max] whole numbers with {low} <= min <= max, got {values}")


@dataclass
class HotwordsConfig:
    """Training's biasing lists (validation uses the manifest's lists, else none: it measures the model as decoding
    will use it, on given lists, not on lists drawn from the reference it scores)."""

    enable: bool = False
    # sample: always draw a list; manifest: the manifest's lists only (none where absent); manifest_or_sample: the
    # manifest's list where the line has one (an explicit [] included), a drawn list elsewhere.
    source: str = "manifest_or_sample"
    # auto: each character of a script written without spaces (Chinese, Japanese) and every other run between spaces
    # (words), as scoring counts them; word: split on spaces; char: every letter and digit
    unit: str = "auto"
    ngram: list[int] = field(default_factory=lambda: [1, 2])  # a reference phrase is [min, max] units long
    true_phrases: list[int] = field(default_factory=lambda: [1, 2])  # reference phrases per list, [min, max]
    list_size: list[int] = field(default_factory=lambda: [2, 10])  # phrases per list in all, [min, max]
    empty_prob: float = 0.2  # share of drawn lists left empty
    # A phrase's weight is count(its rarest unit in the training texts) ** -rarity: 0 draws uniformly.
    rarity: float = 1.0
    # Where distractors come from: "corpus" (n-grams of the training texts) or a phrase file (one a line, UTF-8).
    distractors: str = path_field("corpus", keywords=("corpus",))
    pool_size: int = 100_000  # corpus distractors: n-gram occurrences of the training texts, a uniform sample

    def validate(self, path: str) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"{path}.source: expected one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.unit not in UNITS:
            raise ConfigError(f"{path}.unit: expected one of {', '.join(UNITS)}, got {self.unit!r}")
        _pair(path, "ngram", self.ngram, 1)
        _pair(path, "true_phrases", self.true_phrases, 0)
        _pair(path, "list_size", self.list_size, 1)
        if self.true_phrases[1] > self.list_size[1]:  # the list would hold more than list_size says it may
            raise ConfigError(
                f"{path}.true_phrases: up to {self.true_phrases[1]} reference phrases a list, but {path}.list_size "
                f"allows at most {self.list_size[1]} phrases in all, reference phrases included: raise list_size's "
                "maximum or lower true_phrases'"
            )
        if not 0.0 <= self.empty_prob <= 1.0:
            raise ConfigError(f"{path}.empty_prob: must be in [0, 1], got {self.empty_prob}")
        if not 0.0 <= self.rarity <= 10.0:
            raise ConfigError(f"{path}.rarity: must be in [0, 10], got {self.rarity}")
        if self.pool_size < 1:
            raise ConfigError(f"{path}.pool_size: must be >= 1, got {self.pool_size}")
        if self.enable and self.distractors != "corpus":
            try:
                read_phrase_file(self.distractors)
            except PhraseFileError as err:
                raise ConfigError(f"{path}.distractors: {err}") from None

    @property
    def samples(self) -> bool:
        return self.enable and self.source != "manifest"

    def redrawn(self, loader_state: dict | None) -> str | None:
        """What a resume from a checkpoint's `loader_state` says where the llmasr that saved it drew the lists' corpus
        distractors from its earlier sample (a sequential reservoir; since, a bottom-k sample by hashed keys,
        llmasr.data.corpus_stats): told by a saved sampler position without `unusable`, which every llmasr since
        records. None otherwise (also for a checkpoint at an epoch's end, which holds no position)."""
        position = loader_state.get("sampler") if isinstance(loader_state, dict) else None
        if not (self.samples and self.distractors == "corpus") or not isinstance(position, dict):
            return None
        if "unusable" in position:
            return None
        return (
            "data.hotwords: the checkpoint was saved by an older llmasr, which drew the biasing lists' corpus "
            "distractors from another sample of the training texts: the lists drawn from here on are not the ones "
            "it would have drawn (the batches and the model's state are), so the losses differ from an uninterrupted "
            "run's. Finish the run with the llmasr that saved it to keep its draws"
        )

    def idle_settings(self) -> list[str]:
        """Settings that change nothing, one line each: keys set away from their defaults where no list is drawn
        (`enable` false, or `source: manifest`, which uses the manifest's lists as given, as no `enable` does), or
        where every drawn list is left empty (`empty_prob: 1`)."""
        if self.samples and self.empty_prob >= 1.0:  # the lists were drawn empty, and the settings that fill them idle
            return [
                "data.hotwords.empty_prob: 1 leaves every drawn list empty: no line without a list of its own trains "
                "with one, and the other drawing settings do nothing; lower it (the default 0.2) or set enable false"
            ]
        if self.samples:
            return []
        given = changed(
            HotwordsConfig, as_section(self), [f.name for f in fields(self) if f.name not in ("enable", "source")]
        )
        out = []
        if self.enable:  # source: manifest
            out.append(
                "data.hotwords.source: manifest draws no list: training uses the manifest's lists as given, as it "
                "does with enable false (manifest_or_sample or sample draw lists)"
            )
        if given:
            why = "source is manifest" if self.enable else "enable is false"
            out.append(f"data.hotwords: {', '.join(given)} set, but {why}: no list is drawn, so it does nothing")
        return out


class HotwordSampler:
    """Draws the training list of one utterance (see the module docstring); picklable into loader workers."""

    def __init__(self, cfg: HotwordsConfig, stats: CorpusStats, seed: int):
        self.cfg, self.stats, self.seed = cfg, stats, int(seed)
        pool = stats.pool if cfg.distractors == "corpus" else read_phrase_file(cfg.distractors)
        self.pool = list(dict.fromkeys(pool))  # distinct phrases, first-seen order
        self._pool_keys = [self._keys(p) for p in self.pool]
        w = np.array([stats.weight(k, cfg.rarity) if cfg.distractors == "corpus" else 1.0 for k in self._pool_keys])
        self._pool_p = w / w.sum() if w.size and w.sum() > 0 else None

    def short_pool(self) -> str | None:
        """The warning for a pool too small for list_size, or None. A list asks for up to list_size's maximum less
        true_phrases' minimum distractors: a pool with fewer had drawn lists shorter than list_size says (a 2-phrase
        file under list_size [6, 8]: lists of 3), unsaid. Said once, by training's rank 0 (every rank builds one)."""
        (lo, hi), least = self.cfg.list_size, self.cfg.true_phrases[0]
        if len(self.pool) >= hi - least:
            return None
        where = (
            f"data.hotwords.distractors: {self.cfg.distractors} holds {len(self.pool)} distinct phrase(s)"
            if self.cfg.distractors != "corpus"
            else f"data.hotwords: the training texts gave {len(self.pool)} distinct corpus distractor(s) (pool_size "
            f"{self.cfg.pool_size})"
        )
        return (
            f"{where}, but a list may ask for {hi - least} distractors (list_size's maximum {hi} less true_phrases' "
            f"minimum {least}): lists will hold fewer phrases than list_size [{lo}, {hi}] says; give more distractors "
            "or lower list_size"
        )

    @property
    def longest_phrase_bytes(self) -> int:
        """At least the UTF-8 bytes of any phrase a list can hold: a reference n-gram or a distractor."""
        return max([self.stats.longest] + [len(p.encode()) for p in self.pool])

    @classmethod
    def build(cls, cfg: HotwordsConfig, manifest, seed: int, share=None) -> HotwordSampler | None:
        """The sampler for a training manifest, or None when training draws no lists. `share`: the ranks of a node
        split the pass over the texts (llmasr.data.corpus_stats)."""
        return cls(cfg, CorpusStats.from_manifest(manifest, cfg, seed, share), seed) if cfg.samples else None

    def _keys(self, phrase: str) -> tuple[str, ...]:
        return tuple(u.lower() for u in units(phrase, self.cfg.unit))

    def rng(self, key: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(key), HOTWORD_STREAM])

    def pick(self, given: list[str] | None, target: str, key: int, epoch: int) -> list[str]:
        """The list training uses for the visit `key` in `epoch`: the manifest's (`given`) when the source says so,
        else a drawn one."""
        if self.cfg.source == "manifest_or_sample" and given is not None:
            return list(given)
        rng = self.rng(key, epoch)
        if rng.random() < self.cfg.empty_prob:
            return []
        parts, glued = glued_units(target, self.cfg.unit)
        true = self._true_phrases(parts, glued, rng)
        lo, hi = self.cfg.list_size
        wanted = max(int(rng.integers(lo, hi + 1)) - len(true), 0)
        ref = tuple(p.lower() for p in parts)
        phrases = true + self._distractors(wanted, (ref, self._scored(target)), {self._keys(t) for t in true}, rng)
        return [phrases[i] for i in rng.permutation(len(phrases))]

    def _true_phrases(self, parts: list[str], glued: list[bool], rng: np.random.Generator) -> list[str]:
        """Reference n-grams (written as the reference writes them: `glued`), drawn one at a time by rarity weight;
        n-grams that overlap a drawn one are left out."""
        lo, hi = self.cfg.true_phrases
        k = int(rng.integers(lo, hi + 1))
        spans = ngrams(parts, *self.cfg.ngram)
        weights = np.array([self.stats.weight([p.lower() for p in parts[a:b]], self.cfg.rarity) for a, b in spans])
        out: list[str] = []
        chosen: set[tuple[str, ...]] = set()
        while len(out) < k and weights.sum() > 0:
            j = int(rng.choice(len(spans), p=weights / weights.sum()))
            a, b = spans[j]
            phrase = join_units(parts[a:b], self.cfg.unit, glued[a:b])
            if self._keys(phrase) not in chosen:
                out.append(phrase)
                chosen.add(self._keys(phrase))
            for m, (c, d) in enumerate(spans):
                if c < b and a < d:  # overlaps the drawn span
                    weights[m] = 0.0
        return out

    def _scored(self, text: str) -> tuple[str, ...]:
        """`text` as scoring reads it (llmasr.text_units.normalize: "New-York" is the words new and york), in units."""
        text = normalize(text)
        return tuple(text.replace(" ", "") if self.cfg.unit == "char" else units(text, self.cfg.unit))

    def _distractors(self, n: int, ref: tuple, taken: set, rng: np.random.Generator) -> list[str]:
        """`n` distinct pool phrases (fewer if the pool runs short) that do not occur in the reference, neither as
        written (`ref`[0]: its units, lowercased) nor as scored (`ref`[1]: its scored units; a distractor scoring
        finds spoken would count as a hit)."""
        if n <= 0 or not self.pool:
            return []
        out: list[str] = []
        for j in rng.choice(len(self.pool), size=min(4 * n + 8, 4 * len(self.pool)), p=self._pool_p):
            keys = self._pool_keys[int(j)]
            if not keys or keys in taken or holds(ref[0], keys) or holds(ref[1], self._scored(self.pool[int(j)])):
                continue
            taken.add(keys)
            out.append(self.pool[int(j)])
            if len(out) == n:
                break
        return out
