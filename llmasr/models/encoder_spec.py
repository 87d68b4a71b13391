"""What a recipe's model.encoder section describes, read from config files only (no weight): the encoder's registry
entry, its constructor settings, and the frontend it expects.

A pretrained directory's config files give the encoder and its features; model.encoder.frontend may refine what they
say (its noise, a data filter, the CMVN file: FRONTEND_REFINEMENTS) and is refused where it would change the features
the encoder was trained on. llmasr.models.builder builds the encoder from this spec.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from llmasr.config_io import ConfigError, coerce, from_dict, to_dict
from llmasr.data.frontend import FrontendConfig, check_cmvn_size
from llmasr.models.config import EncoderConfig
from llmasr.models.encoders import EncoderEntry, encoder_entry
from llmasr.models.funasr_dir import funasr_encoder_spec
from llmasr.models.whisper import check_window as check_whisper_window
from llmasr.models.whisper import encoder_conf as whisper_encoder_conf
from llmasr.models.whisper import whisper_config, whisper_dir_frontend, whisper_frontend


@dataclass
class EncoderSpec:
    """What builds an encoder, read from config files only: its registry entry, constructor settings, frontend."""

    entry: EncoderEntry
    conf: dict[str, Any]
    frontend: FrontendConfig


def encoder_spec(cfg: EncoderConfig) -> EncoderSpec:
    """The encoder a recipe section describes (its pretrained directory's config files, or `conf`), and the frontend
    it expects: the explicit `frontend` settings refine what a pretrained directory says (dither, the CMVN file) and
    may not change the features it was trained on."""
    entry = encoder_entry(cfg.type)
    if cfg.type == "whisper":
        config = whisper_config(cfg.path, cfg.conf)
        base = whisper_frontend(config) if cfg.path is None else whisper_dir_frontend(cfg.path)
        stated = "its config.json / preprocessor_config.json"
        refined = _refine(base, cfg.frontend) if cfg.path is None else _refine_pretrained(base, cfg, stated)
        frontend = _matching(refined, int(config.num_mel_bins), cfg, "config.json's num_mel_bins")
        if cfg.path is not None:
            _kept(base, frontend, cfg, stated)
        return EncoderSpec(entry, whisper_encoder_conf(config.to_dict()), check_whisper_window(frontend, config))
    if cfg.path is not None:
        found, conf, base = funasr_encoder_spec(cfg.path, cfg.conf or None)
        if found.type != cfg.type:
            raise ConfigError(
                f"model.encoder.type is {cfg.type!r} but {cfg.path}/config.yaml holds a {found.class_name} "
                f"({found.type!r})"
            )
        stated = "its config.yaml frontend_conf"
        frontend = _refine_pretrained(base, cfg, stated)
        if "input_size" in conf:
            frontend = _matching(frontend, int(conf["input_size"]), cfg, "config.yaml's encoder input_size")
        _kept(base, frontend, cfg, stated)
        if "cmvn_file" in cfg.frontend:  # the directory's own was checked with its frontend
            check_cmvn_size(frontend, "model.encoder.frontend.cmvn_file")
        return EncoderSpec(entry, conf, _fewest_frames(frontend, cfg.type, conf))
    frontend = _refine(FrontendConfig(), cfg.frontend)
    conf = dict(cfg.conf)
    conf.setdefault("input_size", frontend.feature_dim)
    if conf["input_size"] != frontend.feature_dim:
        raise ConfigError(
            f"{_sizing_key(cfg, 'model.encoder.conf.input_size')}: the frontend makes {_feature_size(frontend)}, "
            f"but model.encoder.conf.input_size is {conf['input_size']}; make them agree (or leave input_size out)"
        )
    check_cmvn_size(frontend, "model.encoder.frontend")
    return EncoderSpec(entry, conf, _fewest_frames(frontend, cfg.type, conf))


def _matching(frontend: FrontendConfig, dims: int, cfg: EncoderConfig, what: str) -> FrontendConfig:
    """`frontend`, refused when model.encoder.frontend made its features another size than the pretrained encoder
    takes (it failed at the first batch, inside the encoder or the CMVN)."""
    if frontend.feature_dim != dims:
        raise ConfigError(
            f"{_sizing_key(cfg, 'model.encoder.frontend')}: the frontend makes {_feature_size(frontend)}, but the "
            f"encoder{f' of {cfg.path}' if cfg.path else ''} takes {dims} ({what}); leave n_mels and lfr_m out of "
            "model.encoder.frontend: the encoder's config gives them"
        )
    return frontend


def _sizing_key(cfg: EncoderConfig, otherwise: str) -> str:
    """The recipe key that sized the features (n_mels, else lfr_m), which a refusal leads with so that the recipe's
    line or the dotted override setting it is named after it (llmasr.recipe.located); `otherwise` where neither is
    set."""
    key = next((k for k in ("n_mels", "lfr_m") if k in cfg.frontend), None)
    return otherwise if key is None else f"model.encoder.frontend.{key}"


def _feature_size(fe: FrontendConfig) -> str:
    return f"{fe.feature_dim}-dim features (n_mels x lfr_m = {fe.n_mels} x {fe.lfr_m})"


# What model.encoder.frontend may change over a pretrained encoder's own frontend: its noise, a data filter, and
# the CMVN file (`llmasr data check` / `data cmvn` read features without it; its size is checked with the features).
FRONTEND_REFINEMENTS = ("dither", "min_frames", "cmvn_file")


def _refine_pretrained(base: FrontendConfig, cfg: EncoderConfig, stated: str) -> FrontendConfig:
    """_refine over a pretrained encoder's frontend `base`. Where the refined frontend does not validate, a setting
    that changes the features the encoder was trained on is named first (_kept): `kind: whisper` over an fbank
    encoder was refused for a dither the recipe never set, `n_mels: 128` for its 25 ms window."""
    try:
        return _refine(base, cfg.frontend)
    except ConfigError:
        hints = typing.get_type_hints(FrontendConfig)
        written = {k: coerce(v, hints[k], f"model.encoder.frontend.{k}") for k, v in cfg.frontend.items() if k in hints}
        _kept(base, FrontendConfig(**{**to_dict(base), **written}), cfg, stated)  # (no validation: it failed)
        raise


def _kept(base: FrontendConfig, frontend: FrontendConfig, cfg: EncoderConfig, stated: str) -> None:
    """Refuse a model.encoder.frontend setting that gives a pretrained encoder other features than it was trained
    on (kind, sample rate, window, frame length and shift, LFR, scale), naming both values."""
    # a Whisper frontend takes no CMVN file: naming it there sent the user to a setting that is refused in turn
    refinements = [k for k in FRONTEND_REFINEMENTS if base.kind != "whisper" or k != "cmvn_file"]
    for key in sorted(set(cfg.frontend) - set(FRONTEND_REFINEMENTS)):
        ours, theirs = getattr(frontend, key, None), getattr(base, key, None)
        if ours != theirs:
            raise ConfigError(
                f"model.encoder.frontend.{key}: {ours!r}, but the encoder of {cfg.path} was trained with {theirs!r} "
                f"({stated}); over a pretrained encoder model.encoder.frontend may set {', '.join(refinements)} only"
            )


def _fewest_frames(frontend: FrontendConfig, kind: str, conf: dict) -> FrontendConfig:
    """`frontend` with at least the fewest frames the encoder takes: a Conformer's subsampling needs 7 (conv2d) to
    15 (conv2d8); a clip shorter than that in a batch of longer ones gave the adaptor an empty utterance. A larger
    model.encoder.frontend.min_frames (a data filter) stays."""
    if kind != "conformer":
        return frontend
    from llmasr.models.subsampling import min_input_frames

    need = min_input_frames(str(conf.get("input_layer", "conv2d")))
    return dataclasses.replace(frontend, min_frames=max(frontend.min_frames, need))


def _refine(base: FrontendConfig, settings: dict) -> FrontendConfig:
    if not settings:
        return base
    return from_dict(FrontendConfig, {**to_dict(base), **settings}, "model.encoder.frontend")


def encoder_frontend(cfg: EncoderConfig) -> FrontendConfig:
    """The frontend the configured encoder expects, read from its files without loading any weights."""
    return encoder_spec(cfg).frontend
