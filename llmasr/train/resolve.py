"""Everything a run needs that does not require model weights: the frontend, the prompt builder and CTC tokenizer
the data side uses, the data loaders and their exact batch counts, the seeds. llmasr.train.plan puts them together
into the run plan that `llmasr train` and `llmasr check` share.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmasr.config_io import ConfigError, UnsetError, to_dict
from llmasr.config_paths import not_found
from llmasr.data.frontend import FrontendConfig
from llmasr.data.item_filters import counts_text
from llmasr.data.manifest import manifest_file_problem
from llmasr.models.attention_kernels import choose_attention_kernels
from llmasr.models.config import ModelConfig
from llmasr.models.encoder_spec import encoder_frontend
from llmasr.train.check_languages import query_warnings

log = logging.getLogger("llmasr.train")

# How to name the manifests: a recipe written without them (`llmasr convert funasr`'s) takes them on the command line.
GIVE_TRAIN = ("name them on the command line after the recipe, data.train=[data/train.jsonl] (several: "
              "data.train=[a.jsonl,b.jsonl]), or in the recipe's data.train")  # fmt: skip
GIVE_VALID = "give one on the command line, data.valid=[data/dev.jsonl], or in the recipe's data.valid"


def no_train_manifest() -> UnsetError:
    return UnsetError(f"data.train: no training manifest given; {GIVE_TRAIN}")


def check_run_settings(recipe) -> None:
    """Cross-section checks of the train section that the typed config cannot make on its own."""
    tc = recipe.train
    if not recipe.data.train:
        raise no_train_manifest()
    if tc.valid_every_updates and not recipe.data.valid:
        raise ConfigError(
            f"train.valid_every_updates is set but data.valid names no manifest; {GIVE_VALID} (or validate never: "
            "train.valid_every_updates=0 train.best_k=0)"
        )
    if tc.patience and not recipe.data.valid:
        raise ConfigError(
            f"train.patience: {tc.patience} counts validations, but data.valid names no manifest; {GIVE_VALID}"
        )
    if tc.best_metric == "wer" and tc.best_k and not recipe.data.valid:
        raise ConfigError(
            f"train.best_metric is wer but data.valid names no manifest to compute it on; {GIVE_VALID} (or rank no "
            "checkpoints by it: train.best_k=0)"
        )
    llm = recipe.model.llm
    # the base weights trained: all of them, or the biases LoRA trains (lora.bias all / lora_only)
    trained = "model.llm.freeze false" if not llm.freeze else None
    if trained is None and llm.lora is not None and llm.lora.bias != "none":
        trained = f"model.llm.lora.bias {llm.lora.bias}"
    if llm.dtype != "float32" and trained and tc.precision == "fp32":
        # fp32 precision keeps each weight in its own dtype, and the optimizer steps those weights directly
        bf16 = llm.dtype == "bfloat16"
        raise ConfigError(
            f"model.llm.dtype: {llm.dtype} with {trained} and train.precision fp32 trains the LLM's "
            f"{llm.dtype} weights with no fp32 master copy, so an update below {'1/256' if bf16 else '1/2048'} of a "
            f"weight rounds away; set train.precision {'bf16' if bf16 else 'fp16'} (DeepSpeed keeps fp32 master "
            "weights), model.llm.dtype float32, or freeze the LLM"
        )
    check_llm_dtype(recipe.model, tc.precision)


# train.precision -> the model.llm.dtype DeepSpeed casts the whole model to (fp32 keeps each weight's own dtype)
_HALF = {"bf16": "bfloat16", "fp16": "float16"}


def check_llm_dtype(model, precision: str) -> None:
    """model.llm.dtype that disagrees with train.precision where the run would not train what the recipe says:
    - a 16-bit dtype other than the precision's: DeepSpeed casts the loaded weights once more, so they reach
      training rounded twice (float16 also turns what passes 65504 into inf and flushes the smallest weights);
    - float16 under fp32 precision with anything trained: the LLM's backward runs in float16 with no loss scale
      (only train.precision fp16 scales the loss), so the gradients it hands to LoRA, the adaptor and the encoder
      underflow. bfloat16 has float32's range and no such loss."""
    llm, half = model.llm, _HALF.get(precision)
    if half is not None and llm.dtype not in ("float32", half):
        raise ConfigError(
            f"model.llm.dtype: {llm.dtype} with train.precision {precision}: DeepSpeed trains every weight in "
            f"{half}, so the LLM's weights would be rounded to {llm.dtype} as they load and again to {half}; set "
            f"model.llm.dtype {half} (or float32)"
        )
    if precision != "fp32" or llm.dtype != "float16":
        return
    trained = {
        "model.llm.lora": llm.lora is not None,
        "model.llm.freeze false": not llm.freeze,
        "model.adaptor.freeze false": not model.adaptor.freeze,
        "model.encoder.freeze false": not model.encoder.freeze,
        "model.encoder.lora": model.encoder.lora is not None,
    }
    through = [key for key, trains in trained.items() if trains]
    if through:
        raise ConfigError(
            f"model.llm.dtype: float16 with train.precision fp32 runs the LLM's backward in float16 with no loss "
            f"scale, so the small gradients it passes on ({', '.join(through)}) underflow; set model.llm.dtype "
            "bfloat16 (float32's range at the same memory) or float32, or train.precision fp16 (a loss scaler)"
        )


