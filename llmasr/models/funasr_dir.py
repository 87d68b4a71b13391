"""Load the encoder of a FunASR model directory (Paraformer-large and friends) and the frontend it expects.

A FunASR directory holds `config.yaml` (`encoder`, `encoder_conf`, `frontend`, `frontend_conf`, ...), `model.pt`
(the whole model's state dict, encoder tensors under `encoder.`), `am.mvn` (Kaldi nnet CMVN applied after LFR)
and `tokens.json`. Only the encoder and the frontend settings are taken; decoder, predictor and CTC tensors are
ignored. Every mismatch between `config.yaml` and `model.pt` is an error naming the key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from llmasr.config_io import ConfigError
from llmasr.data.frontend import FrontendConfig
from llmasr.models.encoders import EncoderEntry, funasr_entry
from llmasr.models.state_dict import CheckpointMismatchError, load_into, select_prefix, torch_load, unwrap_state_dict

log = logging.getLogger(__name__)

SUPPORTED_FRONTENDS = ("WavFrontend",)

# frontend_conf keys with no bearing on the features of a non-streaming encoder. FunASR's WavFrontend swallows
# unknown keys too, so anything else is logged and ignored rather than refused.
_FRONTEND_IGNORED = ("filter_length_min", "filter_length_max")


def read_funasr_config(model_dir: str | Path) -> dict:
    """Parse `model_dir/config.yaml` into a dict, checking the parts the encoder loader relies on."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"FunASR model directory not found: {model_dir}")
    path = model_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing. A FunASR model directory needs config.yaml naming `encoder` (e.g. SANMEncoder), "
            "`encoder_conf`, `frontend` (WavFrontend) and `frontend_conf`"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    if "encoder" not in data:
        raise ConfigError(f"{path}: no `encoder` entry (the encoder class, e.g. SANMEncoder)")
    for key in ("encoder_conf", "frontend_conf"):
        if data.get(key) is None:
            data[key] = {}
        if not isinstance(data[key], dict):
            raise ConfigError(f"{path}: `{key}` must be a mapping, got {type(data[key]).__name__}")
    return data


def frontend_from_funasr_conf(frontend_conf: dict, cmvn_file: str | Path | None) -> FrontendConfig:
    """FunASR WavFrontend `frontend_conf` -> FrontendConfig (Kaldi fbank + LFR + CMVN from `cmvn_file`)."""
    conf = dict(frontend_conf)
    conf.pop("cmvn_file", None)  # the caller resolves it (relative to the model directory)
    mapping = {
        "fs": "sample_rate",
        "window": "window",
        "n_mels": "n_mels",
        "frame_length": "frame_length_ms",
        "frame_shift": "frame_shift_ms",
        "lfr_m": "lfr_m",
        "lfr_n": "lfr_n",
        "dither": "dither",
        "snip_edges": "snip_edges",
    }
    kwargs: dict[str, Any] = {}
    for key, value in conf.items():
        if key in mapping:
            kwargs[mapping[key]] = value
        elif key == "upsacle_samples":  # FunASR's spelling: scale [-1, 1] samples to the int16 range
            kwargs["waveform_scale"] = 32768.0 if value else 1.0
        elif key in _FRONTEND_IGNORED:
            if value not in (-1, None):
                log.warning("frontend_conf.%s=%r is ignored (length filtering is the data loader's job)", key, value)
        else:
            log.warning("frontend_conf.%s=%r is not a WavFrontend setting llmasr knows; ignored", key, value)
    if isinstance(kwargs.get("sample_rate"), str):
        # FunASR accepts fs as "16k"
        text = kwargs["sample_rate"].lower()
        kwargs["sample_rate"] = int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)
    for key in ("sample_rate", "n_mels", "lfr_m", "lfr_n"):
        if key in kwargs:
            kwargs[key] = int(kwargs[key])
    for key in ("frame_length_ms", "frame_shift_ms", "dither"):
        if key in kwargs:
            kwargs[key] = float(kwargs[key])
    fe = FrontendConfig(kind="fbank", cmvn_file=None if cmvn_file is None else str(Path(cmvn_file).resolve()), **kwargs)
    fe.validate("frontend_conf")
    return fe


