"""Load the encoder of a FunASR model directory (Paraformer-large and friends) and the frontend it expects.

A FunASR directory holds `config.yaml` (`encoder`, `encoder_conf`, `frontend`, `frontend_conf`, ...), `model.pt`
(the whole model's state dict, encoder tensors under `encoder.`), `am.mvn` (Kaldi nnet CMVN applied after LFR),
`tokens.json` (not for SenseVoice) and often `configuration.json`, whose `file_path_metas` name files relative to
the directory (FunASR reads the CMVN file from there when present). Only the encoder and the frontend settings
are taken; the other modules (decoder, predictor, CTC, SeACo's hotword modules, SenseVoice's query embeddings)
are named in one log record (llmasr.models.funasr_checks). Every mismatch between `config.yaml`, `tokens.json`
and `model.pt` is an error naming the key.

Directories that load: Paraformer (`SANMEncoder`), Paraformer-streaming (`SANMEncoderChunkOpt`, full context,
frontend `WavFrontendOnline`), SeACo-Paraformer and contextual Paraformer (their SAN-M encoder), Conformer models
(`ConformerEncoder`) and SenseVoiceSmall (`SenseVoiceEncoderSmall`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from llmasr.config_io import ConfigError
from llmasr.config_paths import nested_hint, not_found
from llmasr.data.frontend import FrontendConfig, check_cmvn_size
from llmasr.errors import EVERY_RANK
from llmasr.models.encoders import EncoderEntry, funasr_0x_advice, funasr_class_name, funasr_entry
from llmasr.models.funasr_checks import check_vocabulary, log_left_out
from llmasr.models.funasr_files import missing_weights, resolve_cmvn, weights_file
from llmasr.models.sanm_chunk import CHUNK_KEYS, ChunkSettings, check_context
from llmasr.models.state_dict import (
    CheckpointMismatchError,
    load_into,
    reinit_patterns,
    select_prefix,
    torch_load,
    under_prefix,
    unwrap_state_dict,
)
from llmasr.text_files import not_utf8

log = logging.getLogger(__name__)

# WavFrontendOnline (Paraformer-streaming) over a whole utterance computes WavFrontend's features, except that it
# always scales the samples to the int16 range and always snips edges (it ignores `upsacle_samples` and
# `snip_edges`); FunASR's training data pipeline runs it that way (is_final, one call per utterance).
SUPPORTED_FRONTENDS = ("WavFrontend", "WavFrontendOnline")
_ONLINE_FIXED = {"upsacle_samples": True, "snip_edges": True}

# frontend_conf keys with no bearing on the features of a non-streaming encoder. FunASR's WavFrontend swallows
# unknown keys too, so anything else is logged and ignored rather than refused.
_FRONTEND_IGNORED = ("filter_length_min", "filter_length_max")


def read_funasr_config(model_dir: str | Path) -> dict:
    """Parse `model_dir/config.yaml` into a dict, checking the parts the encoder loader relies on."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(not_found("model.encoder.path", "FunASR model directory", model_dir))
    path = model_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing. A FunASR model directory needs config.yaml naming `encoder` (e.g. SANMEncoder), "
            "`encoder_conf`, `frontend` (WavFrontend) and `frontend_conf`"
            + nested_hint(model_dir, "config.yaml", "model.encoder.path")
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except UnicodeDecodeError as err:  # a config.yaml resaved in a local code page (GBK comments)
        raise ConfigError(f"{path}: {not_utf8(err, path)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    if "encoder" not in data and "audio_encoder" in data:
        # FunASR's LLM-based models (FunASRNano, LLMASR*) name their speech encoder `audio_encoder` and keep its
        # tensors under `audio_encoder.`: not a directory the encoder loader reads.
        raise ConfigError(
            f"{path}: model {data.get('model')!r} names its speech encoder `audio_encoder` "
            f"({data.get('audio_encoder')!r}), not `encoder`: an LLM-based FunASR model, not an ASR model directory "
            "model.encoder.path reads. A Fun-ASR-Nano directory becomes an llmasr model with `llmasr convert funasr`"
        )
    if "encoder" not in data:
        raise ConfigError(f"{path}: no `encoder` entry (the encoder class, e.g. SANMEncoder)")
    if advice := funasr_0x_advice(data):  # every 0.x name at once, not one per attempt
        raise ConfigError(f"{path}: {advice}")
    for key in ("encoder_conf", "frontend_conf"):
        if data.get(key) is None:
            data[key] = {}
        if not isinstance(data[key], dict):
            raise ConfigError(f"{path}: `{key}` must be a mapping, got {type(data[key]).__name__}")
    if data.get("normalize") not in (None, "None", "null"):
        raise ConfigError(
            f"{path}: normalize is {data['normalize']!r}; FunASR normalizes the features with it before the encoder, "
            "which llmasr does not do (its features are fbank + LFR + the frontend's CMVN file), so this encoder "
            "would hear features it was not trained on"
        )
    return data


def streaming_encoder_dir(kind: str, path: str | None) -> bool:
    """Whether an encoder of `kind` (model.encoder.type) at `path` reads a FunASR directory whose config.yaml names
    SANMEncoderChunkOpt (Paraformer-streaming). False where the directory does not read: the builder's error to
    report, with its reason."""
    if kind != "paraformer" or path is None or not Path(path).is_dir():
        return False
    try:
        return funasr_class_name(read_funasr_config(Path(path)).get("encoder")) == "SANMEncoderChunkOpt"
    except (ConfigError, OSError):
        return False


def frontend_from_funasr_conf(
    frontend_conf: dict, cmvn_file: str | Path | None, frontend: str = "WavFrontend", where: str = "frontend_conf"
) -> FrontendConfig:
    """FunASR WavFrontend / WavFrontendOnline `frontend_conf` -> FrontendConfig (Kaldi fbank + LFR + CMVN from
    `cmvn_file`); `where` names the section in errors (the config.yaml's path and `frontend_conf`)."""
    conf = dict(frontend_conf)
    conf.pop("cmvn_file", None)  # the caller resolves it (relative to the model directory)
    if frontend == "WavFrontendOnline":
        for key, fixed in _ONLINE_FIXED.items():
            if key in conf and conf[key] != fixed:
                log.warning("frontend_conf.%s=%r is ignored: FunASR's WavFrontendOnline always uses %r", key, conf[key],
                            fixed, extra=EVERY_RANK)  # fmt: skip
            conf[key] = fixed
    mapping = {"fs": "sample_rate", "window": "window", "n_mels": "n_mels", "frame_length": "frame_length_ms",
               "frame_shift": "frame_shift_ms", "lfr_m": "lfr_m", "lfr_n": "lfr_n", "dither": "dither",
               "snip_edges": "snip_edges"}  # fmt: skip
    kwargs: dict[str, Any] = {}
    for key, value in conf.items():
        if key in mapping:
            kwargs[mapping[key]] = _number(value, key, where) if key in _NUMBERS else value
        elif key == "upsacle_samples":  # FunASR's spelling: scale [-1, 1] samples to the int16 range
            kwargs["waveform_scale"] = 32768.0 if value else 1.0
        elif key in _FRONTEND_IGNORED:
            if value not in (-1, None):
                log.warning("frontend_conf.%s=%r is ignored (length filtering is the data loader's job)", key, value,
                            extra=EVERY_RANK)  # fmt: skip
        else:
            log.warning("frontend_conf.%s=%r is not a WavFrontend setting llmasr knows; ignored", key, value,
                        extra=EVERY_RANK)  # fmt: skip
    fe = FrontendConfig(kind="fbank", cmvn_file=None if cmvn_file is None else str(Path(cmvn_file).resolve()), **kwargs)
    fe.validate(where)
    check_cmvn_size(fe, where)
    return fe


_NUMBERS = dict(fs=int, n_mels=int, lfr_m=int, lfr_n=int, frame_length=float, frame_shift=float, dither=float)


def _number(given: Any, key: str, where: str) -> int | float:
    """frontend_conf[key] as its int or float (YAML may give "80", FunASR takes fs as "16k"), else a ConfigError."""
    kind, value = _NUMBERS[key], given
    try:
        if isinstance(given, str):
            text = given.strip().lower()
            scale, text = (1000, text[:-1]) if key == "fs" and text.endswith("k") else (1, text)
            value = float(text) * scale if kind is float or scale > 1 or "." in text or "e" in text else int(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        if kind is int and not float(value).is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        want = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where}.{key}: expected {want}, got {given!r}") from None


# encoder_conf settings that size an encoder's tensors (input_size: the frontend's n_mels * lfr_m), named where
# model.pt's tensors have other sizes
SIZING = ("input_size", "output_size", "linear_units", "kernel_size", "cnn_module_kernel")


def funasr_frontend(model_dir: str | Path) -> FrontendConfig:
    """The frontend (CMVN included) a FunASR model directory expects, without reading model.pt."""
    model_dir = Path(model_dir).resolve()
    return _frontend(model_dir, read_funasr_config(model_dir))


def _frontend(model_dir: Path, config: dict) -> FrontendConfig:
    frontend_type = funasr_class_name(config.get("frontend", "WavFrontend"))
    if frontend_type not in SUPPORTED_FRONTENDS:
        raise ConfigError(
            f"{model_dir / 'config.yaml'}: frontend {config.get('frontend')!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_FRONTENDS)}"
        )
    cmvn = resolve_cmvn(model_dir, config["frontend_conf"])
    where = f"{model_dir / 'config.yaml'} frontend_conf"
    return frontend_from_funasr_conf(config["frontend_conf"], cmvn, frontend_type, where)


def _check_overrides(stated: dict, overrides: dict, cfg_path: Path) -> None:
    """Over pretrained weights, model.encoder.conf may set regularisation (dropout rates, stochastic depth) and
    llmasr's own `queries`, `context` and `train_chunks`; any other key must keep config.yaml's value: heads, FSMN
    shift, layer types change what the weights compute without changing a tensor's shape, so the load would not
    notice."""
    for key, value in overrides.items():
        if "dropout" in key or key in ("stochastic_depth_rate", "queries", "context", "train_chunks"):
            continue
        if key in stated and (value == stated[key] or str(value) == str(stated[key])):
            continue
        said = f"{stated[key]!r}" if key in stated else "nothing (the weights were trained with FunASR's default)"
        raise ConfigError(
            f"model.encoder.conf.{key}: {value!r}, but {cfg_path} states {said}; over a pretrained directory "
            "model.encoder.conf may set dropout rates, stochastic_depth_rate, queries, context and train_chunks only "
            "(the weights fix the rest)"
        )


def funasr_encoder_spec(
    model_dir: str | Path, conf_overrides: dict | None = None
) -> tuple[EncoderEntry, dict[str, Any], FrontendConfig]:
    """(registry entry, constructor conf with input_size, frontend) of a FunASR directory, reading no weights."""
    model_dir = Path(model_dir).resolve()
    config = read_funasr_config(model_dir)
    cfg_path = model_dir / "config.yaml"
    entry = funasr_entry(config["encoder"], str(cfg_path))
    frontend = _frontend(model_dir, config)
    encoder_conf = dict(config["encoder_conf"])
    _check_overrides(encoder_conf, conf_overrides or {}, cfg_path)
    encoder_conf.update(conf_overrides or {})
    chunk_keys = sorted(set(CHUNK_KEYS) & set(encoder_conf))
    streaming = funasr_class_name(config["encoder"]) == "SANMEncoderChunkOpt"
    if chunk_keys and not streaming:
        raise ConfigError(
            f"{cfg_path}: encoder_conf has the chunk settings {', '.join(chunk_keys)}, which only "
            f"SANMEncoderChunkOpt (Paraformer-streaming) takes, but the encoder is {config['encoder']}"
        )
    if streaming:  # FunASR never runs it otherwise; stated in the conf, so an export records it
        encoder_conf.setdefault("context", "chunked")
    if "context" in encoder_conf or "train_chunks" in encoder_conf:
        # the chunk settings are config.yaml's (_check_overrides keeps them), context and train_chunks the recipe's
        stated = f"{cfg_path} encoder_conf"
        chunk = ChunkSettings.from_conf(encoder_conf, f"{cfg_path}: SANMEncoderChunkOpt") if streaming else None
        context, train_chunks = encoder_conf.get("context", "full"), encoder_conf.get("train_chunks")
        check_context(context, chunk, "model.encoder.conf", train_chunks, chunk_where=stated)
    feature_dim = frontend.feature_dim
    for where, stated in (
        ("input_size", config.get("input_size")),
        ("encoder_conf.input_size", encoder_conf.pop("input_size", None)),
    ):
        if stated is not None and int(stated) != feature_dim:
            raise ConfigError(
                f"{cfg_path}: {where} is {stated}, but the frontend produces n_mels * lfr_m = "
                f"{frontend.n_mels} * {frontend.lfr_m} = {feature_dim} features"
            )
    return entry, {"input_size": feature_dim, **encoder_conf}, frontend


def construct_encoder(entry: EncoderEntry, conf: dict, model_dir: str | Path, overrides: dict | None) -> nn.Module:
    """`entry.construct(conf)` for the encoder of a directory; a refusal names its config.yaml (the settings came
    from there, not from the recipe, unless model.encoder.conf set them)."""
    where = f"{Path(model_dir) / 'config.yaml'} encoder_conf"
    try:
        return entry.construct(conf, where)
    except ConfigError as err:
        said = str(err)
        for key in overrides or ():  # a value model.encoder.conf set is the recipe's fault, not config.yaml's
            if said.startswith(f"{where}.{key}:"):
                raise ConfigError(f"model.encoder.conf.{said.removeprefix(where + '.')}") from err
        if said.startswith(where):
            raise
        over = f" (model.encoder.conf sets {', '.join(sorted(overrides))} over it)" if overrides else ""
        raise ConfigError(f"{where}{over}: {err}") from err


def load_funasr_encoder(
    model_dir: str | Path,
    *,
    conf_overrides: dict | None = None,
    reinit_keys: list[str] | tuple[str, ...] = (),
    prefix: str = "encoder.",
    shapes_only: bool = False,
    frozen_by: str | None = None,
) -> tuple[nn.Module, FrontendConfig]:
    """Build the encoder named in `model_dir/config.yaml`, load its weights from model.pt, read its frontend.

    `conf_overrides` replace `encoder_conf` values (e.g. dropout rates); `reinit_keys` (encoder-relative names,
    globs allowed) may be missing from model.pt or differently shaped and keep their fresh initialisation.
    Returns (encoder, frontend); the frontend's cmvn_file is the absolute path of am.mvn. `shapes_only`: model.pt's
    tensor names and shapes are checked as a load checks them, no data is read (build it on the meta device).
    `frozen_by`: the recipe key that freezes the encoder (state_dict.load_into).
    """
    reinit_keys = reinit_patterns(reinit_keys)
    model_dir = Path(model_dir).resolve()
    entry, conf, frontend = funasr_encoder_spec(model_dir, conf_overrides)
    encoder = construct_encoder(entry, conf, model_dir, conf_overrides)

    ckpt_path = weights_file(model_dir)
    if not ckpt_path.is_file():
        raise missing_weights(
            ckpt_path,
            "A FunASR model directory needs its weights there (model.pt, or the file configuration.json's init_param "
            f"names): the model's state dict (torch.save), encoder tensors under '{prefix}'",
        )
    state = unwrap_state_dict(torch_load(ckpt_path, shapes_only=shapes_only), source=str(ckpt_path))
    if not select_prefix(state, prefix) and under_prefix(state, prefix):
        state = select_prefix(state, "module.")  # saved from a DDP-wrapped model: its other heads are there too
    encoder_state = select_prefix(state, prefix)
    if not encoder_state:
        heads = sorted({k.split(".", 1)[0] + "." for k in state})
        raise CheckpointMismatchError(
            f"{ckpt_path}: no tensors under '{prefix}'; top-level prefixes present: {', '.join(heads[:20])}"
        )
    check_vocabulary(model_dir, state, ckpt_path)
    taken = (prefix,)
    if getattr(encoder, "query_embed", None) is not None:  # SenseVoiceSmall's query frames (encoder conf `queries`)
        if "embed.weight" not in state:
            raise CheckpointMismatchError(
                f"{ckpt_path}: no embed.weight, the query embeddings the encoder's `queries` setting prepends"
            )
        encoder_state["query_embed.weight"] = state["embed.weight"]
        taken += ("embed.",)
    cfg = model_dir / "config.yaml"
    sizes = {f"{cfg} " + ("frontend_conf n_mels * lfr_m" if k == "input_size" else f"encoder_conf.{k}"): conf[k]
             for k in SIZING if isinstance(conf.get(k), int)}  # fmt: skip
    load_into(encoder, encoder_state, source=f"{ckpt_path} ({prefix}*)", reinit_keys=reinit_keys, frozen_by=frozen_by,
              reinit_option="model.encoder.reinit_keys", sizes=sizes, built_from=f"{cfg} encoder_conf")  # fmt: skip
    log_left_out(state, taken, ckpt_path, str(read_funasr_config(model_dir).get("model", "model")))
    return encoder, frontend
