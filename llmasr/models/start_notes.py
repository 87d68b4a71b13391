"""What a model section does that a user may not expect and that trains nonetheless: each said as a warning at
start-up, in train.log and in `llmasr check`'s report alike (settings that cannot train are refused in validation
instead)."""

from __future__ import annotations

from dataclasses import fields

from llmasr.models.config import EncoderConfig, ModelConfig
from llmasr.models.ctc_config import CTCConfig
from llmasr.models.encoder_spec import encoder_frontend
from llmasr.models.funasr_ctc import query_frames_warning
from llmasr.models.funasr_dir import streaming_encoder_dir
from llmasr.models.router_aux import router_aux_note
from llmasr.unread_fields import as_section, changed


def start_notes(cfg: ModelConfig) -> list[str]:
    """Every note the model's settings give, in a fixed order."""
    notes = (whisper_dither_note(cfg.encoder), frozen_full_context_note(cfg.encoder), ctc_off_note(cfg.ctc))
    return [note for note in (*notes, query_frames_warning(cfg), router_aux_note(cfg.llm.path)) if note]


def whisper_dither_note(cfg: EncoderConfig) -> str | None:
    """A Whisper frontend that dithers: the frames after a clip hold the encoder's silence floor, where transformers'
    WhisperFeatureExtractor dithers the whole window (Whisper has no padding mask, so the clip's own frames attend to
    them). Released Whisper checkpoints have dither 0; None at 0 or for fbank."""
    if cfg.type != "whisper":
        return None
    frontend = encoder_frontend(cfg)
    if frontend.dither <= 0:
        return None
    given = (
        "model.encoder.frontend.dither" if "dither" in cfg.frontend else f'{cfg.path}/preprocessor_config.json "dither"'
    )
    return (
        f"{given} is {frontend.dither:g}: llmasr dithers each clip and the frames its audio reaches, but the frames "
        f"after it, to the encoder's {frontend.chunk_seconds:g} s window, hold the silence floor, where transformers' "
        "WhisperFeatureExtractor fills them with dithered noise too; the encoder attends to them, so its features "
        "differ from a transformers pipeline's at this dither. Set model.encoder.frontend.dither: 0 for "
        "transformers' features (released Whisper checkpoints have dither 0), or keep it as augmentation of the "
        "clip alone"
    )


def frozen_full_context_note(cfg: EncoderConfig) -> str | None:
    """A frozen Paraformer-streaming encoder run over whole utterances (context: full): FunASR trains and runs it over
    chunks only, so it hears context it was not trained with, and nothing of it can adapt. Allowed: runs trained
    before the setting existed ran so, and resume so."""
    if (
        cfg.conf.get("context") != "full"
        or not cfg.freeze
        or cfg.lora is not None
        or not streaming_encoder_dir(cfg.type, cfg.path)
    ):
        return None
    return (
        f"model.encoder.conf.context is full over the frozen Paraformer-streaming encoder of {cfg.path} "
        "(SANMEncoderChunkOpt): FunASR trains and runs it over chunks only, so each frame now attends to the whole "
        "utterance, which its weights never saw, and a frozen encoder cannot learn it. Leave context unset (chunked, "
        "as FunASR runs it), or let the encoder train (model.encoder.freeze: false, or model.encoder.lora)"
    )


def ctc_off_note(cfg: CTCConfig) -> str | None:
    """CTC settings beside model.ctc.weight 0, which builds no head: a head the user meant to have (the weight left
    at its default) or settings left behind when switching it off; either way nothing reads them."""
    if cfg.weight > 0:
        return None
    set_keys = changed(CTCConfig, as_section(cfg), [spec.name for spec in fields(CTCConfig) if spec.name != "weight"])
    if not set_keys:
        return None
    named = ", ".join(f"model.ctc.{key}" for key in set_keys)
    return (
        f"model.ctc.weight is 0, so no CTC head is built and {named} {'is' if len(set_keys) == 1 else 'are'} not read; "
        "set model.ctc.weight above 0 (e.g. 0.3) for a CTC head beside the LLM's loss"
    )
