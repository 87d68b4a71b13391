"""What `llmasr check` prints: a recipe and a DeepSpeed JSON resolved the way `llmasr train` does, no training.

    llmasr check --config RECIPE --deepspeed zero2 [--world-size N] [--out DIR] [key=value ...]

Prints the batch arithmetic, the exact batches per rank per epoch (the real sampler over the real manifests),
the update count, each param group's lr at the key updates, and a per-rank memory estimate for the ZeRO stage; it
writes the lr curves (lr_schedule.csv and lr_schedule.png) into --out (default: the run directory, or its check/
folder once it holds a run). No weight data is read: the model is built on the meta device by the same builder
training uses, which gives exact parameter counts, and the encoder, adaptor and CTC head loaders run on their
pretrained files' tensor names and shapes, so a file that does not fit the model is refused here, as training's
load would refuse it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from llmasr.data.augment import cost_text
from llmasr.data.item_filters import counts_text
from llmasr.data.mixed_manifest import epoch_items, epoch_mix
from llmasr.data.screen import own_prompts_text
from llmasr.models.builder import build_model
from llmasr.models.fsmn_vad import load_vad
from llmasr.models.fused_kernels import check_fused_kernels
from llmasr.models.sanm_chunk import chunk_lines
from llmasr.models.start_from import check_start_folder
from llmasr.models.start_notes import start_notes
from llmasr.models.tokenizer import one_tokenizer_load
from llmasr.run_dir import LR_CSV, holds_run
from llmasr.train.check_course import best_k_lines, early_stop_lines, key_updates
from llmasr.train.check_ds import ds_lines
from llmasr.train.check_languages import language_query_lines
from llmasr.train.check_prompt import prompt_lines
from llmasr.train.check_run_folder import run_folder, run_start
from llmasr.train.checkpoint_space import CheckpointSpace, size_text
from llmasr.train.config import need_recipe
from llmasr.train.context_fit import check_context_fit, sequence_lines
from llmasr.train.ctc_fit import ctc_frames_warnings
from llmasr.train.ds_config import resolve_ds, zero_stage
from llmasr.train.engine import offloads_optimizer, precision_problem
from llmasr.train.op_builds import check_nvme_offload, check_quantizer
from llmasr.train.param_groups import build_param_groups, describe_param_groups, optim_warnings
from llmasr.train.plan import plan_run
from llmasr.train.progress import plot_lr, write_lr_csv
from llmasr.train.resolve import check_run_settings
from llmasr.train.run_dir import RunDirError, lr_rows
from llmasr.train.schedulers import build_group_schedules, lr_curve
from llmasr.train.zero_memory import estimate_zero_memory, optimizer_state_bytes

# what torch's DataLoader warns at its construction when data.num_workers is more than this machine's CPUs
WORKERS_WARNING = r"This DataLoader will create \d+ worker processes in total"


def param_counts(model) -> dict:
    from peft.tuners.lora import LoraLayer

    total = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # in the dtypes built
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    per_branch = {}
    for name in ("encoder", "adaptor", "ctc_head", "llm"):
        module = getattr(model, name, None)
        if module is not None:
            ps = list(module.named_parameters())
            trained = [(n, p.numel()) for n, p in ps if p.requires_grad]
            adapters = sum(k for n, k in trained if "lora_" in n)  # peft's LoRA tensors: lora_A, lora_B, ...
            # the layers target_modules reached (a fused MoE weight counts as one): a regex's reach, read before a run
            layers = sum(isinstance(m, LoraLayer) for m in module.modules())
            per_branch[name] = (sum(p.numel() for _, p in ps), sum(k for _, k in trained), adapters, layers)
    return {"total": total, "trainable": trainable, "largest_layer": largest, "branches": per_branch,
            "bytes": weight_bytes}  # fmt: skip


def plot_dir(run_dir: Path) -> Path:
    """Where check's lr curves go without --out: the run directory, unless it already holds a run, whose own
    lr_schedule.* record what that run trained with (a check beside a live run must not overwrite them)."""
    return run_dir / "check" if holds_run(run_dir) else run_dir


def _weights_lines(m) -> list[str]:
    """Where each branch's weights start from: a pretrained file (its tensor names and shapes checked by the build
    above), or fresh values."""

    def start(init_from, prefix: str, fresh: str) -> str:
        return f"{init_from}" + (f" ({prefix}*)" if prefix else "") if init_from else fresh

    enc = m.encoder
    if enc.path is not None:
        encoder = f"{enc.path}" if enc.type == "whisper" else f"{Path(enc.path) / 'model.pt'} (encoder.*)"
    else:
        encoder = start(enc.init_from, enc.init_prefix, "fresh (model.encoder.conf)")
    lines = [
        "weights (where each branch starts)",
        f"  encoder: {encoder}",
        f"  adaptor: {start(m.adaptor.init_from, m.adaptor.init_prefix, 'fresh')}",
    ]
    if m.ctc.weight > 0:
        vocab = "the LLM's vocabulary" if m.ctc.vocab == "llm" else m.ctc.vocab
        blank = f", blank {m.ctc.blank!r}" if m.ctc.blank is not None else ""
        seg = f" through the seg_dict {m.ctc.seg_dict}" if m.ctc.seg_dict else ""
        lines.append(f"  ctc_head: {start(m.ctc.init_from, m.ctc.init_prefix, 'fresh')} over {vocab}{seg}{blank}")
    adapter = f" + adapter {m.llm.adapter}" if m.llm.adapter else ""
    return [*lines, f"  llm: {m.llm.path}{adapter}"]


def _vad_lines(decode, sample_rate: int) -> list[str]:
    """decode.vad, loaded as decoding loads it: a directory that does not load, or hears another sample rate than
    the model, fails the check."""
    if decode.vad is None:
        return []
    vad = load_vad(decode.vad, sample_rate)
    ms = decode.vad_max_end_silence_ms
    silence = "FunASR's schedule" if ms is None else f"{ms} ms"
    return [
        "decoding",
        f"  long audio cut at the speech segments of the FSMN VAD {vad.source} (ending silence: {silence})",
    ]


def _checkpoint_lines(tc, ds: dict, counts: dict, plan) -> list[str]:
    """The disk the run's checkpoints take against the run folder's free space; RunDirError where one cannot fit."""
    space = CheckpointSpace.estimate(
        tc, trainable=counts["trainable"], epochs=plan.epochs_reached, total=plan.ends_after,
        validates=plan.loaders[2] is not None, ds=ds,
    )  # fmt: skip
    problem, warning = space.problem(), space.warning()
    if problem:
        raise RunDirError(problem)
    return ["checkpoints", f"  {space.line()}", *([f"  warning: {warning}"] if warning else [])]


def _memory_lines(ds: dict, tc, counts: dict, world_size: int) -> list[str]:
    stage = zero_stage(ds)
    offload_param = ((ds.get("zero_optimization") or {}).get("offload_param") or {}).get("device") not in (None, "none")
    master_bytes, moment_bytes = optimizer_state_bytes(ds)
    mem = estimate_zero_memory(
        counts["total"], counts["trainable"], stage, world_size,
        offload_optimizer=offloads_optimizer(ds), offload_params=offload_param,
        precision=tc.precision, largest_layer_params=counts["largest_layer"],
        master_bytes=master_bytes, moment_bytes=moment_bytes, param_bytes=counts["bytes"],
    )  # fmt: skip
    size = {k: size_text(v) for k, v in mem.items()}
    return [
        f"memory per rank, model states only (ZeRO stage {stage}, {tc.precision}, world size {world_size})",
        f"  params {size['params']}, grads {size['grads']}, optimizer states {size['optimizer_states']}"
        + (f", gathered layer {size['gathered_layer']}" if mem["gathered_layer"] else ""),
        f"  on the device: {size['device']}; offloaded to CPU: {size['cpu']} (activations not included)",
    ]


def _data_lines(manifest, sampler, per_epoch: list[int], valid_loader, epoch: int) -> list[str]:
    st = sampler.stats(0)  # `epoch`: the one the run starts in (a resume's), whose mix is said; none past the last
    mix, gone = epoch_mix(manifest, sampler, epoch) if epoch < len(per_epoch) else ([], [])
    worst = cost_text(sampler.cost)  # the most augmentation can add; batches are cut on each epoch's own draws
    cost = f"  an utterance costs the budget its length after this epoch's speed factor and pauses; at most {worst}"
    if sampler.fits_sometimes.size:
        cost += (
            f"\n  {sampler.fits_sometimes.size} utterance(s) fit the budget only at some of these lengths: an epoch "
            "skips those its draws put over it (counted under over_batch_budget)"
        )
    return [
        "data",
        f"  batches per rank per epoch: {per_epoch[0] if len(set(per_epoch)) == 1 else per_epoch}",
        f"  mean utterances per batch: {st['mean_batch_size']:.2f} (padding duplicates not counted); padding "
        f"efficiency {st['padding_efficiency']:.3f}",
        *([cost] if worst else []),
        *_llm_lines(sampler, st),
        f"  kept {st['kept_items']} of {epoch_items(st['num_items'], len(manifest), 0)}; skipped: "
        f"{counts_text(st['filtered'])}; "
        f"padding batches (world-size remainder): {st['num_padding_batches']}{_dropped_text(st)}",
        *([f"  warning: {st['padding_warning']}"] if st["padding_warning"] else []),
        *([f"  data.train's mix, epoch {epoch} as the ranks train it (padding duplicates not counted):"] * bool(mix)),
        *(f"    {line}" for line in mix),
        *(f"  warning: {line}" for line in gone),
        # data.valid_max_utts' subset named, as train.log names it: "2 batches" had not said 8 of 16 lines left out
        "  validation: "
        + ("none" if valid_loader is None else f"{len(valid_loader)} batches per rank, {valid_loader.items_text}"),
    ]


def _dropped_text(st: dict) -> str:
    """What data.batching.drop_last leaves out of the epoch (its items kept, but not trained in it): had gone unsaid,
    "kept 20 of 20 items" read as every one of them trained."""
    if not st["dropped_batches"]:
        return ""
    left = st["kept_items"] - st["num_real_items"]
    return (f"; left out by data.batching.drop_last: {st['dropped_batches']} batch(es), {left} "
            "utterance(s) of this epoch (drawn anew each epoch)")  # fmt: skip


def _llm_lines(sampler, st: dict) -> list[str]:
    """data.batching.max_llm_tokens against the batches of epoch 0: the padded LLM positions they hold (B * the
    longest row) and the longest row batched (audio tokens, prompt and transcript, as llmasr.train.line_positions
    bounds them)."""
    if sampler.max_llm_tokens is None:
        return []
    llm = st["llm_positions"]
    return [
        f"  LLM positions per batch (B x longest row): at most {llm['max']}, mean {llm['mean']:.1f}, of "
        f"data.batching.max_llm_tokens {sampler.max_llm_tokens}; longest row {llm['longest_row']} (audio tokens "
        "at the longest the clip is heard, prompt and transcript bound)"
    ]


def _decode_lines(recipe, model, valid_loader) -> list[str]:
    """decode.max_llm_tokens against data.valid as `llmasr decode` batches it under the recipe's decode section
    (llmasr.train.decode_rows): the LLM positions its batches hold, and the utterances past the budget alone. Each
    manifest of data.valid is previewed alone, as decode batches each."""
    from llmasr.train.decode_rows import decode_preview

    dc, budget = recipe.decode, recipe.decode.max_llm_tokens
    if budget is None:
        return []
    if valid_loader is None:
        return [f"  decode.max_llm_tokens {budget}: no data.valid to preview decoding's batches on"]
    mix = valid_loader.dataset.manifest
    manifests = getattr(mix, "manifests", [mix])  # several: a MixedManifest of them
    lines = []
    for manifest in manifests:
        got = decode_preview(model, dc, manifest)
        llm = got["llm_positions"] or {"max": 0, "mean": 0.0, "longest_row": 0}
        which = "data.valid" if len(manifests) == 1 else f"data.valid {manifest.path}"
        lines.append(
            f"  decode.max_llm_tokens {budget}: {which} as `llmasr decode` batches it (batch_seconds "
            f"{dc.batch_seconds:g}, utterances whole): {got['batches']} batches; LLM positions per batch (B x beams x "
            f"(prompt and audio tokens + new tokens)) at most {llm['max']}, mean {llm['mean']:.1f}; longest row "
            f"{llm['longest_row']}"
        )
        if got["over"]:
            o = got["over"][0]
            lines.append(
                f"  {len(got['over'])} utterance(s) past decode.max_llm_tokens alone, each decoded in a batch of its "
                f"own (e.g. {manifest.path} line {o['line']}, key {o['key']}: {o['positions']})"
            )
    return lines


def _lr_rows(recipe, groups: list[dict], course, total: int) -> dict:
    """Each group's lr at every update, as `llmasr train` writes lr_schedule.csv: a resume's rows before its
    checkpoint as that run's updates used them (the run folder's file and the checkpoint's course; where the resume
    resizes the schedules, the rows after it can jump), the others from this recipe's schedules sized by `total`."""
    if not course.done:
        return lr_curve(recipe.optim, [g["name"] for g in groups], total)
    schedules = build_group_schedules(groups, recipe.optim, total)
    return lr_rows(Path(recipe.train.output_dir) / LR_CSV, schedules, course.done, total, course.applied, course.lrs)


