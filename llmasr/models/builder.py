"""The one builder: a recipe's model section -> encoder, adaptor, LLM, CTC head -> SpeechLLM.

Training, `llmasr check` (on the meta device), export, the exported-model loader (whose llmasr_model.yaml becomes a
model section pointing into the exported directory), decoding and the benchmarks all build through `build_model`;
where the weights come from is its `weights` argument, and the LLM's rotary frequencies are rounded here where
`model.llm.rotary_dtype` says so (llmasr.models.rotary).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmasr.config_io import ConfigError, checked, load_yaml
from llmasr.config_paths import resolve_paths
from llmasr.data.frontend import FrontendConfig
from llmasr.models.adaptors import build_adaptor
from llmasr.models.config import EncoderConfig, ModelConfig
from llmasr.models.context import llm_context
from llmasr.models.ctc import build_ctc_head, build_ctc_tokenizer
from llmasr.models.ctc_config import CTCConfig
from llmasr.models.ds_checkpoint import weights_in
from llmasr.models.encoder_spec import encoder_spec
from llmasr.models.funasr_dir import construct_encoder, load_funasr_encoder
from llmasr.models.funasr_files import missing_weights
from llmasr.models.llm import embedding_shape, load_llm
from llmasr.models.lora import apply_lora
from llmasr.models.model_file import MODEL_FILE
from llmasr.models.prompt import PromptBuilder
from llmasr.models.rotary import round_rotary
from llmasr.models.speech_llm import SpeechLLM
from llmasr.models.state_dict import (
    CheckpointMismatchError,
    load_into,
    read_safetensors,
    torch_load,
    under_prefix,
    unwrap_state_dict,
)
from llmasr.models.whisper import load_whisper_encoder
from llmasr.run_dir.layout import RECIPE_FILE

log = logging.getLogger(__name__)


def build_encoder(
    cfg: EncoderConfig, *, pretrained: bool = True, shapes_only: bool = False
) -> tuple[nn.Module, FrontendConfig]:
    """The encoder (its pretrained weights read when `pretrained`; only their names and shapes, checked, with
    `shapes_only`) and the frontend it expects, frozen, with LoRA and checkpointing as configured."""
    spec = encoder_spec(cfg)
    reinit = {"reinit_keys": cfg.reinit_keys, "frozen_by": "model.encoder.freeze" if cfg.freeze else None}
    if pretrained and cfg.path is not None and cfg.type == "whisper":
        encoder, _ = load_whisper_encoder(cfg.path, conf=cfg.conf, shapes_only=shapes_only, **reinit)
    elif pretrained and cfg.path is not None:
        encoder, _ = load_funasr_encoder(cfg.path, conf_overrides=cfg.conf or None, shapes_only=shapes_only, **reinit)
    else:
        if cfg.path is not None:  # a FunASR directory's architecture, built without its weights
            encoder = construct_encoder(spec.entry, spec.conf, cfg.path, cfg.conf)
        else:
            encoder = spec.entry.construct(spec.conf)
        if pretrained and cfg.init_from:
            state = read_weights(cfg.init_from, cfg.init_prefix, "model.encoder", shapes_only=shapes_only)
            where = f"encoder weights {cfg.init_from}"
            _load_encoder_weights(encoder, state, where, cfg, spec.conf, reinit)
        elif pretrained:
            log.info(
                "%s encoder built from conf with random initial weights (no model.encoder.path or init_from): a new "
                "run trains it from these; a checkpoint read next (a resume, llmasr export, decode --checkpoint) "
                "replaces them with its own",
                cfg.type,
            )
    if cfg.freeze:
        encoder.requires_grad_(False)
    if cfg.lora is not None:
        encoder = apply_lora(encoder, cfg.lora, what="model.encoder", hf_model=False, freeze=cfg.freeze)
    if cfg.gradient_checkpointing:
        if not hasattr(encoder, "gradient_checkpointing"):
            raise ConfigError(f"model.encoder.gradient_checkpointing: {type(encoder).__name__} does not support it")
        encoder.gradient_checkpointing = True
    return encoder, spec.frontend


def _load_encoder_weights(encoder, state, where: str, cfg: EncoderConfig, conf: dict, reinit: dict) -> None:
    """`model.encoder.init_from`'s weights into the encoder built from model.encoder.conf: a mismatch names the conf
    settings that size the tensors otherwise and, for a folder `llmasr export` wrote (a second round from an export),
    the description that holds the conf the weights were trained with."""
    from llmasr.models.funasr_dir import SIZING

    defaults = {k: p.default for k, p in inspect.signature(type(encoder).__init__).parameters.items()}
    built = {**defaults, **conf}  # a size the recipe leaves out is its class's default
    sizes = {f"model.encoder.conf.{k}": built[k] for k in SIZING if isinstance(built.get(k), int)}
    try:
        load_into(encoder, state, source=where, reinit_option="model.encoder.reinit_keys", sizes=sizes,
                  built_from="model.encoder.conf", **reinit)  # fmt: skip
    except CheckpointMismatchError as err:
        described = Path(cfg.init_from).parent / MODEL_FILE
        if not described.is_file():
            raise
        raise CheckpointMismatchError(
            f"{err}\n{described} gives the encoder these weights were trained as (encoder.type, encoder.conf): "
            "restate its conf as model.encoder.conf"
        ) from None


def read_weights(init_from: str, init_prefix: str, what: str, *, shapes_only: bool = False) -> dict:
    """Tensors of a .safetensors or weights-only .pt file, restricted to `init_prefix` (prefix removed);
    `shapes_only`: meta tensors of their shapes. A DeepSpeed checkpoint folder (FunASR's DeepSpeed trainer saves
    model.pt as one) is read as the zoo loaders read it: its whole weights under ZeRO 0-2 (weights_in)."""
    path = weights_in(Path(init_from))
    if path.is_dir():  # ZeRO-3's partitions, or any other folder
        takes = "init_from takes one weights file (.safetensors, or a torch state dict)."
        raise ConfigError(f"{what}.init_from: {missing_weights(path, takes)}")
    if not path.is_file():
        raise ConfigError(f"{what}.init_from: file not found: {path}")
    if path.suffix == ".safetensors":
        state = read_safetensors(path, shapes_only=shapes_only)
    else:
        state = unwrap_state_dict(torch_load(path, shapes_only=shapes_only), str(path))
    if init_prefix:
        state = under_prefix(state, init_prefix)
        if not state:
            raise ConfigError(f"{what}.init_prefix: no key of {path} starts with {init_prefix!r}")
    return state


def encoder_source(cfg: EncoderConfig) -> str:
    """Where the encoder's size comes from, for error messages."""
    if cfg.path is not None:
        return f"the {cfg.type} encoder of {cfg.path}"
    if cfg.init_from:
        return f"the {cfg.type} encoder built from model.encoder.conf (weights {cfg.init_from})"
    return f"the {cfg.type} encoder built from model.encoder.conf"


