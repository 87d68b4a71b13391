"""llmasr: fine-tune LLM-based speech recognition with DeepSpeed."""

__version__ = "0.1.0"