def _resolve_cmvn(model_dir: Path, frontend_conf: dict) -> Path | None:
    am_mvn = model_dir / "am.mvn"
    if am_mvn.is_file():
        return am_mvn
    stated = frontend_conf.get("cmvn_file", "<absent>")
    if stated is None:
        # An explicit `cmvn_file: null`: the model was trained without CMVN.
        log.warning("%s: no am.mvn and frontend_conf.cmvn_file is null; features are not normalised", model_dir)
        return None
    if stated != "<absent>":
        candidate = Path(stated)
        if not candidate.is_absolute():
            candidate = model_dir / candidate
        if candidate.is_file():
            return candidate
        raise ConfigError(
            f"{am_mvn}: missing, and frontend_conf.cmvn_file ({stated}) does not exist either. The directory needs "
            "am.mvn: the Kaldi nnet CMVN (<AddShift>/<Rescale> rows, one value per LFR feature) the encoder was "
            "trained with"
        )
    raise ConfigError(
        f"{am_mvn}: missing. A FunASR model directory needs am.mvn: the Kaldi nnet CMVN (<AddShift>/<Rescale> rows, "
        "one value per LFR feature) the encoder was trained with"
    )


def funasr_frontend(model_dir: str | Path) -> FrontendConfig:
    """The frontend (CMVN included) a FunASR model directory expects, without reading model.pt."""
    model_dir = Path(model_dir).resolve()
    config = read_funasr_config(model_dir)
    return frontend_from_funasr_conf(config["frontend_conf"], _resolve_cmvn(model_dir, config["frontend_conf"]))


def funasr_encoder_spec(
    model_dir: str | Path, conf_overrides: dict | None = None
) -> tuple[EncoderEntry, dict[str, Any], FrontendConfig]:
    """(registry entry, constructor conf with input_size, frontend) of a FunASR directory, reading no weights."""
    model_dir = Path(model_dir).resolve()
    config = read_funasr_config(model_dir)
    cfg_path = model_dir / "config.yaml"
    entry = funasr_entry(config["encoder"], str(cfg_path))
    frontend_type = config.get("frontend", "WavFrontend")
    if frontend_type not in SUPPORTED_FRONTENDS:
        raise ConfigError(
            f"{cfg_path}: frontend {frontend_type!r} is not supported; supported: {', '.join(SUPPORTED_FRONTENDS)}"
        )
    frontend = frontend_from_funasr_conf(config["frontend_conf"], _resolve_cmvn(model_dir, config["frontend_conf"]))
    encoder_conf = dict(config["encoder_conf"])
    encoder_conf.update(conf_overrides or {})
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


def load_funasr_encoder(
    model_dir: str | Path,
    *,
    conf_overrides: dict | None = None,
    reinit_keys: list[str] | tuple[str, ...] = (),
    prefix: str = "encoder.",
) -> tuple[nn.Module, FrontendConfig]:
    """Build the encoder named in `model_dir/config.yaml`, load its weights from model.pt, read its frontend.

    `conf_overrides` replace `encoder_conf` values (e.g. dropout rates); `reinit_keys` (encoder-relative names,
    globs allowed) may be missing from model.pt or differently shaped and keep their fresh initialisation.
    Returns (encoder, frontend); the frontend's cmvn_file is the absolute path of am.mvn.
    """
    model_dir = Path(model_dir).resolve()
    entry, conf, frontend = funasr_encoder_spec(model_dir, conf_overrides)
    encoder = entry.construct(conf)

    ckpt_path = model_dir / "model.pt"
    if not ckpt_path.is_file():
        raise ConfigError(
            f"{ckpt_path}: missing. A FunASR model directory needs model.pt: the model's state dict (torch.save), "
            f"encoder tensors under '{prefix}'"
        )
    state = unwrap_state_dict(torch_load(ckpt_path), source=str(ckpt_path))
    encoder_state = select_prefix(state, prefix)
    if not encoder_state:
        encoder_state = select_prefix(state, "module." + prefix)  # saved from a DDP-wrapped model
    if not encoder_state:
        heads = sorted({k.split(".", 1)[0] + "." for k in state})
        raise CheckpointMismatchError(
            f"{ckpt_path}: no tensors under '{prefix}'; top-level prefixes present: {', '.join(heads[:20])}"
        )
    load_into(encoder, encoder_state, source=f"{ckpt_path} ({prefix}*)", reinit_keys=reinit_keys)
    return encoder, frontend