def load_adaptor_weights(
    adaptor: nn.Module, cfg: ModelConfig, encoder_dim: int, llm_dim: int, *, shapes_only: bool = False
) -> None:
    """Load `cfg.adaptor.init_from`, first naming an encoder or LLM whose size does not fit the stored adaptor."""
    a = cfg.adaptor
    state = read_weights(a.init_from, a.init_prefix, "model.adaptor", shapes_only=shapes_only)
    in_key, axis, out_key = adaptor.IO_WEIGHTS
    if in_key in state and state[in_key].dim() > axis:
        stored, built = int(state[in_key].shape[axis]), int(adaptor.state_dict()[in_key].shape[axis])
        if stored != built:
            frames = f"{stored}-dim encoder frames"
            if built != encoder_dim:  # frame stacking: the input is downsample x encoder dim
                frames = f"{stored / a.downsample:g}-dim encoder frames ({stored} stacked / downsample {a.downsample})"
                if stored % encoder_dim == 0:
                    frames += f", or this encoder's frames with downsample {stored // encoder_dim}"
            raise ConfigError(
                f"model.adaptor.init_from: the adaptor in {a.init_from} takes {frames} "
                f"({a.init_prefix}{in_key} {list(state[in_key].shape)}) but {encoder_source(cfg.encoder)} outputs "
                f"{encoder_dim}"
            )
    if out_key in state and state[out_key].dim() >= 1 and int(state[out_key].shape[0]) != llm_dim:
        raise ConfigError(
            f"model.adaptor.init_from: the adaptor in {a.init_from} outputs {int(state[out_key].shape[0])}-dim "
            f"embeddings ({a.init_prefix}{out_key} {list(state[out_key].shape)}) but the LLM {cfg.llm.path} has "
            f"hidden size {llm_dim} (its config.json)"
        )
    load_into(adaptor, state, source=f"adaptor weights {a.init_from}")


