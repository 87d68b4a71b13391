"""DataLoader assembly: manifests -> durations -> DynamicBucketSampler (llmasr.data.sampler_settings) -> SpeechDataset
-> Collator.

`build_dataloader` returns (loader, sampler). The loader is a `SpeechDataLoader` (llmasr.data.speech_loader): it
accounts bad data, resumes exactly, and keeps an accumulation window's batches ready (DataConfig.prefetch).
Workers are not persistent: each epoch's workers start from the dataset as it is when the epoch starts.

At build time every line is screened (llmasr.data.screen): lines unusable by the manifest alone (malformed, missing
fields, empty or non-text transcripts, or ones a CTC head cannot spell) and unreadable audio headers (probed where
the duration is unknown) are reported as bad data, skipped by the sampler and counted against max_bad_fraction in
every epoch (each rank counts its share). If they alone pass max_bad_fraction the build fails before training
starts. What the batching filters skip (max_duration, min_duration, ...) is logged with the first lines it drops.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from llmasr.config_io import ConfigError, checked
from llmasr.data.bad_data import BadDataTracker, BadItem, TooMuchBadData
from llmasr.data.collate import Collator
from llmasr.data.config import DataConfig, ManifestSpec
from llmasr.data.dataset import CTCRule, SpeechDataset
from llmasr.data.device_features import resolve_features_on
from llmasr.data.frontend import FrontendConfig
from llmasr.data.hotwords import HotwordSampler
from llmasr.data.item_filters import counts_text
from llmasr.data.llm_unk import unk_of_prompt
from llmasr.data.mixed_manifest import epoch_items, epoch_mix
from llmasr.data.noise_list import noise_problem
from llmasr.data.sampler import DynamicBucketSampler
from llmasr.data.sampler_settings import decode_batching, longest_kept, make_sampler
from llmasr.data.screen import start_tracker
from llmasr.data.screen_share import ScreenShare, shared_fill
from llmasr.data.skipped_lines import describe_skipped
from llmasr.data.speech_loader import SpeechDataLoader
from llmasr.data.window_plan import PlanShare, WindowRules, split_long
from llmasr.data.worker_start import fork_deadlock_warning, worker_init

log = logging.getLogger("llmasr.data")

FALLBACK_TRIES = 256


def open_manifests(specs: Sequence[ManifestSpec | str], *, mix: bool, fill: bool = True, need_target: bool = True,
                   key: str | None = None):  # fmt: skip
    """Open manifests and (with `fill`) fill unknown durations from headers. Returns (manifest, bad records from
    the fill). `need_target` False (decoding): lines without a transcript are utterances to transcribe. `key`: the
    recipe key that lists `specs` ("data.train"), which names a manifest that cannot be one (empty, a JSON
    document) by its place in a mix, as a missing one is named.

    One manifest is used as is; several become a MixedManifest (weights used when `mix`, i.e. for training).
    """
    from llmasr.data.manifest import BadManifest, EmptyManifest, Manifest
    from llmasr.data.mixed_manifest import MixedManifest

    specs = [ManifestSpec(os.fspath(s)) if isinstance(s, (str, os.PathLike)) else s for s in specs]
    if not specs:
        raise ValueError("no manifests given")
    opened, bad = [], []
    for i, spec in enumerate(specs):
        try:
            m = Manifest.open(spec.path, need_target=need_target)
        except (EmptyManifest, BadManifest) as err:
            if key is None:
                raise
            raise type(err)(f"{key}[{i}]: {err}") from None
        if fill:
            bad.extend(m.fill_durations())
        opened.append(m)
    weights = [s.weight if mix else 1.0 for s in specs]
    if len(opened) == 1 and weights == [1.0]:  # a weight of its own (2: two passes an epoch) makes a mix of one
        return opened[0], bad
    return MixedManifest(opened, weights), bad


def evenly_spaced(n: int, k: int | None) -> np.ndarray | None:
    if k is None or k >= n:
        return None
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def find_fallback(dataset: SpeechDataset, candidates: Iterable[int]):
    """First good item among `candidates`; raises TooMuchBadData if none of the first FALLBACK_TRIES is good."""
    reasons = []
    for i in itertools.islice(candidates, FALLBACK_TRIES):
        item = dataset[int(i)]
        if not isinstance(item, BadItem):
            return item
        reasons.append(f"{item.where()}: {item.reason}")
    if not reasons:
        return None
    raise TooMuchBadData(f"none of the first {len(reasons)} items is usable; e.g.\n  " + "\n  ".join(reasons[:10]))


def _dataset(
    manifest, frontend: FrontendConfig, data_cfg: DataConfig, *, train: bool, prompt_builder, ctc=None, device=None,
    hotword_sampler=None, default_hotwords=None, prompt_hotwords: bool = True, trim_leading_silence: bool = False,
    speech_runs: bool = False, task: str | None = None, language: str | None = None,
):  # fmt: skip
    b = data_cfg.batching
    return SpeechDataset(
        manifest,
        frontend,
        train=train,
        augment=data_cfg.augment if train else None,
        prompt_builder=prompt_builder,
        ctc_tokenizer=ctc,
        seed=data_cfg.seed,
        max_duration_truncate=longest_kept(b, frontend) if b.truncate_to_max else None,
        features_on=resolve_features_on(data_cfg.features_on, frontend, device),
        hotword_sampler=hotword_sampler,
        default_hotwords=default_hotwords,
        prompt_hotwords=prompt_hotwords,
        default_task=task,
        default_language=language,
        trim_leading_silence=trim_leading_silence,
        speech_runs=speech_runs,
    )


def _hotword_sampler(data_cfg: DataConfig, manifest, *, train: bool, rank: int, share: ScreenShare | None = None):
    """Training's list sampler (the corpus counts read once, here, split between the ranks of `share`), or None:
    validation uses the manifest's lists, else none, so its WER measures the model on given lists only."""
    if not train or not data_cfg.hotwords.samples:
        return None
    sampler = HotwordSampler.build(data_cfg.hotwords, manifest, data_cfg.seed, share)
    if rank == 0:
        h = data_cfg.hotwords
        log.info(
            "hotwords: lists drawn (source %s, unit %s, n-grams %s, true phrases %s, list size %s, empty share %g), "
            "%d units counted, distractor pool %d phrases (%s)", h.source, h.unit, h.ngram, h.true_phrases, h.list_size,
            h.empty_prob, len(sampler.stats.counts), len(sampler.pool), h.distractors,
        )  # fmt: skip
        if short := sampler.short_pool():
            log.warning("%s", short)
    return sampler


