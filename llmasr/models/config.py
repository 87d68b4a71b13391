"""Typed model section of a recipe: encoder, adaptor, LLM, LoRA and prompt, and the CTC head of
llmasr.models.ctc_config."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from llmasr.config_io import ConfigError, check_dropout
from llmasr.config_paths import path_field
from llmasr.data.frontend import FrontendConfig
from llmasr.models.ctc_config import CTCConfig
from llmasr.unread_fields import NO_INIT_FROM, blockless, changed, other_types_fields, refuse_unread


def check_target_regex(key: str, pattern: str) -> None:
    """A string target_modules other than all-linear is, as peft reads it, a regular expression that must match a
    module's whole name (re.fullmatch): refuse one re cannot read, and those peft reads otherwise."""
    if pattern.lower() == "all-linear":  # peft takes any case of it for all-linear, not for a pattern
        raise ConfigError(f"{key}: write all-linear in lower case, got {pattern!r}")
    if not pattern:
        raise ConfigError(f"{key}: an empty regular expression matches no module; name at least one")
    try:
        re.compile(pattern)
    except re.error as err:
        # the pattern as written (its repr would double each backslash), the position counted from 0 in it
        raise ConfigError(f"{key}: '{pattern}' is not a regular expression: {err.msg} at position {err.pos}") from None


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # A list of module names (each the whole name or a dotted suffix of it), "all-linear" (every nn.Linear but the
    # output head), or any other string: a regular expression matching whole module names (peft's re.fullmatch).
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: Literal["none", "all", "lora_only"] = "none"

    def validate(self, path: str) -> None:
        if self.r <= 0:
            raise ConfigError(f"{path}.r: LoRA rank must be positive, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(
                f"{path}.alpha: must be positive (the adapters' output is scaled by alpha / r: at 0 they train "
                f"nothing), got {self.alpha}"
            )
        check_dropout(f"{path}.dropout", self.dropout)
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            check_target_regex(f"{path}.target_modules", self.target_modules)
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ConfigError(f"{path}.target_modules: empty list; name at least one module or use 'all-linear'")
        if isinstance(self.target_modules, list) and "all-linear" in self.target_modules:
            raise ConfigError(  # in a list it is a module's name, which no module has
                f"{path}.target_modules: 'all-linear' in a list names a module called all-linear; write it alone, "
                f"without brackets (target_modules: all-linear), got {self.target_modules!r}"
            )