def load_ctc_weights(
    head: nn.Module, cfg: CTCConfig, vocab_size: int, encoder_dim: int, encoder_from: str, *, shapes_only: bool = False
) -> None:
    """Load a pretrained CTC head, refusing one whose output size is not the configured vocabulary's, or whose
    input size is not the encoder's.

    FunASR skips such a mismatch silently and later fails with an assert inside the loss (320 vs 8404).
    """
    try:
        state = read_weights(cfg.init_from, cfg.init_prefix, "model.ctc", shapes_only=shapes_only)
    except ConfigError as err:
        if not cfg.from_encoder or not Path(cfg.init_from).is_file():
            raise  # a missing model.pt is named as such
        raise ConfigError(
            f"model.ctc.from_encoder: {cfg.init_from} holds no CTC head (no {cfg.init_prefix}* tensor; the model was "
            "trained without a CTC loss). Set model.ctc.vocab (e.g. the directory's tokens.json) for a new head "
            "instead"
        ) from err
    state = {k.replace("ctc_lo.", "proj.", 1) if k.startswith("ctc_lo.") else k: v for k, v in state.items()}
    rows = state.get("proj.weight")
    if rows is not None and rows.dim() == 2 and rows.shape[1] != encoder_dim:
        raise ConfigError(
            f"model.ctc.init_from: the CTC head in {cfg.init_from} takes {rows.shape[1]}-dim encoder frames "
            f"(weight {list(rows.shape)}) but {encoder_from} outputs {encoder_dim}"
        )
    if rows is not None and rows.shape[0] != vocab_size:
        raise ConfigError(
            f"model.ctc.init_from: the CTC head in {cfg.init_from} has {rows.shape[0]} outputs but the vocabulary "
            f"{cfg.vocab!r} has {vocab_size} entries (blank included); use the token list the head was trained "
            "with (e.g. the model directory's tokens.json)"
        )
    load_into(head, state, source=f"CTC head weights {cfg.init_from}")


@dataclass
class AudioSide:
    """A model section's frontend, encoder and adaptor built on the meta device from its config files (no weight
    read, no memory): what llmasr.models.context.audio_tokens counts an utterance's audio tokens with (the classes'
    own output_lengths / token_lengths) before the model exists; batching is planned before it is built."""

    frontend: FrontendConfig
    encoder: nn.Module
    adaptor: nn.Module


def audio_side(cfg: ModelConfig) -> AudioSide:
    """The encoder and adaptor of `cfg` as build_model builds them, on the meta device; their lengths do not depend
    on freezing, LoRA or checkpointing, which are left out."""
    from transformers import AutoConfig

    plain = dataclasses.replace(cfg.encoder, lora=None, gradient_checkpointing=False, freeze=False)
    llm = AutoConfig.from_pretrained(str(cfg.llm.path), local_files_only=True,
                                     trust_remote_code=cfg.llm.trust_remote_code)  # fmt: skip
    with torch.device("meta"):
        encoder, frontend = build_encoder(plain, pretrained=False)
        adaptor = build_adaptor(cfg.adaptor, output_dim(encoder), int(llm.get_text_config().hidden_size))
    return AudioSide(frontend, encoder, adaptor)


def output_dim(encoder: nn.Module) -> int:
    size = encoder.output_size
    return int(size() if callable(size) else size)


def build_prompt(cfg: ModelConfig, tokenizer) -> PromptBuilder:
    """The prompt builder of the model section, shared by training, `llmasr check` and decoding."""
    return PromptBuilder(
        tokenizer,
        task=cfg.prompt.task,
        system=cfg.prompt.system,
        chat_template=cfg.prompt.chat_template,
        audio_separator=cfg.prompt.audio_separator,
        hotwords_template=cfg.prompt.hotwords_template,
        hotwords_separator=cfg.prompt.hotwords_separator,
        hotwords_max_tokens=cfg.prompt.hotwords_max_tokens,
        template_kwargs=cfg.prompt.template_kwargs,
        source=f"the tokenizer of {cfg.llm.path}",
        max_tokens=llm_context(cfg.llm.path),
    )


WEIGHTS = ("pretrained", "random", "meta", "shapes")


