"""Reading a Fun-ASR-Nano directory's config.yaml into an llmasr model section (no weights read here).

A Nano directory holds config.yaml (`model: FunASRNano`, `audio_encoder` / `audio_encoder_conf`, `audio_adaptor` /
`audio_adaptor_conf`, `llm_conf`, `ctc_decoder` / `ctc_decoder_conf`, `frontend_conf`, with `${a.b}` references
to other keys), configuration.json (whose `file_path_metas` name files relative to the directory, the LLM's
`llm_conf.init_param_path` among them), model.pt and the Qwen3 directory (config and tokenizer, no weights).

What llmasr builds from it: a `sensevoice` encoder, a `transformer` adaptor (FunASR's `Transformer`, same parameter
names) with `audio_token_cap: funasr_nano` when `use_low_frame_rate` is on, Nano's own prompt (system "You are
a helpful assistant." unless dataset_conf.sys_prompt is false, user "语音转写：<audio>" with no separator, an
utterance's hotwords in Nano's own context block before it, ChatML written out as FunASR writes it, with an empty
<think> block after the assistant tag when dataset_conf.do_think is false), and the CTC head's decoder layers and sizes
(llmasr.convert.nano_ctc; the caller decides whether the branch converts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from llmasr.config_io import ConfigError, to_dict
from llmasr.config_paths import nested_hint
from llmasr.models.encoders import funasr_class_name
from llmasr.models.funasr_dir import frontend_from_funasr_conf
from llmasr.models.funasr_files import file_path_metas, resolve_cmvn
from llmasr.models.sensevoice import CONF_KEYS
from llmasr.text_files import not_utf8

NANO_MODEL = "FunASRNano"
NANO_SYSTEM = "You are a helpful assistant."
NANO_TASK = "语音转写："  # FunASRNano.get_prompt() without hotwords, language or ITN switch
# What FunASRNano.get_prompt() puts before the task when an utterance has hotwords (joined by ", ").
NANO_HOTWORDS_TEMPLATE = (
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n**上下文信息：**\n\n\n"
    "热词列表：[{hotwords}]\n"
)
# FunASR writes the ChatML prompt with an f-string (FunASRNano.data_load_speech); this template renders the same.
# With `enable_thinking: false` (dataset_conf.do_think: false) it appends the empty reasoning block FunASR then writes
# after the assistant tag, as Qwen3's own template does.
NANO_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}{%- endif -%}"
)
# Top-level config.yaml keys with which FunASRNano writes a prompt llmasr's cannot (it reads them from its kwargs).
_PROMPT_REFUSED = {
    "infer_with_assistant_input": "leaves the user turn open, without <|im_end|> and the assistant tag",
    "prev_text": "appends this text after the assistant tag",
}
# audio_encoder_conf / audio_adaptor_conf keys that steer FunASR's training or loading, not the architecture.
TRAINING_KEYS = ("freeze", "freeze_layer_num", "activation_checkpoint")
# audio_encoder_conf keys FunASRNano reads, not the encoder: `hub` (a set one is refused) and feat_permute. FunASR's
# first Nano release (Dec 2025) transposed the features to [B, D, T] under feat_permute in data_load_speech and back
# in encode(), so the encoder saw [B, T, D] either way, as llmasr's does; FunASR no longer reads it (its
# SenseVoiceEncoderSmall swallows it in **kwargs).
_NANO_ENCODER_KEYS = ("hub", "feat_permute")
_ADAPTOR_KEYS = {
    "downsample_rate", "ffn_dim", "n_layer", "attention_heads", "dropout_rate", "attention_dropout_rate",
    "use_low_frame_rate", "encoder_dim", "llm_dim", *TRAINING_KEYS,
}  # fmt: skip
_REF = re.compile(r"\$\{([^}]+)\}")


def _lookup(config: dict, dotted: str, where: str, seen: tuple[str, ...]) -> Any:
    if dotted in seen:
        raise ConfigError(f"{where}: ${{{dotted}}} refers to itself through {' -> '.join(seen)}")
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{where}: ${{{dotted}}} names no key of the config")
        node = node[part]
    return resolve(node, config, where, (*seen, dotted))


def resolve(value: Any, config: dict, where: str, seen: tuple[str, ...] = ()) -> Any:
    """`value` with its `${a.b}` references (OmegaConf style) replaced from `config`; a value that is one whole
    reference keeps the referred value's type."""
    if isinstance(value, dict):
        return {k: resolve(v, config, f"{where}.{k}", seen) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, config, where, seen) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _REF.fullmatch(value)
    if whole:
        return _lookup(config, whole.group(1), where, seen)
    return _REF.sub(lambda m: str(_lookup(config, m.group(1), where, seen)), value)


