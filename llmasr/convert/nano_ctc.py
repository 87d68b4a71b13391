"""The CTC branch of a Fun-ASR-Nano directory's config: the weights file FunASRNano loads its CTC decoder from, the
tiktoken vocabulary where FunASR finds it, and the llmasr CTC head's section (its decoder layers and sizes), each
layout llmasr's head cannot hold refused naming the key."""

from __future__ import annotations

from pathlib import Path

from llmasr.config_io import ConfigError
from llmasr.convert.nano_config import TRAINING_KEYS, dropout_of, number, section_of, stated
from llmasr.models.encoders import funasr_class_name
from llmasr.models.funasr_files import file_path_metas


def ctc_decoder_file(src: Path, config: dict) -> Path | None:
    """The CTC decoder's own weights file FunASRNano loads before model.pt (ctc_decoder_conf.init_param_path):
    configuration.json's file_path_metas.ctc_decoder_conf.init_param_path (relative to SRC) where that file exists,
    else config.yaml's (relative to SRC unless absolute); None when neither names one. A named file that is missing
    is refused, as FunASR fails to build the model without it."""
    mapped = ((file_path_metas(src) or {}).get("ctc_decoder_conf") or {}).get("init_param_path")
    own = section_of(config, "ctc_decoder_conf", src / "config.yaml").get("init_param_path")
    named = [(s, w) for s, w in ((mapped, "configuration.json file_path_metas.ctc_decoder_conf"),
                                 (own, "config.yaml ctc_decoder_conf")) if s]  # fmt: skip
    if not named:
        return None
    places = [(s, w, Path(str(s)) if Path(str(s)).is_absolute() else src / str(s)) for s, w in named]
    found = next((path for _, _, path in places if path.is_file()), None)
    if found is None:
        tried = "; ".join(f"{w}.init_param_path names {s} ({path})" for s, w, path in places)
        raise ConfigError(f"{src}: {tried}, which does not exist: FunASR loads the CTC decoder from it")
    return found


_CTC_DECODER_KEYS = {
    "downsample_rate", "ffn_dim", "n_layer", "attention_heads", "dropout_rate", "attention_dropout_rate",
    "encoder_dim", "llm_dim", "init_param_path", *TRAINING_KEYS,
}  # fmt: skip
NANO_CTC_VOCAB = "multilingual.tiktoken"  # where FunASR looks first for the CTC vocabulary (beside config.yaml)


def ctc_vocab_file(src: Path, config: dict) -> tuple[Path | None, list[Path]]:
    """The CTC branch's tiktoken file, found where FunASR finds it: an absolute `ctc_tokenizer_conf.vocab_path`,
    else SRC/multilingual.tiktoken, else vocab_path under SRC; (None, the places looked) when none exists."""
    dataset = section_of(config, "dataset_conf", src / "config.yaml")
    stated = (dataset.get("ctc_tokenizer_conf") or {}).get("vocab_path")
    places = [Path(str(stated))] if stated and Path(str(stated)).is_absolute() else []
    places.append(src / NANO_CTC_VOCAB)
    if stated and not Path(str(stated)).is_absolute():
        places.append(src / str(stated))
    return next((p for p in places if p.is_file()), None), places


def ctc_section(config: dict, path: Path, encoder_dim: int) -> dict:
    """The CTC head's decoder and sizes from `ctc_decoder_conf`, `ctc_conf` and `ctc_vocab_size`; a layout llmasr's
    head cannot hold (another decoder class, downsampling, a width other than the encoder's, a blank that is not the
    last output) is an error naming the key."""
    name = funasr_class_name(config.get("ctc_decoder", ""))
    conf = section_of(config, "ctc_decoder_conf", path)
    if name != "Transformer":
        raise ConfigError(
            f"{path}: ctc_decoder is {config.get('ctc_decoder')!r}; the converter maps `Transformer` only"
        )
    unknown = sorted(set(conf) - _CTC_DECODER_KEYS)
    if unknown:
        raise ConfigError(f"{path}: ctc_decoder_conf has key(s) {unknown} that llmasr's CTC decoder cannot express")

    def get(key: str, default: int) -> int:
        return number(conf.get(key, default), f"{path}: ctc_decoder_conf.{key}")

    k, width = get("downsample_rate", 2), get("llm_dim", 4096)  # FunASR Transformer's defaults
    if k != 1:
        raise ConfigError(
            f"{path}: ctc_decoder_conf.downsample_rate is {k}; the CTC head reads every encoder frame (1)"
        )
    if width != encoder_dim:
        raise ConfigError(f"{path}: ctc_decoder_conf.llm_dim is {width} but the CTC layer (ctc.ctc_lo) takes the "
                          f"encoder's {encoder_dim}-dim frames")  # fmt: skip
    vocab_size = number(stated(config, "ctc_vocab_size", path, 60515), f"{path}: ctc_vocab_size")  # FunASRNano's
    blank = section_of(config, "ctc_conf", path).get("blank_id")
    if blank is not None and number(blank, f"{path}: ctc_conf.blank_id") != vocab_size - 1:
        raise ConfigError(f"{path}: ctc_conf.blank_id is {blank}; llmasr's tiktoken CTC vocabulary has the blank last "
                          f"({vocab_size - 1} of ctc_vocab_size {vocab_size})")  # fmt: skip
    weight = number(stated(config, "ctc_weight", path, 0.3), f"{path}: ctc_weight", float)
    return {
        "weight": weight if 0.0 < weight <= 1.0 else 0.3,  # the head exists only with a weight > 0
        "vocab_size": vocab_size,
        "detach_encoder": bool(stated(config, "detach_ctc_decoder", path, True)),  # FunASRNano's default
        "decoder": {
            "n_layer": get("n_layer", 2),  # FunASR Transformer adaptor's defaults
            "ffn_dim": get("ffn_dim", 2048),
            "n_head": get("attention_heads", 8),
            "dropout": dropout_of(conf, "ctc_decoder_conf", path),
        },
    }
