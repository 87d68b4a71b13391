"""Builders: recipe model section -> encoder, adaptor, LLM, CTC head -> SpeechLLM, validated at start-up."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from llmasr.config_io import ConfigError, from_dict, load_yaml
from llmasr.data.frontend import FrontendConfig
from llmasr.models.config import AdaptorConfig, CTCConfig, EncoderConfig, ModelConfig
from llmasr.models.llm import apply_lora, embedding_shape, load_llm
from llmasr.models.prompt import PromptBuilder
from llmasr.models.speech_llm import SpeechLLM
from llmasr.models.state_dict import load_into, select_prefix, torch_load, unwrap_state_dict

log = logging.getLogger(__name__)


def encoder_class(kind: str):
    if kind == "paraformer":
        from llmasr.models.sanm import SANMEncoder

        return SANMEncoder
    if kind == "conformer":
        from llmasr.models.conformer import ConformerEncoder

        return ConformerEncoder
    raise ConfigError(f"model.encoder.type: {kind!r} has no builder from `conf`")


def encoder_frontend(cfg: EncoderConfig) -> FrontendConfig:
    """The frontend the configured encoder expects, read from its files without loading any weights."""
    if cfg.type == "whisper":
        from llmasr.models.whisper import whisper_dir_frontend, whisper_frontend

        if cfg.path is None:
            from transformers import WhisperConfig

            return whisper_frontend(WhisperConfig(**cfg.conf))
        frontend = whisper_dir_frontend(cfg.path)
    elif cfg.path is not None:
        from llmasr.models.funasr_dir import funasr_frontend

        frontend = funasr_frontend(cfg.path)
    else:
        return from_dict(FrontendConfig, dict(cfg.frontend), "model.encoder.frontend")
    if cfg.frontend:  # explicit settings (e.g. dither) refine what the model directory says
        frontend = from_dict(FrontendConfig, {**_as_dict(frontend), **cfg.frontend}, "model.encoder.frontend")
    return frontend


def build_encoder(cfg: EncoderConfig) -> tuple[nn.Module, FrontendConfig]:
    """The encoder (pretrained when `cfg.path` is set) and the frontend it expects."""
    if cfg.type == "whisper":
        from llmasr.models.whisper import build_whisper_encoder, load_whisper_encoder

        if cfg.path is None:
            encoder, _ = build_whisper_encoder(dict(cfg.conf))
        else:
            encoder, _ = load_whisper_encoder(cfg.path, reinit_keys=cfg.reinit_keys)
    elif cfg.path is not None:
        from llmasr.models.funasr_dir import load_funasr_encoder

        encoder, _ = load_funasr_encoder(cfg.path, conf_overrides=cfg.conf or None, reinit_keys=cfg.reinit_keys)
    else:
        feature_dim = encoder_frontend(cfg).feature_dim
        conf = dict(cfg.conf)
        conf.setdefault("input_size", feature_dim)
        if conf["input_size"] != feature_dim:
            raise ConfigError(
                f"model.encoder.conf.input_size is {conf['input_size']} but the frontend gives "
                f"{feature_dim} dims (n_mels x lfr_m of model.encoder.frontend)"
            )
        encoder = encoder_class(cfg.type)(**conf)
        log.info("%s encoder built from conf with fresh weights", cfg.type)
    frontend = encoder_frontend(cfg)
    if cfg.freeze:
        encoder.requires_grad_(False)
    if cfg.lora is not None:
        encoder = apply_lora(encoder, cfg.lora, what="model.encoder", hf_model=False)
    if cfg.gradient_checkpointing:
        if not hasattr(encoder, "gradient_checkpointing"):
            raise ConfigError(f"model.encoder.gradient_checkpointing: {type(encoder).__name__} does not support it")
        encoder.gradient_checkpointing = True
    return encoder, frontend


def _as_dict(frontend: FrontendConfig) -> dict:
    from llmasr.config_io import to_dict

    return to_dict(frontend)


def read_weights(init_from: str, init_prefix: str, what: str) -> dict:
    """Tensors of a .safetensors or weights-only .pt file, restricted to `init_prefix` (prefix removed)."""
    path = Path(init_from)
    if not path.is_file():
        raise ConfigError(f"{what}.init_from: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = unwrap_state_dict(torch_load(path), str(path))
    if init_prefix:
        state = select_prefix(state, init_prefix)
        if not state:
            raise ConfigError(f"{what}.init_prefix: no key of {path} starts with {init_prefix!r}")
    return state


def load_adaptor_weights(adaptor: nn.Module, cfg: AdaptorConfig) -> None:
    state = read_weights(cfg.init_from, cfg.init_prefix, "model.adaptor")
    load_into(adaptor, state, source=f"adaptor weights {cfg.init_from}")


def load_ctc_weights(head: nn.Module, cfg: CTCConfig, vocab_size: int) -> None:
    """Load a pretrained CTC head, refusing one whose output size is not the configured vocabulary's.

    FunASR skips such a mismatch silently and later fails with an assert inside the loss (320 vs 8404).
    """
    state = read_weights(cfg.init_from, cfg.init_prefix, "model.ctc")
    state = {k.replace("ctc_lo.", "proj.", 1) if k.startswith("ctc_lo.") else k: v for k, v in state.items()}
    rows = state.get("proj.weight")
    if rows is not None and rows.shape[0] != vocab_size:
        raise ConfigError(
            f"model.ctc.init_from: the CTC head in {cfg.init_from} has {rows.shape[0]} outputs but the vocabulary "
            f"{cfg.vocab!r} has {vocab_size} entries (blank included); use the token list the head was trained "
            "with (e.g. the model directory's tokens.json)"
        )
    load_into(head, state, source=f"CTC head weights {cfg.init_from}")


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
        source=f"the tokenizer of {cfg.llm.path}",
    )


def build_model(cfg: ModelConfig | dict | str | Path) -> SpeechLLM:
    """Build the SpeechLLM described by a recipe's `model` section (a ModelConfig, a dict, or a recipe path)."""
    if isinstance(cfg, (str, Path)):
        cfg = load_yaml(cfg)
    if isinstance(cfg, dict):
        cfg = from_dict(ModelConfig, cfg.get("model", cfg), "model")

    encoder, frontend = build_encoder(cfg.encoder)
    llm, tokenizer = load_llm(
        cfg.llm.path,
        lora=cfg.llm.lora,
        freeze=cfg.llm.freeze,
        dtype=cfg.llm.dtype,
        gradient_checkpointing=cfg.llm.gradient_checkpointing,
        trust_remote_code=cfg.llm.trust_remote_code,
    )
    prompt = build_prompt(cfg, tokenizer)
    llm_dim = int(embedding_shape(llm)[-1])
    from llmasr.models.adaptors import build_adaptor

    adaptor = build_adaptor(cfg.adaptor, output_dim(encoder), llm_dim)
    if cfg.adaptor.init_from:
        load_adaptor_weights(adaptor, cfg.adaptor)
    if cfg.adaptor.freeze:
        adaptor.requires_grad_(False)

    ctc_head = ctc_tokenizer = None
    if cfg.ctc.weight > 0:
        from llmasr.models.ctc import CTCHead, build_ctc_tokenizer

        ctc_tokenizer = build_ctc_tokenizer(cfg.ctc.vocab, tokenizer)
        ctc_head = CTCHead(output_dim(encoder), ctc_tokenizer.vocab_size)
        if cfg.ctc.init_from:
            load_ctc_weights(ctc_head, cfg.ctc, ctc_tokenizer.vocab_size)
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
