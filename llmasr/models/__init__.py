"""Encoders, adaptors, the LLM with LoRA, and the SpeechLLM that joins them.

Public loaders: `load_funasr_encoder(model_dir)` -> (encoder, FrontendConfig with CMVN),
`load_whisper_encoder(path)`, `load_llm(path, lora=...)` -> (model, tokenizer), `build_model(cfg)`.
"""

from importlib import import_module

_EXPORTS = {
    "build_model": "llmasr.models.builder",
    "build_encoder": "llmasr.models.builder",
    "load_llm": "llmasr.models.llm",
    "load_funasr_encoder": "llmasr.models.funasr_dir",
    "load_whisper_encoder": "llmasr.models.whisper",
    "SpeechLLM": "llmasr.models.speech_llm",
    "PromptBuilder": "llmasr.models.prompt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Imported on first use: `import llmasr` stays light (no transformers/peft until a model is built).
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmasr.models' has no attribute {name!r}")
