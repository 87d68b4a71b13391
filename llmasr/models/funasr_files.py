"""Where a FunASR model directory's files lie, as FunASR's AutoModel finds them: configuration.json's
`file_path_metas` (or FunASR 0.x's mapping), files a config names by another machine's absolute path, the weights
file (model.pt, init_param, a DeepSpeed folder, 0.x's model.pb) and the CMVN file (configuration.json's mapping,
config.yaml's cmvn_file, am.mvn), each missing one an error that says what belongs there."""

from __future__ import annotations

import logging
from pathlib import Path

from llmasr.config_io import ConfigError
from llmasr.errors import EVERY_RANK
from llmasr.models.ds_checkpoint import MODEL_STATES, weights_in, zero3_partitions, zero_to_fp32_advice
from llmasr.text_files import read_json

log = logging.getLogger(__name__)


def _configuration_json(model_dir: Path) -> dict | None:
    """configuration.json as a dict; None without one."""
    path = model_dir / "configuration.json"
    if not path.is_file():
        return None
    return read_json(path, dict, "FunASR's file mapping")


def file_path_metas(model_dir: Path) -> dict | None:
    """configuration.json's `file_path_metas`: the files FunASR's AutoModel resolves against the directory
    ({} when it names none); None without configuration.json, or with FunASR 0.x's, which maps its files under
    `model` (am_model_name, model_config.mvn_file) and has no file_path_metas: such a directory is read as FunASR
    reads one without configuration.json (am.mvn, tokens.json beside config.yaml), the files 0.x's maps."""
    data = _configuration_json(model_dir)
    if data is None or "file_path_metas" not in data:
        return None
    metas = data["file_path_metas"]
    return metas if isinstance(metas, dict) else {}


def _funasr_0x_weights(model_dir: Path) -> Path | None:
    """FunASR 0.x's weights file in `model_dir`: the file its configuration.json's model.am_model_name names, else
    model.pb; None where there is none."""
    model = (_configuration_json(model_dir) or {}).get("model")
    named = model.get("am_model_name") if isinstance(model, dict) else None
    for name in (named, "model.pb"):
        if isinstance(name, str) and name and (model_dir / name).is_file():
            return model_dir / name
    return None


def named_in_dir(model_dir: Path, name: object) -> Path:
    """Where a file a FunASR config names is: relative to the directory; an absolute path from the machine the model
    was trained on, when it is not here, in the directory under its own name. It may be missing: callers say what
    they need there."""
    path = Path(str(name))
    if not path.is_absolute():
        return model_dir / path
    return path if path.is_file() else model_dir / path.name


def weights_file(model_dir: Path) -> Path:
    """The file FunASR's AutoModel reads a directory's weights from: configuration.json's file_path_metas.init_param,
    else model.pt (named_in_dir; it may be missing). Where that is a DeepSpeed checkpoint folder holding whole weights
    (FunASR's DeepSpeed trainer, ZeRO 0-2), its mp_rank_00_model_states.pt (llmasr.models.ds_checkpoint)."""
    return weights_in(named_in_dir(model_dir, (file_path_metas(model_dir) or {}).get("init_param") or "model.pt"))


def missing_weights(ckpt_path: Path, needs: str) -> ConfigError:
    """The error for a weights file that is not a file: `needs` says what the directory must hold there. A folder
    there is a DeepSpeed checkpoint without whole weights (weights_file reads the others): ZeRO-3's partitions."""
    if ckpt_path.is_dir():
        parts = zero3_partitions(ckpt_path)
        zero3 = (
            f"It is a ZeRO-3 checkpoint ({', '.join(p.name for p in parts[:2])}{', ...' if len(parts) > 2 else ''}): "
            "its model states hold partition placeholders, the weights are partitioned in its *_optim_states.pt "
            "files. "
            if parts
            else f"It holds no {MODEL_STATES} (the whole weights of a ZeRO 0-2 checkpoint). "
        )
        return ConfigError(
            f"{ckpt_path}: a directory, not a weights file: FunASR's DeepSpeed trainer saves its checkpoints as "
            f"DeepSpeed folders under this name. {zero3}{zero_to_fp32_advice(ckpt_path)} {needs}"
        )
    pb = _funasr_0x_weights(ckpt_path.parent)
    if pb is not None:  # funasr 0.x build_model_from_file: model.load_state_dict(torch.load(model.pb))
        needs += (
            f"; {pb} is there: FunASR 0.x's weights file, the whole model's state dict under {ckpt_path.name}'s tensor "
            f"names, which llmasr reads as it is: rename it to {ckpt_path.name}"
        )
    return ConfigError(f"{ckpt_path}: missing. {needs}")