@dataclass
class TextSide:
    frontend: FrontendConfig
    prompt: object  # llmasr.models.prompt.PromptBuilder
    ctc_tokenizer: object | None
    tokenizer: object


def text_side(model_cfg: ModelConfig) -> TextSide:
    """Frontend, prompt builder and CTC tokenizer, built as llmasr.models.builder builds them, without weights."""
    from llmasr.models.builder import build_prompt
    from llmasr.models.llm import check_llm_dir, warn_remote_code
    from llmasr.models.tokenizer import load_tokenizer, tokenizer_dir

    llm = model_cfg.llm
    path = check_llm_dir(llm.path, tokenizer=tokenizer_dir(llm.path, llm.tokenizer, llm.adapter))
    if llm.trust_remote_code:
        warn_remote_code(path, "model.llm.trust_remote_code")
    # the tokenizer the model is built with (model.llm.tokenizer, an adapter's own): it had been the LLM folder's
    tokenizer = load_tokenizer(tokenizer_dir(path, llm.tokenizer, llm.adapter), trust_remote_code=llm.trust_remote_code)
    prompt = build_prompt(model_cfg, tokenizer)
    ctc = None
    if model_cfg.ctc.weight > 0:
        from llmasr.models.ctc import build_ctc_tokenizer

        ctc = build_ctc_tokenizer(model_cfg.ctc, tokenizer, prompt.answer_lead)
    return TextSide(encoder_frontend(model_cfg.encoder), prompt, ctc, tokenizer)


def check_model_frontend(model, expected: FrontendConfig) -> None:
    if model.frontend != expected:
        a, b = to_dict(model.frontend), to_dict(expected)
        diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        raise ConfigError(f"the encoder's frontend differs from the one the data was prepared for: {diff}")


def check_manifests_there(data) -> None:
    """A data.train or data.valid manifest that is not there, named by its key (located adds the override or the
    recipe line that gave it) before any is opened."""
    for key, specs in (("data.train", data.train), ("data.valid", data.valid or [])):
        for i, spec in enumerate(specs):
            path = Path(spec.path)
            if not path.exists():
                raise ConfigError(not_found(f"{key}[{i}]", "manifest", path))
            if why := manifest_file_problem(path):  # a directory (a Kaldi data folder named so), a pipe
                raise ConfigError(f"{key}[{i}]: {path}: {why}")