@one_tokenizer_load()  # the checks, data plan and model build share the LLM's tokenizer, as train's start-up does
def check(
    recipe,
    ds_path,
    *,
    world_size: int,
    out: Path | None = None,
    resume: str | None = None,
    overwrite: bool = False,
) -> str:
    """The report text; writes lr_schedule.csv/png into `out` (default: `plot_dir` of the recipe's output_dir).
    `resume`, `overwrite`: as `llmasr train` is given them (the run directory section)."""
    tc = need_recipe(recipe, "llmasr.train.check.check").train
    resolved = resolve_ds(ds_path, tc, world_size=world_size)
    ds = resolved.config
    check_nvme_offload(ds, resolved.source)  # on this machine, as train's start-up checks it on each node
    check_quantizer(ds, resolved.source)
    check_run_settings(recipe)
    notes = check_start_folder(recipe.model)  # what the model sees, against the folder it starts from (allowed)
    notes += start_notes(recipe.model)
    check_fused_kernels(recipe.model.llm, zero_stage=zero_stage(ds))  # the device is training's to check
    folder = run_folder(recipe, resume=resume, overwrite=overwrite)
    # the same arithmetic `llmasr train` logs; a resume's stop is counted from its checkpoint (resumed_total)
    with warnings.catch_warnings():  # check starts no worker: their count is for the machine that trains
        warnings.filterwarnings("ignore", WORKERS_WARNING, UserWarning)
        plan = plan_run(recipe, ds, rank=0, world_size=world_size, resuming=folder.resume is not None)
    train_loader, sampler, valid_loader = plan.loaders
    k, per_epoch = plan.grad_accum, plan.per_epoch
    model = build_model(recipe.model, weights="shapes")  # exact counts; the pretrained files' shapes checked
    longest = check_context_fit(model, recipe, plan.loaders, report=True)
    unaligned = ctc_frames_warnings(model, recipe, plan.loaders)
    groups = build_param_groups(model, recipe.optim)
    names = [g["name"] for g in groups]
    counts = param_counts(model)
    stage = zero_stage(ds)
    space = _checkpoint_lines(tc, ds, counts, plan)  # where train checks it: before loading a resume
    start, total, stop, course = run_start(
        recipe, model, plan, folder, stage=stage, world_size=world_size, overwrite=overwrite
    )
    curves = _lr_rows(recipe, groups, course, total)
    lines = [
        "batch arithmetic",
        f"  micro batch per rank (nominal, batches are dynamic): {ds['train_micro_batch_size_per_gpu']}",
        f"  gradient accumulation: {k}",
        f"  world size: {world_size}",
        f"  train_batch_size: {ds['train_batch_size']}",
        *_data_lines(train_loader.dataset.manifest, sampler, per_epoch, valid_loader, course.epoch),
        *(f"  warning: {w}" for w in unaligned),
        *sequence_lines(model, recipe, longest),
        "updates",
        f"  {plan.update_line(resumed=total)}",
        "parameters",
        f"  total {counts['total']:,}; trainable {counts['trainable']:,}; largest layer {counts['largest_layer']:,}",
    ]
    for branch, (n, t, lora, layers) in counts["branches"].items():
        # under LoRA, the base's own share says what freeze: false or lora.bias adds to the adapters
        split = f": {lora:,} in LoRA adapters on {layers} linear layers, {t - lora:,} of the branch's own"
        split = split if lora else ""
        lines.append(f"  {branch}: {n:,} ({t:,} trainable{split})")
    lines += _weights_lines(recipe.model)
    lines += chunk_lines(model, frozen="encoder" in model.frozen_branches())
    lines += prompt_lines(model, recipe.model)
    lines += language_query_lines(recipe, plan.loaders)
    if train_loader.own_prompts:  # what "trained on" above is not, for those lines
        lines.append(f"  {own_prompts_text(train_loader.dataset.manifest, train_loader.own_prompts)}")
    decoding = _vad_lines(recipe.decode, model.frontend.sample_rate) + _decode_lines(recipe, model, valid_loader)
    if recipe.decode.ctc_gate:  # validation too: early on, a head that hears nothing empties every utterance
        decoding.append("  decode.ctc_gate: validation and decoding leave empty what the CTC head hears no word in "
                        "(train.log's valid line counts it: ctc_gated)")  # fmt: skip
    lines += (["decoding"] if decoding and decoding[0] != "decoding" else []) + decoding
    lines += ["param groups", *("  " + row for row in describe_param_groups(groups).splitlines())]
    lines.append("learning rate at key updates")
    width = max(len(n) for n in names)
    points = key_updates(recipe.optim, names, total, stop, course.done)
    lines += [] if points else ["  none: the run has nothing left to train"]
    for label, u in points:
        lines.append(f"  update {u + 1} ({label}):")  # numbered from 1, as train.log does
        lines += [f"    {n:<{width}}  {curves[n][u]:.4e}" for n in names]
    lines += [f"  warning: {w}" for w in optim_warnings(model, recipe.optim, groups, total)]
    lines += [f"  warning: {w}" for w in notes]  # allowed differences from the folder the recipe starts from
    lines += early_stop_lines(tc, course, stop, validates=plan.loaders[2] is not None)
    if stop < total:
        lines.append(
            f"  warning: train.max_updates {total} sizes the schedules, but the epochs end after update {stop}: the "
            f"run stops there, {stop / total:.0%} of the way through them (raise train.epochs or lower max_updates)"
        )
    space += best_k_lines(tc, course, stop, validates=plan.loaders[2] is not None)  # which saves best.json ranks
    lines += start + space + ds_lines(resolved, world_size) + _memory_lines(ds, tc, counts, world_size)
    if problem := precision_problem(tc.precision):  # passed: the recipe is checked for the cluster it runs on
        device = "no CUDA device" if not torch.cuda.is_available() else "its accelerator"
        lines.append(f"note: on this machine `llmasr train` would refuse {tc.precision} ({device}): {problem}")
    out = Path(out) if out is not None else plot_dir(Path(tc.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    write_lr_csv(out / "lr_schedule.csv", curves)
    plot_lr(curves, out / "lr_schedule.png")
    lines.append(f"wrote {out / 'lr_schedule.csv'} and {out / 'lr_schedule.png'}")
    return "\n".join(lines)