def pins_memory(pin_memory: bool, device=None) -> bool:
    """Whether the loader pins its batches: data.pin_memory where they go to a CUDA `device` (None: CUDA when
    available). Pinning speeds only a copy to a GPU, and creates a CUDA context, so a CPU run on a host with CUDA
    (the launcher's DS_ACCELERATOR=cpu, decode --device cpu) does not pin."""
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return bool(pin_memory and on_cuda)


def _speech_loader(
    dataset, sampler, collator, data_cfg: DataConfig, tracker: BadDataTracker, window: int = 1, device=None
) -> SpeechDataLoader:
    workers = int(data_cfg.num_workers)
    loader = SpeechDataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collator,
        pin_memory=pins_memory(data_cfg.pin_memory, device),
        prefetch_factor=data_cfg.prefetch(window),
        persistent_workers=False,
        worker_init_fn=worker_init if workers > 0 else None,
    )
    loader.bad_data = tracker
    loader.consumed = 0
    loader.fork_hazard = fork_deadlock_warning(sampler.world_size, workers) is not None
    return loader


def build_dataloader(
    data_cfg: DataConfig,
    manifests,
    frontend: FrontendConfig,
    *,
    prompt_builder,
    ctc_tokenizer=None,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    device=None,
    trim_leading_silence: bool = False,
    window: int = 1,
    share: ScreenShare | None = None,
    llm_rows=None,
    say_mix: bool = True,
) -> tuple[SpeechDataLoader, DynamicBucketSampler]:
    """(loader of collated Batches, its DynamicBucketSampler) over `manifests` under the `data_cfg` settings, with
    `frontend`'s features and `prompt_builder`'s prompts (a model's: model.frontend, model.prompt, and with a CTC
    head ctc_tokenizer=model.ctc_tokenizer); `train`: shuffled, augmented, bucketed, else every line once.

    `manifests`: a list of ManifestSpec / paths (e.g. data_cfg.train), one path, or an opened Manifest/MixedManifest.
    `device`: the model's, which data.features_on auto follows (None: CUDA when available). `trim_leading_silence`:
    validation hears each utterance from its speech, as decoding does (decode.trim_leading_silence). `window`: the
    batches of an accumulation window (train.grad_accum), which the workers keep ready (DataConfig.prefetch).
    `share`: the ranks of a node split the start-up screen (llmasr.data.screen_share) and the hotword sampler's pass
    over the training texts (llmasr.data.corpus_stats). `llm_rows(train, hotword_sampler)`: what counts each line's
    LLM positions for data.batching.max_llm_tokens (llmasr.train.line_positions.LineRows: `.text(utterance)` in the
    screen's pass, `.rows(manifest, durations, texts)` after it); None: that budget is not applied. `say_mix`: log
    what `epoch` trains of a weighted mix (say_epoch_mix); a resume says it once it knows its epoch."""
    name = "train" if train else "valid"
    data_cfg = checked(DataConfig, data_cfg, "data")  # one made in Python is held to a recipe's rules
    if not isinstance(frontend, FrontendConfig):
        raise ConfigError(f"frontend: expected a FrontendConfig (the model's, model.frontend), got {frontend!r:.80}")
    if isinstance(manifests, (str, os.PathLike)):  # one manifest, not a list of the letters of its name
        manifests = [manifests]
    if hasattr(manifests, "durations"):  # opened already
        manifest = manifests
    else:
        manifest = open_manifests(manifests, mix=train, fill=False, key=f"data.{name}")[0]
    n = len(manifest)
    # settings that do nothing, or that defeat their purpose (frequency masks that can blank a clip whole)
    said = [*data_cfg.augment.idle_settings(frontend), *data_cfg.augment.whole_masks(frontend)]
    said += data_cfg.hotwords.idle_settings()
    for line in said if train and rank == 0 else ():
        log.warning("%s", line)
    if train and (why := noise_problem(data_cfg.augment.noise)):
        raise ConfigError(why)
    indices = None if train else evenly_spaced(n, data_cfg.valid_max_utts)
    dataset = _dataset(
        manifest, frontend, data_cfg, train=train, prompt_builder=prompt_builder, ctc=ctc_tokenizer, device=device,
        hotword_sampler=_hotword_sampler(data_cfg, manifest, train=train, rank=rank, share=share),
        trim_leading_silence=trim_leading_silence and not train,
    )  # fmt: skip
    epoch_indices = None
    if train and hasattr(manifest, "epoch_indices"):
        seed = data_cfg.seed
        epoch_indices = lambda e: manifest.epoch_indices(e, seed)  # noqa: E731
        if rank == 0 and hasattr(manifest, "visits_text"):  # a mix: what each manifest gives an epoch
            said, sparse = manifest.visits_text()
            if said:
                log.info("%s: %s", name, said)
            for line in sparse:
                log.warning("%s: %s", name, line)
    b = data_cfg.batching
    # read in the screen's pass over the lines
    tl = np.zeros(n, dtype=np.int64) if (b.max_target_len is not None or b.max_target_tokens is not None) else None
    rows = llm_rows(train, dataset.hotword_sampler) if llm_rows is not None and b.max_llm_tokens is not None else None
    texts = None if rows is None else (np.zeros(n, dtype=np.int64), rows.text)
    ctc_need = np.zeros(n, dtype=np.int64) if ctc_tokenizer is not None else None  # the screen counts the labels
    tracker, static = start_tracker(manifest, data_cfg, name=name, indices=indices, rank=rank, world_size=world_size,
                                    ctc_labels=CTCRule(ctc_tokenizer) if ctc_tokenizer is not None else None,
                                    epoch_items=epoch_indices(epoch) if epoch_indices else None,
                                    target_lens=tl, share=share, text_lens=texts,
                                    llm_unk=unk_of_prompt(prompt_builder), ctc_need=ctc_need,
                                    enforce=train, prompts=(own_prompts := {}),
                                    languages=(languages := {}))  # fmt: skip
    durations = np.asarray(manifest.durations(), dtype=np.float64)
    skip = np.asarray([b.index for b in static], dtype=np.int64)
    llm_lens = None if rows is None else rows.rows(manifest, durations, texts[0])
    sampler = make_sampler(
        data_cfg, durations, tl, frontend, train=train, rank=rank, world_size=world_size, indices=indices,
        epoch_indices=epoch_indices, skip=skip, llm_lens=llm_lens,
    )  # fmt: skip
    skipped = describe_skipped(sampler, manifest, b, name)
    if skipped and rank == 0:
        log.warning("%s", skipped)
    if train and rank == 0 and say_mix:
        say_epoch_mix(manifest, sampler, epoch)
    hazard = fork_deadlock_warning(world_size, data_cfg.num_workers) if train and rank == 0 else None
    if hazard:
        log.warning("%s", hazard)
    sampler.add_epoch_listener(dataset.set_epoch)
    sampler.set_epoch(epoch)
    candidates = itertools.chain.from_iterable(sampler.iter_batches())  # not every batch as lists: the first few
    fallback = find_fallback(dataset, candidates)
    collator = Collator(prompt_builder.pad_id, with_ctc=ctc_tokenizer is not None, fallback=fallback)
    loader = _speech_loader(dataset, sampler, collator, data_cfg, tracker, window, device)
    loader.screened = static  # each bad line's reason, as this rank found it: for the ranks' comparison of findings
    loader.ctc_need = ctc_need  # each line's CTC labels in frames (llmasr.data.ctc_frames), for the model's check
    loader.own_prompts = own_prompts  # the lines with a prompt of their own, by manifest (llmasr check names them)
    loader.languages = languages  # each manifest's lines per language (SenseVoice's per-line queries are said of it)
    st = sampler.stats()
    # valid_max_utts' subset: the lines it leaves out are said, or "N items, skipped none" read as all of them heard
    # a weighted mix's visits: "N items" had counted lines, check visits
    items = epoch_items(st["num_items"], n, epoch, name) if indices is None else f"{n} items"
    if indices is not None:
        left = n - indices.size
        items = (
            f"{indices.size} of {items} (data.valid_max_utts {data_cfg.valid_max_utts}, evenly spaced: {left} left out)"
        )
    loader.items_text = items  # llmasr check says it of validation too
    log.info(
        "%s data: %s, %d batches per rank (world size %d), mean batch %.1f, padding efficiency %.3f, skipped %s",
        name, items, len(sampler), world_size, st["mean_batch_size"], st["padding_efficiency"],
        counts_text(st["filtered"]),
    )  # fmt: skip
    return loader, sampler


