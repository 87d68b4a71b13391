"""Resume at another world size or ZeRO stage through DeepSpeed's universal checkpoint.

A ZeRO-1/2/3 checkpoint holds one flat partition of the fp32 weights and Adam moments per rank, cut for the world
size that saved it, and DeepSpeed refuses to load it at another (engine._load_zero_checkpoint). Its universal
format holds every trainable tensor's fp32 weight and moments whole, one folder per parameter, and loads at any
world size. Resuming a checkpoint saved by W0 ranks at W ranks therefore:

1. converts it once, on rank 0 while the others wait, with deepspeed.checkpoint.ds_to_universal into the sibling
   folder <tag>_universal (written under a temporary name and renamed when complete; a marker file records the
   source files' sizes and times, so a later resume reuses it and a changed source is converted again). Where the
   checkpoint's folder is not writable the copy goes to this run's checkpoints folder.
2. loads it with DeepSpeed's universal path (`load_universal_checkpoint`, read by the engine only while loading),
3. puts back what that path overwrites: DeepSpeed copies each saved param group's hyperparameters onto the group at
   the same position (at ZeRO-3 group 0's onto every group, names included), so the groups' own settings are
   restored and the scheduler writes the lrs again; and at ZeRO-3 it shares one Adam step tensor among all groups
   (`unshare_steps`).

Step 1 also rewrites the copy so that every ZeRO stage 1-3 loads it (llmasr.train.universal_stages): a resume at
another stage goes the same way, at the same or another world size. ZeRO-0 keeps no partitions (the optimizer
state is saved whole with the module): it loads at any world size as it is, and at no other stage. The position in
the interrupted epoch is carried by the sampler (llmasr.data.regroup); `resized_total` counts the updates the run
holds at the new world size, which the schedules are then sized by.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
from argparse import Namespace
from pathlib import Path

from llmasr.data.batch_cut import unverified
from llmasr.errors import free_bytes
from llmasr.run_dir import UNIVERSAL_SUFFIX
from llmasr.safe_load import weights_only_torch_load
from llmasr.train import universal_stages
from llmasr.train.checkpoint_space import size_text
from llmasr.train.ds_files import OPTIM_STATES, STATE_FILES

log = logging.getLogger("llmasr.train")

MARKER = "llmasr_universal.json"
STAGE0_TAG = "zero0"  # inside a copy: the ZeRO-0 checkpoint a ZeRO-0 run loads (it reads no universal one)
LAYOUT = "any_stage"  # the marker's "layout": a copy every stage 1-3 loads (an older llmasr's copy is made again)


def needs_conversion(saved_world: int, world: int, stage: int, saved_stage: int | None = None) -> bool:
    """Whether a checkpoint saved by `saved_world` ranks at ZeRO `saved_stage` loads through a universal copy at
    `world` ranks and ZeRO `stage`: another stage, or another world size under ZeRO partitions."""
    return (saved_world != world and stage > 0) or (saved_stage is not None and saved_stage != stage)


def source_files(src: Path) -> dict[str, list[int]]:
    files = sorted(f for pattern in STATE_FILES for f in src.glob(pattern))
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}


def cached_copy(src: Path, dst: Path) -> bool:
    """Whether `dst` is a complete conversion of `src` as it is now."""
    marker = dst / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return recorded.get("files") == source_files(src) and recorded.get("layout") == LAYOUT


def universal_dir(load_dir: Path, tag: str, fallback_dir: Path, writable: bool = False) -> Path:
    """Where the converted copy of load_dir/tag lives: beside it, or in `fallback_dir` where load_dir is read-only
    (also where a copy beside it is, if the copy must be `writable`: a ZeRO-0 run writes its checkpoint into it)."""
    beside = load_dir / f"{tag}{UNIVERSAL_SUFFIX}"
    if cached_copy(load_dir / tag, beside) and (not writable or os.access(beside, os.W_OK)):
        return beside
    if os.access(load_dir, os.W_OK):
        return beside
    return fallback_dir / f"{tag}{UNIVERSAL_SUFFIX}"


def convert(src: Path, dst: Path, stage0_trainable: list[str] | None = None) -> None:
    """ds_to_universal from checkpoint folder `src` into `dst`, atomically (a partial copy never has dst's name); a
    ZeRO-0 checkpoint (its meta's `stage0_trainable` names given) is written by llmasr's own from_stage0."""
    from deepspeed.checkpoint import ds_to_universal

    files = source_files(src)
    if stage0_trainable is None and not any(Path(name).match(OPTIM_STATES) for name in files):
        raise FileNotFoundError(f"{src}: no {OPTIM_STATES} files; not a complete ZeRO checkpoint")
    dst.parent.mkdir(parents=True, exist_ok=True)
    _check_room(src, dst, files)
    for stale in dst.parent.glob(f".{dst.name}.tmp*"):  # left by a conversion that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    if stage0_trainable is not None:
        _finish(src, tmp, dst, files, lambda: universal_stages.from_stage0(src, tmp, stage0_trainable))
        return
    args = Namespace(input_folder=str(src), output_folder=str(tmp), num_extract_workers=1, num_merge_workers=1,
                     keep_temp_folder=False, strict=True, inject_missing_state=True)  # fmt: skip
    out = io.StringIO()
    try:
        # ds_to_universal unpickles with weights_only=False: read the (untrusted) files weights-only, as export does
        with weights_only_torch_load(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            ds_to_universal.main(args)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = out.getvalue()[-2000:]
        raise RuntimeError(f"converting {src} to a universal checkpoint failed: {err!r}\n{detail}") from err
    finally:
        _drop_latest_pointer(tmp)
    _finish(src, tmp, dst, files, lambda: universal_stages.any_stage(tmp))


def _finish(src: Path, tmp: Path, dst: Path, files: dict, write) -> None:
    """Run `write` (which leaves in `tmp` a copy every stage 1-3 loads), mark the copy complete and give it dst's
    name; on failure nothing is left."""
    try:
        write()
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"converting {src} to a universal checkpoint failed: {err!r}") from err
    marker = {"source": str(src.resolve()), "files": files, "layout": LAYOUT}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _check_room(src: Path, dst: Path, files: dict[str, list[int]]) -> None:
    """OSError naming both sizes where dst's folder cannot hold the conversion: the copy holds the model states file
    and the optimizer partitions' fp32 weights and moments whole, and ds_to_universal extracts those once more on
    the way (deleted when the merge is done); a conversion that ran out of space would fail in DeepSpeed's workers."""
    optim = sum(size for name, (size, _) in files.items() if Path(name).match(OPTIM_STATES))
    need = sum(size for size, _ in files.values()) + optim
    free = free_bytes(dst.parent)
    if free is not None and free < need:
        raise OSError(
            f"{dst.parent}: {size_text(free)} free, and converting {src} for another world size writes about "
            f"{size_text(need)} there (its model states and optimizer partitions whole, and DeepSpeed's extraction "
            "of the partitions on the way). Free space there, or resume at the world size that saved it"
        )


def _drop_latest_pointer(out_dir: Path) -> None:
    # ds_to_universal writes `latest_universal` (naming its output folder) beside that folder; we load by tag.
    pointer = out_dir.parent / "latest_universal"
    if pointer.is_file() and pointer.read_text(encoding="utf-8").strip() == out_dir.name:
        pointer.unlink()


def prepare(load_dir: Path, tag: str, fallback_dir: Path, rank: int, meta=None, engine=None) -> tuple[Path, str]:
    """Rank 0 converts load_dir/tag (its CheckpointMeta `meta`) unless a complete copy exists; every rank returns
    (load_dir, tag) of the copy, or raises rank 0's error. For a ZeRO-0 TrainEngine `engine` that is the ZeRO-0
    checkpoint written inside the copy for its optimizer."""
    from llmasr.train.process_group import broadcast_object

    dst = error = None
    if rank == 0:  # rank 0 decides where: other ranks may see other permissions
        dst = universal_dir(load_dir, tag, fallback_dir, writable=engine is not None and engine.stage == 0)
        try:
            if cached_copy(load_dir / tag, dst):
                log.info("resume: using the universal checkpoint %s", dst)
            else:
                log.info("resume: converting %s to a universal checkpoint in %s", load_dir / tag, dst)
                convert(load_dir / tag, dst, meta.trainable if meta is not None and meta.zero_stage == 0 else None)
            if engine is not None and engine.stage == 0:
                _write_stage0(dst, engine)
        except (OSError, RuntimeError) as err:
            error = str(err)
    dst, error = broadcast_object((dst, error))
    if error is not None:
        raise RuntimeError(error)
    return (dst, STAGE0_TAG) if engine is not None and engine.stage == 0 else (dst.parent, dst.name)


def _write_stage0(copy: Path, engine) -> None:
    """The ZeRO-0 checkpoint `engine` loads, written into copy/STAGE0_TAG (atomically) from the universal copy."""
    names = {id(p): n for n, p in engine.module.named_parameters()}
    groups = [({k: v for k, v in g.items() if k != "params"}, [names[id(p)] for p in g["params"]])
              for g in engine.optimizer.param_groups]  # fmt: skip
    tmp, out = copy / f".{STAGE0_TAG}.tmp{os.getpid()}", copy / STAGE0_TAG
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        universal_stages.to_stage0(copy, tmp, groups)
    except (ValueError, KeyError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"writing the ZeRO-0 checkpoint of {copy} failed: {err!r}") from err
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def load_converted(engine, load_dir: Path, tag: str, fallback_dir: Path, rank: int, meta) -> dict:
    """Resume a TrainEngine from checkpoint load_dir/tag (its CheckpointMeta `meta`) through its converted copy
    (`prepare`, then `load`); returns the client state."""
    return load(engine, *prepare(load_dir, tag, fallback_dir, rank, meta, engine), saved_stage=meta.zero_stage)


def load(engine, load_dir: Path, tag: str, saved_stage: int | None = None) -> dict:
    """Load a universal checkpoint (of a checkpoint saved at ZeRO `saved_stage`) into a TrainEngine; returns its
    client state."""
    from deepspeed.utils import logger as ds_logger

    if saved_stage is not None and saved_stage != engine.stage:
        log.info("resume at ZeRO stage %d from a checkpoint saved at stage %d: its weights, Adam moments and step "
                 "are converted", engine.stage, saved_stage)  # fmt: skip

    ds_engine = engine.engine
    groups = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    level = ds_logger.level
    ds_logger.setLevel(logging.ERROR)  # "MPU is not provided" once per param group: there is no tensor parallelism
    ds_engine._config.load_universal_checkpoint = engine.stage > 0  # ZeRO-0 loads prepare's ZeRO-0 checkpoint
    try:
        with weights_only_torch_load():
            client = engine.load(str(load_dir), tag)
    finally:
        ds_engine._config.load_universal_checkpoint = False
        ds_logger.setLevel(level)
    for group, saved in zip(engine.optimizer.param_groups, groups):
        group.update(saved)
    engine.scheduler._apply()
    unshare_steps(engine.optimizer)
    return client


def unshare_steps(ds_optimizer) -> None:
    """Give every parameter's optimizer state its own `step` tensor. DeepSpeed's ZeRO-3 universal load stores one
    tensor in every sub-group's state (runtime/zero/stage3.py, load_hp_checkpoint_state_from_checkpoint_dir_stage3),
    and torch's Adam increments its step tensors in place: each update would then advance the shared count once per
    sub-group, and every group after the first would use the wrong bias correction."""
    import torch

    inner = getattr(ds_optimizer, "optimizer", ds_optimizer)
    for state in inner.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            state["step"] = step.clone()


def older_saves(recipe, loader_state: dict | None) -> list[str]:
    """What a resume of a checkpoint an older llmasr saved mid-epoch (its `loader_state`) cannot continue as that
    llmasr would have: batches it kept no hash of, biasing lists it drew from another sample."""
    return [n for n in (unverified(loader_state), recipe.data.hotwords.redrawn(loader_state)) if n]


def describe_resize(saved_world: int, world: int, epoch: int, loader_state: dict | None, left: int) -> str:
    """The log line that says where a resume at another world size continues."""
    from llmasr.data.regroup import keeps_order

    head = f"resume at {world} rank(s) from a checkpoint of {saved_world}:"
    if loader_state is None:
        return f"{head} epoch {epoch} starts afresh"
    steps = loader_state["sampler"]["batches_yielded"]
    how = (
        f"in the order the {saved_world}-rank run had planned"
        if keeps_order(saved_world, world)
        else "dealt afresh (this world size does not divide the old one)"
    )
    return (
        f"{head} epoch {epoch} was {steps} steps in; its untrained batches follow, {left} per rank, {how}; "
        "data.max_bad_fraction counts their bad data afresh (the ranks' counts so far were made on other shares)"
    )


def global_batch_change(saved_ds: dict, ds: dict, world: int) -> str | None:
    """The warning of a resume whose global batch per update changes with the world size, with the grad_accum that
    keeps it (train.log, `llmasr check`); None where it stays."""
    old, new = saved_ds.get("train_batch_size"), ds["train_batch_size"]
    if old is None or old == new:
        return None
    micro = ds["train_micro_batch_size_per_gpu"]
    keep, rest = divmod(int(old), micro * world)
    hint = f"train.grad_accum={keep} keeps it" if keep and not rest else f"no grad_accum keeps it at {world} rank(s)"
    return (
        f"resume: the global batch changes from {old} to {new} micro batches per update ({hint}); the loss curve "
        "will differ from an uninterrupted run"
    )


def batches_left(per_epoch: list[int], epoch: int, loader_state: dict | None, resharded: int | None = None) -> int:
    """Batches per rank a resume has left in `epoch`: all of it without a loader position (saved at an epoch's end);
    else what the saved position leaves in the pass it was saved in (after an earlier resize that pass is the
    epoch's remainder, not the whole epoch), or, at another world size, `resharded` (the length of the sampler
    that loaded the position). An epoch the run no longer has (train.epochs lowered) has none left."""
    if epoch >= len(per_epoch):
        return 0
    if loader_state is None:
        return per_epoch[epoch]
    if resharded is not None:
        return resharded
    sampler = loader_state["sampler"]
    return max(0, int(sampler.get("num_batches", per_epoch[epoch])) - int(sampler["batches_yielded"]))


def nothing_left(done: int, total: int) -> str | None:
    """What a run resumed after `done` updates says when its `total` holds no more (train.log, `llmasr check`)."""
    if done < total:
        return None
    return (
        f"nothing to train: the run is at update {done} of {total} (raise train.epochs or train.max_updates to train "
        "on)"
    )


def short_of_max_updates(done: int, held: int, max_updates: int | None) -> str | None:
    """The warning of a run resumed after `done` updates whose train.max_updates sizes the schedules past the `held`
    updates its epochs now hold (resized_total without max_updates): the run stops at `held` with its lr short of
    the schedules' end. None where max_updates is reached."""
    if max_updates is None or held >= max_updates:
        return None
    return (
        f"train.max_updates={max_updates} sizes the schedules, but resumed at update {done} the epochs end after "
        f"update {held}: the run stops there, {held / max_updates:.0%} of the way through them (raise train.epochs "
        "or lower max_updates)"
    )


def resumed_counts(done: int, epoch: int, first_epoch_batches: int, per_epoch: list[int], k: int, max_updates):
    """(the updates the schedules of a resumed run are sized by, resized_total; the update its epochs end after,
    which is where it stops when train.max_updates is more): `llmasr check` and the trainer count a resume alike."""
    counted = (done, epoch, first_epoch_batches, per_epoch, k)
    return resized_total(*counted, max_updates), resized_total(*counted, None)


def resized_total(done: int, epoch: int, first_epoch_batches: int, per_epoch: list[int], k: int, max_updates):
    """Updates of a run resumed after `done` updates, in `epoch` with `first_epoch_batches` batches left per rank,
    at the world size `per_epoch` (batches per rank of each full epoch) was counted for."""
    if max_updates is not None:
        return int(max_updates)
    rest = sum(math.ceil(n / k) for n in per_epoch[epoch + 1 :])
    return done + math.ceil(first_epoch_batches / k) + rest