@dataclass
class EncoderConfig:
    type: Literal["paraformer", "conformer", "sensevoice", "whisper"] = "paraformer"
    # A FunASR model directory (config.yaml + model.pt + am.mvn) for paraformer/conformer/sensevoice, an HF Whisper
    # directory for whisper. None builds the architecture from `conf` with random weights (tests, from-scratch demo).
    path: str | None = path_field(None)
    # Constructor arguments (FunASR `encoder_conf` names). Over `path`: dropout rates, stochastic_depth_rate,
    # `queries` (SenseVoice), `context` (Paraformer-streaming: chunked, its default, or full) and `train_chunks`
    # (Paraformer-streaming chunked: random, FunASR's draw of a chunk configuration per training batch, or first)
    # override config.yaml's; any other key must equal it (the pretrained weights fix the architecture).
    # Whisper: WhisperConfig keys over config.json's; sizes and activation_function must equal it.
    conf: dict[str, Any] = field(default_factory=dict)
    # Frontend used when `path` carries none (fbank settings; see llmasr.data.features.FrontendConfig).
    frontend: dict[str, Any] = path_field(default_factory=dict, keys=("cmvn_file",))
    freeze: bool = True
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    # Checkpoint keys (encoder-relative names, glob patterns allowed) that may be missing or differently shaped:
    # these are left at their fresh initialisation. Anything else that does not match is an error.
    reinit_keys: list[str] = field(default_factory=list)
    # Encoder weights (.safetensors or weights-only .pt) for an encoder built from `conf`, e.g. an llmasr export's
    # encoder.safetensors; `init_prefix` selects (and strips) a key prefix. Only without `path`.
    init_from: str | None = path_field(None)
    init_prefix: str = ""

    @staticmethod
    def unread_fields(section: dict) -> dict[str, str]:
        """What an encoder section sets that nothing reads (llmasr.unread_fields)."""
        unread = {}
        if section.get("path") is None and not section.get("init_from") and section.get("reinit_keys"):
            unread["reinit_keys"] = (
                "names weights to leave at their fresh initialisation, but this encoder loads none (neither path "
                "nor init_from is set)"
            )
        if not section.get("init_from") and changed(EncoderConfig, section, ["init_prefix"]):
            unread["init_prefix"] = NO_INIT_FROM
        frontend = section.get("frontend")
        if isinstance(frontend, dict):  # refines the type's own frontend: Whisper's, or an fbank
            kind = frontend.get("kind", "whisper" if section.get("type") == "whisper" else "fbank")
            unread |= {
                f"frontend.{k}": why for k, why in FrontendConfig.unread_fields({**frontend, "kind": kind}).items()
            }
        return unread

    def validate(self, path: str) -> None:
        refuse_unread(self, path)
        if self.type == "whisper" and self.path is None and not self.conf:
            raise ConfigError(f"{path}: a whisper encoder needs `path` (an HF Whisper directory) or `conf`")
        if self.init_from and self.path is not None:
            raise ConfigError(
                f"{path}: set `path` (a pretrained directory) or `init_from` (weights for `conf`), not both"
            )
        for key, value in self.conf.items():  # FunASR's *dropout_rate, Whisper's *dropout, *layerdrop (typed later)
            if (
                ("dropout" in str(key) or "layerdrop" in str(key))
                and isinstance(value, (int, float, str))
                and not isinstance(value, bool)
            ):
                try:
                    rate = float(value)
                except ValueError:
                    continue  # not a number: the encoder's typing names it
                check_dropout(f"{path}.conf.{key}", rate)


# An adaptor field that only some types read; set on another type it would change nothing.
ADAPTOR_TYPE_FIELDS = {"n_layer": ("transformer", "qformer"), "n_head": ("transformer", "qformer"),
                       "num_queries": ("qformer",)}  # fmt: skip


@dataclass
class AdaptorConfig:
    type: Literal["linear", "conv", "transformer", "qformer"] = "linear"
    downsample: int = 2  # frames stacked (linear/transformer), conv stride, or window per query block (qformer)
    ffn_dim: int = 2048
    n_layer: int = 2  # transformer blocks (transformer) or Q-Former layers (qformer)
    n_head: int = 8
    num_queries: int = 4  # queries per window (qformer)
    dropout: float = 0.0
    freeze: bool = False
    # Average the encoder frames over CTC best-path segments before the adaptor (llmasr.models.ctc_compress):
    # none | avg | avg_no_blank. Needs the CTC head (model.ctc.weight > 0).
    ctc_compress: Literal["none", "avg", "avg_no_blank"] = "none"
    # Cap on the audio tokens that enter the prompt, applied after the adaptor ran over all frames (training,
    # validation and decoding alike): "none" keeps every adaptor frame; "funasr_nano" keeps only the first
    # ((1 + ((1 + (L-1)//2) - 1)//2) - 1)//2 + 1 (about L/8) of an utterance's L input frames, as FunASR's
    # Fun-ASR-Nano does (`use_low_frame_rate: true`: its `fake_token_len`).
    audio_token_cap: Literal["none", "funasr_nano"] = "none"
    # Pretrained adaptor weights (.safetensors or .pt), e.g. from a FunASR LLM-ASR model.pt with
    # init_prefix "audio_adaptor.". Shapes are checked against the adaptor built for this LLM.
    init_from: str | None = path_field(None)
    init_prefix: str = ""

    @staticmethod
    def unread_fields(section: dict) -> dict[str, str]:
        """What an adaptor section sets that nothing reads (llmasr.unread_fields)."""
        unread = other_types_fields(AdaptorConfig, section, ADAPTOR_TYPE_FIELDS)
        if not section.get("init_from") and changed(AdaptorConfig, section, ["init_prefix"]):
            unread["init_prefix"] = NO_INIT_FROM
        transformer = section.get("type", AdaptorConfig.type) == "transformer"
        return unread | (blockless(AdaptorConfig, section) if transformer else {})

    def validate(self, path: str) -> None:
        for key, low in (("downsample", 1), ("ffn_dim", 1), ("n_head", 1), ("n_layer", 0)):
            if getattr(self, key) < low:
                raise ConfigError(f"{path}.{key}: must be >= {low}, got {getattr(self, key)}")
        refuse_unread(self, path)
        check_dropout(f"{path}.dropout", self.dropout)
        if self.audio_token_cap != "none" and self.ctc_compress != "none":
            raise ConfigError(
                f"{path}.audio_token_cap: {self.audio_token_cap!r} counts the encoder's frames, which "
                f"ctc_compress {self.ctc_compress!r} merges; use one of the two"
            )