def build_model(cfg: ModelConfig | dict | str | Path, *, weights: str = "pretrained") -> SpeechLLM:
    """Build the SpeechLLM described by a recipe's `model` section (a ModelConfig, a dict, or a recipe path).

    weights: "pretrained" reads every pretrained file the section names (training, export, decoding);
    "random" builds the same architecture from config files with fresh weights (benchmarks); "meta" does that on
    the meta device, which reads no weight and allocates no memory; "shapes" builds on the meta device too and then
    checks every pretrained file's tensor names and shapes against it (the encoder, adaptor and CTC head through
    their own loaders, the LLM's weight files against its config.json), reading no tensor data, so what the
    "pretrained" load would refuse, or fill with random values, is found (`llmasr check`). Freezing, LoRA and the
    text side (tokenizer, prompt, CTC vocabulary) are the same in all four."""
    if isinstance(cfg, (str, os.PathLike)):
        if why := _model_folder(Path(cfg)):
            raise ConfigError(why)
        path, cfg = cfg, load_yaml(cfg)
        cfg = cfg.get("model", cfg)
        if isinstance(cfg, dict):  # relative paths beside the recipe first, as `llmasr train` reads them
            resolve_paths(ModelConfig, cfg, Path(path).resolve().parent, cwd=Path.cwd(), prefix="model.")
    elif not isinstance(cfg, (dict, ModelConfig)):
        raise ConfigError(f"model: expected a recipe path, its model: section (dict) or a ModelConfig, got {cfg!r:.80}")
    # a ModelConfig made or edited in Python is held to the recipe's rules too (ctc.weight 1.5 had built a model)
    cfg = checked(ModelConfig, cfg.get("model", cfg) if isinstance(cfg, dict) else cfg, "model")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    pretrained, shapes_only = weights in ("pretrained", "shapes"), weights == "shapes"
    with torch.device("meta") if weights in ("meta", "shapes") else nullcontext():
        encoder, frontend = build_encoder(cfg.encoder, pretrained=pretrained, shapes_only=shapes_only)
        llm, tokenizer = load_llm(
            cfg.llm.path,
            lora=cfg.llm.lora,
            freeze=cfg.llm.freeze,
            dtype=cfg.llm.dtype,
            gradient_checkpointing=cfg.llm.gradient_checkpointing,
            checkpoint_every=cfg.llm.checkpoint_every,
            trust_remote_code=cfg.llm.trust_remote_code,
            adapter=cfg.llm.adapter,
            tokenizer=cfg.llm.tokenizer,
            pretrained=weights == "pretrained",
            shapes_only=shapes_only,
        )
        if cfg.llm.rotary_dtype is not None:  # non-persistent buffers: every build rounds them again
            round_rotary(llm, cfg.llm.rotary_dtype, llm=f"the LLM {cfg.llm.path}")
        llm_dim = int(embedding_shape(llm)[-1])
        adaptor = build_adaptor(cfg.adaptor, output_dim(encoder), llm_dim)
        if pretrained and cfg.adaptor.init_from:
            load_adaptor_weights(adaptor, cfg, output_dim(encoder), llm_dim, shapes_only=shapes_only)
        if cfg.adaptor.freeze:
            adaptor.requires_grad_(False)
        prompt = build_prompt(cfg, tokenizer)
        ctc_tokenizer, ctc_head = _build_ctc(cfg, prompt, output_dim(encoder), pretrained, shapes_only)
    return SpeechLLM(
        encoder,
        adaptor,
        llm,
        prompt,
        frontend,
        ctc_head=ctc_head,
        ctc_tokenizer=ctc_tokenizer,
        ctc_weight=cfg.ctc.weight,
        ctc_label_smoothing=cfg.ctc.label_smoothing,
        ctc_compress=cfg.adaptor.ctc_compress,
    )


def _model_folder(path: Path) -> str | None:
    """Why the folder `path`, an export or a training run, is no recipe to build from: build_model would give the
    model untrained (the base weights a recipe names), so the reader of its trained weights is named instead."""
    if (path / MODEL_FILE).is_file():
        return (f"{path}: an exported model, not a recipe: load it trained with llmasr.models.exported."
                f"load_exported({str(path)!r}), or Transcriber.load({str(path)!r}) to transcribe")  # fmt: skip
    if (path / RECIPE_FILE).is_file():
        return (f"{path}: a training run, not a recipe: build_model({str(path / RECIPE_FILE)!r}) builds its model "
                f"untrained; for its trained weights export it (llmasr export --checkpoint {path} --output DIR) and "
                f"load_exported(DIR), or Transcriber.load(checkpoint={str(path)!r}) to transcribe")  # fmt: skip
    return None


def _build_ctc(cfg: ModelConfig, prompt: PromptBuilder, encoder_dim: int, pretrained: bool, shapes_only: bool):
    """(CTC tokenizer, CTC head), both None without a head (`model.ctc.weight` 0)."""
    if cfg.ctc.weight <= 0:
        return None, None
    ctc_tokenizer = build_ctc_tokenizer(cfg.ctc, prompt.tokenizer, prompt.answer_lead)
    head = build_ctc_head(cfg.ctc, encoder_dim, ctc_tokenizer.vocab_size)
    if pretrained and cfg.ctc.init_from:
        vocab, source = ctc_tokenizer.vocab_size, encoder_source(cfg.encoder)
        load_ctc_weights(head, cfg.ctc, vocab, encoder_dim, source, shapes_only=shapes_only)
    return ctc_tokenizer, head
