"""Typed CTC head section of a recipe (`model.ctc`): the head's weight in the loss, its vocabulary and blank, the
layers before its projection (`decoder`) and the weights it starts from. What depends on the other sections (a head
taken from the encoder's FunASR directory) is derived by llmasr.models.config.ModelConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmasr.config_io import ConfigError, check_dropout
from llmasr.config_paths import path_field
from llmasr.unread_fields import NO_INIT_FROM, blockless, changed, refuse_unread


@dataclass
class CTCDecoderConfig:
    """Layers between the encoder and the CTC projection, as Fun-ASR-Nano's CTC decoder (FunASR's `Transformer`
    adaptor at the encoder's width, no downsampling): Linear - ReLU - Linear, then `n_layer` transformer blocks."""

    n_layer: int = 5
    ffn_dim: int = 2048
    n_head: int = 8
    dropout: float = 0.0

    @staticmethod
    def unread_fields(section: dict) -> dict[str, str]:
        return blockless(CTCDecoderConfig, section)

    def validate(self, path: str) -> None:
        refuse_unread(self, path)
        for key in ("n_layer", "ffn_dim", "n_head"):
            if getattr(self, key) < (0 if key == "n_layer" else 1):
                raise ConfigError(f"{path}.{key}: must be >= {0 if key == 'n_layer' else 1}, got {getattr(self, key)}")
        check_dropout(f"{path}.dropout", self.dropout)


@dataclass
class CTCConfig:
    weight: float = 0.0  # 0 disables the CTC head entirely
    # "llm": the LLM tokenizer's vocabulary; a path ending in .model: a sentencepiece model; a path ending in
    # .tiktoken: a byte-level BPE file (SenseVoice's, Fun-ASR-Nano's CTC branch); any other path: a token list (one
    # token per line, or a FunASR tokens.json list), characters split on spaces-or-chars.
    vocab: str = path_field("llm", keywords=("llm",))
    # The head's outputs with a .tiktoken vocabulary (blank = the last; the ids between its tokens and the blank
    # are special tokens); None: its tokens + the blank. Other vocabularies have their size from their file.
    vocab_size: int | None = None
    # The entry of a sentencepiece model or token list that is the blank, for a head trained with one of its own
    # (SenseVoiceSmall's: "<unk>"); None: "<blank>" or "<blk>" when the vocabulary has one, else one appended.
    blank: str | None = None
    # A FunASR seg_dict (`word piece piece ...` lines) through which a token list spells text, as Paraformer-large's
    # and SeACo-Paraformer's CharTokenizer reads it (llmasr.models.ctc_seg_dict); token lists only.
    seg_dict: str | None = path_field(None)
    decoder: CTCDecoderConfig | None = None  # None: the projection alone reads the encoder's frames
    # The CTC loss trains the head only: no gradient reaches the encoder through it (Fun-ASR-Nano's
    # detach_ctc_decoder), so a trainable encoder learns from the LLM's loss alone.
    detach_encoder: bool = False
    label_smoothing: float = 0.0
    # Pretrained CTC head weights, e.g. a FunASR model.pt with init_prefix "ctc." (its ctc_lo layer) together
    # with vocab: <that directory>/tokens.json. The head's output size must equal the vocabulary's.
    init_from: str | None = path_field(None)
    init_prefix: str = ""
    # Take vocab, blank, seg_dict, init_from and init_prefix from the FunASR directory model.encoder.path: the CTC
    # head its model.pt holds (SenseVoiceSmall's, a Conformer's), over its own vocabulary (llmasr.models.funasr_ctc).
    from_encoder: bool = False

    @property
    def vocab_kind(self) -> Literal["llm", "sentencepiece", "tiktoken", "token_list"]:
        """What `vocab` names, by its value: the one rule the checks below and build_ctc_tokenizer use."""
        if self.vocab == "llm":
            return "llm"
        if str(self.vocab).endswith(".model"):
            return "sentencepiece"
        return "tiktoken" if str(self.vocab).endswith(".tiktoken") else "token_list"

    @staticmethod
    def unread_fields(section: dict) -> dict[str, str]:
        """What a CTC section sets that nothing reads (llmasr.unread_fields); from_encoder fills init_from in."""
        if section.get("from_encoder") or section.get("init_from") or not changed(CTCConfig, section, ["init_prefix"]):
            return {}
        return {"init_prefix": NO_INIT_FROM}

    def validate(self, path: str) -> None:
        refuse_unread(self, path)
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"{path}.weight: must be in [0, 1], got {self.weight}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{path}.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.from_encoder and self.vocab == "llm":
            return  # the vocabulary is derived with the model section (ModelConfig), and checked then
        if self.blank is not None and self.vocab_kind in ("llm", "tiktoken"):
            raise ConfigError(
                f"{path}.blank: names the blank entry of a sentencepiece model or token list; {self.vocab!r} has its "
                "blank by its own rule (leave blank unset)"
            )
        if self.seg_dict is not None and self.vocab_kind != "token_list":
            raise ConfigError(
                f"{path}.seg_dict: spells text into the entries of a token list (tokens.json, units.txt); "
                f"{self.vocab!r} is not one (leave seg_dict unset)"
            )
        if self.vocab_size is not None and self.vocab_kind != "tiktoken":
            raise ConfigError(
                f"{path}.vocab_size: sets the head's size for a .tiktoken vocabulary only; {self.vocab!r} has its "
                "size from its own entries (leave vocab_size unset)"
            )