@dataclass
class LLMConfig:
    path: str = path_field("")  # local HF directory (config.json, weights, tokenizer); no hub downloads
    freeze: bool = True  # freeze the base weights; LoRA (if set) stays trainable
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    # With gradient_checkpointing: recompute every n-th decoder layer only (1: all). 2 frees about half the
    # activation memory for about half the recompute time (selective checkpointing).
    checkpoint_every: int = 1
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # The rotary frequencies (inv_freq) rounded to this dtype, as a framework that cast the whole LLM computed them
    # when the weights were trained (FunASR's Fun-ASR-Nano with llm_conf.llm_dtype bf16: `llmasr convert funasr`
    # sets it); null: exact, as transformers computes them (llmasr.models.rotary).
    rotary_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    trust_remote_code: bool = False
    # A saved peft LoRA adapter (e.g. `llmasr export --adapter-only`'s DIR/adapter) applied to `path` and frozen with
    # it; train new adapters with `lora` instead.
    adapter: str | None = path_field(None)
    # The tokenizer's directory when it is not `path` (default: the adapter's directory if it holds one, else path).
    tokenizer: str | None = path_field(None)
    # Training on CUDA: "liger" swaps in liger-kernel's fused RMSNorm/SwiGLU/RoPE and a fused linear cross-entropy
    # over the labelled positions (llmasr.models.fused_kernels; needs `pip install liger-kernel`, ZeRO stage <= 2).
    fused_kernels: Literal["none", "liger"] = "none"

    def validate(self, path: str) -> None:
        if not self.path:
            raise ConfigError(f"{path}.path: the LLM directory is required")
        if self.checkpoint_every < 1:
            raise ConfigError(f"{path}.checkpoint_every: must be >= 1, got {self.checkpoint_every}")
        if self.checkpoint_every > 1 and not self.gradient_checkpointing:
            raise ConfigError(
                f"{path}.checkpoint_every: {self.checkpoint_every} selects layers to checkpoint, but "
                f"{path}.gradient_checkpointing is off; turn it on or leave checkpoint_every at 1"
            )
        if self.adapter and (self.lora is not None or not self.freeze):
            raise ConfigError(
                f"{path}.adapter: a saved adapter is loaded frozen together with its base; it cannot be combined "
                "with `lora` or `freeze: false`"
            )


# apply_chat_template's own arguments, which llmasr sets when it renders a prompt.
RENDER_ARGUMENTS = frozenset(
    {"conversation", "messages", "tokenize", "add_generation_prompt", "continue_final_message", "date_string",
     "chat_template", "return_dict", "return_tensors", "tools", "documents"}
)  # fmt: skip


