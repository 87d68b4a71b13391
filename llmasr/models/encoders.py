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


# FunASR 0.x's config.yaml named classes by the registry keys of its tasks (funasr/tasks/asr.py, vad.py
# ClassChoices); FunASR 1.x's by the class name, which is what llmasr reads. Those of the classes llmasr loads:
FUNASR_0X_NAMES = {
    "model": {"paraformer": "Paraformer", "paraformer_online": "ParaformerStreaming",
              "contextual_paraformer": "ContextualParaformer", "bicif_paraformer": "BiCifParaformer",
              "e2evad": "FsmnVADStreaming"},
    "encoder": {"sanm": "SANMEncoder", "sanm_chunk_opt": "SANMEncoderChunkOpt", "conformer": "ConformerEncoder",
                "fsmn": "FSMN"},
    "frontend": {"wav_frontend": "WavFrontend", "wav_frontend_online": "WavFrontendOnline"},
}  # fmt: skip


def funasr_0x_advice(config: dict) -> str:
    """Where config.yaml's `encoder` or `frontend` is a FunASR 0.x name (FUNASR_0X_NAMES): a sentence naming the
    class each 0.x name of `model`, `encoder` and `frontend` stands for and what to write; else ""."""
    named = {key: (config[key], FUNASR_0X_NAMES[key][config[key]]) for key in FUNASR_0X_NAMES
             if isinstance(config.get(key), str) and config[key] in FUNASR_0X_NAMES[key]}  # fmt: skip
    if not named.keys() & {"encoder", "frontend"}:
        return ""
    said = [f"{key} {old!r} of {new}" for key, (old, new) in named.items()]
    said[0] = said[0].replace(" of ", " is FunASR 0.x's name of ", 1)  # the others: "..., encoder 'sanm' of ..."
    write = ", ".join(f"`{key}: {new}`" for key, (_, new) in named.items())
    return (
        f"a FunASR 0.x config.yaml: {', '.join(said)}. llmasr reads FunASR 1.x's class names: write {write} there "
        "(or download the model's FunASR 1.x revision, whose config.yaml names the classes)"
    )


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
    if advice := funasr_0x_advice({"encoder": value}):
        raise ConfigError(f"{where}: {advice}")
    supported = [c for e in ENCODERS.values() for c in e.funasr_classes]
    raise ConfigError(f"{where}: encoder {value!r} is not supported; supported: {', '.join(supported)}")


def entry_for_class(class_name: str, where: str) -> EncoderEntry:
    """The entry whose built class (or one of whose FunASR names) is `class_name` (an export's `class`)."""
    for entry in ENCODERS.values():
        if class_name == entry.class_name or class_name in entry.funasr_classes:
            return entry
    raise ConfigError(f"{where}: encoder class {class_name!r} is not one llmasr builds")
