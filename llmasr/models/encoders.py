"""The encoder registry: the one table that maps encoder names to classes.

    model.encoder.type   FunASR config.yaml `encoder:`   class                       built from
    paraformer           SANMEncoder                     llmasr.models.sanm           FunASR encoder_conf names
                         SANMEncoderChunkOpt (streaming)
    conformer            ConformerEncoder                llmasr.models.conformer      FunASR encoder_conf names
    sensevoice           SenseVoiceEncoderSmall          llmasr.models.sensevoice     FunASR encoder_conf names
    whisper              (a Hugging Face directory)      llmasr.models.whisper        WhisperConfig keys

Paraformer-streaming's SANMEncoderChunkOpt is the SAN-M architecture with chunk settings (kept on the encoder as
`chunk` and run chunked as FunASR runs them unless conf `context` is full, see llmasr.models.sanm_chunk), so it is a
FunASR name of the paraformer entry, not an entry of its own.

The recipe builder, the FunASR directory loader, `llmasr check`, export (which records `type`, `class` and the
constructor `conf`) and the exported-model loader all look encoders up here, so a new encoder family is one entry
and its module.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from torch import nn

from llmasr.config_io import ConfigError, coerce_arguments


@dataclass(frozen=True)
class EncoderEntry:
    type: str  # model.encoder.type
    class_name: str  # the class llmasr builds (and the `class` an export records)
    module: str
    funasr_classes: tuple[str, ...] = ()  # names a FunASR config.yaml may give for this family

    def cls(self) -> type[nn.Module]:
        return getattr(import_module(self.module), self.class_name)

    def construct(self, conf: dict[str, Any], where: str = "model.encoder.conf") -> nn.Module:
        """A freshly initialised encoder from its constructor settings (input_size included for FunASR ones);
        `where` names the settings in a typing error."""
        if self.type == "whisper":
            from transformers import WhisperConfig

            return self.cls()(WhisperConfig.from_dict(dict(conf)))
        cls = self.cls()  # "1e-1" or 2.0 from a recipe: typed as the constructor declares, or an error naming the key
        return cls(**coerce_arguments(cls.__init__, conf, where))


ENCODERS: dict[str, EncoderEntry] = {
    e.type: e
    for e in (
        EncoderEntry("paraformer", "SANMEncoder", "llmasr.models.sanm", ("SANMEncoder", "SANMEncoderChunkOpt")),
        EncoderEntry("conformer", "ConformerEncoder", "llmasr.models.conformer", ("ConformerEncoder",)),
        EncoderEntry("sensevoice", "SenseVoiceEncoderSmall", "llmasr.models.sensevoice", ("SenseVoiceEncoderSmall",)),
        EncoderEntry("whisper", "WhisperAudioEncoder", "llmasr.models.whisper"),
    )
}
ENCODER_TYPES = tuple(ENCODERS)


def funasr_class_name(value: Any) -> str:
    """The class name of a FunASR `encoder:` entry, which may be written as a dotted or `module:Class` path."""
    return str(value).rsplit(".", 1)[-1].rsplit(":", 1)[-1]


def encoder_entry(kind: str, where: str = "model.encoder.type") -> EncoderEntry:
    if kind not in ENCODERS:
        raise ConfigError(f"{where}: unknown encoder {kind!r}; choose one of {', '.join(ENCODER_TYPES)}")
    return ENCODERS[kind]


def funasr_entry(value: Any, where: str) -> EncoderEntry:
    """The entry for a FunASR config.yaml `encoder:` value; `where` names the file in the error."""
    name = funasr_class_name(value)
    for entry in ENCODERS.values():
        if name in entry.funasr_classes:
            return entry
    supported = [c for e in ENCODERS.values() for c in e.funasr_classes]
    raise ConfigError(f"{where}: encoder {value!r} is not supported; supported: {', '.join(supported)}")


def entry_for_class(class_name: str, where: str) -> EncoderEntry:
    """The entry whose built class (or one of whose FunASR names) is `class_name` (an export's `class`)."""
    for entry in ENCODERS.values():
        if class_name == entry.class_name or class_name in entry.funasr_classes:
            return entry
    raise ConfigError(f"{where}: encoder class {class_name!r} is not one llmasr builds")