@dataclass
class PromptConfig:
    task: str = "Transcribe the audio."
    system: str | None = None
    # A Jinja chat template (text, or a path to a .jinja file) for tokenizers that ship none.
    chat_template: str | None = path_field(None)
    # Text between the task and the audio in the user message ("" for Fun-ASR-Nano: "语音转写：<audio>").
    audio_separator: str = "\n"
    # How a biasing list is worded before the task ({hotwords}: the phrases joined by hotwords_separator); an empty
    # list adds nothing. The same wording in training, validation and decoding (it is saved with an export).
    hotwords_template: str = "Hotwords: {hotwords}. "
    hotwords_separator: str = ", "
    # Token budget of a list's joined phrases: the longest phrase is dropped until it fits (counted). None: no cap.
    hotwords_max_tokens: int | None = None
    # Variables the chat template reads, e.g. {enable_thinking: false} for Qwen3's non-thinking turn (its prompt then
    # ends in an empty <think></think> block, as Qwen3 renders a chat without reasoning).
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        taken = sorted(set(self.template_kwargs) & RENDER_ARGUMENTS)
        if taken:
            raise ConfigError(f"{path}.template_kwargs: {taken} are set by llmasr itself when it renders the prompt")
        if self.hotwords_template.count("{hotwords}") != 1:
            raise ConfigError(
                f"{path}.hotwords_template: must hold the placeholder {{hotwords}} exactly once, got "
                f"{self.hotwords_template!r}"
            )
        if not self.hotwords_separator:
            raise ConfigError(f"{path}.hotwords_separator: must not be empty (it separates the phrases)")
        if self.hotwords_max_tokens is not None and self.hotwords_max_tokens < 1:
            raise ConfigError(
                f"{path}.hotwords_max_tokens: must be >= 1 (or null: no cap), got {self.hotwords_max_tokens}"
            )


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adaptor: AdaptorConfig = field(default_factory=AdaptorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    ctc: CTCConfig = field(default_factory=CTCConfig)
    # Recipe keys (model.prompt.task, model.encoder.frontend.cmvn_file, ...) deliberately set otherwise than in the
    # llmasr_model.yaml of the folder the recipe starts from (llmasr.models.start_from); any other difference there
    # is refused at start-up.
    differs_from_start: list[str] = field(default_factory=list)

    def validate(self, path: str) -> None:
        if self.ctc.from_encoder:
            self.ctc = self._encoder_ctc(f"{path}.ctc")
        if self.adaptor.ctc_compress != "none" and self.ctc.weight <= 0:
            raise ConfigError(
                f"{path}.adaptor.ctc_compress: {self.adaptor.ctc_compress!r} segments the audio with the CTC head, "
                f"but {path}.ctc.weight is {self.ctc.weight} (no head); set it > 0 or ctc_compress: none"
            )

    def _encoder_ctc(self, path: str) -> CTCConfig:
        """`ctc` with the head of the encoder's FunASR directory filled in (derived once, here). A field the recipe
        also sets must agree, so a recipe saved with the derived values loads again."""
        from llmasr.models.funasr_ctc import funasr_ctc_settings

        if self.ctc.weight <= 0:
            raise ConfigError(f"{path}.from_encoder: takes the encoder's CTC head, but {path}.weight is 0 (no head)")
        if self.encoder.type not in ("paraformer", "conformer", "sensevoice") or self.encoder.path is None:
            raise ConfigError(
                f"{path}.from_encoder: takes the CTC head of a FunASR model directory (model.encoder.path with type "
                f"paraformer, conformer or sensevoice); this encoder is type {self.encoder.type!r} with path "
                f"{self.encoder.path!r}. Set {path}.vocab (and init_from for a pretrained head) instead"
            )
        try:
            derived = funasr_ctc_settings(self.encoder.path)
        except ConfigError as err:
            said = str(err).removeprefix("model.encoder.path: ")
            raise ConfigError(f"{path}.from_encoder (reading model.encoder.path): {said}") from err
        unset = {"vocab": "llm", "blank": None, "seg_dict": None, "init_from": None, "init_prefix": ""}
        for key, value in derived.items():
            own = getattr(self.ctc, key)
            if own != unset[key] and own != value:
                raise ConfigError(
                    f"{path}.{key}: {own!r}, but {path}.from_encoder takes {value!r} from {self.encoder.path}; "
                    f"leave {key} unset or set from_encoder: false"
                )
        ctc = replace(self.ctc, **derived)
        ctc.validate(path)
        return ctc
