"""What a run can know about its data before loading any audio, checked at start-up.

`screen(manifest)` parses every line, checks that its audio file exists (a stat: cheap on a million lines), and
probes the audio header of every line whose duration is unknown (with its channel and span, as loading reads them):
malformed lines, missing or ill-typed fields, empty or non-text transcripts, unsupported lhotse records, missing
audio files and unreadable headers are found here, once, each with its dataset index; with a CTC head, so are
transcripts its vocabulary cannot spell (`spelling_check`: the dataset's own rule, asked of each distinct character
once, then of every line holding a character it refused alone). The sampler never batches these lines, every epoch
counts them against data.max_bad_fraction, and `refuse_at_start` stops the run before training when they alone pass
it. Faults that only loading shows (corrupt audio behind a readable header, clips too short for a feature frame, a
stated duration the audio does not bear out) are counted as batches load (see llmasr.data.bad_data.BadDataTracker).
What batching then leaves out is llmasr.data.skipped_lines'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from llmasr.data.audio import missing_audio
from llmasr.data.bad_data import BadDataTracker, BadItem, TooMuchBadData
from llmasr.data.ctc_frames import CTCSpelling
from llmasr.data.key_repeats import KeyRepeats
from llmasr.data.llm_unk import LLMUnk, gather_unk, merge_unk
from llmasr.data.manifest import BadRecord
from llmasr.data.record_fields import near_field, unread_fields, unread_text
from llmasr.data.records import audio_reason, language_of
from llmasr.data.screen_share import ScreenShare
from llmasr.data.transcript_text import gather_text, text_warnings

log = logging.getLogger("llmasr.data")

EXAMPLES = 5


def where(manifest, index: int) -> tuple[str, int]:
    """(manifest path, 1-based line) of dataset index `index` in a Manifest or MixedManifest."""
    if hasattr(manifest, "locate"):
        k, j = manifest.locate(index)
        manifest, index = manifest.manifests[k], j
    return manifest.path, manifest.lineno(index)


def target_length(utt) -> int:
    """An utterance's target length for batching: its target_len, else its transcript's characters (an upper bound
    on LLM tokens for most tokenizers)."""
    return int(utt.target_len) if utt.target_len is not None else len(str(utt.target))


def screen(
    manifest, ctc_labels: Callable[[str], object] | None = None, target_lens: np.ndarray | None = None,
    share: ScreenShare | None = None, text_lens: tuple[np.ndarray, Callable] | None = None, unread: dict | None = None,
    unknown: dict | None = None, text: dict | None = None, llm_unk: tuple[LLMUnk, dict] | None = None,
    ctc_need: np.ndarray | None = None, prompts: dict | None = None, languages: dict | None = None,
    keys: KeyRepeats | None = None,
) -> tuple[list[BadItem], float]:  # fmt: skip
    """Every line found unusable without loading audio (see the module docstring), sorted by index, and the seconds
    the screen took. `ctc_labels`: the dataset's CTC rule (a transcript -> ids, or why there are none). Fills
    unknown durations from the audio headers as a side effect, like fill_durations, and `target_lens` (int64, one a
    line), when given, with each line's target_length (0 where it does not parse), in the same pass; so `text_lens`
    (an int64 array, a line's utterance -> its count), each line's LLM text positions (the max_llm_tokens budget).
    `share`: this rank screens its part of the lines and the ranks of its node exchange theirs
    (llmasr.data.screen_share). `unread`, when given, gathers the fields no parser reads (llmasr.data.records
    .unread_fields): field -> [lines holding it, the first one's index]; `unknown`, alike, what the CTC vocabulary
    spells <unk> (the rule's `unknown`, llmasr.data.dataset.CTCRule); `text`, alike, what is wrong with the text of
    the transcripts (llmasr.data.transcript_text: tags, whitespace, Unicode form, spaced CJK); `llm_unk`: (what the
    LLM's tokenizer spells unk, the dict where the transcripts holding it are gathered: llmasr.data.llm_unk
    .gather_unk). `ctc_need` (int64, one a line, with `ctc_labels`): filled with the encoder frames each line's CTC
    labels need (llmasr.data.ctc_frames.frames_needed; 0 where it has none), from the spelling pass's encoding.
    `prompts`, alike `unread`: the lines that give a prompt of their own, by manifest -> [lines, the first's index];
    `languages`, alike: each manifest's lines per language, (manifest, language key or None) -> [lines, the first's
    index] (llmasr.train.check_languages words them for SenseVoice's per-line queries); `keys`: given the lines whose
    key an earlier line holds, each with that line (KeyRepeats.again)."""
    t0 = time.perf_counter()
    n = len(manifest)
    shares = None
    ask_unk = llm_unk[0] if llm_unk is not None else None
    if share is not None:
        mine = share.indices(n)
        shares = share.exchange(
            lambda: _screen_part(manifest, mine, ctc_labels, target_lens, text_lens, ask_unk, ctc_need)
        )
    if shares is None:
        if share is not None and share.part == 0:
            log.warning("%s: the ranks of this node are not LOCAL_RANK 0..%d once each (hosts of one name?): every "
                        "rank screens every line", manifest.path, share.parts - 1)  # fmt: skip
        every = np.arange(n, dtype=np.int64)
        screened = [_screen_part(manifest, every, ctc_labels, target_lens, text_lens, ask_unk, ctc_need)]
        bad = screened[0]["bad"]
    else:
        screened = shares
        bad = []
        for part, found in enumerate(shares):
            bad.extend(found["bad"])
            manifest.set_durations(*found["probed"])
            if target_lens is not None:
                target_lens[share.indices(n, part)] = found["target_lens"]
            if text_lens is not None:
                text_lens[0][share.indices(n, part)] = found["text_lens"]
            if ctc_need is not None:
                ctc_need[share.indices(n, part)] = found["ctc_need"]
    bad.sort(key=lambda b: b.index)
    found = ((unread, "unread"), (unknown, "unknown"), (text, "text"), (prompts, "prompts"), (languages, "languages"))
    for gathered, key in found:
        for part in screened if gathered is not None else ():
            for name, (lines, first) in part[key].items():
                seen = gathered.setdefault(name, [0, first])
                seen[0], seen[1] = seen[0] + lines, min(seen[1], first)
    for part in screened if llm_unk is not None else ():
        merge_unk(llm_unk[1], part["llm_unk"])
    if keys is not None:
        keys.merge([part["keys"] for part in screened])
    took = time.perf_counter() - t0
    if shares is not None and share.part == 0 and share.parts > 1:
        log.info("%s: %d lines screened in %.1f s, shared by the %d ranks of this node", manifest.path, n, took,
                 share.parts)  # fmt: skip
    return bad, took


def _screen_part(manifest, lines: np.ndarray, ctc_labels, target_lens, text_lens=None, ask_unk=None,
                 ctc_need=None) -> dict:  # fmt: skip
    """screen() of dataset indices `lines` (ascending): {"bad": BadItems, "probed": (indices, seconds) of the
    durations read from headers, "unread": the fields no parser reads (field -> [lines, first index]),
    "llm_unk": the transcripts `ask_unk` finds unk in (llmasr.data.llm_unk.gather_unk), "target_lens",
    "text_lens" and "ctc_need": of `lines`}."""
    bad: list[BadItem] = []
    unread: dict[str, list[int]] = {}
    spelled_unk: dict[str, list[int]] = {}  # what the CTC vocabulary spells <unk> -> [lines, first index]
    text: dict[str, list[int]] = {}  # what is wrong with the transcripts' text -> [lines, first index]
    llm_unk: dict = {}
    prompts: dict[str, list[int]] = {}  # manifest -> [lines with a prompt of their own, first index]
    languages: dict[tuple, list[int]] = {}  # (manifest, language key or None) -> [lines, first index]
    keys = KeyRepeats()
    spell = CTCSpelling(ctc_labels, count=ctc_need is not None) if ctc_labels is not None else None
    ask = getattr(ctc_labels, "unknown", None)
    for i in lines.tolist():
        try:
            rec, utt = manifest.parsed(i)
        except BadRecord as rec:
            bad.append(BadItem.from_record(rec, i))
            continue
        keys.note(utt.key, i)
        for name in unread_fields(rec):
            unread.setdefault(name, [0, i])[0] += 1
        gather_text(text, utt.target, i)
        if utt.prompt is not None:
            prompts.setdefault(str(utt.manifest), [0, i])[0] += 1
        languages.setdefault((str(utt.manifest), language_of(utt)), [0, i])[0] += 1
        if target_lens is not None:
            target_lens[i] = target_length(utt)
        if text_lens is not None:
            text_lens[0][i] = text_lens[1](utt)
        gone = missing_audio(utt.source)  # a stat a line, known durations too: a missing file named now, not hours in
        why = audio_reason(gone, utt) if gone is not None else None
        if why is None and spell is not None and isinstance(utt.target, str) and utt.target.strip():
            why = spell(utt.target)
            if ctc_need is not None:
                ctc_need[i] = spell.need
            for part in dict.fromkeys(ask(utt.target) if why is None and ask is not None else ()):
                spelled_unk.setdefault(part, [0, i])[0] += 1
        if why:
            bad.append(BadItem(manifest=str(utt.manifest), line=int(utt.line), key=utt.key, reason=why, index=i))
        elif ask_unk is not None and isinstance(utt.target, str) and utt.target.strip():
            gather_unk(llm_unk, ask_unk.unknown(utt.target), i)
    found = {b.index for b in bad}
    unknown = np.isnan(np.asarray(manifest.durations(), dtype=np.float64))
    probe = np.zeros_like(unknown)
    probe[lines] = unknown[lines]
    # Each manifest of a mix apart, by its offset: one listed twice has the same (path, line) at two indices.
    parts = zip(manifest.manifests, manifest.offsets) if hasattr(manifest, "manifests") else [(manifest, 0)]
    for part, offset in parts:
        asked = np.flatnonzero(probe[int(offset) : int(offset) + len(part)])
        index_of = {part.lineno(int(i)): int(offset) + int(i) for i in asked}
        for rec in part.fill_durations(asked):  # parses the lines of unknown duration again: skip the ones found above
            i = index_of[rec.line]
            if i not in found:
                bad.append(BadItem.from_record(rec, i))
    probed = np.flatnonzero(probe)
    seconds = np.asarray(manifest.durations(), dtype=np.float32)[probed]
    return {"bad": bad, "unread": unread, "unknown": spelled_unk, "text": text, "llm_unk": llm_unk, "prompts": prompts,
            "languages": languages, "keys": keys.part(),
            "probed": (probed, seconds),
            "target_lens": None if target_lens is None else target_lens[lines],
            "text_lens": None if text_lens is None else text_lens[0][lines],
            "ctc_need": None if ctc_need is None else ctc_need[lines]}  # fmt: skip


def spelling_check(ctc_labels: Callable[[str], object]) -> Callable[[str], str | None]:
    """A transcript -> why `ctc_labels` (the dataset's CTC rule) refuses it, or None (CTCSpelling without counts)."""
    return CTCSpelling(ctc_labels)


def refuse_at_start(bad: list[BadItem], total: int, max_bad_fraction: float, name: str, visits=None) -> None:
    """TooMuchBadData when the lines known bad before loading already pass max_bad_fraction of `total` items.
    `visits`: how many of the `total` items are visits to each bad line (a weighted mix); None: one each."""
    counted = len(bad) if visits is None else int(np.sum(visits))
    if not total or counted / total <= max_bad_fraction:
        return
    probe = BadDataTracker(max_bad_fraction, name=name)
    probe.add_static(bad, quiet=True)
    probe.new_epoch(visits)
    probe.advance(1.0)
    probe.good = total - counted
    raise TooMuchBadData(probe.message().replace(" are unusable,", " are unusable before training starts,", 1))


def static_visits(lines, epoch_items: np.ndarray | None) -> np.ndarray | None:
    """How many times the items `epoch_items` (a weighted mix's visits of an epoch, repeats allowed, or a subset)
    visit each of the dataset indices `lines` (bad lines); None when every line counts once (no `epoch_items`)."""
    if epoch_items is None:
        return None
    lines = np.asarray(lines, dtype=np.int64)
    items = np.asarray(epoch_items, dtype=np.int64)
    return np.bincount(items, minlength=int(lines.max(initial=-1)) + 1)[lines]


PROBES_WORTH_A_NOTE = 10_000  # header probes at start-up that cost seconds a rank


def start_tracker(manifest, data_cfg, *, name: str, indices, rank: int, world_size: int, ctc_labels=None,
                  epoch_items=None, target_lens=None, share: ScreenShare | None = None, text_lens=None,
                  llm_unk: LLMUnk | None = None, ctc_need=None, enforce: bool = True,
                  prompts: dict | None = None, languages: dict | None = None):  # fmt: skip
    """Screen `manifest` and refuse at start when its known-bad lines pass data.max_bad_fraction; returns (this
    rank's BadDataTracker, every line known bad). `indices`: a validation subset, which counts only its own;
    `ctc_labels`: the dataset's CTC rule, when the model has a CTC head; `epoch_items`: a weighted mix's visits of
    the first epoch, which the start-up check counts per visit, as training does; `target_lens`, `share`,
    `text_lens`, `ctc_need`: screen's; `llm_unk`: what the LLM's tokenizer spells unk (None: it spells any text);
    `enforce`: the tracker's (validation's is False: the trainer checks the ranks' sum at the pass's end);
    `prompts`: filled with screen's, the lines that give a prompt of their own (train.log names them); `languages`:
    filled with screen's, each manifest's lines per language."""
    unknown = int(np.isnan(np.asarray(manifest.durations(), dtype=np.float64)).sum())
    unread: dict[str, list[int]] = {}
    spelled_unk: dict[str, list[int]] = {}
    text: dict[str, list[int]] = {}
    unk_found: dict = {}
    prompts, keys = {} if prompts is None else prompts, KeyRepeats()
    static, took = screen(manifest, ctc_labels, target_lens, share, text_lens, unread, spelled_unk, text,
                          (llm_unk, unk_found) if llm_unk is not None else None, ctc_need, prompts,
                          languages, keys)  # fmt: skip
    if rank == 0 and (repeated := keys.text(lambda i: "{}:{}".format(*where(manifest, i)),
                                            lambda i: manifest.parsed(i)[1].key)):  # fmt: skip
        log.warning("%s: %s", name, repeated)
    if prompts and rank == 0:
        log.info("%s: %s", name, own_prompts_text(manifest, prompts))
    if unread and rank == 0:
        _say_unread(manifest, unread, name)
    for _, said in text_warnings(text, lambda i: "{}:{}".format(*where(manifest, i))) if rank == 0 else ():
        log.warning("%s: %s", name, said)
    if unk_found and rank == 0:
        log.warning("%s: %s", name, unk_warning(llm_unk, unk_found, len(manifest), manifest))
    if spelled_unk and rank == 0:
        found = [(part, n, "{}:{}".format(*where(manifest, first))) for part, (n, first) in spelled_unk.items()]
        log.warning("%s: %s", name, ctc_unknown_text(found, getattr(ctc_labels, "cased", None)))
    if unknown >= PROBES_WORTH_A_NOTE and rank == 0:
        who = f"shared by the {share.parts} ranks of each node" if share else "on every rank"
        log.info("%s: %d lines state no duration: their audio headers were probed (screen %.1f s, %s, at every "
                 "start); `llmasr data check MANIFEST --write-durations OUT` writes them into the manifest once",
                 name, unknown, took, who)  # fmt: skip
    counted, total = static, len(manifest)
    if indices is not None:
        chosen = set(np.asarray(indices).tolist())
        counted, total = [b for b in static if b.index in chosen], len(chosen)
    if counted and rank == 0:
        log.warning(
            "%s: %d of %d manifest lines are unusable before loading (screened in %.1f s); skipped, and counted "
            "against data.max_bad_fraction every epoch. First: %s",
            name, len(counted), total, took, "; ".join(f"{b.where()} {b.reason}" for b in counted[:EXAMPLES]),
        )  # fmt: skip
    visits = static_visits([b.index for b in counted], epoch_items)
    refuse_at_start(counted, total if epoch_items is None else len(epoch_items), data_cfg.max_bad_fraction, name,
                    visits)  # fmt: skip
    end_of = "epoch end" if name == "train" else "the end of the validation pass"
    tracker = BadDataTracker(data_cfg.max_bad_fraction, name=name, rank=rank, world_size=world_size, end_of=end_of,
                             enforce=enforce)  # fmt: skip
    # Each rank sees about 1/world_size of the items, so it counts that share of the lines known bad.
    tracker.add_static([b for b in counted if b.index % world_size == rank], quiet=True)
    return tracker, static


def own_prompts_text(manifest, prompts: dict[str, list[int]]) -> str:
    """own_prompts_said of screen's `prompts` (manifest path -> [lines, the first's index in `manifest`])."""
    return own_prompts_said(
        [(path, lines, "{}:{}".format(*where(manifest, first)), manifest.parsed(first)[1].prompt)
         for path, (lines, first) in prompts.items()]
    )  # fmt: skip


def own_prompts_said(found: list[tuple[str, int, str, str]]) -> str:
    """The lines that train on a prompt of their own (a `prompt` or `task` field) instead of model.prompt's, by
    manifest ((path, lines, the first's manifest:line, its prompt) each): decoding asks each line of a test set with
    its own prompt, else with the recipe's. train.log, `llmasr check` and `llmasr data check` say it alike."""
    said = [f"{path}: {lines} of its lines (first: {first} {own!r:.60})" for path, lines, first, own in found]
    return (
        "lines with a prompt of their own, trained on it instead of model.prompt's: " + "; ".join(said) + " (a test "
        "set is decoded with its lines' own prompts, else the recipe's: give its lines the prompt they trained on)"
    )


def unk_warning(llm_unk: LLMUnk, found: dict, total: int, manifest) -> str:
    """llm_unk's warning of gather_unk's findings in `manifest` (places named manifest:line)."""
    first = ["{}:{}".format(*where(manifest, i)) for i in found["first"]]
    return llm_unk.text(found["lines"], total, first, [(p, n) for p, (n, _) in found["parts"].items()])


def ctc_unknown_text(found: list[tuple[str, int, str]], cased: Callable[[str], str | None] | None = None) -> str:
    """What the CTC vocabulary spells <unk> ((character or word, lines holding it, the first one's manifest:line)
    each), most lines first: train.log's warning and `llmasr data check`'s section. `cased`: a part -> the same in
    another case that the vocabulary spells (CTCRule.cased), named beside it: the transcripts want the vocabulary's
    case."""
    shown = sorted(found, key=lambda f: (-f[1], f[0]))
    other = {part: cased(part) for part, _, _ in shown} if cased is not None else {}
    parts = "; ".join(
        f"{part!r} in {lines} line{'s' * (lines != 1)} (first: {first}"
        + (f"; the vocabulary has {other[part]!r})" if other.get(part) else ")")
        for part, lines, first in shown[: EXAMPLES * 2]
    )
    more = f"; and {len(shown) - EXAMPLES * 2} more" if len(shown) > EXAMPLES * 2 else ""
    recased = sum(1 for v in other.values() if v)
    case = (
        f". {recased} of them the vocabulary has in another case: write the transcripts in its case (or use a "
        "vocabulary cased as they are)"
        if recased
        else ""
    )
    return (
        f"the CTC vocabulary has no token for {len(shown)} characters or words of the transcripts and spells them "
        f"<unk> (the CTC head learns <unk> there and its text leaves them out; the LLM learns them as written): "
        f"{parts}{more}{case}"
    )


def _say_unread(manifest, unread: dict[str, list[int]], name: str) -> None:
    """train.log's word on the fields no parser reads: a warning for those a letter or two off one llmasr reads (a
    misspelt "hotword" trains every line without its list), a note for the rest (a corpus's own metadata)."""
    for typo in (True, False):
        fields = [
            (f, n) for f, n in sorted(unread.items(), key=lambda kv: -kv[1][0]) if (near_field(f) is None) != typo
        ]
        said = [unread_text(field, lines, "{}:{}".format(*where(manifest, first))) for field, (lines, first) in fields]
        if said:
            log.log(logging.WARNING if typo else logging.INFO, "%s: fields llmasr does not read (they change "
                    "nothing): %s", name, "; ".join(said))  # fmt: skip
