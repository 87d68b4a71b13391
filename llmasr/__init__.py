"""llmasr: fine-tune LLM-based speech recognition with DeepSpeed."""

__version__ = "0.1.0"


def build_model(cfg):
    """Build a SpeechLLM from a recipe's model section (ModelConfig, dict, or recipe path)."""
    from llmasr.models.builder import build_model as _build

    return _build(cfg)
