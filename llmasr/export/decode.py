"""`llmasr decode`: transcribe manifests with an exported model or a training checkpoint, and score them.

    llmasr decode --model DIR | --checkpoint RUN_DIR[/checkpoints/TAG] --data test.jsonl [--data ...]
                  --output HYP_DIR [--beam N] [--batch-seconds S] [--max-new-tokens N] [--repetition-penalty P]
                  [--no-repeat-ngram N] [--metric auto|wer|cer] [--ctc] [--ctc-weight W] [--repeat-limit N]
                  [--hotwords FILE] [--hotwords-unprompted] [--hotword-boost B] [--max-window-seconds S]
                  [--window-overlap S] [--max-llm-tokens N] [--task TEXT] [--language LANG] [--subtitles srt|vtt]

What each output file holds, and the decoding options, are the README's (Workflows, 5. Decode; Hotwords).

Batches come from training's evaluation loader (llmasr.data.loader.build_decode_loader): no augmentation, dither
drawn from the audio itself (the same audio, the same features), the prompt builder the model was trained with (a
line's own `prompt` included), and a duration-sorted sampler under an audio-seconds budget that skips no utterance.
The settings are the one DecodeConfig (llmasr.models.decoding) that validation uses too: the model's saved ones
with the flags given on top. SpeechLLM.transcribe stops each prompt at its target start, so the reference never
leaks into the input.

Before anything is written, search_boost refuses what the model cannot do (CTC guidance or timestamps without a
CTC head, windows the LLM's context cannot hold, a VAD that does not load) and window_limit sets the longest audio
decoded whole: longer utterances are cut into windows (llmasr.data.windowed, at the VAD's speech segments with
decode.vad) and joined back in order. On N ranks (llmasr.export.decode_world) each decodes every N-th batch of the
same plan and rank 0 writes what one process would. Every file is written whole or not at all, and an earlier
decode's files in the folder go once the start-up checks pass, before anything is decoded (decode_folders, for
decode_manifest and `llmasr decode` alike), so that a decode stopped part-way leaves none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

from llmasr import errors
from llmasr.atomic_file import write_atomic
from llmasr.config_io import ConfigError, from_dict
from llmasr.data.device_features import resolve_features_on
from llmasr.data.loader import build_decode_loader
from llmasr.data.manifest import Manifest
from llmasr.data.record_fields import target_stand_in
from llmasr.data.records import language_of
from llmasr.data.speech_loader import SpeechDataLoader
from llmasr.data.window_join import shift_times
from llmasr.data.window_plan import WindowRules
from llmasr.data.windowed import cut_to_one_window, utterance_rows, utterance_tracker
from llmasr.export.decode_folders import clear_for_decode, written_since_cleared
from llmasr.export.decode_options import PROGRESS_EVERY_S, DecodeError, DecodeOptions, Pace
from llmasr.export.decode_results import bad_rows, ctc_summary, hotword_counts, llm_summary, unused_flags_line
from llmasr.export.decode_subtitles import RowSubtitles, check_subtitles
from llmasr.export.decode_world import DecodeWorld
from llmasr.export.merge import ExportError, as_exported
from llmasr.export.trained_model import load_checkpoint_model
from llmasr.models.attention_kernels import choose_attention_kernels
from llmasr.models.context import ContextError, decoding_fit, decoding_prompt
from llmasr.models.ctc_align import sound_ends
from llmasr.models.ctc_vocab import LLMCTCTokenizer
from llmasr.models.decoding import MIN_WINDOW_SECONDS, DecodeConfig
from llmasr.models.exported import MODEL_FILE, ExportedModelError, load_exported, read_description
from llmasr.models.fsmn_vad import load_vad
from llmasr.models.line_prompts import LinePrompts
from llmasr.models.llm import DTYPES, dtype_name
from llmasr.models.sensevoice import asked_language
from llmasr.run_dir import CheckpointError
from llmasr.train.decode_rows import DecodeRows, over_budget

log = logging.getLogger(__name__)
SOLO = DecodeWorld()  # one process decodes everything


def window_limit(
    model, cfg: DecodeConfig, opts: DecodeOptions, *, quiet: bool = False, manifest=None, lines=None
) -> float:
    """The longest audio `model` decodes in one piece under `cfg` (0.0: any length), DecodeError when the settings
    cannot make windows. A Whisper encoder reads one fixed chunk and refuses more, so its windows never exceed the
    chunk (unless max_window_seconds is 0: a longer utterance is then a bad item). A window's audio tokens, the
    prompt (the longest of `manifest`'s lines', where given: a Manifest or its path) and the tokens decoding may
    write must fit the LLM's context (llmasr.models.context): a limit that is not set is lowered to the longest
    window that fits, with a warning unless `quiet`; a set one that does not fit is refused; 0 (never split) is
    kept, with that warning. `lines`: line_prompts(model, opts, world), which keeps the counts for decode_loader's
    budget."""
    try:
        limit = cfg.window_seconds(opts.training_max_seconds)
    except ConfigError as err:
        raise DecodeError(str(err)) from err
    frontend = model.frontend
    # the longest audio one piece holds: a Whisper encoder refuses more than its chunk, also where windows are off
    held = float(frontend.chunk_seconds) if frontend.kind == "whisper" else 0.0
    if held and cfg.max_window_seconds != 0:
        limit = min(limit or math.inf, held)
    if getattr(model, "llm", None) is None:  # a stand-in without an LLM: no context to fit
        return limit
    given = f"the biasing list of --hotwords {opts.hotwords_file}" if opts.hotwords_file else "the biasing list given"
    lists = not opts.hotwords_unprompted
    manifest = Manifest.open(manifest, need_target=False) if isinstance(manifest, (str, Path)) else manifest
    every = bool(cfg.max_llm_tokens)  # decode_loader's budget counts every line
    prompt_tokens, said = decoding_prompt(
        model.prompt, opts.hotwords, manifest, lists=lists, given=given, counted=lines, every=every, task=opts.task
    )
    checked = limit or held  # never split (0) under Whisper: no utterance the encoder takes is longer than its chunk
    try:
        fit, why = decoding_fit(model, checked, prompt_tokens, cfg.new_token_cap, said)
    except ContextError as err:
        raise DecodeError(str(err)) from err
    if fit == checked:
        return limit
    if cfg.max_window_seconds:
        raise DecodeError(f"decode.max_window_seconds: {why}; set it to at most {fit:g}")
    if cfg.max_window_seconds == 0:  # never split, as asked: said, since a longer utterance passes the context
        if not quiet:
            log.warning("%s; decode.max_window_seconds 0 decodes longer utterances whole all the same", why)
        return limit
    if fit < MIN_WINDOW_SECONDS or fit <= 2 * cfg.window_overlap:
        raise DecodeError(
            f"{why}, less than a window can be ({MIN_WINDOW_SECONDS:g} s, and more than twice decode.window_overlap "
            f"{cfg.window_overlap:g} s); lower decode.max_new_tokens or decode.window_overlap"
            + (f", or shorten {said}" if said else "")
        )
    if not quiet:
        log.warning("%s: long audio is decoded in windows of at most %g s", why, fit)
    return fit


def line_prompts(model, opts: DecodeOptions, world: DecodeWorld = SOLO) -> LinePrompts:
    """What counts the manifest lines' prompts for both window_limit and decode_loader's budget (each line once; on
    N ranks each counts its share and they gather them)."""
    ranks = world if world.size > 1 else None
    return LinePrompts(model.prompt, opts.hotwords, not opts.hotwords_unprompted, ranks, task=opts.task)


def speech_segmenter(cfg: DecodeConfig, sample_rate: int):
    """cfg.vad's speech segments for long audio (waveform -> [(start, end) samples]), None without a VAD;
    DecodeError for a VAD directory that does not load or reads audio at another sample rate than the model."""
    if cfg.vad is None:
        return None
    try:
        vad = load_vad(cfg.vad, sample_rate)
    except ConfigError as err:
        raise DecodeError(str(err)) from err
    per_ms = sample_rate / 1000

    def segments(wave) -> list[tuple[int, int]]:
        found = vad.segments_ms(wave, cfg.vad_max_end_silence_ms)
        return [(round(a * per_ms), round(b * per_ms)) for a, b in found]

    return segments


def _ctc_head(model) -> tuple[bool, bool]:
    """(whether `model` has a CTC head, whether it spells in the LLM's tokens): what its search can be guided by."""
    has_head = getattr(model, "ctc_head", None) is not None
    return has_head, isinstance(getattr(model, "ctc_tokenizer", None), LLMCTCTokenizer)


def search_boost(model, cfg: DecodeConfig, opts: DecodeOptions) -> float:
    """The hotword boost `cfg` searches `model` with, once it is known that `cfg` can decode `model`: ConfigError for
    CTC guidance, timestamps or the CTC gate the model cannot give, DecodeError for long-audio windows it cannot
    make."""
    has_head, llm_vocab = _ctc_head(model)
    boost = cfg.boost(cfg.guidance(has_head, llm_vocab), llm_vocab)
    if cfg.timestamps and not has_head:
        raise ConfigError(
            "decode.timestamps: word times come from the CTC head's frames, and this model has none (trained with "
            "model.ctc.weight 0)"
        )
    cfg.gate(has_head)
    try:  # a language the encoder cannot be asked: every line without its own would run with "auto"
        asked_language(model, opts.language)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    window_limit(model, cfg, opts, quiet=True)
    if cfg.vad is not None:
        speech_segmenter(cfg, model.frontend.sample_rate)
    resolve_features_on(opts.features_on, model.frontend, "cpu", key="features_on (decode --features-on)")
    return boost


def unguided_boost(model, cfg: DecodeConfig) -> str | None:
    """A warning for a hotword boost set above 0 in a search no CTC head guides (a model without one, or ctc_weight
    0): the LLM alone, boosted, writes listed phrases the audio does not hold, which is why the boost's default is 0
    there; None otherwise. Said, not refused: a user may want it on a model whose LLM has learned the lists well."""
    has_head, llm_vocab = _ctc_head(model)
    if not cfg.hotword_boost or cfg.guidance(has_head, llm_vocab) > 0:
        return None
    why = "the model has no CTC head" if not has_head else "ctc_weight is 0"
    return (
        f"hotword boost {cfg.hotword_boost:g} in a search no CTC head guides ({why}): the LLM alone, boosted, writes "
        "listed phrases the audio does not hold, which is why the boost is 0 by default there (a CTC-guided search "
        "holds it to the audio)"
    )


def decode_loader(model, manifest_path, cfg: DecodeConfig, opts: DecodeOptions, device=None,
                  world: DecodeWorld = SOLO, limit: float | None = None, lines=None) -> SpeechDataLoader:  # fmt: skip
    """The evaluation loader over one manifest, with `model`'s frontend and prompt builder; utterances longer
    than `limit` (default: window_limit's for the manifest) are cut into windows (llmasr.data.windowed), at
    cfg.vad's speech segments when it names a VAD, which then also gates every utterance (cfg.vad_gate); `world`:
    this rank's share of the batches. cfg.max_llm_tokens bounds their LLM positions (llmasr.train.decode_rows);
    the items past it alone, each decoded alone, are `loader.over_llm_budget` (rank 0 logs them). `lines`: the
    line_prompts that window_limit counted the manifest's prompts with, where it did."""
    lines = line_prompts(model, opts, world) if lines is None else lines
    limit = window_limit(model, cfg, opts, manifest=manifest_path, lines=lines) if limit is None else limit
    gate, segments = cfg.vad is not None and cfg.vad_gate, speech_segmenter(cfg, model.frontend.sample_rate)
    rules = WindowRules(
        limit or math.inf, cfg.window_overlap, cfg.window_split_pause, from_speech=cfg.trim_leading_silence,
        speech_segments=segments, gate=gate, merge_seconds=cfg.vad_merge_seconds,
    )  # fmt: skip
    prompted = not opts.hotwords_unprompted
    rows = DecodeRows(model, cfg, opts.hotwords, prompted, lines, opts.task) if cfg.max_llm_tokens else None
    name = f"decode {Path(manifest_path).name}"
    loader = build_decode_loader(
        manifest_path, model.frontend, prompt_builder=model.prompt, batch_seconds=cfg.batch_seconds, name=name,
        num_workers=opts.num_workers, max_bad_fraction=opts.max_bad_fraction, features_on=opts.features_on,
        device=device, hotwords=opts.hotwords, prompt_hotwords=not opts.hotwords_unprompted,
        windows=rules if limit > 0 or gate else None, rank=world.rank, world_size=world.size, gather=world.gather,
        trim_leading_silence=cfg.trim_leading_silence, speech_runs=cfg.timestamps, llm_rows=rows,
        quiet_bad=not opts.log_bad_lines, task=opts.task, language=opts.language,
    )  # fmt: skip
    loader.over_llm_budget = over_budget(loader, cfg, name, say=world.leader)
    return loader


def decode_manifest(
    model, manifest_path: str | Path, out_dir: str | Path, cfg: DecodeConfig, opts: DecodeOptions | None = None,
    *, device="cpu", world: DecodeWorld = SOLO, cleared: bool = False, name: str | None = None,
) -> dict | None:  # fmt: skip
    """Decode one manifest into `out_dir`; returns the summary dict (also written to wer.json), with the CTC
    branch's under "ctc" when opts.ctc, the count of opts.subtitles' files in out_dir/subtitles/ (cfg.timestamps
    needed) under "subtitles", and "too_much_bad_data" (the message, or None). On N ranks (`world`) each
    decodes its share and rank 0 writes the whole; the other ranks return None. An earlier decode's files in
    `out_dir` go once the model's checks pass, unless `cleared` (the caller removed them: `llmasr decode` clears
    every folder it writes before its first manifest). `name`: what the summary calls the manifest (its set name in
    a decode of several, llmasr.data.manifest_names), else its file name."""
    opts = DecodeOptions() if opts is None else opts
    if opts.ctc and getattr(model, "ctc_head", None) is None:
        raise DecodeError("--ctc: the model has no CTC head (it was trained with model.ctc.weight 0)")
    try:
        boost = search_boost(model, cfg, opts)  # refused before anything is written
    except ConfigError as err:
        raise DecodeError(str(err)) from err
    out_dir = Path(out_dir)
    t0, clock = time.perf_counter(), {}  # the clock counts the pass that reads long or gated audio for its windows
    lines = line_prompts(model, opts, world)  # the lines' prompts, counted once for the window and the budget
    opened = world.same_manifest(manifest_path)  # every rank's copy the same, or none decodes it
    if opts.subtitles:  # two keys that would write one file: refused before anything is decoded, or cleared
        check_subtitles(opened, cfg.timestamps, opts.subtitles)
    if world.leader and not cleared:  # before decoding: one stopped part-way leaves no earlier results to read as its
        clear_for_decode(out_dir)
    limit = window_limit(model, cfg, opts, manifest=opened, lines=lines)  # a manifest refused leaves no folder
    loader = decode_loader(model, manifest_path, cfg, opts, device, world, limit, lines)
    planned = time.perf_counter() - t0
    model.eval()
    pace = Pace(name or Path(manifest_path).name, PROGRESS_EVERY_S if world.leader else None, len(loader), world.size)
    items, mode = transcribe_loader(model, loader, cfg, device, clock, progress=pace)
    items, bad_data, shares = world.merge(items, loader.bad_data)
    if not world.leader:
        return None
    if taken := written_since_cleared(out_dir):  # cleared at the start: a file of a decode's is another decode's
        raise DecodeError(taken)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = loader.dataset.manifest
    rows = utterance_rows(items, manifest, cfg.window_overlap)
    for r in rows:  # the line's `lang`: wer.txt rates each language the manifest names apart
        utt = manifest[int(r["index"])]
        r["lang"], r["lang_label"] = language_of(utt), utt.lang
    if opts.hotwords_unprompted:  # the lists a prompted run would have used: capped as its prompt caps them
        for r in rows:
            r["hotwords_scored"] = model.prompt.capped_hotwords(loader.dataset.listed_hotwords(r["index"]))[0]
    audio_seconds = sum(r["duration"] for r in rows)
    timing = {"audio_seconds": audio_seconds, "decode_seconds": time.perf_counter() - t0, "device": device}
    timing["window_plan_seconds"] = planned
    timing.update(mode=mode, rank_items=shares, **clock)
    tracker = utterance_tracker(bad_data, manifest, len(rows))
    write_atomic(out_dir / "bad.jsonl", "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                for r in bad_rows(tracker.examples)))  # fmt: skip
    found = dict(
        manifest=str(Path(manifest_path).absolute()), name=name or Path(manifest_path).name,  # read from any folder
        lines=len(getattr(manifest, "base", manifest)), skipped=tracker.bad, skipped_by_reason=dict(tracker.by_reason),
        windows=sum(r["windows"] for r in rows), split=sum(r["windows"] > 1 for r in rows),
        cut_to_one_window=cut_to_one_window(rows, manifest),
        max_window_seconds=limit or None, window_overlap=cfg.window_overlap, vad=cfg.vad,
        no_speech=sum(bool(r.get("no_speech")) and not r.get("ctc_gated") for r in rows),
        vad_merge_seconds=cfg.vad_merge_seconds,
        max_llm_tokens=cfg.max_llm_tokens, over_llm_budget=loader.over_llm_budget,
        task=opts.task, language=opts.language,  # asked of the lines without their own `prompt`, `lang`
    )  # fmt: skip
    if any(r["ref"] is None for r in rows):  # transcribed, not scored: a transcript the lines give by another name?
        found["target_stand_in"] = target_stand_in(manifest)
    timing["hotwords"] = hotword_counts(rows, opts, model.prompt.hotwords_max_tokens, boost)
    if unused := unused_flags_line(timing["hotwords"], manifest_path):
        log.warning("%s", unused)
    subtitles = RowSubtitles(rows, out_dir, opts.subtitles) if opts.subtitles else None
    timing["subtitles"] = subtitles and subtitles.summary  # counted in wer.json and wer.txt
    summary = llm_summary(out_dir, rows, found, cfg, timing)
    summary["too_much_bad_data"] = tracker.message(setting="--max-bad-fraction") if tracker.exceeded else None
    if opts.ctc:
        summary["ctc"] = ctc_summary(out_dir / "ctc", rows, found, cfg, timing)
    if subtitles is not None:  # after the results: a file that cannot be written loses none of them
        subtitles.write()
    return summary


def transcribe_loader(
    model, loader: SpeechDataLoader, cfg: DecodeConfig, device, clock: dict | None = None, name=None, progress=None,
    each=None,
) -> tuple[dict[int, dict], str]:  # fmt: skip
    """Rows {key, ref, hyp, ctc_hyp, truncated, duration, index, line (the manifest's), hotwords, hotwords_dropped,
    with cfg.timestamps timestamps, with cfg.confidence logprob and logprob_tokens} of every decoded item (an
    utterance or a window of one) by item index, and the search mode; ctc_hyp is None without a CTC head.
    `clock`: gets "first_batch" (seconds from the call until the first batch was decoded: the loader's start and
    the device's warm-up are in it) and "first_batch_share" (its share of the audio of the items decoded).
    A batch the model fails on is named in the error by its items, `name(item index, key)` each (default: the
    manifest line and key). `progress`: a Pace, told of every batch. `each(rows, its indices)`: told of each too."""
    rows: dict[int, dict] = {}
    mode = cfg.mode(0.0)
    choose_attention_kernels(cudnn=False)  # every decoding step is a new shape (the cache grows): cuDNN's never pays
    manifest = loader.dataset.manifest
    name = name or (lambda idx, key: f"{getattr(manifest, 'path', '?')}:{manifest.lineno(idx)} (key {key})")
    t0 = time.perf_counter()
    pace, each = progress or Pace("", None, len(loader)), each or (lambda rows, indices: None)
    for batch in loader:
        if not batch.size or batch.duplicate:  # every item bad (the loader counted them), or a rank's padding
            pace.batch(0.0)
            each(rows, [])  # its bad items are known now
            continue
        items = list(dict.fromkeys(name(int(i), k) for i, k in zip(batch.indices, batch.keys)))  # windows: once
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        with errors.context(f"decoding the batch of {', '.join(items[:3])}{more}"):  # an OOM, a fault of one item
            got = model.transcribe(batch.to(device), cfg)
        mode = got.mode
        ctc = got.ctc if got.ctc is not None else [None] * len(got.llm)
        for i, (idx, key, ref) in enumerate(zip(batch.indices, batch.keys, batch.targets)):
            dur = float(batch.durations[i])
            rows[idx] = {"key": key, "ref": ref, "hyp": got.llm[i], "ctc_hyp": ctc[i], "duration": dur}
            rows[idx]["index"] = int(idx)
            rows[idx]["line"] = manifest.lineno(int(idx))  # results.jsonl's way back to the manifest line
            rows[idx]["truncated"] = got.truncated[i]
            if got.confidence is not None:  # the LLM's log-probability of the item's text (models.confidence)
                sure = got.confidence[i]  # None: the CTC gate left it empty, no text the LLM wrote
                rows[idx].update(
                    logprob=None if sure is None else sure.logprob, logprob_tokens=sure.tokens if sure else 0
                )
            if got.no_speech is not None and got.no_speech[i]:  # the CTC gate (models.ctc_gate)
                rows[idx].update(no_speech=True, ctc_gated=True)
            rows[idx].update(hotwords=list(batch.hotwords[i]), hotwords_dropped=int(batch.hotwords_dropped[i]))
            if got.timestamps is not None:  # ends where the sound ends; in the item's time (its trimmed lead back)
                words = sound_ends(got.timestamps[i], batch.speech_runs[i])
                rows[idx]["timestamps"] = shift_times(words, float(batch.leads[i]), within=dur)
        pace.batch(audio := float(sum(batch.durations)))
        each(rows, [int(i) for i in batch.indices])
        if clock is not None:
            clock.setdefault("first_batch", time.perf_counter() - t0)
            clock.setdefault("first_batch_share", audio)
            clock["items_audio"] = clock.get("items_audio", 0.0) + audio
    if clock:
        total = clock.pop("items_audio")
        clock["first_batch_share"] = clock["first_batch_share"] / total if total > 0 else 1.0
    return rows, mode


def load_decode_model(
    model_dir=None, checkpoint=None, *, tag=None, dtype=None, trust_remote_code: bool = False, base_llm=None,
    say: bool = True,
) -> tuple:  # fmt: skip
    """(model, its saved DecodeConfig, DecodeOptions with its bad-data tolerance) from an exported model directory
    (the decode section of its llmasr_model.yaml) or else a training checkpoint (its recipe's decode section and
    data.max_bad_fraction). `base_llm`: where an adapter export's base LLM lies, if not where its description says.
    `say`: load_checkpoint_model's (False: another rank says it)."""
    if base_llm is not None and model_dir is None:
        raise ExportedModelError(
            f"a base LLM was given ({base_llm}) with the checkpoint {checkpoint}: a base LLM is given only for an "
            "adapter export (a checkpoint reads its run's recipe's model.llm.path)"
        )
    if model_dir is not None:
        model = load_exported(model_dir, dtype=dtype, trust_remote_code=trust_remote_code, base_llm=base_llm)
        desc = read_description(model_dir)
        saved = dict(desc.get("decode") or {})
        if saved.get("vad") is not None:  # an export carries its VAD in a folder of its own (llmasr export)
            saved["vad"] = str(Path(model_dir) / saved["vad"])
        try:
            cfg = from_dict(DecodeConfig, saved, "decode")
        except ConfigError as err:
            raise ExportedModelError(f"{Path(model_dir) / MODEL_FILE}: {err}") from err
        longest = (desc.get("training") or {}).get("longest_seconds")
        if longest is None:
            where = Path(model_dir) / MODEL_FILE
            log.info("%s: no training.longest_seconds: long audio is not split unless max_window_seconds is set", where)
        return model, cfg, DecodeOptions(training_max_seconds=None if longest is None else float(longest))
    model, info = load_checkpoint_model(checkpoint, tag=tag, trust_remote_code=trust_remote_code, say=say)
    recipe = info["recipe"]
    # LoRA merged and the LLM in the dtype asked for, else the run's model.llm.dtype, as an export's is by default
    # (the speech branches stay float32): a checkpoint decodes as its default export does, weight for weight.
    llm_dtype = DTYPES[dtype_name(recipe.model.llm.dtype if dtype is None else dtype, error=ExportedModelError)]
    try:
        as_exported(model, llm_dtype)
    except ExportError as err:  # a weight float16 cannot hold, as the export refuses it
        raise CheckpointError(f"checkpoint {checkpoint}: {err}") from None
    opts = DecodeOptions(max_bad_fraction=float(recipe.data.max_bad_fraction))
    return model, recipe.decode, dataclasses.replace(opts, training_max_seconds=info["longest_seconds"])
