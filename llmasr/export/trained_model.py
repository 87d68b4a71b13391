"""Rebuilding the trained SpeechLLM of a checkpoint, offline on the CPU (used by `llmasr export` and `llmasr decode
--checkpoint`).

Checkpoints hold only the trained tensors; everything else is rebuilt from the run's recipe: the pretrained base
weights are read again from the recipe's paths (refused when their fingerprints changed), and the trained tensors are
then loaded strictly. A branch built with fresh random weights (no pretrained source) can only be rebuilt when all
of its parameters were trained: frozen random weights are in no file, so such a checkpoint is refused.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from llmasr.export.lora_average import average_lora
from llmasr.run_dir import (
    META,
    RECIPE_FILE,
    CheckpointError,
    CheckpointMeta,
    CheckpointPolicy,
    read_meta,
    resolve_checkpoint,
    select_tags,
)
from llmasr.scoring import plural
from llmasr.train.ds_files import read_trained_state

log = logging.getLogger(__name__)


def _check_fingerprint(meta: CheckpointMeta, recipe, where: str) -> None:
    from llmasr.models.fingerprint import base_fingerprint, fingerprint_differences

    diffs = fingerprint_differences(meta.base_fingerprint, base_fingerprint(recipe.model), now=recipe.model)
    if diffs:
        raise CheckpointError(
            f"{where}: the base model changed since this checkpoint was trained; LoRA and the other trained tensors "
            "only make sense on the exact base weights they were trained on. Differences:\n  "
            + "\n  ".join(diffs)
            + "\nPoint the recipe's model paths (RUN_DIR/recipe.yaml) at the original directories."
        )


def _mismatches(params: dict, aliases: dict, buffers: dict, state: dict, wanted: list[str]) -> list[str]:
    """One line per way `state` does not fit the rebuilt model (see load_trained)."""
    lines = []
    wanted_set = set(wanted)
    for n in wanted:
        if n not in params:
            lines.append(f"  trainable in the checkpoint but not a parameter of the rebuilt model: {n}")
        elif n not in state:
            lines.append(f"  missing from checkpoint: {n} (model shape {list(params[n].shape)})")
        elif tuple(state[n].shape) != tuple(params[n].shape):
            lines.append(f"  shape mismatch: {n}: checkpoint {list(state[n].shape)} vs model {list(params[n].shape)}")
    for k, v in state.items():
        if k in wanted_set:
            continue
        if k in aliases and aliases[k] in wanted_set:
            continue
        if k in aliases and aliases[k] != k:
            # Second name of a frozen shared tensor (tied embeddings: lm_head.weight). A ZeRO-0 save drops frozen
            # parameters by their first name only, so the alias comes along; it holds the base weight the model
            # was just rebuilt with (fingerprint-checked), in the training dtype. Nothing to load.
            if tuple(v.shape) != tuple(params[aliases[k]].shape):
                lines.append(
                    f"  shape mismatch: {k}: checkpoint {list(v.shape)} vs model {list(params[aliases[k]].shape)}"
                )
            continue
        if k in buffers:
            if tuple(v.shape) != tuple(buffers[k].shape):
                lines.append(
                    f"  shape mismatch: buffer {k}: checkpoint {list(v.shape)} vs model {list(buffers[k].shape)}"
                )
            continue
        if k in aliases:
            lines.append(
                f"  unexpected in checkpoint: {k} (a parameter the checkpoint's meta does not list as trained)"
            )
        else:
            lines.append(f"  unexpected in checkpoint: {k} {list(v.shape)} (no such parameter or buffer in the model)")
    model_trainable = {n for n, p in params.items() if p.requires_grad}
    for n in sorted(model_trainable - wanted_set):
        lines.append(f"  trainable in the rebuilt model but not in the checkpoint: {n}")
    return lines


def load_trained(model: nn.Module, state: dict[str, torch.Tensor], trainable: list[str], *, source: str) -> None:
    """Copy the trained tensors into the rebuilt model, strictly.

    Every name in `trainable` (the meta's list) must be a parameter of the model and present in `state` with the
    same shape; `state` may hold nothing else except persistent buffers of the model (loaded too) and second names
    of a shared parameter (tied weights; not loaded). The rebuilt model must have exactly those parameters trainable.
    """
    params = dict(model.named_parameters())
    aliases: dict[str, str] = {}  # every name of a shared parameter -> its first (named_parameters) name
    first_name = {id(p): n for n, p in params.items()}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases[name] = first_name[id(p)]
    buffers = {k: v for k, v in model.state_dict().items() if k not in aliases}
    wanted = list(trainable)
    lines = _mismatches(params, aliases, buffers, state, wanted)
    if lines:
        raise CheckpointError(
            f"{source} does not match the model rebuilt from the run's recipe:\n"
            + "\n".join(lines[:50])
            + (f"\n  ... and {len(lines) - 50} more" if len(lines) > 50 else "")
        )
    with torch.no_grad():
        for n in wanted:
            params[n].copy_(state[n].to(params[n].dtype))
        named_buffers = dict(model.named_buffers())
        for k, v in state.items():
            if k in buffers and k in named_buffers:
                named_buffers[k].copy_(v.to(named_buffers[k].dtype))


def average_states(states: list[dict[str, torch.Tensor]], names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Element-wise mean of the floating-point tensors of several checkpoints (in float64, returned as float32).
    LoRA's factors are then replaced by llmasr.export.lora_average (the mean of their products).

    Non-floating tensors (integer buffers) are taken from the last checkpoint. All key sets and shapes must agree.
    """
    if not states:
        raise CheckpointError("nothing to average")
    if len(states) == 1:
        return dict(states[0])
    names = names or [f"checkpoint {i}" for i in range(len(states))]
    keys = set(states[0])
    for name, st in zip(names[1:], states[1:]):
        if set(st) != keys:
            diff = sorted(set(st) ^ keys)[:10]
            raise CheckpointError(f"cannot average: {name} holds different tensors than {names[0]}: {diff}")
    out = {}
    for k in states[0]:
        shapes = {tuple(st[k].shape) for st in states}
        if len(shapes) > 1:
            raise CheckpointError(f"cannot average: {k} has shapes {sorted(shapes)} across checkpoints")
        if states[0][k].is_floating_point():
            acc = torch.zeros(states[0][k].shape, dtype=torch.float64)
            for st in states:
                acc += st[k].double()
            out[k] = (acc / len(states)).float()
        else:
            out[k] = states[-1][k]
    return out


def _seed_dependent(build, names: list[str]) -> list[str]:
    """Those of `names` (parameters of the module `build()` returns) whose initial values depend on the RNG."""
    rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(1)
        first = dict(build().named_parameters())
        torch.manual_seed(2)
        second = dict(build().named_parameters())
    finally:
        torch.random.set_rng_state(rng)
    return [n for n in names if not torch.equal(first[n], second[n])]


def fresh_frozen_parameters(model: nn.Module, cfg, trainable: list[str]) -> dict[str, list[str]]:
    """{recipe key: names} of frozen parameters whose values were drawn at random when the model was built.

    Such tensors are in no file: not in the checkpoint (frozen tensors are excluded) and not in a pretrained
    directory, so a rebuilt model would silently differ from the trained one. Fresh branches: an encoder without
    `path` or `init_from`, an adaptor or CTC head without `init_from`. A frozen tensor with a fixed initial value
    (Whisper's sinusoidal positions) is fine: each fresh branch with frozen tensors is built twice under different
    seeds and only the tensors that differ count.
    """
    from llmasr.models.adaptors import build_adaptor
    from llmasr.models.builder import build_encoder, output_dim
    from llmasr.models.ctc import build_ctc_head
    from llmasr.models.llm import embedding_shape

    branches = []
    if cfg.encoder.path is None and not cfg.encoder.init_from:
        branches.append(("model.encoder", "encoder.", lambda: build_encoder(cfg.encoder)[0]))
    if cfg.adaptor.init_from is None:
        llm_dim = int(embedding_shape(model.llm)[-1])
        branches.append(
            ("model.adaptor", "adaptor.", lambda: build_adaptor(cfg.adaptor, output_dim(model.encoder), llm_dim))
        )
    if model.ctc_head is not None and cfg.ctc.init_from is None:
        vocab = int(model.ctc_tokenizer.vocab_size)
        branches.append(("model.ctc", "ctc_head.", lambda: build_ctc_head(cfg.ctc, output_dim(model.encoder), vocab)))
    wanted = set(trainable)
    out: dict[str, list[str]] = {}
    for key, prefix, build in branches:
        frozen = [n[len(prefix) :] for n, _ in model.named_parameters() if n.startswith(prefix) and n not in wanted]
        random = _seed_dependent(build, frozen) if frozen else []
        if random:
            out[key] = [prefix + n for n in random]
    return out


def _refuse_fresh_frozen(model: nn.Module, cfg, trainable: list[str], source: str) -> None:
    found = fresh_frozen_parameters(model, cfg, trainable)
    if not found:
        return
    lines = []
    for key, names in found.items():
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        lines.append(
            f"  {key}: {len(names)} frozen parameter(s) with random initial values: {', '.join(names[:3])}{more}"
        )
    raise CheckpointError(
        f"{source} cannot be rebuilt: part of the model started from random weights that were never trained, so "
        "they are neither in the checkpoint nor in a pretrained file:\n"
        + "\n".join(lines)
        + "\nTrain such a branch fully (freeze: false, no LoRA on it) or start it from pretrained weights "
        "(encoder `path`, adaptor/ctc `init_from`)."
    )


def _check_remote_code(recipe, recipe_path: Path, trust_remote_code: bool) -> None:
    """The run directory's recipe.yaml cannot switch code execution on by itself: the caller must allow it."""
    if recipe.model.llm.trust_remote_code and not trust_remote_code:
        raise CheckpointError(
            f"{recipe_path}: model.llm.trust_remote_code is true: rebuilding this model imports and runs the Python "
            f"files in {recipe.model.llm.path}. Pass --trust-remote-code (trust_remote_code=True) only if you trust "
            "them"
        )


def run_recipe(run_dir: Path, *, trust_remote_code: bool = False):
    """The run's resolved recipe (RUN_DIR/recipe.yaml), read without building anything."""
    from llmasr.config_io import ConfigError
    from llmasr.recipe import load_recipe

    recipe_path = run_dir / RECIPE_FILE
    if not recipe_path.is_file():
        raise CheckpointError(f"{recipe_path}: missing; the run's resolved recipe is needed to rebuild the model")
    try:
        recipe = load_recipe(recipe_path, saved=True)
    except ConfigError as err:  # named by the file once: a YAML error names it already
        said = str(err)
        raise CheckpointError(said if said.startswith(str(recipe_path)) else f"{recipe_path}: {said}") from err
    _check_remote_code(recipe, recipe_path, trust_remote_code)
    return recipe


def longest_seconds(dirs: list[Path], metas: list[CheckpointMeta], recipe) -> float | None:
    """The longest audio the checkpoints (`dirs`, their `metas`) were trained on, as the metas record it (None:
    unlimited); for a checkpoint saved before llmasr recorded it, from the run's training manifests again."""
    older = [d for d, m in zip(dirs, metas) if m.training is None]
    if older:
        from llmasr.data.skipped_lines import longest_trained

        log.info("%s: no training.longest_seconds in its %s (saved by an older llmasr): reading the training "
                 "manifests (data.train) again for the longest audio trained on", older[0], META)  # fmt: skip
        return longest_trained(recipe.data)
    recorded = [m.training["longest_seconds"] for m in metas]
    return None if None in recorded else max(recorded)


def load_checkpoint_model(
    checkpoint: str | Path,
    *,
    tag: str | None = None,
    average: int = 1,
    average_by: str | None = None,
    trust_remote_code: bool = False,
    say: bool = True,
):
    """(SpeechLLM with the trained tensors loaded, LoRA not merged, float32, eval mode; info dict: the source of an
    export, with its "recipe", "longest_seconds", the longest audio trained on, and "lora_residuals"). `average` N
    checkpoints: the model is their mean; its LoRA adapters the best rank-r part of the mean delta, the rest added
    to the base weights ({module path: relative residual}, llmasr.export.lora_average). `trust_remote_code`: allow a
    run whose recipe loads the LLM's own Python files to do so. `say`: warn of a newer save `latest` does not name
    (False on a decode's ranks but rank 0, which says it once)."""
    from llmasr.models.builder import build_model
    from llmasr.models.lora import building_to_read_trained_weights

    if average < 1:
        raise CheckpointError(f"--average {average}: the number of checkpoints to average must be >= 1")
    ref = resolve_checkpoint(checkpoint, tag)
    if ref.passed_over is not None and say:
        log.warning(
            "%s: %s is complete but its save was cut short before `latest` (which names %s) named it; taking it, the "
            "run's newest checkpoint, which a resume continues (give --tag %s for the other)",
            ref.root, ref.tag, ref.passed_over, ref.passed_over,
        )  # fmt: skip
    if average_by == "best" and (tag is not None or Path(checkpoint).resolve() == ref.path.resolve()):
        raise CheckpointError(  # best.json's ranking picks the checkpoints: the one named would be left out silently
            f"--average-by best takes the best checkpoints of {ref.root / 'best.json'}, not the one named "
            f"({ref.tag}); give the run directory {ref.run_dir}, or leave out --average-by best to export {ref.tag}"
        )
    recipe = run_recipe(ref.run_dir, trust_remote_code=trust_remote_code)
    if average > 1 or average_by == "best":
        kept = CheckpointPolicy(keep_last=recipe.train.keep_last, best_k=recipe.train.best_k)  # why fewer are kept
        tags = select_tags(ref, average, average_by or "last", kept)
        # by last, a best checkpoint kept past rotation can be among them, far older than the rest: named
        log.info("averaging %s (by %s): %s", plural(len(tags), "checkpoint"), average_by or "last", ", ".join(tags))
    else:
        tags = [ref.tag]
    metas = [read_meta(ref.root / t) for t in tags]
    for t, meta in zip(tags, metas):
        _check_fingerprint(meta, recipe, str(ref.root / t))
    trainable = metas[-1].trainable
    for t, meta in zip(tags, metas):
        if meta.trainable != trainable:
            raise CheckpointError(f"cannot average {tags}: {t} trained a different set of parameters")
    states = [read_trained_state(ref.root / t, meta) for t, meta in zip(tags, metas)]
    state = average_states(states, names=tags)

    cfg = copy.deepcopy(recipe.model)
    cfg.llm.dtype = "float32"  # merge in full precision; the export casts afterwards
    cfg.llm.gradient_checkpointing = False
    cfg.encoder.gradient_checkpointing = False
    with building_to_read_trained_weights():
        model = build_model(cfg)
    source = f"checkpoint {ref.root / tags[0]}" + (f" (+{len(tags) - 1} averaged)" if len(tags) > 1 else "")
    _refuse_fresh_frozen(model, cfg, trainable, source)
    load_trained(model, state, trainable, source=source)
    residuals = average_lora(model, states, trainable)  # the mean of the models, not of LoRA's two factors
    model.eval()
    info = {
        "run_dir": str(ref.run_dir.resolve()),
        "tags": tags,
        "updates": [m.update for m in metas],
        "epochs": [m.epoch for m in metas],
        "metrics": [m.metrics for m in metas],
        "zero_stage": [m.zero_stage for m in metas],
        "average": {"n": len(tags), "by": (average_by or "last") if len(tags) > 1 or average_by else None},
        "recipe": recipe,
        "lora_residuals": residuals,
        "longest_seconds": longest_seconds([ref.root / t for t in tags], metas, recipe),
    }
    return model, info
