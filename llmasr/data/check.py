"""Behind `llmasr data check MANIFEST...`: validate manifests before training, and preview the batches they make.

Every line is parsed and its audio header probed (no decode): missing/unreadable files, a channel the file lacks,
empty audio, segments starting past the end of the file or ending MAX_OVERSHOOT_S or more past it, clips too short
for one feature frame, empty or non-text transcripts, malformed lines and, given a CTC vocabulary, transcripts it
cannot spell, and durations the audio does not bear out (as loading refuses them) are listed with manifest:line and
reason; segment ends past the audio by less are listed apart. Then the report shows the duration histogram, total
hours, what the batching filters skip, and what the recipe's batching produces over the durations training budgets
(batches per rank, mean batch size, padding efficiency), for the weighted mix of training manifests or validation's
subset.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import chain

import numpy as np

from llmasr.data.audio import AudioError, probe_span
from llmasr.data.bad_data import as_record_dict
from llmasr.data.bad_reasons import reason_category
from llmasr.data.check_report import DataReport
from llmasr.data.config import DataConfig, ManifestSpec
from llmasr.data.ctc_frames import CTCSpelling, heard_lines, unaligned_text
from llmasr.data.features import FeatureExtractor
from llmasr.data.frontend import FrontendConfig
from llmasr.data.llm_unk import gather_unk
from llmasr.data.loader import evenly_spaced
from llmasr.data.manifest import BadRecord, Manifest
from llmasr.data.mixed_manifest import MixedManifest, epoch_mix
from llmasr.data.record_fields import unread_fields
from llmasr.data.records import audio_reason, language_of
from llmasr.data.sampler_settings import longest_kept, make_sampler
from llmasr.data.screen import static_visits, target_length
from llmasr.data.skipped_lines import budgets_passed
from llmasr.data.stated_duration import wrong_duration
from llmasr.data.transcript_text import gather_text

DURATION_TOLERANCE_S = 0.1  # a segment end past the header's duration before a line is noted
CHUNK_LINES = 8192  # lines parsed and probed together
PROBE_LINES = 64  # lines a probing thread takes at a time


def _parse_line(m, i: int, spell=None, unread: dict | None = None, unknown: tuple | None = None, text=None,
                llm_unk: tuple | None = None, need=None, prompts: dict | None = None,
                languages: dict | None = None):  # fmt: skip
    """(utterance, target_len, None) or (None, 0, bad record) for line i of manifest m (no audio access); `spell`:
    the CTC vocabulary's spelling check (llmasr.data.ctc_frames.CTCSpelling; with `need`, an array, need[i] its
    count of the line's labels); `unread`: gathers the fields the line's
    parser leaves unread (field -> [lines, the first one's manifest:line]); `unknown`: (the CTC rule's `unknown`,
    where it gathers what the vocabulary spells <unk>, alike); `text`: what is wrong with the text of the transcripts
    (llmasr.data.transcript_text), alike; `llm_unk`: (an llmasr.data.llm_unk.LLMUnk, where gather_unk gathers the
    transcripts it finds unk in); `prompts`: gathers the lines that give a prompt of their own (manifest ->
    [lines, the first's manifest:line, its prompt]); `languages`: gathers each manifest's lines per language
    ((manifest, language key or None) -> [lines, the first's manifest:line]), as the start-up screen does."""
    try:
        rec, utt = m.parsed(i)
    except BadRecord as rec:
        return None, 0, as_record_dict(rec)
    if unread is not None:
        for name in unread_fields(rec):
            unread.setdefault(name, [0, f"{m.path}:{m.lineno(i)}"])[0] += 1
    if languages is not None:
        languages.setdefault((m.path, language_of(utt)), [0, f"{m.path}:{m.lineno(i)}"])[0] += 1
    where = {"manifest": str(getattr(utt, "manifest", "?")), "line": int(getattr(utt, "line", i + 1)), "key": utt.key}
    if not m.need_target and (utt.target is None or utt.target == ""):  # audio to transcribe; an empty reference
        return utt, 0, None
    if not isinstance(utt.target, str):
        return None, 0, {**where, "reason": f"non-text target: {type(utt.target).__name__}"}
    if not utt.target.strip():
        return None, 0, {**where, "reason": "empty target"}
    if spell is not None and (why := spell(utt.target)) is not None:
        return None, 0, {**where, "reason": why}
    if need is not None:
        need[i] = spell.need
    if prompts is not None and utt.prompt is not None:  # trained on it, not on model.prompt's (train.log says so)
        prompts.setdefault(m.path, [0, f"{m.path}:{m.lineno(i)}", utt.prompt])[0] += 1
    if text is not None:
        gather_text(text, utt.target, f"{m.path}:{m.lineno(i)}")
    if llm_unk is not None:
        gather_unk(llm_unk[1], llm_unk[0].unknown(utt.target), f"{m.path}:{m.lineno(i)}")
    if unknown is not None:
        for part in dict.fromkeys(unknown[0](utt.target)):
            unknown[1].setdefault(part, [0, f"{m.path}:{m.lineno(i)}"])[0] += 1
    return utt, target_length(utt), None


def _probe_line(utt, probe: bool, cap: float | None = None) -> tuple[float, dict | None, dict | None, tuple | None]:
    """(duration or NaN, bad record or None, segment-end note or None, audio format or None) from the audio header;
    the format: (sample rate, channels, whether loading averages them: no `channel`). Without `probe` a line of
    unknown duration is NaN and not bad: training reads its duration from the header. `cap`: training's truncation
    (data.batching.truncate_to_max), None without."""
    where = {"manifest": str(getattr(utt, "manifest", "?")), "line": int(getattr(utt, "line", 0)), "key": utt.key}
    start = float(utt.start) if getattr(utt, "start", None) is not None else 0.0
    end = float(utt.end) if getattr(utt, "end", None) is not None else None
    if not probe:
        if utt.duration is not None:
            return float(utt.duration), None, None, None
        return (end - start if end is not None else math.nan), None, None, None
    channel = getattr(utt, "channel", None)
    try:  # as loading reads it: a start past the audio's end, or an end too far past it, is bad
        header, real = probe_span(utt.source, start, end, channel=channel)
    except AudioError as err:
        return math.nan, {**where, "reason": audio_reason(err, utt)}, None, None
    file_dur, note = header.seconds, None
    form = (header.sample_rate, header.channels, header.channels > 1 and channel is None)
    if end is not None and end > file_dur + DURATION_TOLERANCE_S:  # training trims it to the file's end
        note = {**where, "reason": f"segment end {end:.2f}s is past the end of the audio ({file_dur:.2f}s), trimmed"}
    elif end is None and utt.duration is not None and (wrong := wrong_duration(float(utt.duration), real, cap)):
        return math.nan, {**where, "reason": wrong}, None, None  # loading refuses it (SpeechDataset)
    return real, None, note, form


def _too_short(utt, seconds: float, fx: FeatureExtractor) -> dict | None:
    """A bad record when `seconds` of audio give no feature frame (as SpeechDataset would find on loading)."""
    if math.isnan(seconds):
        return None
    n = math.ceil(seconds * fx.frontend.sample_rate - 1e-6)  # as loading resamples: ceil(frames x new / old)
    if (reason := fx.too_short(n)) is None:
        return None
    where = {"manifest": str(getattr(utt, "manifest", "?")), "line": int(getattr(utt, "line", 0)), "key": utt.key}
    return {**where, "reason": reason}


def _note_key(report: DataReport, first_seen: dict[str, int], utt, here: int, spot) -> None:
    """A key already seen is noted: training does not mind, but decoding's hyp.txt and ref.txt are keyed. `here`:
    the line's position among the lines checked; `spot(position)`: its (manifest, line)."""
    first = first_seen.setdefault(str(utt.key), here)
    if first != here and spot(first) != spot(here):  # a manifest listed twice is not its own repeat
        path, line = spot(here)
        report.repeated_keys.append(
            {"manifest": path, "line": line, "key": utt.key, "first": "{}:{}".format(*spot(first))}
        )


def check_data(
    manifest_paths,
    data_cfg: DataConfig,
    frontend: FrontendConfig,
    *,
    world_size: int = 1,
    probe: bool = True,
    threads: int = 8,
    need_target: bool = True,
    ctc_labels=None,
    train: bool = True,
    llm_rows=None,
    llm_unk=None,
    ctc_frames=None,
    ctc_vocab_kind: str = "token_list",
    key: str | None = None,
) -> DataReport:
    """`manifest_paths`: paths or ManifestSpecs (training mixes those by their weights). `ctc_labels`: a CTC head's
    rule (transcript -> ids, or why there are none; llmasr.data.dataset.ctc_label_ids) whose refusals are bad lines,
    as training's start-up screen finds them. `train`: False previews validation's batches (its subset, no
    augmentation, no drop_last). `llm_rows`: a recipe's count of each line's LLM positions (build_dataloader's), so
    that the preview applies data.batching.max_llm_tokens; without it that budget is left out. `llm_unk`: what the
    LLM's tokenizer spells unk (llmasr.data.llm_unk.LLMUnk), or a str saying why that is not asked. `ctc_frames`
    (with `ctc_labels`): seconds -> the encoder frames a CTC head reads (llmasr.models.context.encoder_frames), to
    name the lines whose CTC labels outnumber them (llmasr.data.ctc_frames), with the fixes for a vocabulary of
    `ctc_vocab_kind` (model.ctc's). `key`: the recipe key that lists `manifest_paths` ("data.train"), which a
    manifest that cannot be opened is named by, as training names it."""
    paths = [p.path if isinstance(p, ManifestSpec) else str(p) for p in manifest_paths]
    weights = [p.weight if isinstance(p, ManifestSpec) else 1.0 for p in manifest_paths]
    opened: list[tuple[Manifest, float]] = []
    report = DataReport(
        manifests=paths,
        world_size=world_size,
        max_bad_fraction=data_cfg.max_bad_fraction,
        for_decoding=not need_target,
        sample_rate=frontend.sample_rate,
    )
    durations, tlens, texts, starts = [], [], [], [0]  # per manifest opened; starts: its first line's position
    spots: list[tuple[str, Manifest]] = []
    for i, (path, weight) in enumerate(zip(paths, weights)):  # opened once (each reads its whole file)
        try:
            m = Manifest.open(path, need_target=need_target)  # False: manifests for decoding
        except (OSError, ValueError) as err:
            report.errors.append(f"{f'{key}[{i}]: ' if key else ''}{path}: cannot open manifest: {err}")
            continue
        opened.append((m, weight))
        spots.append((path, m))
    rows = _llm_rows(llm_rows, opened, data_cfg, train=train, need_target=need_target)

    def spot(position: int) -> tuple[str, int]:
        """(manifest, line) of the line at `position` among those checked."""
        k = bisect.bisect_right(starts, position) - 1
        return spots[k][0], spots[k][1].lineno(position - starts[k])

    first_seen: dict[str, int] = {}  # key -> position of its first line, across all manifests
    fx = FeatureExtractor(dataclasses.replace(frontend, cmvn_file=None))  # counts frames only
    counting = ctc_frames is not None and ctc_labels is not None
    spell = CTCSpelling(ctc_labels, count=counting) if ctc_labels is not None else None
    needs = []  # per manifest opened: the frames each line's CTC labels need (0: not counted)
    ask = getattr(ctc_labels, "unknown", None)
    unknown = (ask, report.ctc_unknown) if ask is not None else None
    asks_unk = (llm_unk, report.llm_unk) if llm_unk is not None and not isinstance(llm_unk, str) else None
    found_text = report.text_found if need_target else None  # references are scored normalised: their shape is moot
    cap = longest_kept(data_cfg.batching, frontend) if data_cfg.batching.truncate_to_max and need_target else None
    with ThreadPoolExecutor(max(1, threads)) as pool:  # header probes are I/O bound
        for path, m in spots:
            n = len(m)
            known = np.asarray(m.durations(), dtype=np.float64)  # training's: the manifest's, where it gives one
            report.lines_per_manifest[path] = report.lines_per_manifest.get(path, 0) + n  # listed twice: counted twice
            report.num_lines += n
            dur_of, tl_of, text_of = np.full(n, math.nan), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
            need_of = np.zeros(n, dtype=np.int64)
            for lo in range(0, n, CHUNK_LINES):  # a chunk's lines at a time: memory does not grow with the manifest
                parsed = [
                    _parse_line(
                        m,
                        i,
                        spell,
                        report.unread_fields,
                        unknown,
                        found_text,
                        asks_unk,
                        need_of if counting else None,
                        report.own_prompts if need_target else None,
                        report.languages,
                    )  # fmt: skip
                    for i in range(lo, min(n, lo + CHUNK_LINES))
                ]  # here: not across threads
                good = [utt for utt, _, _ in parsed if utt is not None]
                # a task of PROBE_LINES lines each: a thread pool's map takes no chunksize, and a task a line had cost
                # more than most probes (a Future, its lock and condition each)
                tasks = [good[k : k + PROBE_LINES] for k in range(0, len(good), PROBE_LINES)]
                probed = chain.from_iterable(pool.map(lambda us: [_probe_line(u, probe, cap) for u in us], tasks))
                for i, (utt, tl, bad) in enumerate(parsed, start=lo):
                    dur, note = math.nan, None
                    if utt is not None:
                        _note_key(report, first_seen, utt, starts[-1] + i, spot)
                        dur, bad, note, form = next(probed)
                        if form is not None:  # what loading does to it: resampled, channels averaged
                            report.audio_formats.setdefault(form, [0, f"{utt.manifest}:{utt.line}"])[0] += 1
                        if bad is None and (bad := _too_short(utt, dur, fx)) is not None:
                            dur = math.nan
                        elif bad is None:
                            report.unprobed += int(math.isnan(dur))
                            # what training budgets: the manifest's, else the probe's as its float32 array holds it
                            dur = known[i] if not math.isnan(known[i]) else float(np.float32(dur))
                    dur_of[i], tl_of[i] = dur, tl
                    if rows is not None and utt is not None and bad is None:
                        text_of[i] = rows.text(utt)
                    if bad is not None:
                        report.bad.append(bad)
                        report.bad_index.append(starts[-1] + i)
                    if note is not None:
                        report.duration_mismatches.append(note)
            durations.append(dur_of)
            tlens.append(tl_of)
            texts.append(text_of)
            needs.append(need_of)
            starts.append(starts[-1] + n)
    report.durations = np.concatenate(durations) if durations else np.zeros(0)
    if isinstance(llm_unk, str) or not report.llm_unk:
        report.llm_unk_text = llm_unk if isinstance(llm_unk, str) else ""
    else:
        found = report.llm_unk
        parts = [(p, n) for p, (n, _) in found["parts"].items()]
        report.llm_unk_text = llm_unk.text(found["lines"], report.num_lines, found["first"], parts)
    report.bad_by_reason = dict(Counter(reason_category(str(b["reason"])) for b in report.bad).most_common())
    b = data_cfg.batching
    report.budget = (
        f"max_frames={b.max_frames}" if b.max_frames is not None else f"max_seconds={b.budget_seconds:g}"
    ) + (f", max_target_tokens={b.max_target_tokens}" if b.max_target_tokens is not None else "")
    if rows is not None:
        report.budget += f", max_llm_tokens={b.max_llm_tokens}"
    if report.durations.size:
        plan = {"train": train, "rank": 0, "world_size": world_size}
        items = None
        if not train:  # validation's subset
            plan["indices"] = items = evenly_spaced(report.durations.size, data_cfg.valid_max_utts)
            report.counted_items = "lines of validation's subset"
        elif any(w != 1.0 for _, w in opened):  # the epoch's visits of the weighted mix (its first epoch)
            mix = MixedManifest([m for m, _ in opened], [w for _, w in opened])
            plan["epoch_indices"] = lambda e: mix.epoch_indices(e, data_cfg.seed)
            items = mix.epoch_indices(0, data_cfg.seed)
            report.counted_items = "visits of the weighted mix's first epoch"
        if items is not None:  # as training's start-up check counts them (llmasr.data.screen)
            report.counted = (int(static_visits(report.bad_index, items).sum()), len(items))
        if rows is not None:
            # the lines as one manifest, in the order checked, where a line past the budget is counted exactly
            whole = opened[0][0] if len(opened) == 1 else MixedManifest([m for m, _ in opened])
            plan["llm_lens"] = rows.rows(whole, report.durations, np.concatenate(texts))
        sampler = _preview_batching(report, data_cfg, frontend, np.concatenate(tlens), spot, plan)
        if "epoch_indices" in plan:  # as `llmasr check` and train.log count it
            report.mix, report.mix_warnings = epoch_mix(mix, sampler, 0)
        if counting:
            lines, seconds = heard_lines(sampler)
            report.ctc_frames_text = unaligned_text(
                np.concatenate(needs), lines, seconds, ctc_frames, lambda i: "{}:{}".format(*spot(i)),
                name=f"data.{'train' if train else 'valid'}", squeeze=data_cfg.augment.squeeze if train else 1.0,
                vocab_kind=ctc_vocab_kind,
            ) or ""  # fmt: skip
    cased = getattr(ctc_labels, "cased", None)  # a stand-in vocabulary has none
    if cased is not None:
        report.ctc_cased = {part: other for part in report.ctc_unknown if (other := cased(part))}
    return report


def _llm_rows(llm_rows, opened: list[tuple[Manifest, float]], data_cfg, *, train: bool, need_target: bool):
    """`llm_rows` for the `opened` (manifest, weight) pairs (with training's drawn biasing lists, which a pass over
    their texts bounds), or None: no count given, no max_llm_tokens, manifests to decode, or none opened."""
    if llm_rows is None or data_cfg.batching.max_llm_tokens is None or not need_target or not opened:
        return None
    sampler = None
    if train and data_cfg.hotwords.samples:
        from llmasr.data.hotwords import HotwordSampler

        mix = opened[0][0] if len(opened) == 1 else MixedManifest([m for m, _ in opened], [w for _, w in opened])
        sampler = HotwordSampler.build(data_cfg.hotwords, mix, data_cfg.seed)
    return llm_rows(train, sampler)


def _preview_batching(report: DataReport, data_cfg, frontend, tlens, spot, plan: dict):
    """The recipe's batching over the report's durations (`plan`: make_sampler's train, rank, world size and the
    indices it draws): stats, and the lines max_duration skips (`spot(position)`: a line's manifest and line); returns
    the sampler."""
    sampler = make_sampler(data_cfg, report.durations, tlens, frontend, **plan)
    report.batching = sampler.stats(0)
    report.batching["filtered"].pop("unknown_duration", None)  # those are the bad lines, reported above
    report.max_duration = float(sampler.max_duration)
    report.max_duration_set = float(data_cfg.batching.max_duration)
    report.too_long = [
        {"manifest": spot(i)[0], "line": spot(i)[1], "duration": float(report.durations[i])}
        for i in sampler.skipped_indices("too_long").tolist()
    ]
    over = sampler.skipped_indices("over_batch_budget")
    report.over_budget = [{"manifest": spot(i)[0], "line": spot(i)[1]} for i in over.tolist()]
    report.over_budget_text = budgets_passed(sampler, over) if over.size else ""
    return sampler