def say_epoch_mix(manifest, sampler, epoch: int, *, warn: bool = True) -> None:
    """train.log's line of what `epoch` trains of each manifest of a weighted mix (as `llmasr check` counts it; a
    fraction of a weight draws other lines, and maybe another count, each epoch), and with `warn` the manifests it
    trains none of. Nothing where every weight is 1 (each line once: "N items" says it)."""
    mix, gone = epoch_mix(manifest, sampler, epoch)
    if mix and any(w != 1 for w in manifest.weights):
        log.info("train: epoch %d of the mix as the ranks train it: %s", epoch, "; ".join(mix))
    for line in gone if warn else ():
        log.warning("train: %s", line)


def build_decode_loader(
    manifest_path, frontend: FrontendConfig, *, prompt_builder, batch_seconds: float, num_workers: int,
    max_bad_fraction: float, name: str, features_on: str = "auto", device=None, hotwords: list[str] | None = None,
    prompt_hotwords: bool = True, windows: WindowRules | None = None, rank: int = 0, world_size: int = 1,
    gather=None, trim_leading_silence: bool = False, speech_runs: bool = False, llm_rows=None, quiet_bad: bool = False,
    task: str | None = None, language: str | None = None,
) -> SpeechDataLoader:  # fmt: skip
    """The validation loader over one manifest, for decoding: every line is batched once, in an eval-mode
    SpeechDataset; batches are cut from one duration-sorted window over the whole manifest (no buckets, no
    shuffling: least padding) under `batch_seconds` of audio, and an utterance longer than that gets a batch of its
    own.

    Bad lines are counted, never refused: the tracker (`loader.bad_data`) keeps every one, in the order found (the
    lines whose audio header cannot be read, then the ones loading rejects; `quiet_bad`: none logged), and the
    caller checks max_bad_fraction at the end. An all-bad batch becomes a batch of no rows (no rank waits on another).
    `hotwords`: the list of every line that has no `hotwords` field of its own; `prompt_hotwords` False: no
    prompt renders the lists (`dataset.listed_hotwords` still gives them, for scoring). `task`, `language`: the task
    and language query of every line without its own `prompt`, `lang` (decode --task, --language). `windows`:
    utterances the rules cut are decoded in windows, each an item of its own, and the ones a VAD gate silences get
    an empty transcript (`loader.dataset.manifest` is then a llmasr.data.windowed.WindowedManifest;
    llmasr.data.window_plan).
    `rank` of `world_size`: the sampler's share of the same plan (llmasr.export.decode_world); with `gather` (obj ->
    every rank's obj) the ranks also share the header probes of lines without a duration and reading the audio the
    window rules hear, `num_workers` processes each.
    A line without a transcript is decoded too
    (its batch's `targets` hold None for it). `trim_leading_silence`: each item's leading pause is cut
    (llmasr.data.long_audio.speech_start; the batch's `leads` say by how much each starts later). `speech_runs`:
    each item's stretches of speech ride along (`Batch.speech_runs`, for word timestamps' ends). `llm_rows`: counts
    each item's LLM positions for the budget `llm_rows.budget` (llmasr.train.decode_rows.DecodeRows; its counts are
    kept as `loader.llm_rows`, (inputs, new) per item); an item past it alone is decoded in a batch of its own.
    """
    probes = (
        ScreenShare(rank, world_size, gather, data="data to decode") if gather is not None and world_size > 1 else None
    )
    manifest, fill_bad = open_manifests([str(manifest_path)], mix=False, need_target=False, fill=probes is None)
    if probes is not None:  # the ranks split the header probes of the lines that give no duration
        fill_bad = shared_fill(manifest, probes)
    durations = np.asarray(manifest.durations(), dtype=np.float64)
    known = np.flatnonzero(~np.isnan(durations))  # the others are in fill_bad
    if windows is not None:
        share = PlanShare(rank, world_size, int(num_workers), gather) if gather else PlanShare(workers=int(num_workers))
        manifest = split_long(manifest, known, sample_rate=frontend.sample_rate, rules=windows, share=share)
        durations, known = manifest.durations(), manifest.items_of(known)
    n = len(manifest)
    budget = None if llm_rows is None else llm_rows.budget
    batching = decode_batching(batch_seconds, n, budget)
    data_cfg = DataConfig(
        batching=batching, num_workers=int(num_workers), max_bad_fraction=float(max_bad_fraction),
        features_on=features_on,
    )  # fmt: skip
    tracker = BadDataTracker(data_cfg.max_bad_fraction, name=name, keep_examples=n + 1, enforce=False, quiet=quiet_bad)
    tracker.add_static(fill_bad, quiet=rank != 0 or quiet_bad)  # every rank finds them; one says so
    rows = None if budget is None else llm_rows(manifest, durations, data_cfg)  # the same on every rank
    sampler = make_sampler(
        data_cfg, durations, None, frontend, train=False, rank=rank, world_size=world_size, indices=known,
        keep_every_item=True, llm_lens=None if rows is None else rows[0], llm_new=None if rows is None else rows[1],
    )  # fmt: skip
    dataset = _dataset(
        manifest, frontend, data_cfg, train=False, prompt_builder=prompt_builder, device=device,
        default_hotwords=hotwords, prompt_hotwords=prompt_hotwords, trim_leading_silence=trim_leading_silence,
        speech_runs=speech_runs, task=task, language=language,
    )  # fmt: skip
    collator = Collator(prompt_builder.pad_id, no_rows=True)
    loader = _speech_loader(dataset, sampler, collator, data_cfg, tracker, device=device)
    loader.llm_rows = rows
    return loader