def number(value: Any, where: str, kind: type = int) -> Any:
    """`value` as `kind` (int or float), or a ConfigError naming `where` (the file and key) and the value."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        if kind is float:
            return float(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where} is {value!r}; it must be {what}") from None


def stated(config: dict, key: str, path: Path, default: Any = None) -> Any:
    """config.yaml's top-level `key` with its `${...}` references resolved (FunASR's OmegaConf resolves them too)."""
    return resolve(config.get(key, default), config, f"{path}: {key}")


def _llm_folder_hint(src: Path) -> str:
    """Where SRC is the LLM folder inside a Nano directory (its config.json, the parent's config.yaml): a sentence
    naming the parent; else ""."""
    if (src / "config.json").is_file() and (src.parent / "config.yaml").is_file():
        return f". {src} is an LLM folder (config.json); give the Fun-ASR-Nano directory that holds it: {src.parent}"
    return ""


def read_nano_config(src: Path) -> dict:
    """config.yaml of a Fun-ASR-Nano directory, checked to be one; references are resolved where used."""
    path = src / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing; a Fun-ASR-Nano directory holds config.yaml, model.pt and an LLM directory"
            f"{_llm_folder_hint(src) or nested_hint(src, 'config.yaml', 'SRC')}"
        )
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except UnicodeDecodeError as err:  # a config.yaml resaved in a local code page (GBK comments)
        raise ConfigError(f"{path}: {not_utf8(err, path)}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    model = funasr_class_name(config.get("model", ""))
    if model != NANO_MODEL:
        raise ConfigError(
            f"{path}: model is {config.get('model')!r}; `llmasr convert funasr` converts FunASR's LLM-ASR model "
            f"{NANO_MODEL} (Fun-ASR-Nano). For an encoder-only FunASR directory (Paraformer, SenseVoiceSmall, ...) "
            "set model.encoder.path to it in a recipe instead"
        )
    return config


def section_of(config: dict, key: str, path: Path) -> dict:
    value = resolve(config.get(key) or {}, config, f"{path}: {key}")
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: `{key}` must be a mapping, got {type(value).__name__}")
    return value


def llm_dir(src: Path, config: dict) -> Path:
    """The Qwen3 directory: configuration.json's file_path_metas.llm_conf.init_param_path (relative to SRC) where that
    path exists, else config.yaml's llm_conf.init_param_path, as FunASR's AutoModel maps it (it skips a mapping whose
    file is not there: a copied configuration.json may name a directory the copy lacks)."""
    mapped = ((file_path_metas(src) or {}).get("llm_conf") or {}).get("init_param_path")
    own = section_of(config, "llm_conf", src / "config.yaml").get("init_param_path")
    named = [(s, w) for s, w in ((mapped, "configuration.json file_path_metas.llm_conf"), (own, "config.yaml llm_conf"))
             if s]  # fmt: skip
    if not named:
        raise ConfigError(
            f"{src}: config.yaml llm_conf.init_param_path is not set (nor configuration.json's); it names the LLM "
            "(Qwen3) directory"
        )
    places = [(stated, where, Path(str(stated)) if Path(str(stated)).is_absolute() else src / str(stated))
              for stated, where in named]  # fmt: skip
    stated, where, path = next((p for p in places if p[2].exists()), places[-1])
    if not (path / "config.json").is_file():
        tried = "; ".join(f"{w}.init_param_path names {s}" for s, w, _ in places)
        raise ConfigError(f"{src}: {tried}, but {path / 'config.json'} does not exist")
    return path


def _encoder_section(config: dict, path: Path, frontend_dim: int) -> dict:
    name = funasr_class_name(config.get("audio_encoder", ""))
    conf = section_of(config, "audio_encoder_conf", path)
    if name != "SenseVoiceEncoderSmall" or conf.get("hub"):
        raise ConfigError(
            f"{path}: audio_encoder is {config.get('audio_encoder')!r}"
            + (f" from hub {conf['hub']!r}" if conf.get("hub") else "")
            + "; the converter builds Fun-ASR-Nano's SenseVoiceEncoderSmall from model.pt (audio_encoder.*) only"
        )
    size = stated(config, "input_size", path)
    if size is not None and number(size, f"{path}: input_size") != frontend_dim:
        raise ConfigError(
            f"{path}: input_size is {size}, but frontend_conf gives n_mels * lfr_m = {frontend_dim} features"
        )
    conf = {k: v for k, v in conf.items() if k not in (*TRAINING_KEYS, *_NANO_ENCODER_KEYS)}
    if "output_size" in conf:  # the encoder's width, which the adaptor and CTC head are checked against
        conf["output_size"] = number(conf["output_size"], f"{path}: audio_encoder_conf.output_size")
    # `queries` is llmasr's own key (SenseVoiceSmall's query frames): FunASR's Nano runs the encoder without them
    known = (CONF_KEYS - {"queries"}) | {*TRAINING_KEYS, *_NANO_ENCODER_KEYS}
    unknown = sorted(set(conf) - known)
    if unknown:
        raise ConfigError(
            f"{path}: audio_encoder_conf.{unknown[0]} ({conf[unknown[0]]!r}) is not a SenseVoiceEncoderSmall or "
            f"FunASRNano setting the converter knows (unknown: {unknown}); known: {sorted(known)}"
        )
    return {"type": "sensevoice", "conf": conf, "freeze": True}


def dropout_of(conf: dict, section: str, path: Path) -> float:
    """The one dropout rate of llmasr's transformer blocks. FunASR's `Transformer` drops attention weights at
    attention_dropout_rate and the rest at dropout_rate (both 0.0 unless stated); llmasr uses one rate for both."""
    rate = number(conf.get("dropout_rate", 0.0), f"{path}: {section}.dropout_rate", float)
    attention = number(conf.get("attention_dropout_rate", 0.0), f"{path}: {section}.attention_dropout_rate", float)
    if attention != rate:
        raise ConfigError(
            f"{path}: {section}.attention_dropout_rate is {attention:g} but {section}.dropout_rate is {rate:g}; "
            "llmasr's transformer blocks use one dropout rate for both. Set them equal to convert"
        )
    return rate


def _adaptor_section(config: dict, path: Path) -> dict:
    name = funasr_class_name(config.get("audio_adaptor", ""))
    conf = section_of(config, "audio_adaptor_conf", path)
    if name != "Transformer":
        raise ConfigError(
            f"{path}: audio_adaptor is {config.get('audio_adaptor')!r}; the converter maps Fun-ASR-Nano's "
            "`Transformer` adaptor (llmasr's `transformer`) only"
        )
    unknown = sorted(set(conf) - _ADAPTOR_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: audio_adaptor_conf has key(s) {unknown} that llmasr's transformer adaptor cannot express; "
            f"known: {sorted(_ADAPTOR_KEYS)}"
        )

    def get(key: str, default: int) -> int:
        return number(conf.get(key, default), f"{path}: audio_adaptor_conf.{key}")

    return {
        "type": "transformer",
        "downsample": get("downsample_rate", 2),  # FunASR's defaults
        "ffn_dim": get("ffn_dim", 2048),
        "n_layer": get("n_layer", 2),
        "n_head": get("attention_heads", 8),
        "dropout": dropout_of(conf, "audio_adaptor_conf", path),
        "audio_token_cap": "funasr_nano" if conf.get("use_low_frame_rate", False) else "none",
    }


def _frontend(config: dict, src: Path):
    path = src / "config.yaml"
    frontend = funasr_class_name(config.get("frontend", "WavFrontend"))
    if frontend != "WavFrontend":
        raise ConfigError(f"{path}: frontend {config.get('frontend')!r}; Fun-ASR-Nano's WavFrontend is supported")
    conf = section_of(config, "frontend_conf", path)
    # FunASR's AutoModel picks the CMVN file as for any FunASR directory: configuration.json's mapping, else am.mvn
    return frontend_from_funasr_conf(conf, resolve_cmvn(src, conf), where=f"{path} frontend_conf")


def _prompt_section(config: dict, path: Path) -> dict:
    """Nano's prompt as FunASRNano.data_load_speech writes it: `dataset_conf.sys_prompt` false drops the system turn,
    `dataset_conf.do_think` false appends an empty <think> block after the assistant tag (truthiness as FunASR's)."""
    for key, what in _PROMPT_REFUSED.items():
        if config.get(key):
            raise ConfigError(
                f"{path}: {key} is {config[key]!r}; with it FunASR {what}, a prompt llmasr's cannot write. Remove "
                "the key to convert with Nano's plain prompt"
            )
    dataset = section_of(config, "dataset_conf", path)
    return {
        "task": NANO_TASK,
        "system": NANO_SYSTEM if dataset.get("sys_prompt", True) else None,
        "chat_template": NANO_CHAT_TEMPLATE,
        "audio_separator": "",
        "hotwords_template": NANO_HOTWORDS_TEMPLATE,
        "hotwords_separator": ", ",
        "template_kwargs": {} if dataset.get("do_think", True) else {"enable_thinking": False},
    }


# FunASRNano's dtype_map: the dtype it casts the whole LLM to when it builds the model (llm_conf.llm_dtype)
_LLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}


def rotary_dtype(config: dict, path: Path) -> str | None:
    """model.llm.rotary_dtype: FunASRNano's build casts its LLM to llm_conf.llm_dtype, rounding the rotary frequencies
    it trains and decodes with (llmasr.models.rotary); None for fp32."""
    dtype = section_of(config, "llm_conf", path).get("llm_dtype", "fp32")
    if dtype not in _LLM_DTYPES:
        raise ConfigError(
            f"{path}: llm_conf.llm_dtype is {dtype!r}; FunASR builds Fun-ASR-Nano with one of "
            f"{', '.join(_LLM_DTYPES)} (its dtype_map), so this config.yaml does not load there either"
        )
    return _LLM_DTYPES[dtype]


def nano_model_section(src: Path, config: dict) -> dict:
    """The llmasr model section (a dict for ModelConfig) of a Nano config; weights and LLM path filled by the caller
    (over `llm`, which holds the rotary frequencies' dtype where FunASR rounds them)."""
    path = src / "config.yaml"
    frontend = _frontend(config, src)
    encoder = _encoder_section(config, path, frontend.feature_dim)
    encoder.update(frontend=to_dict(frontend))
    rotary = rotary_dtype(config, path)
    return {
        "encoder": encoder,
        "adaptor": _adaptor_section(config, path),
        "llm": {"rotary_dtype": rotary} if rotary else {},
        "prompt": _prompt_section(config, path),
        "ctc": {"weight": 0.0},
    }


def stated_adaptor_dims(config: dict, path: Path) -> dict[str, int]:
    """audio_adaptor_conf's encoder_dim / llm_dim where stated (FunASR overwrites them from the modules built)."""
    conf = section_of(config, "audio_adaptor_conf", path)
    return {
        k: number(conf[k], f"{path}: audio_adaptor_conf.{k}")
        for k in ("encoder_dim", "llm_dim")
        if conf.get(k) is not None
    }