def _mapped_cmvn(model_dir: Path, frontend_conf: dict) -> tuple[bool, Path | None]:
    """(has configuration.json, the CMVN file its file_path_metas.frontend_conf.cmvn_file names or None). FunASR maps
    only a file that is there: a fine-tuned output directory holds the pretrained model's configuration.json (naming
    am.mvn) and a config.yaml whose cmvn_file is the pretrained am.mvn's full path, and that file is used then."""
    metas = file_path_metas(model_dir)
    if metas is None:
        return False, None
    name = (metas.get("frontend_conf") or {}).get("cmvn_file")
    if name is None:
        return True, None
    mapped = model_dir / str(name)
    if mapped.is_file():
        return True, mapped
    stated = frontend_conf.get("cmvn_file")
    fallback = None if stated is None else named_in_dir(model_dir, stated)
    if fallback is not None and fallback.is_file():
        return True, fallback
    said = "names none" if stated is None else f"names {stated}, not here either"
    raise ConfigError(
        f"{model_dir / 'configuration.json'}: file_path_metas.frontend_conf.cmvn_file names {name}, which is not "
        f"in {model_dir}, and {model_dir / 'config.yaml'} frontend_conf.cmvn_file {said}. Put the Kaldi nnet CMVN "
        f"(<AddShift>/<Rescale> rows, one value per LFR feature) the encoder was trained with at {mapped}"
    )


def resolve_cmvn(model_dir: Path, frontend_conf: dict) -> Path | None:
    """The CMVN file FunASR would use: configuration.json's mapping when the directory has that file (else
    config.yaml's cmvn_file), otherwise am.mvn beside config.yaml."""
    has_metas, mapped = _mapped_cmvn(model_dir, frontend_conf)
    if mapped is not None:
        return mapped
    am_mvn = model_dir / "am.mvn"
    if has_metas and frontend_conf.get("cmvn_file") is None:
        if am_mvn.is_file():
            log.warning(
                "%s: am.mvn is present but neither configuration.json nor config.yaml names a CMVN file, so (as in "
                "FunASR) features are not normalised",
                model_dir, extra=EVERY_RANK,
            )  # fmt: skip
        else:
            log.info("%s: no CMVN file named; features are not normalised", model_dir)
        return None
    if am_mvn.is_file() and not has_metas:
        return am_mvn
    stated = frontend_conf.get("cmvn_file", "<absent>")
    if stated is None:
        # An explicit `cmvn_file: null`: the model was trained without CMVN.
        log.warning("%s: no am.mvn and frontend_conf.cmvn_file is null; features are not normalised", model_dir,
                    extra=EVERY_RANK)  # fmt: skip
        return None
    if stated != "<absent>":
        candidate = named_in_dir(model_dir, stated)  # an absolute path from the training machine: here, by name
        if candidate.is_file():
            return candidate
        raise ConfigError(
            f"{model_dir / 'config.yaml'}: frontend_conf.cmvn_file names {stated}, which is neither there nor in "
            f"{model_dir} ({'am.mvn is, but configuration.json maps no CMVN' if am_mvn.is_file() else 'nor is am.mvn'})"
            ". The directory needs the Kaldi nnet CMVN (<AddShift>/<Rescale> rows, one value per LFR feature) the "
            "encoder was trained with"
        )
    raise ConfigError(
        f"{am_mvn}: missing. A FunASR model directory needs am.mvn: the Kaldi nnet CMVN (<AddShift>/<Rescale> rows, "
        "one value per LFR feature) the encoder was trained with"
    )