def build_loaders(recipe, side: TextSide, *, rank: int, world_size: int, device=None, window: int | None = None,
                  share=None, say_mix: bool = True):  # fmt: skip
    """(train loader, train sampler, valid loader or None); `device`: the model's (data.features_on auto).
    `window`: the micro batches of an update (the resolved DeepSpeed config's; default train.grad_accum or 1).
    `share`: the ranks of a node split the manifests' start-up screen and the hotword sampler's pass over the
    training texts (llmasr.data.screen_share.ScreenShare). `say_mix`: build_dataloader's (a resume says its epoch's
    mix once it has loaded it)."""
    from llmasr.data.loader import build_dataloader

    data = recipe.data
    if not data.train:
        raise no_train_manifest()
    check_manifests_there(data)
    common = dict(
        prompt_builder=side.prompt, ctc_tokenizer=side.ctc_tokenizer, rank=rank, world_size=world_size, device=device,
        share=share, llm_rows=llm_rows(recipe.model, data, side),
    )  # fmt: skip
    train_loader, sampler = build_dataloader(
        data,
        data.train,
        side.frontend,
        train=True,
        window=window or recipe.train.grad_accum or 1,
        say_mix=say_mix,
        **common,
    )
    if len(sampler) == 0:
        dropped = sampler.stats(sampler.epoch)["dropped_batches"]
        why = (
            f"data.batching.drop_last left out all {dropped} batch(es), fewer than the ranks: set it false, or "
            "train on fewer ranks"
            if dropped
            else f"every item filtered? {counts_text(sampler.filtered)}"
        )
        raise ConfigError(f"data.train: no batch for rank {rank} of {world_size} ({why})")
    valid_loader = None
    if data.valid:
        valid_loader, valid_sampler = build_dataloader(
            data, data.valid, side.frontend, train=False, trim_leading_silence=recipe.decode.trim_leading_silence,
            **common,
        )  # fmt: skip
        if len(valid_sampler) == 0:  # its metrics would be those of nothing: a loss of 0 ranked best
            raise ConfigError(
                f"data.valid: no batch for rank {rank} of {world_size} (every item filtered? "
                f"{counts_text(valid_sampler.filtered)})"
            )
    loaders = train_loader, sampler, valid_loader
    for said in query_warnings(recipe, loaders) if rank == 0 else ():  # lines a per-line SenseVoice asks "auto" of
        log.warning("%s", said)
    return loaders


def llm_rows(model_cfg: ModelConfig, data_cfg, side: TextSide):
    """What counts each line's LLM positions for data.batching.max_llm_tokens (build_dataloader's `llm_rows`): the
    model's audio side built on the meta device (builder.audio_side) and the prompt; None when the budget is off."""
    if data_cfg.batching.max_llm_tokens is None:
        return None
    from llmasr.models.builder import audio_side
    from llmasr.train.line_positions import LineRows

    audio = audio_side(model_cfg)
    return lambda train, hotword_sampler: LineRows.of(audio, side.prompt, data_cfg, hotword_sampler, train=train)


def batches_per_epoch(sampler, epochs: int) -> list[int]:
    """Batches this rank runs in each epoch (equal on all ranks), from each epoch's own plan: the greedy cut of each
    epoch's shuffled windows can give a batch more or less, and weighted mixing draws each epoch's items."""
    current = sampler.epoch
    counts = [int(sampler.stats(e)["num_batches_per_rank"]) for e in range(epochs)]
    sampler.set_epoch(current)
    return counts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


CUBLAS_WORKSPACE = ":4096:8"  # one of the two settings torch's deterministic mode accepts on CUDA


def deterministic_algorithms() -> None:
    """torch's deterministic algorithms (train.deterministic), with the cuBLAS workspace setting they need on CUDA
    (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS first runs, so before the model is built): without it the first
    cuBLAS matmul on a GPU raises instead of training. A value the user exported is kept."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)


def process_settings(tc) -> None:
    """The process-wide torch settings the train section asks for, set before the model is built: deterministic
    algorithms (train.deterministic) and the attention kernels (train.cudnn_attention)."""
    if tc.deterministic:
        deterministic_algorithms()
    choose_attention_kernels(cudnn=tc.cudnn_attention)


def rng_state(device: torch.device) -> dict:
    """RNG states in plain types (numpy arrays as lists) so that they survive torch.load(weights_only=True); the
    CUDA generator's of `device` when the rank runs on one (a torch.cuda call on a CPU rank would create a CUDA
    context there)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what rng_state saved; the CUDA generator's only on a rank that runs on CUDA, as it saved it."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
